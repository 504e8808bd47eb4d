"""`genloom summarize train|run|eval`: the command line of tasks/summarize.py.

train: on the inews documents longer than the window (title as the summary) or on a user file of
(document, summary) pairs (--data, JSONL/CSV/TSV/TXT with named fields). run: summaries of
documents read one per line or as JSONL (--field) from a file or stdin; `--explain` adds the
source the seq2seq read and the extracted clauses with their probabilities (JSON lines). eval:
char ROUGE-1/2/L and the CAIL word score of the summarizer and of extract-only, plus the
extractor's recall of the aligned clauses, on the documents longer than the window.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import asdict, fields
from pathlib import Path
from typing import IO, Any

from genloom.errors import UserError

FORMATS = ("auto", "lines", "jsonl")


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def _pairs(args: argparse.Namespace, split: str) -> tuple[list[tuple[str, str]], str]:
    """(document, summary) pairs from --data or the named corpus."""
    if args.data is not None:
        from genloom.data import read_pairs

        pairs = read_pairs(args.data, source=args.source_field, target=args.target_field, fmt=args.data_format)
        return pairs, args.data
    from genloom.data import corpus_info, load_corpus

    info = corpus_info(args.corpus)
    if not {"content", "title"} <= set(info.fields):
        raise UserError(f"corpus {args.corpus!r} has no (content, title) pairs; use inews or --data FILE")
    return [(r["content"], r["title"]) for r in load_corpus(args.corpus, split)], f"{args.corpus} {split}"


def _long(pairs: list[tuple[str, str]], min_chars: int, max_clauses: int) -> list[tuple[str, str]]:
    """Pairs whose document (clauses joined, as the pipeline reads it) has at least min_chars characters."""
    from genloom.tasks.summarize_convert import split_clauses

    return [(d, s) for d, s in pairs if len("".join(split_clauses(d)[:max_clauses])) >= min_chars]


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- train ----------------------------------------------------------------------------------------
_TRAIN_FLAGS: dict[str, str] = {  # SummarizeConfig field -> help
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
    "init": "start the seq2seq from this pre-trained directory (summarize.pretrain)",
    "pretrain_minutes": "without --init: pre-train the seq2seq as a char LM this many minutes first",
    "d_model": "seq2seq width", "n_layer": "seq2seq blocks", "n_head": "seq2seq heads",
    "d_ff": "seq2seq feed-forward width", "dropout": "seq2seq dropout",
    "copy": "B/I/O copy head and copy-constrained decoding",
    "copy_weight": "weight of the copy loss",
    "pointer": "the title task's pointer-generator copy in the seq2seq's output",
    "prior": "the title task's source-character prior in the seq2seq's output",
    "sparse_k": "Sparse Softmax top-k in training and decoding (0: plain softmax)",
    "sparse_p": "Sparse Softmax top-p instead of top-k (with --sparse-k 0)",
    "source_noise": "share of source characters replaced at random in training",
    "min_count": "characters rarer than this become <unk>", "vocab_max": "most vocabulary ids",
    "batch_size": "seq2seq batch", "lr": "seq2seq learning rate", "warmup_steps": "seq2seq warm-up steps",
    "steps": "seq2seq optimizer steps (default: bounded by --minutes)",
    "minutes": "seq2seq training minutes (0: bounded by --steps only)", "ema_decay": "EMA decay of the seq2seq weights",
    "num_beams": "beam size saved for summarizing", "seed": "seed of every random choice",
    "no_repeat_ngram": "ban repeated character n-grams of this size when summarizing (0: off)",
}


def _config_from(args: argparse.Namespace) -> Any:
    from genloom.tasks.summarize import SummarizeConfig

    values = {name: getattr(args, name) for name in _TRAIN_FLAGS}
    if values["sparse_k"] == 0:
        values["sparse_k"] = None
    if values["minutes"] == 0:
        values["minutes"] = None
    return SummarizeConfig(**values)


def run_train(args: argparse.Namespace) -> int:
    from genloom.tasks.summarize import CONFIG_FILE, train

    out = Path(args.out)
    if (out / CONFIG_FILE).exists() and not args.force:
        raise UserError(f"{out} already holds a summarizer; pass --force to replace it or choose another --out")
    config = _config_from(args)
    _threads(args.threads)
    pairs, what = _pairs(args, "train")
    min_chars = config.window + 1 if args.min_chars is None else args.min_chars
    pairs = _long(pairs, min_chars, config.max_clauses)
    if args.limit:
        pairs = pairs[: args.limit]
    if len(pairs) < config.folds:
        raise UserError(f"only {len(pairs)} training documents of at least {min_chars} characters in {what}")
    print(f"summarize: training on {len(pairs)} documents of {what} with >= {min_chars} characters", file=sys.stderr)
    summarizer = train(config, pairs, out=out, progress=not args.quiet)
    print(f"summarize: saved to {out} ({json.dumps(summarizer.info)})", file=sys.stderr)
    return 0


# ---- run ------------------------------------------------------------------------------------------
def _documents(stream: IO[bytes], *, fmt: str, field: str, name: str) -> list[str]:
    """Documents read one per line or as JSONL objects; any bad line is a UserError naming it."""
    docs, mode = [], None if fmt == "auto" else fmt
    for n, raw in enumerate(stream, start=1):
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as e:
            raise UserError(f"{name}:{n}: invalid UTF-8 (byte 0x{raw[e.start]:02x})") from None
        line = line.removeprefix("\ufeff") if n == 1 else line
        if not line.strip():
            continue
        if mode is None:
            mode = "jsonl" if line.lstrip().startswith("{") else "lines"
        if mode == "lines":
            docs.append(line)
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{name}:{n}: not a JSON object") from None
        if not isinstance(obj, dict) or not isinstance(obj.get(field), str) or not obj[field].strip():
            raise UserError(f"{name}:{n}: field {field!r} is missing, empty or not a string")
        docs.append(obj[field])
    if not docs:
        raise UserError(f"no documents in {name}")
    return docs


def run_run(args: argparse.Namespace) -> int:
    from genloom.tasks.summarize import Summarizer

    if args.beams is not None and args.beams < 1:
        raise UserError(f"--beams must be at least 1, got {args.beams}")
    if args.input == "-":
        docs = _documents(sys.stdin.buffer, fmt=args.format, field=args.field, name="stdin")
    else:
        path = Path(args.input)
        if not path.is_file():
            raise UserError(f"no such file: {args.input}")
        with open(path, "rb") as f:
            docs = _documents(f, fmt=args.format, field=args.field, name=args.input)
    summarizer = Summarizer.load(args.model)
    _threads(args.threads)
    rows = summarizer.summarize(docs, num_beams=args.beams, copy=False if args.no_copy else None,
                                explain=args.explain)
    if args.explain or args.json:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    else:
        text = "".join(r["summary"] + "\n" for r in rows)
    if args.output:
        _write_atomic(Path(args.output), text)
    else:
        sys.stdout.write(text)
    return 0


# ---- eval -----------------------------------------------------------------------------------------
def format_rows(rows: dict[str, dict[str, float]]) -> str:
    """A plain table of score rows: ROUGE-1/2/L (char) and CAIL (words)."""
    lines = [f"{'':28s} {'R-1':>6s} {'R-2':>6s} {'R-L':>6s} {'CAIL':>6s}"]
    for name, r in rows.items():
        lines.append(f"{name:28s} {r['rouge-1']:6.2f} {r['rouge-2']:6.2f} {r['rouge-l']:6.2f} {r['cail']:6.2f}")
    return "\n".join(lines)


def run_eval(args: argparse.Namespace) -> int:
    from genloom.tasks.summarize import Summarizer, evaluate

    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, got {args.limit}")
    summarizer = Summarizer.load(args.model)
    _threads(args.threads)
    pairs, what = _pairs(args, args.split)
    min_chars = summarizer.config.window + 1 if args.min_chars is None else args.min_chars
    pairs = _long(pairs, min_chars, summarizer.config.max_clauses)[: args.limit]
    if not pairs:
        raise UserError(f"no documents of at least {min_chars} characters in {what}")
    result = evaluate(summarizer, pairs, num_beams=args.beams, copy=False if args.no_copy else None)
    lines = [f"summarize eval on {what}: {len(pairs)} documents with >= {min_chars} characters",
             format_rows(result["rows"])]
    if "extraction" in result:
        t, w = result["extraction"]["threshold"], result["extraction"]["window"]
        lines.append(f"extractor vs aligned clauses: recall {t['recall']:.1f}% precision {t['precision']:.1f}% "
                     f"above threshold; recall {w['recall']:.1f}% within the filled window")
    lines.append(f"decoding: {result['decode_seconds']} s")
    print("\n".join(lines))
    if args.output:
        payload = {**result, "source": what, "config": asdict(summarizer.config), "info": summarizer.info,
                   "references": [r for _, r in pairs]}
        _write_atomic(Path(args.output), json.dumps(payload, ensure_ascii=False, indent=1) + "\n")
    return 0


# ---- parser ---------------------------------------------------------------------------------------
def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", default="inews", help="named corpus with (content, title) (default inews)")
    p.add_argument("--data", default=None, metavar="FILE", help="user pairs: .jsonl, .csv, .tsv or .txt")
    p.add_argument("--source-field", default="content", help="field holding the document (default content)")
    p.add_argument("--target-field", default="title", help="field holding the summary (default title)")
    p.add_argument("--data-format", default=None, choices=("jsonl", "csv", "tsv", "txt"),
                   help="format of --data (default: from the extension)")
    p.add_argument("--min-chars", type=int, default=None,
                   help="use documents with at least this many characters (default: window + 1)")


def add_parser(subparsers: argparse._SubParsersAction, *, name: str, help: str) -> argparse.ArgumentParser:
    """Register `genloom summarize` and its train / run / eval sub-commands."""
    from genloom.tasks.summarize import MODES, SummarizeConfig

    defaults = SummarizeConfig()
    p = subparsers.add_parser(name, help=help, description=(
        "SPACES extract-then-generate summarization of documents longer than the model window: "
        "a DGCNN clause extractor over frozen sentence vectors, then a UniLM with B/I/O copy and "
        "Sparse Softmax."))
    sub = p.add_subparsers(dest="summarize_command", metavar="ACTION", parser_class=type(p))
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    t = sub.add_parser("train", help="train a summarizer", description=(
        "Train the extractor (k-fold) and the seq2seq on the train split's long documents, or on --data."))
    _data_args(t)
    kinds = {f.name: f for f in fields(SummarizeConfig)}
    for field_name, text in _TRAIN_FLAGS.items():
        default = getattr(defaults, field_name)
        flag = "--" + field_name.replace("_", "-")
        if isinstance(default, bool):
            t.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                           help=f"{text} (default {default})")
        elif field_name == "mode":
            t.add_argument(flag, default=default, choices=MODES, help=text)
        elif field_name in ("encoder", "init"):
            t.add_argument(flag, default=default, metavar="DIR", help=text)
        elif "float" in str(kinds[field_name].type):
            t.add_argument(flag, type=float, default=default, help=f"{text} (default {default})")
        else:
            t.add_argument(flag, type=int, default=default, help=f"{text} (default {default})")
    t.add_argument("--limit", type=int, default=None, help="train on the first N long documents only")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.add_argument("--out", default="runs/summarize", help="the summarizer directory")
    t.add_argument("--force", action="store_true", help="replace a summarizer already in --out")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=run_train)

    r = sub.add_parser("run", help="summarize documents", description=(
        "Summaries of documents read one per line (or JSONL) from FILE or stdin."))
    r.add_argument("input", nargs="?", default="-", help="file of documents, - for stdin")
    r.add_argument("--model", required=True, help="directory written by `summarize train`")
    r.add_argument("--format", default="auto", choices=FORMATS, help="lines, jsonl, or auto")
    r.add_argument("--field", default="content", help="JSONL field holding the document")
    r.add_argument("--explain", action="store_true", help="JSON lines with the source read and the extracted clauses")
    r.add_argument("--json", action="store_true", help="JSON lines {summary}")
    r.add_argument("--beams", type=int, default=None, help="beam size (default: the model's)")
    r.add_argument("--no-copy", action="store_true", help="decode without the copy constraint")
    r.add_argument("--output", default=None, help="write here (atomically) instead of stdout")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    r.set_defaults(func=run_run)

    e = sub.add_parser("eval", help="ROUGE / CAIL of the summarizer and extract-only", description=(
        "Char ROUGE-1/2/L F1 and the CAIL word score on the long documents of a split or of --data."))
    _data_args(e)
    e.add_argument("--model", required=True, help="directory written by `summarize train`")
    e.add_argument("--split", default="test", help="corpus split (default test)")
    e.add_argument("--limit", type=int, default=None, help="score the first N long documents only")
    e.add_argument("--beams", type=int, default=None, help="beam size (default: the model's)")
    e.add_argument("--no-copy", action="store_true", help="decode without the copy constraint")
    e.add_argument("--output", default=None, help="write every figure and prediction as JSON here")
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    e.set_defaults(func=run_eval)
    return p
