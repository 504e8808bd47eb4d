"""`genloom title train|generate|eval`: the command line of the title task (tasks/title.py).

generate reads one article per line, or JSONL objects (field --field, default "content"), from a
file or stdin (`-`), and writes one title per input line to stdout (`--json`: one JSON object per
line, {"line": n, "title": ...}). A line that cannot be used (empty article, bad JSON, missing
field, invalid UTF-8) gets a one-line error on stderr naming its line; plain output keeps the
line alignment with an empty line there, JSON output skips it; the run goes on and the exit code
is 1 if any line failed. Articles longer than the model's window are cut, with a warning count.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from genloom.errors import UserError

FORMATS = ("auto", "lines", "jsonl")


def _threads(n: int | None) -> None:
    """--threads: torch's intra-op threads (torch is imported only when a command runs)."""
    if n:
        import torch

        torch.set_num_threads(n)


# ---- train --------------------------------------------------------------------------------------
def _pairs_for(args: argparse.Namespace, split: str) -> tuple[list, str]:
    from genloom.tasks.title_data import corpus_pairs, file_pairs

    if args.data is not None:
        if args.corpus is not None:
            raise UserError("give either --corpus or --data, not both")
        pairs = file_pairs(args.data, source=args.source, target=args.target, fmt=args.format)
        return pairs, f"{args.data} ({args.source} -> {args.target})"
    name = args.corpus or "inews"
    return corpus_pairs(name, split), f"{name} {split}"


def run_train(args: argparse.Namespace) -> int:
    from genloom.data import chinese_lm_texts
    from genloom.tasks.title import TITLE_FILE, TitleConfig, train
    from genloom.tasks.title_data import file_pairs, hold_out

    out = Path(args.out)
    if (out / TITLE_FILE).exists() and not args.force:
        raise UserError(f"{out} already holds a title model; pass --force to replace it or "
                        f"choose another --out")
    if args.force:
        _clear_run(out)
    config = TitleConfig(
        arch=args.arch, prior=args.prior, copy=args.copy, max_source_len=args.max_source_len,
        max_title_len=args.max_title_len, min_count=args.min_count, batch_size=args.batch_size,
        lr=args.lr, minutes=args.minutes, max_epochs=args.max_epochs,
        pretrain_minutes=args.pretrain_minutes, dev_size=args.dev_size, eval_every=args.eval_every,
        patience=args.patience, num_beams=args.beams, no_repeat_ngram=args.no_repeat_ngram,
        seed=args.seed, model=_model_overrides(args.model_json))
    _threads(args.threads)
    train_pairs, what = _pairs_for(args, "train")
    if args.data is not None and args.dev_data is not None:
        dev_pairs = file_pairs(args.dev_data, source=args.source, target=args.target, fmt=args.format)
    elif args.data is not None:
        train_pairs, dev_pairs = hold_out(train_pairs, args.dev_size, seed=args.seed)
    else:
        dev_pairs, _ = _pairs_for(args, "dev")
    print(f"title: training on {what}: {len(train_pairs)} pairs", flush=True)
    t0 = time.perf_counter()
    train(config, train_pairs=train_pairs, dev_pairs=dev_pairs, out_dir=out,
          progress=not args.quiet, log=lambda s: print(s, file=sys.stderr, flush=True),
          lm_texts=lambda: chinese_lm_texts("train"))
    print(f"title: trained in {(time.perf_counter() - t0) / 60:.1f} minutes -> {out}", flush=True)
    return 0


def _model_overrides(text: str | None) -> dict[str, Any] | None:
    """--model-json: a JSON object of preset overrides (parsed as data, never executed)."""
    if text is None:
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"--model-json is not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise UserError("--model-json must be a JSON object of model config fields")
    return obj


