"""Which size of genloom-zh-base learns most per CPU-hour: short pilot runs of each size on one
thread, compared by training loss at equal elapsed time (the stream is read once, so training
loss is loss on text the model has not seen yet; the EMA dev figures of a run this short still
sit near the initial weights and say nothing).

    python benchmarks/zh_base_pilot.py [--minutes 10] [--out runs/zh-pilot] [--reuse]

Each size runs `genloom lm pretrain --tokenizer char --minutes M --threads 1 --warmup-steps 30
--eval-every 100000` (the steps planned to fit M minutes, so every schedule ends; one evaluation
at the end) in its own directory under --out; --reuse reads runs that are already there instead.
Prints a table (training loss at 2, 4, ... minutes) and writes benchmarks/results/zh_base_pilot.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = {"4x256": (4, 4, 256, 1024), "6x384": (6, 6, 384, 1536)}  # layers, heads, width, feed-forward


def run_size(name: str, out: Path, minutes: float) -> None:
    layers, heads, width, ff = SIZES[name]
    argv = [sys.executable, "-m", "genloom.cli", "lm", "pretrain", "--tokenizer", "char", "--out", str(out),
            "--n-layer", str(layers), "--n-head", str(heads), "--d-model", str(width), "--d-ff", str(ff),
            "--minutes", str(minutes), "--threads", "1", "--warmup-steps", "30", "--eval-every", "100000",
            "--quiet", "--force"]
    subprocess.run(argv, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def curve(run: Path, marks: list[float]) -> dict[str, object]:
    """Training loss (and step) at each elapsed second of `marks`, and the mean tokens/s."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["event"] == "train"]
    at = {}
    for t in marks:
        seen = [r for r in train if r["time"] <= t]
        if seen:
            at[str(int(t))] = {"loss": round(seen[-1]["loss"], 4), "step": seen[-1]["step"]}
    params = json.loads((run / "zh_base.json").read_text()).get("parameters")
    return {"loss_at_seconds": at, "tokens_per_s": round(sum(r["tokens_per_s"] for r in train) / len(train), 1),
            "parameters": params}


def main() -> int:
    from genloom.machine import machine

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training minutes of each pilot")
    parser.add_argument("--out", default="runs/zh-pilot", help="where the pilot runs go")
    parser.add_argument("--reuse", action="store_true", help="read the runs already under --out")
    args = parser.parse_args()
    before = machine()
    marks = [60.0 * m for m in range(2, int(args.minutes) + 1, 2)]
    result = {"minutes": args.minutes, "threads": 1, "tokenizer": "char", "machine_before": before,
              "load_avg_before": before["loadavg"], "sizes": {}}
    for name in SIZES:
        run = Path(args.out) / f"{name}-{args.minutes:g}"
        if not args.reuse:
            run_size(name, run, args.minutes)
        result["sizes"][name] = curve(run, marks)
    after = machine()
    result["machine"], result["load_avg_after"] = after, after["loadavg"]
    print(f"{'size':8s} {'tokens/s':>9s} " + " ".join(f"{int(t // 60):>2d} min loss@step" for t in marks))
    for name, row in result["sizes"].items():
        cells = [row["loss_at_seconds"].get(str(int(t))) for t in marks]
        print(f"{name:8s} {row['tokens_per_s']:9.0f} " + " ".join(
            f"{c['loss']:9.2f}@{c['step']:<5d}" if c else " " * 15 for c in cells))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "zh_base_pilot.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS / 'zh_base_pilot.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
