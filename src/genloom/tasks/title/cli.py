"""`genloom title train|generate|eval`: the command line of the title task.

train: on a named corpus (inews: train split, dev split for selection) or on a user file of
pairs (--data; dev held out unless --dev-data); its flags are `TitleConfig`'s fields
(`genloom.cliargs.add_config_flags`), plus `--model-json` for the architecture preset's own fields.

generate reads one article per line, or JSONL objects (field --field, default "content"), from
`--input FILE` or stdin (`--input -`; the older positional FILE still works, one of the two must be
given), through `genloom.data.readers.read_items`, and writes one title per input line to stdout
(`--json`, alias `--jsonl`: one JSON line per input line, `cliargs.json_record`: {"id", "input":
the article, "output": the title, "line": n}; id is the JSONL record's "id" field, else n). Piped
input is answered as it arrives: lines already there are decoded together (up to --batch-size),
and each batch's titles are flushed before more input is waited for (`LineSource`,
`ready_batches`). A line that cannot be used (blank, bad JSON, missing field, invalid UTF-8) gets
a one-line error on stderr naming its line; plain output keeps the line alignment with an empty
line there, JSON output a record with "output": null and "error"; the run goes on and the exit
code is 1 if any line failed. Articles longer than the model's window are cut, with a warning
count. Beam width `--num-beams` (alias `--beams`), longest title `--max-new-tokens` (alias
`--max-title-len`), both defaulting to the model's.

eval: ROUGE / BLEU of the model's titles beside the baselines, `--num-beams` (alias `--beams`),
the table written to `--out DIR` (default: the model directory).

`--quiet` (every action): no progress bars and no progress lines on stderr (warnings and errors
are still printed).

`add_item_input`, `input_path` and `item_batches` are the input of every command that answers
items one per line (`summarize run` uses them too).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from genloom.cliargs import (add_common, add_config_flags, add_item_input, add_json, add_num_beams, beam_width,
                             check_outputs, config_from_args, input_path, json_record, learning_rate, length_penalty,
                             nonneg_float, nonneg_int, number, output_flag, positive_int, require, rows_int,
                             set_threads)
from genloom.data.readers import InputItem, item_batches
from genloom.errors import UserError
from genloom.machine import machine
from genloom.tasks.title.config import ARCHS, TitleConfig

# TitleConfig field -> help of its `title train` flag
TRAIN_FLAGS: dict[str, str] = {
    "arch": "model: rnn (BiLSTM seq2seq) or unilm (prefix-mask Transformer)",
    "prior": "the post's source-character prior",
    "copy": "pointer-generator copy",
    "minutes": "training time budget",
    "max_epochs": "optional epoch limit (default: no epoch limit)",
    "pretrain_minutes": "unilm: char-LM pre-training on all Chinese training text first",
    "init": "unilm: start from this pre-trained causal LM directory (genloom-zh-base's model/), taking its "
            "shape and characters (default: none, from scratch)",
    "max_source_len": "articles are cut to this many characters",
    "max_title_len": "longest title (longer training titles are cut)",
    "min_count": "rarer characters become <unk>",
    "gen_vocab": "rnn with copy: the generator covers this many most frequent characters (0: all)",
    "batch_size": "pairs per optimizer step",
    "warmup_steps": "linear warm-up steps",
    "dev_size": "dev pairs decoded at each evaluation",
    "eval_every": "steps between dev evaluations (0: each epoch)",
    "patience": "evaluations without improvement before stopping",
    "num_beams": "beam size saved for decoding",
    "no_repeat_ngram": "ban repeated char n-grams when decoding (0: off)",
    "length_penalty": "beam score = sum log p / length ** this",
}
_POSITIVE = ("max_epochs", "max_source_len", "max_title_len", "min_count", "batch_size", "dev_size", "num_beams",
             "patience")
TITLE_LEN = number(int, lo=1, hi=128)  # characters of a title (inews: <= 40; 256 took 39 s to decode on the test model)
# fields of the architecture presets the task sets itself (not --model-json's to change)
_TASK_SET = ("vocab_size", "pad_id", "bos_id", "eos_id", "prior", "copy", "pointer", "max_source_len",
             "max_target_len", "gen_vocab")


# ---- train --------------------------------------------------------------------------------------
def _pairs(args: argparse.Namespace, split: str) -> tuple[list, str]:
    from genloom.tasks.title.data import task_pairs

    return task_pairs(args.corpus, split, args.data, source=args.source, target=args.target, fmt=args.format)


def _model_overrides(text: str | None, arch: str) -> dict[str, Any] | None:
    """--model-json: a JSON object of preset overrides (parsed as data, never executed), each
    checked against the field of the architecture's config it names: sizes are integers >= 1,
    dropout a number in [0, 1), switches true/false; the width must split into the heads."""
    import dataclasses
    import math
    import typing

    if text is None:
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"--model-json is not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise UserError("--model-json must be a JSON object of model config fields")
    if arch == "rnn":
        from genloom.models.rnn_seq2seq import RNNSeq2SeqConfig as config_cls
    else:
        from genloom.models.unilm import UniLMSeq2SeqConfig as config_cls
    hints = typing.get_type_hints(config_cls)
    known = sorted(f.name for f in dataclasses.fields(config_cls) if f.name not in _TASK_SET)
    for key, value in obj.items():
        if key in _TASK_SET:
            raise UserError(f"--model-json: {key} is set by the task (use its flag, if any), not by --model-json")
        if key not in known:
            raise UserError(f"--model-json: the {arch} model has no field {key!r} (fields: {', '.join(known)})")
        kind = typing.get_args(hints[key]) or (hints[key],)
        ok = (value is None and type(None) in kind
              or bool in kind and isinstance(value, bool)
              or int in kind and type(value) is int and value >= 1
              or float in kind and type(value) in (int, float) and math.isfinite(value) and (
                  0 <= value < 1 if "dropout" in key else 0 < value <= 1 if key == "sparse_p" else value >= 0))
        if not ok:
            want = ("true or false" if bool in kind else "an integer >= 1" if int in kind
                    else "a number in [0, 1)" if "dropout" in key else "a number in (0, 1]" if key == "sparse_p"
                    else "a number >= 0")
            raise UserError(f"--model-json: {key} must be {want}, got {json.dumps(value)}")
    width, heads = obj.get("d_model"), obj.get("n_head")
    if width is not None or heads is not None:
        defaults = {f.name: f.default for f in dataclasses.fields(config_cls)}
        width, heads = width or defaults.get("d_model"), heads or defaults.get("n_head")
        require(width is None or heads is None or width % heads == 0,
                f"--model-json: d_model {width} is not a multiple of n_head {heads}")
    return obj


def run_train(args: argparse.Namespace) -> int:
    from genloom.data import chinese_lm_texts, read_pairs
    from genloom.tasks.title.data import hold_out
    from genloom.tasks.title.train import train
    from genloom.train.outdir import check_out

    out = Path(args.out)
    check_out(out, kind="title", force=args.force, resume=args.resume)  # before anything is read
    require(args.gen_vocab is None or args.gen_vocab == 0 or args.gen_vocab > 4,
            f"--gen-vocab must be 0 (the whole vocabulary) or above 4, got {args.gen_vocab}")
    config = config_from_args(TitleConfig, args, model=_model_overrides(args.model_json, args.arch))
    require(config.init is None or (Path(config.init) / "config.json").is_file(),
            f"--init {config.init} is not a model directory (no config.json)")
    set_threads(args.threads)
    train_pairs, what = _pairs(args, "train")
    if args.data is not None and args.dev_data is not None:
        dev_pairs = read_pairs(args.dev_data, source=args.source, target=args.target, fmt=args.format)
    elif args.data is not None:
        train_pairs, dev_pairs = hold_out(train_pairs, args.dev_size, seed=args.seed)
    else:
        dev_pairs, _ = _pairs(args, "dev")
    print(f"title: training on {what}: {len(train_pairs)} pairs", flush=True)
    t0 = time.perf_counter()
    train(config, train_pairs=train_pairs, dev_pairs=dev_pairs, out_dir=out,
          progress=not args.quiet, log=lambda s: print(s, file=sys.stderr, flush=True),
          lm_texts=lambda: chinese_lm_texts("train"), force=args.force, resume=args.resume)
    print(f"title: trained in {(time.perf_counter() - t0) / 60:.1f} minutes -> {out}", flush=True)
    return 0


# ---- generate -----------------------------------------------------------------------------------
def run_generate(args: argparse.Namespace) -> int:
    from genloom.tasks.title.infer import load_title_model

    path = input_path(args)
    check_outputs(args)
    failed = cut = total = 0
    first: str | None = None
    with item_batches(path, args.batch_size, fmt=args.format, field=args.field) as batches:
        tm = load_title_model(args.model)
        set_threads(args.threads)
        for batch in batches:
            f, c, t = _emit(tm, batch, args, sys.stdout)
            failed, cut, total = failed + f, cut + c, total + t
            first = first or next((item.text for item in batch if item.text), None)
    if total == 0 and failed == 0:
        raise UserError("no articles in the input")
    if cut:
        print(f"warning: {cut} of {total} articles were longer than {tm.config.max_source_len} "
              f"characters and were cut", file=sys.stderr)
    if args.explain and first is not None:
        from genloom.tasks.title.explain import explain

        path = explain(tm, first, args.explain)
        if not args.quiet:
            print(f"title: attention map of the first article -> {path}", file=sys.stderr)
    return 1 if failed else 0


def _emit(tm: Any, batch: list[InputItem], args: argparse.Namespace, out: IO[str]) -> tuple[int, int, int]:
    """Decode the good lines of a batch and print every line's result in order, then flush;
    returns (failed, cut, decoded)."""
    good = [item for item in batch if item.error is None]
    titles: dict[int, str] = {}
    cut = 0
    if good:
        articles = [item.text for item in good]
        _, cut = tm.sources(articles)
        preds = tm.generate(articles, num_beams=args.num_beams, max_new_tokens=args.max_new_tokens,
                            batch_size=args.batch_size)
        titles = {item.line: t for item, t in zip(good, preds)}
    failed = 0
    for item in batch:
        if item.error is not None:
            failed += 1
            out.flush()
            print(f"genloom: error: {item.error}", file=sys.stderr, flush=True)
        if args.json:
            extra = {} if item.error is None else {"error": item.error}
            print(json_record(item.id, item.text, titles.get(item.line), line=item.line, **extra), file=out)
        else:
            print(titles.get(item.line, ""), file=out)
    out.flush()
    return failed, cut, len(good)


# ---- eval ---------------------------------------------------------------------------------------
def run_eval(args: argparse.Namespace) -> int:
    from genloom.files import check_output
    from genloom.tasks.title.baselines import format_table
    from genloom.tasks.title.evaluate import evaluate, write_eval
    from genloom.tasks.title.infer import load_title_model

    out = Path(args.out) if args.out else Path(args.model)
    check_output(out, what="--out" if args.out else "--model", directory=True)  # the table goes there
    tm = load_title_model(args.model)
    set_threads(args.threads)
    pairs, what = _pairs(args, args.split)
    pairs = pairs[:args.limit] if args.limit else pairs
    before = machine()
    result = evaluate(tm, pairs, num_beams=args.num_beams, baselines=not args.no_baselines,
                      progress=not args.quiet)
    result["machine"] = {"before": before, "after": machine()}
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
    name = f"eval-{Path(args.data).stem if args.data else args.corpus + '-' + args.split}"
    payload = {**result, "source": what, "config": asdict(tm.config), "references": [t for _, t in pairs]}
    path = write_eval(payload, out, name, text)
    if not args.quiet:
        print(f"title: table written to {path}", file=sys.stderr)
    return 0


# ---- parser -------------------------------------------------------------------------------------
def add_pair_flags(p: argparse.ArgumentParser) -> None:
    """The fields and format of a --data file of (article, title) pairs."""
    p.add_argument("--source", default="content", help="field holding the article (default content)")
    p.add_argument("--target", default="title", help="field holding the title (default title)")
    p.add_argument("--format", default=None, choices=("jsonl", "csv", "tsv", "txt"),
                   help="format of --data (default: from the extension)")


def add_parser(subparsers: argparse._SubParsersAction, *, name: str, help: str
               ) -> argparse.ArgumentParser:
    """Register `genloom title` and its train / generate / eval sub-commands."""
    p = subparsers.add_parser(name, help=help, description=(
        "Article -> title generation: a char BiLSTM seq2seq with the post's prior and a "
        "pointer-generator copy (rnn), or a UniLM Transformer with the same copy (unilm)."))
    sub = p.add_subparsers(dest="title_command", metavar="ACTION", parser_class=type(p))
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    t = sub.add_parser("train", help="train a title model", description=(
        "Train on a named corpus (inews: train split, dev split for selection) or on your own "
        "pairs (--data; dev held out unless --dev-data). Checkpoints are chosen by dev ROUGE-L."))
    add_common(t, out="run and model directory", out_default="runs/title", force=True, quiet=True, seed=0,
               data=True, corpus="inews")
    add_pair_flags(t)
    t.add_argument("--dev-data", default=None, metavar="FILE", help="dev pairs for --data (default: none, a split of --data)")
    t.add_argument("--resume", action="store_true",
                   help="continue a stopped run in --out (same flags and data; --minutes, --max-epochs and "
                        "--patience may change)")
    add_config_flags(t, TitleConfig, TRAIN_FLAGS, choices={"arch": tuple(ARCHS)},
                     types_={"pretrain_minutes": nonneg_float, **{name: positive_int for name in _POSITIVE},
                             "num_beams": beam_width, "max_title_len": TITLE_LEN, "length_penalty": length_penalty})
    t.add_argument("--lr", type=learning_rate, default=None,
                   help="peak learning rate (default: 2e-3 for rnn, 1e-3 for unilm)")
    t.add_argument("--model-json", default=None, metavar="JSON",
                   help='overrides of the model preset, e.g. \'{"enc_hidden": 96}\' (default: none, the preset)')
    t.set_defaults(func=run_train)

    g = sub.add_parser("generate", help="titles for articles", description=(
        "Titles for articles read one per line (or JSONL) from --input FILE or stdin (--input -), "
        "each answered as it arrives."))
    add_item_input(g, "article")
    add_common(g, model="directory written by `title train`", quiet=True)
    add_json(g, "each input line's title")
    add_num_beams(g)
    g.add_argument("--max-new-tokens", "--max-title-len", dest="max_new_tokens", type=TITLE_LEN, default=None, metavar="N",
                   help="longest title in characters (default: the model's)")
    g.add_argument("--batch-size", type=rows_int, default=32,
                   help="articles decoded together (fewer when a pipe has no more yet)")
    output_flag(g, "--explain", default=None, metavar="PNG",
                   help="write the attention map of the first article and its title (default: none)")
    g.set_defaults(func=run_generate)

    e = sub.add_parser("eval", help="ROUGE / BLEU against the baselines", description=(
        "Char ROUGE-1/2/L F1 and BLEU of the model's titles beside lead-24 and best-sentence, "
        "on a corpus split or your pairs; the table is written to the model directory."))
    add_common(e, model="directory written by `title train`", quiet=True, data=True, corpus="inews")
    add_pair_flags(e)
    e.add_argument("--split", default="test", help="corpus split (default test)")
    add_num_beams(e)
    e.add_argument("--limit", type=positive_int, default=None, help="score the first N pairs only (default: all)")
    e.add_argument("--samples", type=nonneg_int, default=10, help="sample titles to print")
    e.add_argument("--no-baselines", action="store_true", help="skip lead-24 / best-sentence")
    output_flag(e, "--out", directory=True, default=None, help="where to write the table (default: --model)")
    e.set_defaults(func=run_eval)
    return p
