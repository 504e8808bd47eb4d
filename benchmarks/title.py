"""The title ablation of issue 5: rnn vs unilm, prior on/off, copy on/off, pre-training on/off.

Each variant is trained on inews train with the same time budget (--minutes; the pre-trained
variant spends --pretrain-minutes on the char LM first, stated separately), selected by dev
ROUGE-L, and evaluated on inews test with beam 3: char ROUGE-1/2/L F1, BLEU (sacrebleu zh), train
minutes, decode chars/s, and the share of titles with a repeated char 4-gram. The extractive
baselines (lead-24, best-sentence) are scored on the same pairs. Results go to
benchmarks/results/title.json after every variant (a long run keeps what it has finished).

    python benchmarks/title.py                      # all variants, 15 minutes each (~2.5 h)
    python benchmarks/title.py --minutes 3 --only rnn rnn-no-copy   # a quick look

Timings taken on a busy machine are pessimistic; the JSON records the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from genloom.data import corpus_pairs
from genloom.tasks.title.baselines import baseline_table
from genloom.tasks.title.config import TitleConfig
from genloom.tasks.title.evaluate import evaluate
from genloom.tasks.title.infer import load_title_model
from genloom.tasks.title.train import train

RESULTS = Path(__file__).resolve().parent / "results" / "title.json"

# variant name -> TitleConfig fields (besides the shared budget and seed)
VARIANTS: dict[str, dict] = {
    "rnn": {"arch": "rnn"},  # the default: prior + copy
    "rnn-no-prior": {"arch": "rnn", "prior": False},
    "rnn-no-copy": {"arch": "rnn", "copy": False},  # the post's model (prior only)
    "rnn-no-prior-no-copy": {"arch": "rnn", "prior": False, "copy": False},
    "unilm": {"arch": "unilm"},  # prior + copy, from scratch
    "unilm-no-copy": {"arch": "unilm", "copy": False},
    "unilm-pretrained": {"arch": "unilm", "pretrain_minutes": None},  # + LM first
    "unilm-zh-base": {"arch": "unilm", "init": None},  # started from genloom-zh-base (--zh-base DIR)
}


def _write(payload: dict) -> None:
    """Write the results, keeping rows that another process (`--only` splits) wrote meanwhile."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if RESULTS.is_file():
        current = json.loads(RESULTS.read_text(encoding="utf-8"))
        if current.get("pairs") == payload["pairs"]:
            for key in ("rows", "variants"):
                payload[key] = {**current.get(key, {}), **payload[key]}
    tmp = RESULTS.with_suffix(f".json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, RESULTS)


def _table(rows: dict[str, dict]) -> str:
    head = (f"{'variant':<22} {'R-1':>6} {'R-2':>6} {'R-L':>6} {'BLEU':>6} {'train min':>9} "
            f"{'chars/s':>8} {'rep-4g %':>8}")
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        lines.append(f"{name:<22} {r['rouge-1']:6.2f} {r['rouge-2']:6.2f} {r['rouge-l']:6.2f} "
                     f"{r['bleu']:6.2f} {r.get('train_minutes', 0):9.1f} "
                     f"{r.get('chars_per_s', 0):8.0f} {100 * r.get('repeated_4gram', 0):8.1f}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=15.0, help="training budget per variant")
    ap.add_argument("--pretrain-minutes", type=float, default=15.0,
                    help="char-LM pre-training of the pre-trained unilm variant")
    ap.add_argument("--only", nargs="*", default=None, choices=tuple(VARIANTS),
                    help="variants to run (default: all)")
    ap.add_argument("--test-limit", type=int, default=None, help="first N test pairs only")
    ap.add_argument("--runs", default="runs/title-ablation", help="where the models go")
    ap.add_argument("--reuse", action="store_true", help="evaluate models already trained there")
    ap.add_argument("--zh-base", metavar="DIR", help="unilm-zh-base: the genloom-zh-base model directory (or a "
                    "`genloom lm pretrain --snapshot` of a run in progress) the UniLM starts from")
    ap.add_argument("--lr", type=float, default=None,
                    help="peak learning rate of the variants run (default: the architecture's, TitleConfig)")
    ap.add_argument("--max-source-len", type=int, default=None,
                    help="articles cut to this many characters (default: TitleConfig's, 256)")
    ap.add_argument("--tag", default="", help="suffix of the rows and run folders of this run (e.g. 'cut214': "
                    "unilm-zh-base-cut214), so a rerun sits beside the row it is compared with")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--note", default=None, help="a remark stored in the JSON")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    train_pairs, dev_pairs = corpus_pairs("inews", "train"), corpus_pairs("inews", "dev")
    test = corpus_pairs("inews", "test")[: args.test_limit]
    old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    payload = {
        "claim": "issue 5 ablation on inews test (char ROUGE F1, BLEU zh, beam 3)",
        "pairs": len(test),  # an --only run keeps the budget of the others; its own is in its config
        "minutes_per_variant": old.get("minutes_per_variant", args.minutes)
        if args.only and old.get("pairs") == len(test) else args.minutes,
        "note": old.get("note") if args.only and old.get("pairs") == len(test) else args.note,
        "pretrain_minutes": old.get("pretrain_minutes", args.pretrain_minutes)
        if args.only and old.get("pairs") == len(test) and "unilm-pretrained" not in args.only
        else args.pretrain_minutes,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "threads": torch.get_num_threads(), "load_avg_start": os.getloadavg()},
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__},
        "rows": dict(old.get("rows", {})) if old.get("pairs") == len(test) else {},
        "variants": dict(old.get("variants", {})) if old.get("pairs") == len(test) else {},
    }
    payload["rows"].update(baseline_table(test))
    for name in args.only or list(VARIANTS):
        fields = dict(VARIANTS[name])
        if "pretrain_minutes" in fields:
            fields["pretrain_minutes"] = args.pretrain_minutes
        if "init" in fields:
            if not args.zh_base:
                ap.error(f"{name} needs --zh-base DIR")
            fields["init"] = args.zh_base
        if args.max_source_len is not None:
            fields["max_source_len"] = args.max_source_len
        cfg = TitleConfig(minutes=args.minutes, lr=args.lr, **fields)
        row_name = f"{name}-{args.tag}" if args.tag else name
        out = Path(args.runs) / row_name
        load0 = os.getloadavg()
        t0 = time.perf_counter()
        if args.reuse and (out / "title.json").is_file():
            tm, minutes, steps = load_title_model(out), None, None
        else:
            if out.exists():
                import shutil

                shutil.rmtree(out)
            tm, fitted = train(cfg, train_pairs=train_pairs, dev_pairs=dev_pairs, out_dir=out,
                               lm_texts=_lm_texts, log=lambda s: print(s, file=sys.stderr))
            minutes = (time.perf_counter() - t0) / 60
            steps = fitted.step
        res = evaluate(tm, test, baselines=False, progress=True)
        row = next(iter(res["rows"].values()))
        row.update({"train_minutes": minutes, "steps": steps, "chars_per_s": res["chars_per_s"],
                    "repeated_4gram": res["repeated_4gram"]})
        payload["rows"][row_name] = row
        payload["variants"][row_name] = {
            "config": asdict(tm.config), "load_avg": [load0, os.getloadavg()], "note": args.note,
            **({"init_snapshot": json.loads((Path(fields["init"]) / "snapshot.json").read_text())}
               if fields.get("init") and (Path(fields["init"]) / "snapshot.json").is_file() else {}),
            "parameters": sum(p.numel() for p in tm.model.parameters()),
            "dev_rouge_l": _dev_history(out),
            "samples": [{"generated": p, "real": t} for p, (_, t)
                        in list(zip(res["predictions"], test))[:10]]}
        _write(payload)
        print(_table({k: v for k, v in payload["rows"].items() if k in payload["variants"]}), flush=True)
    print(_table(payload["rows"]))
    return 0


def _dev_history(out: Path) -> list[dict]:
    """The run's dev ROUGE-L at each evaluation (its metrics.jsonl; empty for a --reuse'd model
    whose run files are gone)."""
    path = out / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()] if path.is_file() else []
    return [{"step": r["step"], "epoch": r.get("epoch"), "rouge-l": r["rouge-l"]} for r in rows
            if r.get("event") == "eval" and "rouge-l" in r]


def _lm_texts() -> list[str]:
    from genloom.data import chinese_lm_texts

    return chinese_lm_texts("train")


if __name__ == "__main__":
    raise SystemExit(main())
