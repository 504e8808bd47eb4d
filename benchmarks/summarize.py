"""SPACES ablation on inews documents longer than the model window (issue 10).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/summarize.py --steps 1500

Two processes can share the rows (`--rows a,c --result A.json` beside `--rows e,c0,d --result
B.json`, same --out and --reuse so they share the cached extraction and pre-training); then
`benchmarks/summarize.py --merge A.json B.json` joins them into results/summarize.json.

Rows, all on the inews test documents whose text (clauses joined) exceeds the window, title as
the reference, every seq2seq of the same size trained for the same number of optimizer steps on
the same train documents (the wall time of each is reported beside it):

  (a) truncate: the first `window` characters, then generate (mode="truncate");
  (b) extract only: the extractor's best clause and what follows it, cut to the mean title length;
  (c) full pipeline: extract (k-fold extractor), then generate with B/I/O copy and Sparse Softmax;
  (d) (c) without copy (no copy head, no constrained decoding);
  (e) (c) without Sparse Softmax (plain cross-entropy, no top-k at decoding);
  plus (a) without Sparse Softmax (to compare truncation and extraction under either loss),
  (c) decoded without the copy constraint, (c) without the title task's pointer and prior (the
  post's model exactly; row key c0), and the extractor's recall of the aligned clauses.

Every generator row (but c0) has the title task's pointer-generator copy and prior in its output
layer (SummarizeConfig's default; see tasks/summarize_seq2seq.py for why), so "copy" in (d) is
the post's B/I/O copy.

Every seq2seq starts from one shared pre-training (`genloom.tasks.summarize.train.pretrain`: the
same Transformer as a causal char LM on the train documents and titles, --pretrain-steps),
standing in for the post's pretrained NEZHA (Sparse Softmax, the post says, underfits from scratch); --pretrain-steps 0
trains every row from scratch.

Scores: char ROUGE-1/2/L F1 and the CAIL weighting 0.2 R1 + 0.4 R2 + 0.4 RL on jieba words.
Writes benchmarks/results/summarize.json (machine, versions, settings, every figure, samples).
The extraction side (alignment, sentence encoder, cross-fitted extractor) is computed once and
shared by (c), (d), (e); each row's model directory stays under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from genloom.data import load_corpus  # noqa: E402
from genloom.files import write_json_atomic  # noqa: E402
from genloom.tasks.summarize.config import CONFIG_FILE, SummarizeConfig  # noqa: E402
from genloom.tasks.summarize.convert import extraction_labels, split_clauses  # noqa: E402
from genloom.tasks.summarize.evaluate import evaluate, score  # noqa: E402
from genloom.tasks.summarize.extract import CrossFit, Extractor, load_vectors, save_vectors  # noqa: E402
from genloom.tasks.summarize.pipeline import Summarizer, extracted_text, select_clauses, with_oracle  # noqa: E402
from genloom.tasks.summarize.train import TrainingExtraction, prepare_extraction, pretrain, train  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "summarize.json"
ROWS = {  # name -> (label, overrides of the pipeline config)
    "a": ("(a) truncate, then generate", {"mode": "truncate"}),
    "a0": ("(a) without sparse softmax", {"mode": "truncate", "sparse_k": None}),
    "c": ("(c) extract, then generate", {}),
    "d": ("(d) (c) without copy", {"copy": False}),
    "e": ("(e) (c) without sparse softmax", {"sparse_k": None}),
    "c0": ("(c) without pointer and prior (the post's model)", {"pointer": False, "prior": False}),
}


def long_pairs(split: str, window: int, max_clauses: int) -> list[tuple[str, str]]:
    """inews (content, title) pairs whose clause-joined content exceeds the window."""
    return [(r["content"], r["title"]) for r in load_corpus("inews", split)
            if len("".join(split_clauses(r["content"])[:max_clauses])) > window]


def save_extraction(ext: TrainingExtraction, directory: Path, n_docs: int, seconds: float) -> None:
    """Keep the shared extraction side on disk (labels, fold models, cross predictions) for --reuse."""
    ext.cross.extractor.save(directory / "extractor")
    save_vectors([p[:, None] for p in ext.cross.probabilities], directory / "cross_probabilities.safetensors")
    write_json_atomic(directory / "extraction.json", {
        "documents": n_docs, "seconds": seconds, "labels": ext.labels, "fold_of": ext.cross.fold_of,
        "trained_on": [sorted(s) for s in ext.cross.trained_on]})


def load_extraction(directory: Path, n_docs: int) -> tuple[TrainingExtraction, float] | None:
    """What `save_extraction` wrote, if it is there and covers the same number of documents."""
    meta_path = directory / "extraction.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta["documents"] != n_docs:
        return None
    probs = [p[:, 0] for p in load_vectors(directory / "cross_probabilities.safetensors")]
    cross = CrossFit(Extractor.load(directory / "extractor"), probs, meta["fold_of"],
                     [frozenset(s) for s in meta["trained_on"]])
    return TrainingExtraction(directory / "encoder", meta["labels"], cross), meta["seconds"]


def table(rows: dict[str, dict], *, width: int = 40, indent: str = "") -> str:
    """Score rows as text: char ROUGE-1/2/L, the CAIL weighting of the char figures (when the
    rows have it, "CAILc") and on jieba words ("CAIL"), steps and training seconds."""
    char = any("cail-char" in r["scores"] for r in rows.values())
    lines = [f"{indent}{'row':{width}s} {'R-1':>6s} {'R-2':>6s} {'R-L':>6s} " + ("  CAILc " if char else "")
             + f"{'CAIL':>6s} {'steps':>6s} {'train s':>8s}"]
    for name, r in rows.items():
        s = r["scores"]
        lines.append(f"{indent}{name:{width}s} {s['rouge-1']:6.2f} {s['rouge-2']:6.2f} {s['rouge-l']:6.2f} "
                     + (f"{s['cail-char']:7.2f} " if char else "") + f"{s['cail']:6.2f} "
                     f"{str(r.get('steps', '-')):>6s} {str(r.get('train_seconds', '-')):>8s}")
    return "\n".join(lines)


ORDER = ["(a) truncate, then generate", "(b) extract only", "(c) extract, then generate",
         "(c) decoded without the copy constraint", "(d) (c) without copy", "(e) (c) without sparse softmax",
         "(a) without sparse softmax", "(c) without pointer and prior (the post's model)",
         "(c) with oracle extraction at test (upper bound)"]
ORACLE = ORDER[-1]


def gains(rows: dict[str, dict]) -> tuple[float | None, float | None]:
    """ROUGE-L of (c) minus (a), and of (e) minus (a) without sparse softmax (None when missing)."""
    def rl(k: str) -> float | None:
        return rows[k]["scores"]["rouge-l"] if k in rows else None
    a, c, e, a0 = rl(ORDER[0]), rl(ORDER[2]), rl(ORDER[5]), rl(ORDER[6])
    return (None if a is None or c is None else round(c - a, 2),
            None if a0 is None or e is None else round(e - a0, 2))


def oracle_row(summ: Summarizer, pairs: list[tuple[str, str]], beams: int, sources: list[dict]) -> dict:
    """(c) with oracle extraction on the test documents (`sources`: `summ.sources` of them): the
    clauses aligned to the reference first, topped up by the extractor's predictions (how the
    seq2seq's oracle training sources are made). An upper bound of what a better extractor could
    give the same generator."""
    c = summ.config
    prepared = []
    for src, (_, ref) in zip(sources, pairs):
        p = dict(src)
        probs = with_oracle(p["probs"], extraction_labels(p["clauses"], ref))
        p["chosen"] = select_clauses(p["clauses"], probs, window=c.window, threshold=c.threshold, fill=c.fill)
        p["source"] = extracted_text(p["clauses"], p["chosen"], c.window)
        prepared.append(p)
    t0 = time.perf_counter()
    preds = [r["summary"] for r in summ.generate(prepared, num_beams=beams)]
    return {"scores": score(preds, [r for _, r in pairs]), "decode_seconds": round(time.perf_counter() - t0, 1),
            "note": "uses the references to extract: an upper bound, not a system"}


def merge(paths: list[str], out: str) -> int:
    """Join the rows of runs split by --rows (same settings but rows and result) into one file."""
    runs = [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
    key = [{k: v for k, v in r["settings"].items() if k not in ("rows", "result", "merge")} for r in runs]
    if any(k != key[0] for k in key[1:]):
        raise SystemExit("cannot merge: the runs' settings differ")
    merged = dict(runs[0])
    rows = {k: v for r in runs for k, v in r["rows"].items()}
    merged["rows"] = {k: rows[k] for k in ORDER if k in rows}
    merged["samples"] = {k: v for r in runs for k, v in r["samples"].items()}
    merged["extraction"] = next((r["extraction"] for r in runs if r["extraction"]["test_recall"]), runs[0]["extraction"])
    gain, gain_plain = gains(merged["rows"])
    merged.update({"pipeline_minus_truncate_rouge_l": gain, "acceptance_gain_ge_2": None if gain is None else gain >= 2.0,
                   "pipeline_minus_truncate_rouge_l_without_sparse": gain_plain,
                   "merged_from": [{"command": r["command"], "wall_seconds": r["wall_seconds"],
                                    "machine": r["machine"]} for r in runs]})
    write_json_atomic(out, merged)
    print(table(merged["rows"]))
    print(f"pipeline - truncate, ROUGE-L: {gain} (without sparse softmax: {gain_plain}); wrote {out}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/summarize-bench", help="row model directories go here")
    ap.add_argument("--window", type=int, default=64, help="seq2seq source window (characters)")
    ap.add_argument("--steps", type=int, default=1500, help="seq2seq optimizer steps of every row")
    ap.add_argument("--d-model", type=int, default=96)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--pretrain-steps", type=int, default=1500, help="shared char-LM pre-training (0: none)")
    ap.add_argument("--no-repeat-ngram", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--encoder", default=None, help="sentence encoder dir (default: train one)")
    ap.add_argument("--encoder-minutes", type=float, default=4.0)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--extract-epochs", type=int, default=3)
    ap.add_argument("--extract-hidden", type=int, default=64)
    ap.add_argument("--extract-position", type=int, default=0, help="extractor position features (0: none)")
    ap.add_argument("--limit-train", type=int, default=None, help="first N long train documents")
    ap.add_argument("--limit-test", type=int, default=None, help="first N long test documents")
    ap.add_argument("--beams", type=int, default=3)
    ap.add_argument("--rows", default="a,a0,c,d,e", help="which generator rows to train and score")
    ap.add_argument("--reuse", action="store_true", help="reuse row models already in --out")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--result", default=str(RESULT))
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="only join result files of runs split by --rows into --result, then exit")
    args = ap.parse_args()
    if args.merge:
        return merge(args.merge, args.result)
    torch.set_num_threads(args.threads)
    started, load_before = time.time(), os.getloadavg()
    out = Path(args.out)
    base = SummarizeConfig(
        window=args.window, max_target_len=32, max_clauses=128, encoder=args.encoder,
        encoder_minutes=args.encoder_minutes, folds=args.folds, extract_epochs=args.extract_epochs,
        extract_hidden=args.extract_hidden, extract_position=args.extract_position, d_model=args.d_model, n_layer=args.n_layer, n_head=4,
        d_ff=4 * args.d_model, vocab_max=4000, batch_size=args.batch_size, lr=args.lr, warmup_steps=100,
        steps=args.steps, minutes=None, ema_decay=0.995, num_beams=args.beams,
        no_repeat_ngram=args.no_repeat_ngram, seed=args.seed)
    train_pairs = long_pairs("train", args.window, base.max_clauses)[: args.limit_train]
    test_pairs = long_pairs("test", args.window, base.max_clauses)[: args.limit_test]
    print(f"{len(train_pairs)} train / {len(test_pairs)} test documents longer than {args.window} characters",
          flush=True)
    wanted = [r for r in args.rows.split(",") if r]
    unknown = [r for r in wanted if r not in ROWS]
    if unknown:
        ap.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")

    extraction, extraction_seconds, verified = None, None, None
    needs_extraction = [r for r in wanted if ROWS[r][1].get("mode", "pipeline") == "pipeline"
                        and not (args.reuse and (out / r / CONFIG_FILE).is_file())]
    if needs_extraction:
        t0 = time.perf_counter()
        cached = load_extraction(out / "extraction", len(train_pairs)) if args.reuse else None
        if cached is None:
            docs = [split_clauses(d)[: base.max_clauses] for d, _ in train_pairs]
            targets = [" ".join(t.split())[: base.max_target_len] for _, t in train_pairs]
            extraction = prepare_extraction(docs, targets, base, out=out / "extraction")
            extraction_seconds = round(time.perf_counter() - t0, 1)
            save_extraction(extraction, out / "extraction", len(train_pairs), extraction_seconds)
        else:
            extraction, extraction_seconds = cached
        cross = extraction.cross
        verified = all(i not in cross.trained_on[cross.fold_of[i]] for i in range(len(train_pairs)))
        if not verified:
            raise SystemExit("k-fold check failed: a document was labelled by a model trained on it")

    pretrain_seconds = None
    if args.pretrain_steps > 0:
        pre_dir = out / "pretrained"
        if not (args.reuse and (pre_dir / "config.json").is_file()):
            print("pre-training the shared seq2seq init ...", flush=True)
            t0 = time.perf_counter()
            pretrain(replace(base, pretrain_steps=args.pretrain_steps, pretrain_minutes=0.0), train_pairs, out=pre_dir)
            pretrain_seconds = round(time.perf_counter() - t0, 1)
            write_json_atomic(out / "pretrained.json", {"seconds": pretrain_seconds, "steps": args.pretrain_steps})
        elif (out / "pretrained.json").is_file():
            pretrain_seconds = json.loads((out / "pretrained.json").read_text())["seconds"]
        base = replace(base, init=str(pre_dir))

    rows: dict[str, dict] = {}
    samples: dict[str, list] = {}
    extraction_scores = None
    for key in wanted:
        label, overrides = ROWS[key]
        cfg = replace(base, **overrides)
        row_dir = out / key
        if not (args.reuse and (row_dir / CONFIG_FILE).is_file()):
            print(f"training {label} ...", flush=True)
            train(cfg, train_pairs, out=row_dir, extraction=extraction if cfg.mode == "pipeline" else None)
        summ = Summarizer.load(row_dir)
        print(f"evaluating {label} ...", flush=True)
        sources = summ.sources([d for d, _ in test_pairs])  # extracted once for every evaluation below
        res = evaluate(summ, test_pairs, num_beams=args.beams, prepared=sources)
        info = summ.info
        rows[label] = {"scores": res["rows"]["summarizer"], "steps": info.get("seq2seq_steps"),
                       "train_seconds": info.get("seq2seq_seconds"), "decode_seconds": res["decode_seconds"],
                       "parameters": info.get("parameters"), "config": asdict(cfg)}
        samples[label] = [{"reference": r, "prediction": p}
                          for (_, r), p in list(zip(test_pairs, res["predictions"]))[:8]]
        if key == "c":
            rows["(b) extract only"] = {"scores": res["rows"]["extract only"],
                                        "cut_to": summ.summary_length}
            extraction_scores = res["extraction"]
            no_copy = evaluate(summ, test_pairs, num_beams=args.beams, copy=False, prepared=sources)
            rows["(c) decoded without the copy constraint"] = {
                "scores": no_copy["rows"]["summarizer"], "steps": info.get("seq2seq_steps"),
                "train_seconds": info.get("seq2seq_seconds"), "decode_seconds": no_copy["decode_seconds"]}
            rows[ORACLE] = oracle_row(summ, test_pairs, args.beams, sources)
        print(table(rows), flush=True)

    rows = {k: rows[k] for k in ORDER if k in rows}
    gain, gain_plain = gains(rows)
    result = {
        "benchmark": "summarize", "issue": 10,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch_threads": args.threads, "load_average_before": load_before,
                    "load_average_after": os.getloadavg(),
                    "note": "shared 2-core machine; other jobs ran at the same time (see load averages)"},
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "data": {"corpus": "inews", "train_documents": len(train_pairs), "test_documents": len(test_pairs),
                 "filter": f"content (clauses joined) longer than {args.window} characters"},
        "settings": {**vars(args), "base_config": asdict(base)},
        "pretraining": {"steps": args.pretrain_steps, "seconds": pretrain_seconds},
        "extraction": {"seconds": extraction_seconds, "kfold_verified": verified,
                       "test_recall": extraction_scores},
        "rows": rows,
        "pipeline_minus_truncate_rouge_l": gain,
        "acceptance_gain_ge_2": None if gain is None else gain >= 2.0,
        "pipeline_minus_truncate_rouge_l_without_sparse": gain_plain,
        "samples": samples,
        "wall_seconds": round(time.time() - started, 1),
        "command": "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/summarize.py " + " ".join(sys.argv[1:]),
    }
    write_json_atomic(args.result, result)
    print(table(rows))
    if extraction_scores:
        t = extraction_scores["threshold"]
        print(f"extractor on test: recall {t['recall']:.1f}% precision {t['precision']:.1f}% of the aligned clauses "
              f"(threshold {base.threshold}); window recall {extraction_scores['window']['recall']:.1f}%")
    print(f"pipeline - truncate, ROUGE-L: {gain} (without sparse softmax: {gain_plain})")
    print(f"wrote {args.result}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
