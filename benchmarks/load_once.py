"""Loading once: how soon `genloom continue` answers on its first call (which converts the model and
writes the cache) and on the calls after it (which read the cache).

    python benchmarks/load_once.py [--model smollm2-135m] [--runs 3] [--threads 1]

Each call runs in a fresh process, with $GENLOOM_CACHE a new empty folder before the first. Per call:
wall time to the first byte on stdout (`continue` prints its continuation when it is decoded, so
with --max-new-tokens 1 this is the time to the first token), wall time to exit, and the child's
CPU time (user + sys, which other work on the machine does not inflate). "uncached" runs the same
command with $GENLOOM_CACHE under a regular file, so nothing can be cached (every call converts).
Prints a table and writes benchmarks/results/load_once.json.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def run_once(argv: list[str], env: dict[str, str]) -> dict[str, float]:
    """Time one command: to its first stdout byte, to its exit, and its CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    first = proc.stdout.read(1)
    first_at = time.perf_counter() - start
    out = first + proc.stdout.read()
    err = proc.stderr.read()
    rc = proc.wait()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        sys.exit(f"{' '.join(argv)} failed ({rc}): {err.decode(errors='replace').strip().splitlines()[-1:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"first_byte_s": round(first_at, 2), "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "output": out.decode(errors="replace").strip()}


def summary(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompt", default="import num")
    parser.add_argument("--runs", type=int, default=3, help="cached calls after the first")
    parser.add_argument("--uncached", type=int, default=1, help="calls that cannot use the cache")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    from genloom.machine import machine

    command = ["genloom", "continue", "--model", args.model, "--prompt", args.prompt, "--max-new-tokens", "1",
               "--threads", str(args.threads)]
    argv = [sys.executable, "-m", "genloom.cli", *command[1:]]
    start_machine = machine()
    rows = []
    with tempfile.TemporaryDirectory(prefix="genloom-load-once.") as tmp:
        env = {**os.environ, "GENLOOM_CACHE": str(Path(tmp) / "cache")}
        rows.append({"call": "first (converts, writes the cache)", **run_once(argv, env)})
        for i in range(args.runs):
            rows.append({"call": f"cached {i + 1}", **run_once(argv, env)})
        blocker = Path(tmp) / "a-file"
        blocker.write_text("")
        no_cache = {**os.environ, "GENLOOM_CACHE": str(blocker / "cache")}
        for i in range(args.uncached):
            rows.append({"call": f"uncached {i + 1}", **run_once(argv, no_cache)})
    cached = [r for r in rows if r["call"].startswith("cached")]
    result = {
        "command": shlex.join(command), "machine_before": start_machine, "machine": machine(), "rows": rows,
        "runs": len(cached), "load_avg_before": start_machine["loadavg"],
        "cached": {key: summary([r[key] for r in cached]) for key in ("first_byte_s", "wall_s", "cpu_s")} if cached
        else None,
    }
    result["load_avg_after"] = result["machine"]["loadavg"]
    print(f"{'call':38s} {'first byte s':>12s} {'wall s':>8s} {'cpu s':>7s}")
    for r in rows:
        print(f"{r['call']:38s} {r['first_byte_s']:12.2f} {r['wall_s']:8.2f} {r['cpu_s']:7.2f}")
    print(f"load {start_machine['loadavg']} -> {result['machine']['loadavg']} on {start_machine['cpus']} CPUs")
    from genloom.files import write_json_atomic

    print(f"wrote {write_json_atomic(RESULTS / 'load_once.json', result)}")


if __name__ == "__main__":
    main()