def _clear_run(out: Path) -> None:
    """Remove what a previous `title train` wrote into `out` (only those files)."""
    import shutil

    for name in ("model", "checkpoints", "pretrain"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in ("title.json", "config.json", "metrics.jsonl", "curves.png"):
        (out / name).unlink(missing_ok=True)


# ---- generate -----------------------------------------------------------------------------------
def _open(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    p = Path(path)
    if not p.is_file():
        raise UserError(f"no such file: {path}")
    return open(p, "rb")


def read_articles(stream: IO[bytes], *, fmt: str, field: str, name: str = "input"
                  ) -> Iterator[tuple[int, str | None, str | None]]:
    """(line number, article or None, error or None) for each line of `stream`.

    fmt "auto" picks "jsonl" when the first non-blank line is a JSON object, else "lines".
    """
    mode = None if fmt == "auto" else fmt
    for n, raw in enumerate(stream, start=1):
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as e:
            yield n, None, f"{name}:{n}: invalid UTF-8 (byte 0x{raw[e.start]:02x})"
            continue
        if n == 1:
            line = line.removeprefix("\ufeff")
        if mode is None and line.strip():
            mode = "jsonl" if _json_object(line) is not None else "lines"
        if mode == "jsonl":
            if not line.strip():
                yield n, None, f"{name}:{n}: empty line (expected a JSON object)"
                continue
            obj = _json_object(line)
            if obj is None:
                yield n, None, f"{name}:{n}: not a JSON object"
            elif not isinstance(obj.get(field), str):
                yield n, None, f"{name}:{n}: field {field!r} is missing or not a string"
            elif not obj[field].strip():
                yield n, None, f"{name}:{n}: empty article"
            else:
                yield n, obj[field], None
        elif not line.strip():
            yield n, None, f"{name}:{n}: empty article"
        else:
            yield n, line, None


def _json_object(line: str) -> dict | None:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def run_generate(args: argparse.Namespace) -> int:
    from genloom.tasks.title import load_title_model

    if args.beams is not None and args.beams < 1:
        raise UserError(f"--beams must be at least 1, got {args.beams}")
    stream = _open(args.input)
    tm = load_title_model(args.model)
    _threads(args.threads)
    failed = cut = total = 0
    first: str | None = None
    out = sys.stdout
    try:
        chunk: list[tuple[int, str | None, str | None]] = []
        lines = read_articles(stream, fmt=args.format, field=args.field,
                              name="stdin" if args.input == "-" else args.input)
        for item in lines:
            chunk.append(item)
            if len(chunk) == args.batch_size:
                f, c, t = _emit(tm, chunk, args, out)
                failed, cut, total = failed + f, cut + c, total + t
                first = first or next((a for _, a, _ in chunk if a), None)
                chunk = []
        if chunk:
            f, c, t = _emit(tm, chunk, args, out)
            failed, cut, total = failed + f, cut + c, total + t
            first = first or next((a for _, a, _ in chunk if a), None)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    if total == 0 and failed == 0:
        raise UserError("no articles in the input")
    if cut:
        print(f"warning: {cut} of {total} articles were longer than {tm.config.max_source_len} "
              f"characters and were cut", file=sys.stderr)
    if args.explain and first is not None:
        from genloom.tasks.title_decode import explain

        path = explain(tm, first, args.explain)
        print(f"title: attention map of the first article -> {path}", file=sys.stderr)
    return 1 if failed else 0


def _emit(tm: Any, chunk: list, args: argparse.Namespace, out: IO[str]) -> tuple[int, int, int]:
    """Decode the good lines of a chunk and print every line's result in order;
    returns (failed, cut, decoded)."""
    good = [(n, a) for n, a, err in chunk if err is None]
    titles: dict[int, str] = {}
    cut = 0
    if good:
        _, cut = tm.sources([a for _, a in good])
        preds = tm.generate([a for _, a in good], num_beams=args.beams,
                            max_new_tokens=args.max_title_len)
        titles = {n: t for (n, _), t in zip(good, preds)}
    failed = 0
    for n, _, err in chunk:
        if err is not None:
            failed += 1
            out.flush()
            print(f"genloom: error: {err}", file=sys.stderr, flush=True)
            if not args.json:
                print("", file=out)
        elif args.json:
            print(json.dumps({"line": n, "title": titles[n]}, ensure_ascii=False), file=out)
        else:
            print(titles[n], file=out)
    out.flush()
    return failed, cut, len(good)


# ---- eval ---------------------------------------------------------------------------------------
def run_eval(args: argparse.Namespace) -> int:
    from genloom.tasks.baselines import format_table
    from genloom.tasks.title import evaluate, load_title_model, write_eval

    if args.beams is not None and args.beams < 1:
        raise UserError(f"--beams must be at least 1, got {args.beams}")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, got {args.limit}")
    tm = load_title_model(args.model)
    _threads(args.threads)
    pairs, what = _pairs_for(args, args.split)
    pairs = pairs[:args.limit] if args.limit else pairs
    result = evaluate(tm, pairs, num_beams=args.beams, baselines=not args.no_baselines,
                      progress=not args.quiet)
    lines = [f"title eval on {what}: {len(pairs)} pairs", format_table(result["rows"], n=len(pairs)),
             f"repeated 4-gram: {100 * result['repeated_4gram']:.1f}% of generated titles; decoding "
             f"{result['chars_per_s']:.0f} chars/s (beam {result['num_beams']}, "
             f"{result['decode_seconds']:.1f} s)"]
    if result["truncated"]:
        lines.append(f"warning: {result['truncated']} of {len(pairs)} articles were cut to "
                     f"{tm.config.max_source_len} characters")
    if args.samples:
        lines.append("")
        lines.append("samples (generated | real):")
        for (_, title), pred in list(zip(pairs, result["predictions"]))[:args.samples]:
            lines.append(f"  {pred}  |  {title}")
    text = "\n".join(lines)
    print(text)
    out = Path(args.out) if args.out else Path(args.model)
    name = f"eval-{Path(args.data).stem if args.data else (args.corpus or 'inews') + '-' + args.split}"
    payload = {**{k: v for k, v in result.items()}, "source": what, "config": asdict(tm.config),
               "references": [t for _, t in pairs]}
    path = write_eval(payload, out, name, text)
    print(f"title: table written to {path}", file=sys.stderr)
    return 0


# ---- parser -------------------------------------------------------------------------------------
def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", default=None, help="named corpus with titles (default: inews)")
    p.add_argument("--data", default=None, metavar="FILE",
                   help="user pairs: .jsonl, .csv, .tsv or .txt (tab-separated)")
    p.add_argument("--source", default="content", help="field holding the article (default content)")
    p.add_argument("--target", default="title", help="field holding the title (default title)")
    p.add_argument("--format", default=None, choices=("jsonl", "csv", "tsv", "txt"),
                   help="format of --data (default: from the extension)")


def add_parser(subparsers: argparse._SubParsersAction, *, name: str, help: str
               ) -> argparse.ArgumentParser:
    """Register `genloom title` and its train / generate / eval sub-commands."""
    from genloom.tasks.title import ARCHS, TitleConfig

    d = TitleConfig()
    p = subparsers.add_parser(name, help=help, description=(
        "Article -> title generation: a char BiLSTM seq2seq with the post's prior and a "
        "pointer-generator copy (rnn), or a UniLM Transformer with the same copy (unilm)."))
    sub = p.add_subparsers(dest="title_command", metavar="ACTION", parser_class=type(p))
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    t = sub.add_parser("train", help="train a title model", description=(
        "Train on a named corpus (inews: train split, dev split for selection) or on your own "
        "pairs (--data; dev held out unless --dev-data). Checkpoints are chosen by dev ROUGE-L."))
    _data_args(t)
    t.add_argument("--dev-data", default=None, metavar="FILE", help="dev pairs for --data")
    t.add_argument("--arch", default=d.arch, choices=tuple(ARCHS), help="model (default rnn)")
    t.add_argument("--prior", action=argparse.BooleanOptionalAction, default=d.prior,
                   help="the post's source-character prior (default on)")
    t.add_argument("--copy", action=argparse.BooleanOptionalAction, default=d.copy,
                   help="pointer-generator copy (default on)")
    t.add_argument("--minutes", type=float, default=d.minutes, help="training time budget")
    t.add_argument("--max-epochs", type=int, default=None, help="optional epoch limit")
    t.add_argument("--pretrain-minutes", type=float, default=0.0,
                   help="unilm: char-LM pre-training on all Chinese training text first")
    t.add_argument("--max-source-len", type=int, default=d.max_source_len,
                   help="articles are cut to this many characters")
    t.add_argument("--max-title-len", type=int, default=d.max_title_len)
    t.add_argument("--min-count", type=int, default=d.min_count,
                   help="rarer characters become <unk>")
    t.add_argument("--batch-size", type=int, default=d.batch_size)
    t.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: 2e-3 for rnn, 1e-3 for unilm)")
    t.add_argument("--dev-size", type=int, default=d.dev_size,
                   help="dev pairs decoded at each evaluation")
    t.add_argument("--eval-every", type=int, default=d.eval_every,
                   help="steps between dev evaluations (0: each epoch)")
    t.add_argument("--patience", type=int, default=d.patience,
                   help="evaluations without improvement before stopping")
    t.add_argument("--beams", type=int, default=d.num_beams, help="beam size saved for decoding")
    t.add_argument("--no-repeat-ngram", type=int, default=d.no_repeat_ngram,
                   help="ban repeated char n-grams when decoding (0: off)")
    t.add_argument("--model-json", default=None, metavar="JSON",
                   help='overrides of the model preset, e.g. \'{"enc_hidden": 96}\'')
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.add_argument("--out", default="runs/title", help="run and model directory")
    t.add_argument("--force", action="store_true", help="replace a model already in --out")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=run_train)

    g = sub.add_parser("generate", help="titles for articles", description=(
        "Titles for articles read one per line (or JSONL) from FILE or stdin."))
    g.add_argument("input", nargs="?", default="-", help="file of articles, - for stdin")
    g.add_argument("--model", required=True, help="directory written by `title train`")
    g.add_argument("--format", default="auto", choices=FORMATS,
                   help="lines, jsonl, or auto (JSONL if the first line is a JSON object)")
    g.add_argument("--field", default="content", help="JSONL field holding the article")
    g.add_argument("--json", action="store_true", help="write JSON lines {line, title}")
    g.add_argument("--beams", type=int, default=None, help="beam size (default: the model's)")
    g.add_argument("--max-title-len", type=int, default=None, help="longest title")
    g.add_argument("--batch-size", type=int, default=32, help="articles decoded together")
    g.add_argument("--explain", default=None, metavar="PNG",
                   help="write the attention map of the first article and its title")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g.set_defaults(func=run_generate)

    e = sub.add_parser("eval", help="ROUGE / BLEU against the baselines", description=(
        "Char ROUGE-1/2/L F1 and BLEU of the model's titles beside lead-24 and best-sentence, "
        "on a corpus split or your pairs; the table is written to the model directory."))
    _data_args(e)
    e.add_argument("--model", required=True, help="directory written by `title train`")
    e.add_argument("--split", default="test", help="corpus split (default test)")
    e.add_argument("--beams", type=int, default=None, help="beam size (default: the model's)")
    e.add_argument("--limit", type=int, default=None, help="score the first N pairs only")
    e.add_argument("--samples", type=int, default=10, help="sample titles to print")
    e.add_argument("--no-baselines", action="store_true", help="skip lead-24 / best-sentence")
    e.add_argument("--out", default=None, help="where to write the table (default: --model)")
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=run_eval)
    return p
