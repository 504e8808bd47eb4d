"""Rebuild the Chinese large-vocabulary LM that `benchmarks/heal.py` and `genloom continue` use.

    python benchmarks/build_zh_lm.py                      # models/zh-bpe-lm, 400 steps
    python benchmarks/build_zh_lm.py --minutes 3 --out models/zh-small   # a wall-clock budget instead

Trains a 32,768-id byte-level BPE on the Chinese corpora (train split) and a small causal
Transformer on it (genloom.tasks.lm.zh_lm), then saves the model directory.
On a shared machine run it in the background at low priority:
    nice -n 10 .venv/bin/python benchmarks/build_zh_lm.py > runs/zh-bpe-lm.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from genloom.cliargs import positive_float, positive_int
from genloom.errors import UserError
from genloom.tasks.lm.zh_lm import DEFAULT_DIR, ZhLMConfig, build


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=DEFAULT_DIR, help="model directory to (re)create")
    p.add_argument("--run-dir", default="runs/zh-bpe-lm", help="training run directory (metrics, curves)")
    p.add_argument("--max-steps", type=positive_int, default=ZhLMConfig.max_steps, help="optimizer steps")
    p.add_argument("--minutes", type=positive_float, help="a wall-clock training budget instead of --max-steps")
    p.add_argument("--vocab-size", type=positive_int, default=ZhLMConfig.vocab_size)
    p.add_argument("--resume", action="store_true", help="continue an interrupted build from --run-dir")
    args = p.parse_args(argv)
    cfg = ZhLMConfig(minutes=args.minutes, max_steps=args.max_steps, vocab_size=args.vocab_size)
    start = time.perf_counter()
    try:
        out = build(args.out, cfg, run_dir=args.run_dir, resume=args.resume)
    except UserError as e:
        print(f"build_zh_lm: error: {e}", file=sys.stderr)
        return 2
    summary = json.loads((Path(out) / "zh_lm.json").read_text(encoding="utf-8"))
    print(f"saved {out} in {time.perf_counter() - start:.0f} s: {summary['steps']} steps, "
          f"dev loss {summary['dev_loss']:.3f} (ppl {summary['dev_ppl']:.1f}), stop: {summary['stop_reason']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
