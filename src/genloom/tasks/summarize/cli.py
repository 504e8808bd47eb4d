"""`genloom summarize train|run|eval`: the command line of the SPACES summarizer.

train: on the inews documents longer than the window (title as the summary) or on a user file of
(document, summary) pairs (--data, JSONL/CSV/TSV/TXT with named fields); its flags are
`SummarizeConfig`'s fields (`genloom.cliargs.add_config_flags`).

run: summaries of documents read one per line or as JSONL (--field) from `--input FILE` or stdin
(`--input -`; the older positional FILE still works, one of the two must be given), one summary
line per document on stdout or, atomically at the end, in `--out FILE` (alias `--output`). Piped
input is answered as it arrives (the documents already there are summarized together, up to
--batch-size, and flushed before more input is waited for: `genloom.tasks.title.cli.item_batches`).
The first line that cannot be used (blank, bad JSON, missing field, invalid UTF-8) ends the run
with a one-line error naming it and exit 2; summaries of earlier batches already printed stay,
--out is not written. `--json` (alias `--jsonl`): one JSON line per document,
`cliargs.json_record`: {"id", "input": the document, "output": the summary}; id is the JSONL
record's "id" field, else the line number. `--explain` prints the same JSON lines with the source
the seq2seq read ("source") and the extracted clauses with their probabilities ("extracted").

eval: char ROUGE-1/2/L and the CAIL word score of the summarizer and of extract-only, plus the
extractor's recall of the aligned clauses, on the documents longer than the window; every figure
and prediction as JSON in `--out FILE` (alias `--output`).

run and eval decode with `--num-beams` (alias `--beams`; default: the model's); `--quiet` on every
action: no progress bars or progress lines on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from genloom.cliargs import (add_common, add_config_flags, add_item_input, add_json, add_num_beams, beam_width,
                             check_outputs, config_from_args, decay, input_path, json_record, learning_rate,
                             nonneg_float, output_flag, positive_float, positive_int, probability, require, rows_int,
                             set_threads, unit_fraction)
from genloom.data.readers import item_batches
from genloom.errors import UserError
from genloom.tasks.summarize.config import MODES, SummarizeConfig, parse_features

def _feature_list(text: str) -> str:
    """--extract-features: a comma list of FEATURES, checked where parsed."""
    try:
        return ",".join(parse_features(text))
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# SummarizeConfig field -> help of its `summarize train` flag
TRAIN_FLAGS: dict[str, str] = {
    "mode": "pipeline (extract, then generate) or truncate (first window characters, then generate)",
    "window": "source characters the seq2seq reads",
    "max_target_len": "longest summary (characters)",
    "max_clauses": "clauses of a document considered (the first ones)",
    "threshold": "extractor probability above which a clause is extracted",
    "fill": "fill the window with the next most probable clauses",
    "oracle_rate": "chance a training source is the oracle extraction",
    "encoder": "sentence encoder directory (bidirectional genloom Transformer); default: train one",
    "encoder_minutes": "training minutes of that encoder",
    "folds": "k of the extractor's cross-prediction",
    "extract_epochs": "epochs of each extractor fold model",
    "extract_hidden": "DGCNN width",
    "extract_position": "clause-position features of the extractor (first k positions one-hot; 0: none, the post)",
    "extract_features": "the extractor's clause features, a comma list of encoder (the post's sentence vectors), "
                        "centroid (similarity to the document's centroid, TextRank degree, length), tfidf (jieba "
                        "tf-idf LSA vectors), titlewords (how much of the clause summaries reuse, learnt from "
                        "the training pairs)",
    "tfidf_dim": "LSA width of the tfidf features",
    "extract_density": "fill the window by probability / length ** this (0: by probability, the post)",
    "init": "start the seq2seq from this pre-trained directory (summarize.train.pretrain) (default: none, from scratch)",
    "pretrain_minutes": "without --init: pre-train the seq2seq as a char LM this many minutes first",
    "d_model": "seq2seq width", "n_layer": "seq2seq blocks", "n_head": "seq2seq heads",
    "d_ff": "seq2seq feed-forward width", "dropout": "seq2seq dropout",
    "copy": "B/I/O copy head and copy-constrained decoding",
    "copy_weight": "weight of the copy loss",
    "pointer": "the title task's pointer-generator copy in the seq2seq's output",
    "prior": "the title task's source-character prior in the seq2seq's output",
    "sparse_k": "Sparse Softmax top-k in training and decoding (0: plain softmax)",
    "sparse_p": "Sparse Softmax top-p instead of top-k (with --sparse-k 0) (default: none, top-k)",
    "source_noise": "share of source characters replaced at random in training",
    "min_count": "characters rarer than this become <unk>", "vocab_max": "most vocabulary ids",
    "batch_size": "seq2seq batch", "lr": "seq2seq learning rate", "warmup_steps": "seq2seq warm-up steps",
    "steps": "seq2seq optimizer steps (default: bounded by --minutes)",
    "minutes": "seq2seq training minutes (0: bounded by --steps only)", "ema_decay": "EMA decay of the seq2seq weights",
    "num_beams": "beam size saved for summarizing",
    "no_repeat_ngram": "ban repeated character n-grams of this size when summarizing (0: off)",
}
_TYPES = {"oracle_rate": probability, "source_noise": probability, "dropout": decay, "sparse_p": unit_fraction,
          "threshold": decay, "ema_decay": decay, "lr": learning_rate, "encoder_minutes": positive_float,
          "pretrain_minutes": nonneg_float, "extract_features": _feature_list, "minutes": nonneg_float,
          "extract_density": nonneg_float,
          "copy_weight": nonneg_float,
          **{name: positive_int for name in (
              "window", "max_target_len", "max_clauses", "folds", "batch_size", "vocab_max", "steps",
              "extract_epochs", "extract_hidden", "d_model", "n_layer", "n_head", "d_ff", "tfidf_dim")},
          "num_beams": beam_width}


def _check_train_flags(args: argparse.Namespace) -> None:
    """The flags of `summarize train` against each other and the directories they name, before
    the minutes of encoder and extractor training."""
    require(args.d_model % args.n_head == 0, f"--d-model {args.d_model} is not a multiple of --n-head {args.n_head}")
    require(args.sparse_p is None or not args.sparse_k,
            f"--sparse-p applies with --sparse-k 0 only (--sparse-k is {args.sparse_k})")
    require(args.init is None or not args.pretrain_minutes,
            "--pretrain-minutes pre-trains a new seq2seq; --init starts from one already trained: pass one")
    for flag, path in (("--encoder", args.encoder), ("--init", args.init)):
        require(path is None or Path(path, "config.json").is_file(), f"{flag} {path} is not a model directory")


def _pairs(args: argparse.Namespace, split: str) -> tuple[list[tuple[str, str]], str]:
    """(document, summary) pairs from --data or the named corpus."""
    from genloom.data import corpus_pairs, read_pairs

    if args.data is not None:
        return read_pairs(args.data, source=args.source, target=args.target, fmt=args.format), args.data
    return corpus_pairs(args.corpus, split), f"{args.corpus} {split}"


def _long(pairs: list[tuple[str, str]], min_chars: int, max_clauses: int) -> list[tuple[str, str]]:
    """Pairs whose document (clauses joined, as the pipeline reads it) has at least min_chars characters."""
    from genloom.tasks.summarize.convert import split_clauses

    return [(d, s) for d, s in pairs if len("".join(split_clauses(d)[:max_clauses])) >= min_chars]


def _write(path: str, text: str) -> None:
    from genloom.files import write_atomic

    write_atomic(path, text, what="--out")


# ---- train ----------------------------------------------------------------------------------------
def run_train(args: argparse.Namespace) -> int:
    from genloom.tasks.summarize.train import train

    from genloom.train.outdir import check_out

    _check_train_flags(args)
    out = Path(args.out)
    check_out(out, kind="summarize", force=args.force, resume=args.resume)  # before anything is read
    config = config_from_args(SummarizeConfig, args, sparse_k=args.sparse_k or None, minutes=args.minutes or None)
    set_threads(args.threads)
    pairs, what = _pairs(args, "train")
    min_chars = config.window + 1 if args.min_chars is None else args.min_chars
    pairs = _long(pairs, min_chars, config.max_clauses)
    if args.limit:
        pairs = pairs[: args.limit]
    if len(pairs) < config.folds:
        raise UserError(f"only {len(pairs)} training documents of at least {min_chars} characters in {what}")
    print(f"summarize: training on {len(pairs)} documents of {what} with >= {min_chars} characters", file=sys.stderr)
    summarizer = train(config, pairs, out=out, progress=not args.quiet, force=args.force, resume=args.resume)
    print(f"summarize: saved to {out} ({json.dumps(summarizer.info)})", file=sys.stderr)
    return 0


# ---- run ------------------------------------------------------------------------------------------
def run_run(args: argparse.Namespace) -> int:
    from genloom.tasks.summarize.pipeline import Summarizer

    path = input_path(args)
    check_outputs(args)
    kept: list[str] = []  # the text of --out, written once every document is summarized
    count = 0
    with item_batches(path, args.batch_size, fmt=args.format, field=args.field) as batches:
        summarizer = Summarizer.load(args.model)
        set_threads(args.threads)
        for batch in batches:
            bad = next((item.error for item in batch if item.error is not None), None)
            if bad is not None:
                raise UserError(bad)
            rows = summarizer.summarize([item.text for item in batch], num_beams=args.num_beams,
                                        copy=False if args.no_copy else None, explain=args.explain,
                                        batch_size=args.batch_size)
            if args.explain or args.json:
                text = "".join(json_record(item.id, item.text, row.pop("summary"), **row) + "\n"
                               for item, row in zip(batch, rows))
            else:
                text = "".join(row["summary"] + "\n" for row in rows)
            count += len(batch)
            if args.out:
                kept.append(text)
            else:
                sys.stdout.write(text)
                sys.stdout.flush()
    if count == 0:
        raise UserError(f"no input in {'stdin' if path == '-' else path}")
    if args.out:
        _write(args.out, "".join(kept))
    return 0


# ---- eval -----------------------------------------------------------------------------------------
def run_eval(args: argparse.Namespace) -> int:
    from genloom.tasks.summarize.evaluate import evaluate, format_rows
    from genloom.tasks.summarize.pipeline import Summarizer

    check_outputs(args)
    summarizer = Summarizer.load(args.model)
    set_threads(args.threads)
    pairs, what = _pairs(args, args.split)
    min_chars = summarizer.config.window + 1 if args.min_chars is None else args.min_chars
    pairs = _long(pairs, min_chars, summarizer.config.max_clauses)[: args.limit]
    if not pairs:
        raise UserError(f"no documents of at least {min_chars} characters in {what}")
    result = evaluate(summarizer, pairs, num_beams=args.num_beams, copy=False if args.no_copy else None)
    lines = [f"summarize eval on {what}: {len(pairs)} documents with >= {min_chars} characters",
             format_rows(result["rows"])]
    if "extraction" in result:
        t, w = result["extraction"]["threshold"], result["extraction"]["window"]
        lines.append(f"extractor vs aligned clauses: recall {t['recall']:.1f}% precision {t['precision']:.1f}% "
                     f"above threshold; recall {w['recall']:.1f}% within the filled window")
    lines.append(f"decoding: {result['decode_seconds']} s")
    print("\n".join(lines))
    if args.out:
        payload = {**result, "source": what, "config": asdict(summarizer.config), "info": summarizer.info,
                   "references": [r for _, r in pairs]}
        _write(args.out, json.dumps(payload, ensure_ascii=False, indent=1) + "\n")
    return 0


# ---- parser ---------------------------------------------------------------------------------------
def _data_flags(p: argparse.ArgumentParser) -> None:
    add_common(p, data=True, corpus="inews")
    p.add_argument("--source", default="content", help="field holding the document (default content)")
    p.add_argument("--target", default="title", help="field holding the summary (default title)")
    p.add_argument("--format", default=None, choices=("jsonl", "csv", "tsv", "txt"),
                   help="format of --data (default: from the extension)")
    p.add_argument("--min-chars", type=positive_int, default=None,
                   help="use documents with at least this many characters (default: window + 1)")


def _decode_flags(p: argparse.ArgumentParser) -> None:
    add_common(p, model="directory written by `summarize train`", threads=False, quiet=True)
    add_num_beams(p)
    p.add_argument("--no-copy", action="store_true", help="decode without the copy constraint")


def add_parser(subparsers: argparse._SubParsersAction, *, name: str, help: str) -> argparse.ArgumentParser:
    """Register `genloom summarize` and its train / run / eval sub-commands."""
    p = subparsers.add_parser(name, help=help, description=(
        "SPACES extract-then-generate summarization of documents longer than the model window: "
        "a DGCNN clause extractor over frozen sentence vectors, then a UniLM with B/I/O copy and "
        "Sparse Softmax."))
    sub = p.add_subparsers(dest="summarize_command", metavar="ACTION", parser_class=type(p))
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    t = sub.add_parser("train", help="train a summarizer", description=(
        "Train the extractor (k-fold) and the seq2seq on the train split's long documents, or on --data."))
    _data_flags(t)
    add_common(t, out="the summarizer directory", out_default="runs/summarize", force=True, quiet=True, seed=0,
               threads=False)
    add_config_flags(t, SummarizeConfig, TRAIN_FLAGS, types_=_TYPES, choices={"mode": MODES})
    t.add_argument("--limit", type=positive_int, default=None, help="train on the first N long documents only (default: all)")
    t.add_argument("--resume", action="store_true", help="continue a stopped run in --out (same flags and data)")
    t.set_defaults(func=run_train)

    r = sub.add_parser("run", help="summarize documents", description=(
        "Summaries of documents read one per line (or JSONL) from --input FILE or stdin (--input -), "
        "each answered as it arrives."))
    add_item_input(r, "document")
    _decode_flags(r)
    add_common(r)
    r.add_argument("--batch-size", type=rows_int, default=32,
                   help="documents summarized together (fewer when a pipe has no more yet)")
    r.add_argument("--explain", action="store_true",
                   help="JSON lines as --json, with the source read and the extracted clauses")
    add_json(r, "each document's summary")
    output_flag(r, "--out", "--output", default=None,
                help="write here (atomically, once every document is summarized) instead of stdout (default: stdout)")
    r.set_defaults(func=run_run)

    e = sub.add_parser("eval", help="ROUGE / CAIL of the summarizer and extract-only", description=(
        "Char ROUGE-1/2/L F1 and the CAIL word score on the long documents of a split or of --data."))
    _data_flags(e)
    _decode_flags(e)
    e.add_argument("--split", default="test", help="corpus split (default test)")
    e.add_argument("--limit", type=positive_int, default=None, help="score the first N long documents only (default: all)")
    output_flag(e, "--out", "--output", default=None, help="write every figure and prediction as JSON here (default: printed only)")
    e.set_defaults(func=run_eval)
    return p
