"""`genloom lm pretrain`: the parser of the genloom-zh-base pre-training (tasks/lm/pretrain.py).

    genloom lm pretrain --tokenizer char --steps 60000              # a first launch
    genloom lm pretrain --tokenizer char --resume --minutes 120     # go on for two more hours
    genloom lm pretrain --tokenizer bpe --minutes 30 --out DIR      # the 32k BPE variant
    genloom lm pretrain --out DIR --snapshot runs/base-now          # try a run in progress
    genloom lm pretrain --reverse --steps 16000                     # the backward (right-to-left) LM
    genloom lm pretrain --reverse --steps 3000 --init runs/base-s6  # ... warm-started from the forward's

Every number is checked where it is parsed; the flags are checked against each other and --out
before the corpora are read. The run directory's flag is `--out` (dest `out_dir`: a training
run's directory, checked by `pretrain.check_out`, not an output file of `cliargs.output_flag`).
"""

from __future__ import annotations

import argparse
from typing import Any

from genloom.cliargs import add_common, number, positive_float, positive_int, require, set_threads

HELPS = {  # settings of PretrainConfig with a flag (their defaults are the dataclass's)
    "vocab_size": "bpe: ids in all",
    "char_min_count": "char: characters seen fewer times become <unk>",
    "n_layer": "Transformer blocks",
    "n_head": "attention heads",
    "d_model": "residual width",
    "d_ff": "feed-forward width",
    "seq_len": "tokens per training block, the model's context",
    "batch_size": "blocks per optimizer step",
    "lr": "peak AdamW learning rate",
    "warmup_steps": "linear warm-up steps",
    "eval_every": "optimizer steps between dev evaluations",
    "eval_blocks": "dev blocks per source in each evaluation (a finished run's report: all)",
    "ckpt_every": "optimizer steps between checkpoints",
}
# settings a first launch fixes for the run (a resumed launch may repeat them, never change them)
SET_ONCE = (*HELPS, "tokenizer", "steps", "seed", "reverse", "init")
SIZE = number(int, lo=1, hi=65536)  # widths, heads, layers, block length: larger ones only exhaust memory
TYPES = {"vocab_size": number(int, lo=260, hi=1 << 20), "char_min_count": positive_int,
         "n_layer": number(int, lo=1, hi=256), "n_head": SIZE, "d_model": SIZE, "d_ff": SIZE, "seq_len": SIZE,
         "batch_size": number(int, lo=1, hi=4096),
         "lr": number(float, lo=0, hi=1, lo_open=True), "warmup_steps": number(int, lo=0, what="an integer >= 0"),
         "eval_every": positive_int, "eval_blocks": positive_int, "ckpt_every": positive_int}


def run(args: argparse.Namespace) -> int:
    from genloom.tasks.lm.pretrain import PretrainConfig, check_out, default_out, pretrain, snapshot

    if args.snapshot is not None:
        given = [f"--{n.replace('_', '-')}" for n in [*SET_ONCE, "minutes"]
                 if getattr(args, n) is not None] + ["--resume"] * args.resume
        require(not given, f"--snapshot only reads --out's newest checkpoint; drop {', '.join(given)}")
        done = snapshot(args.out_dir or default_out("char"), args.snapshot, force=args.force)
        print(f"step {done['step']} of {done['steps']} (EMA weights) -> {done['dest']}")
        return 0
    asked = {name for name in SET_ONCE if getattr(args, name) is not None}
    values = {name: getattr(args, name) for name in asked}
    require(args.resume or args.steps is not None or args.minutes is not None,
            "give --steps or --minutes (or both): the run would never stop")
    config = PretrainConfig(**values, minutes=args.minutes, progress=not args.quiet)
    out = args.out_dir or default_out(config.tokenizer, config.reverse)
    check_out(out, resume=args.resume, force=args.force)  # before the corpora are read
    set_threads(args.threads)
    summary = pretrain(out, config, resume=args.resume, force=args.force, asked=asked)
    state = "finished" if summary["finished"] else f"stopped ({summary['stop_reason']}); continue with --resume"
    kind = summary["config"]["tokenizer"] + (", backward" if summary["config"]["reverse"] else "")
    print(f"genloom-zh-base ({kind}): step {summary['step']} of {summary['steps']}, "
          f"{state}; dev loss {summary['dev_loss']:.4f} -> {out}/model (dev_ppl.json, curves.png)")
    return 0


def _pretrain_parser(p: argparse.ArgumentParser) -> None:
    from genloom.tasks.lm.pretrain import TOKENIZERS, PretrainConfig

    defaults = PretrainConfig()

    p.add_argument("--tokenizer", choices=TOKENIZERS, help="characters, or a byte-level BPE (default char)")
    p.add_argument("--out", dest="out_dir", metavar="DIR",
                   help="the run and model directory (default models/genloom-zh-base-TOKENIZER, with -backward "
                   "for --reverse; git-ignored)")
    p.add_argument("--reverse", action="store_const", const=True, default=None,
                   help="train the backward LM: every text read right to left (default: off, left to right)")
    p.add_argument("--init", metavar="DIR", help="first launch: start from the weights and tokenizer of this genloom "
                   "model directory of the same shape (e.g. the forward run's snapshot for --reverse) "
                   "(default: none, random weights and a tokenizer trained on the stream)")
    p.add_argument("--steps", type=positive_int, help="optimizer steps of the whole run (the schedule's length) (default: none, planned from --minutes)")
    p.add_argument("--minutes", type=positive_float,
                   help="training minutes of this launch (alone, on a first launch: steps planned to fit them) (default: no time limit)")
    p.add_argument("--resume", action="store_true", help="continue --out from its last checkpoint, bit-exactly")
    p.add_argument("--force", action="store_true", help="delete the genloom lm pretrain run in --out and start over "
                   "(with --snapshot: replace DIR)")
    p.add_argument("--snapshot", metavar="DIR", help="write the EMA weights of --out's newest checkpoint to DIR as a "
                   "model directory and stop, training nothing (default: none, train)")
    for name, text in HELPS.items():  # default None: on --resume, a flag given is checked against the first launch
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=TYPES[name], default=None,
                       help=f"{text} (default {getattr(defaults, name):g})")
    add_common(p, threads=True, quiet=True)
    p.add_argument("--seed", type=number(int, lo=0, what="an integer >= 0"), default=None,
                   help="seed of the init and the batch order (default 0)")
    p.set_defaults(func=run)


def add_parser(subparsers: Any, *, name: str, help: str) -> argparse.ArgumentParser:
    """Register `genloom lm pretrain`."""
    p = subparsers.add_parser(name, help=help, description=help)
    sub = p.add_subparsers(dest="lm_command", metavar="{pretrain}", parser_class=type(p))
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])
    _pretrain_parser(sub.add_parser("pretrain", help="pre-train genloom-zh-base, the Chinese base LM (char or BPE)"))
    return p
