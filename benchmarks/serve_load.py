"""Load and fault test of `genloom serve` on SmolLM2-135M, over loopback (bounded in count and time).

    python benchmarks/serve_load.py                 # the whole run, about 5 minutes
    python benchmarks/serve_load.py --quick         # fewer requests, for a smoke run

The server runs as its own process (`genloom serve --model smollm2-135m --threads T`); the clients
are asyncio + httpx in this process. Three parts:

1. batched vs one at a time (the issue's acceptance): 16 greedy requests of 64 tokens (prompts cut
   mid-word from the stdlib's docstrings, exact healing, ignore_eos so each is 64 tokens), sent
   one after the other, then all 16 at once; total wall time of each, their ratio, and whether the
   outputs are identical. Interleaved rounds, medians.
2. load: 1 / 4 / 16 / 64 concurrent clients, streamed and not, mixed prompt and output lengths
   (16-128 tokens, greedy); throughput (completion tokens/s), p50 / p99 time to first token and
   time per output token after the first (streamed), against the same requests one at a time (sent
   once, the 64 of the largest level; a level's baseline is its own requests' share of that run).
3. faults: streaming clients that disconnect after three chunks beside normal requests, malformed
   JSON, prompts over the limit, a flood of 200 requests past the queue (the server runs with
   --max-batch 64 --max-queue 64, room for the 64 clients of part 2). Every request must end in a 200 whose text equals the same request sent
   alone, or an OpenAI-shaped error (400 / 429); the server must still answer, with no rows left
   decoding and its resident memory back near its level after warm-up.

Writes benchmarks/results/serve.json (machine, load, every figure).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from genloom.files import write_atomic
from genloom.machine import machine

RESULTS = Path(__file__).resolve().parent / "results" / "serve.json"
MODULES = ("json", "os", "re", "collections", "functools", "itertools", "pathlib", "subprocess", "argparse",
           "logging", "typing", "dataclasses", "asyncio", "socket", "textwrap", "random", "statistics",
           "inspect", "string", "datetime")


def prompts(count: int, *, lo: int = 60, hi: int = 400) -> list[str]:
    """Prompts of mixed length cut mid-word from stdlib module docstrings."""
    out = []
    for i in range(count):
        doc = inspect.getdoc(__import__(MODULES[i % len(MODULES)])) or "import numpy as np"
        n = lo + (i * 97) % (hi - lo)
        text = doc[:n]
        cut = text.rfind(" ")
        out.append(text[: cut + 3] if cut > 10 else text)  # ends two letters into a word
    return out


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def request(client: httpx.AsyncClient, body: dict, *, stream: bool) -> dict[str, Any]:
    """One completion; returns status, text, tokens, time to first token, per-token times."""
    t0 = time.perf_counter()
    if not stream:
        r = await client.post("/v1/completions", json=body)
        t = time.perf_counter() - t0
        out = r.json()
        if r.status_code != 200:
            return {"status": r.status_code, "error": out.get("error"), "seconds": t}
        return {"status": 200, "text": out["choices"][0]["text"], "tokens": out["usage"]["completion_tokens"],
                "ttft": t, "seconds": t, "tpot": None}
    text, times, usage = "", [], None
    async with client.stream("POST", "/v1/completions",
                             json={**body, "stream": True, "stream_options": {"include_usage": True}}) as r:
        if r.status_code != 200:
            return {"status": r.status_code, "error": json.loads(await r.aread()).get("error"),
                    "seconds": time.perf_counter() - t0}
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for c in chunk.get("choices", []):
                if c["text"]:
                    text += c["text"]
                    times.append(time.perf_counter() - t0)
    t = time.perf_counter() - t0
    tokens = usage["completion_tokens"] if usage else None
    tpot = (times[-1] - times[0]) / (tokens - 1) if tokens and tokens > 1 and len(times) > 1 else None
    return {"status": 200, "text": text, "tokens": tokens, "ttft": times[0] if times else t, "seconds": t,
            "tpot": tpot}


async def run_set(url: str, bodies: list[dict], *, concurrency: int, stream: bool, keep: bool = False) -> dict[str, Any]:
    """Send `bodies` with at most `concurrency` in flight; wall time, throughput, latencies."""
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def one(body):
            async with sem:
                return await request(client, body, stream=stream)

        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(b) for b in bodies))
        wall = time.perf_counter() - t0
    ok = [r for r in results if r["status"] == 200]
    tokens = sum(r["tokens"] or 0 for r in ok)
    return {"wall_s": wall, "requests": len(bodies), "ok": len(ok), "not_ok": len(results) - len(ok),
            "completion_tokens": tokens,
            "tokens_per_s": tokens / wall, "ttft_p50_s": pct([r["ttft"] for r in ok], 0.5),
            "ttft_p99_s": pct([r["ttft"] for r in ok], 0.99),
            "tpot_p50_ms": None if not stream else 1000 * (pct([r["tpot"] for r in ok if r["tpot"]], 0.5) or 0),
            "tpot_p99_ms": None if not stream else 1000 * (pct([r["tpot"] for r in ok if r["tpot"]], 0.99) or 0),
            "texts": [r.get("text") for r in results], "statuses": [r["status"] for r in results],
            **({"per_request": results} if keep else {})}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(threads: int, max_queue: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    exe = Path(sys.executable).with_name("genloom")
    proc = subprocess.Popen([str(exe), "serve", "--model", "smollm2-135m", "--port", str(port), "--threads",
                             str(threads), "--max-queue", str(max_queue), "--max-batch", "64",
                             "--max-prompt-tokens", "512"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read().decode()[-500:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(1)
    proc.kill()
    raise SystemExit("the server did not start in 300 s")


def body(prompt: str, max_tokens: int, **kw) -> dict:
    return {"model": "smollm2-135m", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, **kw}


async def faults(url: str, reference: dict[str, str], fault_prompts: list[str]) -> dict[str, Any]:
    """Part 3 (module docstring); `reference` maps prompt -> its text sent alone (8 tokens)."""
    out: dict[str, Any] = {}
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=50)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def quitter(prompt):
            async with client.stream("POST", "/v1/completions", json={**body(prompt, 128), "stream": True}) as r:
                seen = 0
                async for line in r.aiter_lines():
                    seen += line.startswith("data: ")
                    if seen >= 3:
                        return "disconnected"
            return "finished"

        normal = [request(client, body(p, 8), stream=False) for p in fault_prompts]
        quits = [quitter(p) for p in fault_prompts]
        results = await asyncio.gather(*normal, *quits)
        done = results[: len(fault_prompts)]
        out["disconnects"] = {"quitters": len(quits), "normal": len(normal),
                              "normal_identical": sum(r["status"] == 200 and r["text"] == reference[p]
                                                      for r, p in zip(done, fault_prompts))}
        bad = []
        for raw in (b'{"prompt": "x",', b"not json", b'{"prompt": 5}', b'{"max_tokens": "many"}', b"[]"):
            r = await client.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
            bad.append({"status": r.status_code, "openai_shape": set(r.json().get("error", {})) ==
                        {"message", "type", "param", "code"}})
        huge = await client.post("/v1/completions", json=body("word " * 20000, 8))
        bad.append({"status": huge.status_code, "openai_shape": "error" in huge.json(),
                    "message": huge.json()["error"]["message"]})
        out["bad_requests"] = bad
        flood_prompts = [fault_prompts[i % len(fault_prompts)] for i in range(200)]
        flood = await asyncio.gather(*(request(client, body(p, 8), stream=False) for p in flood_prompts))
        out["flood"] = {"sent": len(flood), "ok": sum(r["status"] == 200 for r in flood),
                        "rejected_429": sum(r["status"] == 429 for r in flood),
                        "other": sum(r["status"] not in (200, 429) for r in flood),
                        "ok_identical": sum(r["status"] == 200 and r["text"] == reference[p]
                                            for r, p in zip(flood, flood_prompts))}
    return out


def part_batched(url: str, *, quick: bool, rounds: int) -> dict[str, Any]:
    """Part 1: 16 greedy requests of 64 tokens one at a time, then all at once (interleaved rounds)."""
    acc = [body(p, 64) for p in prompts(4 if quick else 16)]
    seq, con = [], []
    for _ in range(rounds):
        seq.append(asyncio.run(run_set(url, acc, concurrency=1, stream=False)))
        con.append(asyncio.run(run_set(url, acc, concurrency=len(acc), stream=False)))
    same = all(s["texts"] == seq[0]["texts"] and s["not_ok"] == 0 for s in seq + con)
    seq_wall = statistics.median(s["wall_s"] for s in seq)
    con_wall = statistics.median(c["wall_s"] for c in con)
    print(f"{len(acc)} x 64 greedy: one at a time {seq_wall:.2f} s, all at once {con_wall:.2f} s, "
          f"{seq_wall / con_wall:.2f}x, identical: {same}", flush=True)
    return {"requests": len(acc), "max_tokens": 64, "sequential_wall_s": [s["wall_s"] for s in seq],
            "concurrent_wall_s": [c["wall_s"] for c in con], "sequential_wall_s_median": seq_wall,
            "concurrent_wall_s_median": con_wall, "speedup_median": seq_wall / con_wall,
            "identical_outputs": same, "target": ">= 3x", "met": seq_wall / con_wall >= 3 and same}


def part_load(url: str, *, quick: bool) -> dict[str, Any]:
    """Part 2: 1 / 4 / 16 / 64 clients, mixed lengths, streamed and not, against one at a time."""
    load = {}
    lengths = (16, 32, 64, 128)
    levels = (1, 4) if quick else (1, 4, 16, 64)
    every = [body(p, lengths[i % 4]) for i, p in enumerate(prompts(max(max(levels), 8), lo=40, hi=480))]
    # the requests one at a time, once: a level's baseline is its first requests' share of it
    single = asyncio.run(run_set(url, every, concurrency=1, stream=False, keep=True))
    for level in levels:
        bodies = every[: max(level, 8)]
        first = single["per_request"][: len(bodies)]
        seconds = sum(r["seconds"] for r in first)
        alone = {"requests": len(bodies), "seconds": seconds,
                 "tokens_per_s": sum(r["tokens"] for r in first) / seconds, "texts": [r["text"] for r in first]}
        row = {"alone": {k: v for k, v in alone.items() if k != "texts"}}
        for stream in (False, True):
            got = asyncio.run(run_set(url, bodies, concurrency=level, stream=stream))
            row["streamed" if stream else "whole"] = {
                **{k: v for k, v in got.items() if k not in ("texts", "statuses")},
                "identical_to_alone": got["texts"] == alone["texts"],
                "throughput_ratio": got["tokens_per_s"] / alone["tokens_per_s"]}
            print(f"{level:3d} clients {'stream' if stream else 'whole '}: {got['tokens_per_s']:7.1f} tok/s "
                  f"({got['tokens_per_s'] / alone['tokens_per_s']:.2f}x alone), ttft p50/p99 "
                  f"{got['ttft_p50_s']:.2f}/{got['ttft_p99_s']:.2f} s"
                  + (f", tpot p50/p99 {got['tpot_p50_ms']:.0f}/{got['tpot_p99_ms']:.0f} ms" if stream else "")
                  + f", not ok {got['not_ok']}, identical {got['texts'] == alone['texts']}", flush=True)
        load[str(level)] = row
    return load


def part_faults(url: str, pid: int, base_rss: float, *, quick: bool, rounds: int = 3) -> dict[str, Any]:
    """Part 3 (module docstring), `rounds` times, then: still serving, no rows left, and the
    resident memory after each round (caches fill in the first; a leak would grow every round)."""
    fault_prompts = prompts(8 if quick else 16, lo=40, hi=300)
    alone = asyncio.run(run_set(url, [body(p, 8) for p in fault_prompts], concurrency=1, stream=False))
    out: dict[str, Any] = {"rounds": [], "rss_mib_after_warmup": base_rss, "rss_mib_after_round": []}
    for _ in range(rounds):
        out["rounds"].append(asyncio.run(faults(url, dict(zip(fault_prompts, alone["texts"])), fault_prompts)))
        time.sleep(2)
        out["rss_mib_after_round"].append(rss_mib(pid))
    last = out["rounds"][-1]
    out.update({k: v for k, v in last.items()})  # the last round's figures at the top
    out["flood_total"] = {k: sum(r["flood"][k] for r in out["rounds"]) for k in last["flood"]}
    out["disconnects_total"] = {k: sum(r["disconnects"][k] for r in out["rounds"]) for k in last["disconnects"]}
    health = httpx.get(url + "/health", timeout=10).json()
    after = asyncio.run(run_set(url, [body(p, 8) for p in fault_prompts], concurrency=4, stream=False))
    out["after"] = {"health": health, "still_serving_identical": after["texts"] == alone["texts"]}
    print(json.dumps({k: v for k, v in out.items() if k != "rounds"}, indent=1), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="the server's torch threads (default 1)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of part 1 (default 2)")
    ap.add_argument("--quick", action="store_true", help="fewer requests (smoke run, nothing written)")
    ap.add_argument("--parts", default="batched,load,faults", help="which parts to run (default all three)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    parts = args.parts.split(",")
    before = machine()
    proc, url = start_server(args.threads, max_queue=64)
    result: dict[str, Any] = {"machine_before": before, "server_threads": args.threads, "model": "smollm2-135m"}
    try:
        asyncio.run(run_set(url, [body("import num", 8)], concurrency=1, stream=False))  # warm-up
        base_rss = rss_mib(proc.pid)
        if "batched" in parts:
            result["batched_vs_sequential"] = part_batched(url, quick=args.quick, rounds=args.rounds)
        if "load" in parts:
            result["load"] = part_load(url, quick=args.quick)
        if "faults" in parts:
            result["faults"] = part_faults(url, proc.pid, base_rss, quick=args.quick)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    result["machine_after"] = machine()
    result["cpus"] = before["cpus"]
    result["loadavg_before"], result["loadavg_after"] = before["loadavg"], result["machine_after"]["loadavg"]
    if not args.quick:
        write_atomic(args.out, json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
