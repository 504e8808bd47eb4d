"""The record of `make run`: the default title generator's test-set table, as the README quotes it.

`make run` trains the default title model into RUN_DIR (15 minutes) and evaluates it on the inews
test split; this script, its last step, gathers what those two commands wrote (RUN_DIR/train.json,
RUN_DIR/eval-inews-test.json) into benchmarks/results/make_run.json: the ROUGE / BLEU rows of the
model and the baselines, the training run (steps, best dev ROUGE-L), ten sample titles, the
commit, and the machine's load when training ended and around the evaluation.

    python benchmarks/make_run.py [RUN_DIR] [--out benchmarks/results/make_run.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from genloom.errors import UserError  # noqa: E402
from genloom.files import write_json_atomic  # noqa: E402


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing: run `make run` (title train, then title eval) first") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read it ({e})") from None


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes in src/" if dirty else "")


def record(run_dir: Path) -> dict:
    train, ev = _read(run_dir / "train.json"), _read(run_dir / "eval-inews-test.json")
    preds, refs = ev.get("predictions", []), ev.get("references", [])
    return {
        "benchmark": "make_run",
        "commands": ["genloom title train --corpus inews --out RUN_DIR --minutes 15 --force",
                     "genloom title eval --model RUN_DIR --split test --samples 10"],
        "commit": _commit(), "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "metric": "character ROUGE-1/2/L F1 and BLEU x 100 on the inews test split",
        "pairs": ev["pairs"], "rows": ev["rows"], "num_beams": ev["num_beams"],
        "repeated_4gram": ev["repeated_4gram"], "chars_per_s": ev["chars_per_s"],
        "train": train, "eval_machine": ev.get("machine"),
        "loaded": bool(train["machine_at_end"]["loaded"]
                       or any(m["loaded"] for m in (ev.get("machine") or {}).values())),
        "samples": [{"generated": p, "real": r} for p, r in list(zip(preds, refs))[:10]],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", nargs="?", default="runs/title-default", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "make_run.json")
    args = ap.parse_args(argv)
    try:
        rec = record(args.run_dir)
        write_json_atomic(args.out, rec)
    except KeyError as e:
        print(f"make_run: {args.run_dir}: a file of the run lacks the field {e}; rerun `make run`",
              file=sys.stderr)
        return 2
    except (UserError, OSError) as e:
        print(f"make_run: {e}", file=sys.stderr)
        return 2
    name, model = next(iter(rec["rows"].items()))
    print(f"make_run: {name} ROUGE-L {model['rouge-l']:.2f} on {rec['pairs']} test pairs "
          f"({rec['train']['steps']} steps; loaded: {rec['loaded']}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
