"""The parsers of `genloom generate` and `genloom continue`, and the flag checks made before
any model is loaded (every bad value is one line and exit 2).

Both commands are registered from this module (`genloom.cli.COMMANDS` names it twice);
`add_parser` builds the one asked for. Shared flags come from `genloom.cliargs.add_common`.
"""

from __future__ import annotations

import argparse
from typing import Any

from genloom.cliargs import (add_common, add_json, beam_width, check_outputs, length_penalty, nonneg_int, output_flag,
                             penalty_factor, positive_float, positive_int, probability, rows_int, temperature)
from genloom.data.readers import INPUT_FORMATS
from genloom.errors import UserError
from genloom.tasks.lm.load import ENGINES, QUANTS

MODEL_HELP = "genloom model directory, or Hugging Face name (smollm2-135m) / directory / .gguf"
STRATEGIES = ("greedy", "beam", "sample")
HEAL_MODES = ("exact", "post", "none", "hf")


def _only_with(args: argparse.Namespace, flags: dict[str, str], condition: bool, what: str) -> None:
    """A one-line error for the first flag of `flags` (dest -> flag) given without `condition`."""
    for dest, flag in flags.items():
        if getattr(args, dest) is not None and not condition:
            raise UserError(f"{flag} applies to {what} only")


def _quant_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quant", choices=QUANTS, help="--engine llamacpp: requantize the GGUF once into the "
                   "model cache ($GENLOOM_CACHE, default ~/.cache/genloom) with llama.cpp's quantizer "
                   "(default: the file as it is)")


# ---- genloom generate ----------------------------------------------------------------------------
def _run_generate(args: argparse.Namespace) -> int:
    _only_with(args, {"num_beams": "--num-beams", "length_penalty": "--length-penalty",
                      "early_stopping": "--early-stopping"}, args.strategy == "beam", "--strategy beam")
    if args.min_new_tokens > args.max_new_tokens:
        raise UserError(f"--min-new-tokens {args.min_new_tokens} is above --max-new-tokens {args.max_new_tokens}")
    if args.stream and args.output:
        raise UserError("--stream prints to the terminal; it cannot be combined with --out")
    check_outputs(args)
    from genloom.tasks.lm.generate import run

    return run(args)


def _generate_parser(p: argparse.ArgumentParser) -> None:
    add_common(p, model=MODEL_HELP, threads=True, quiet=True, seed=0)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a prompt (repeat for several) (default: none; give --prompt or --input)")
    src.add_argument("--input", metavar="FILE", help="prompts, one per line or JSONL (--field); - reads stdin (default: none)")
    p.add_argument("--format", choices=INPUT_FORMATS, default="auto",
                   help="--input: lines, jsonl, or auto (JSONL if the first line is a JSON object)")
    p.add_argument("--field", default="prompt", help="--input JSONL: the field holding the prompt")
    p.add_argument("--strategy", choices=STRATEGIES, default="greedy", help="how tokens are picked")
    p.add_argument("--max-new-tokens", type=positive_int, default=64, help="most tokens generated per output")
    p.add_argument("--min-new-tokens", type=nonneg_int, default=0, help="no end-of-text before this many tokens")
    p.add_argument("--num-beams", type=beam_width, help="beam width (--strategy beam; default 4)")
    p.add_argument("--num-samples", "--num-return-sequences", dest="num_return_sequences", type=rows_int, default=1,
                   help="n-best (beam) or samples per prompt")
    p.add_argument("--length-penalty", type=length_penalty, help="beam: sum log p / length ** this (default 1)")
    p.add_argument("--early-stopping", choices=("false", "true", "never"),
                   help="beam stopping rule (Hugging Face semantics; default false)")
    p.add_argument("--temperature", type=temperature, help="sampling temperature (default: none, 1.0)")
    p.add_argument("--top-k", type=positive_int, help="sample among the k most likely tokens (default: none, every token)")
    p.add_argument("--top-p", type=positive_float, help="nucleus sampling, in (0, 1] (default: none, every token)")
    p.add_argument("--min-p", type=probability, help="keep tokens with p >= min_p * p(top token) (default: none, off)")
    p.add_argument("--repetition-penalty", type=penalty_factor, help="> 1 discourages repeating prompt/output tokens (default: none, off)")
    p.add_argument("--no-repeat-ngram-size", type=positive_int, help="never repeat an n-gram of this size (default: none, off)")
    p.add_argument("--add-bos", action="store_true", help="prepend the tokenizer's BOS token to prompts")
    p.add_argument("--truncate", action="store_true", help="left-truncate prompts too long for the context")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="Hugging Face models: convert to genloom's Transformer (genloom), run them as they are "
                        "(hf), or convert when the architecture allows (auto); GGUF models on llama.cpp (llamacpp)")
    _quant_flag(p)
    p.add_argument("--stream", action="store_true",
                   help="print tokens as they are generated (with --json: a line {id, index, delta} per piece)")
    add_json(p, "each output (with its index among a prompt's outputs)")
    output_flag(p, "--out", "--output", dest="output",
                help="write the results to this file (atomically) instead of stdout (default: stdout)")
    p.set_defaults(func=_run_generate)


# ---- genloom continue ----------------------------------------------------------------------------
def _run_continue(args: argparse.Namespace) -> int:
    _only_with(args, {"num_beams": "--num-beams"}, args.strategy == "beam", "--strategy beam")
    _only_with(args, {"num_samples": "--num-samples"}, args.strategy == "sample", "--strategy sample")
    _only_with(args, {"back_off": "--back-off"}, args.heal in ("exact", "post"), "--heal exact or post")
    if args.bos not in ("auto", "none") and not (args.bos.isascii() and args.bos.isdigit()):
        raise UserError(f"--bos must be auto, none or a token id, got {args.bos!r}")  # the vocabulary: at load
    from genloom.tasks.lm.continue_ import read_prompt, run

    args.prompt_text = read_prompt(args)
    size = len(args.prompt_text.encode("utf-8") if isinstance(args.prompt_text, str) else args.prompt_text)
    if args.back_off is not None and args.back_off > size:  # a token spells at least one byte
        raise UserError(f"--back-off {args.back_off} is more than the prompt's {size} bytes")
    return run(args)


def _continue_parser(p: argparse.ArgumentParser) -> None:
    add_common(p, model=MODEL_HELP, threads=True, quiet=True, seed=0)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the text to continue (default: none; give --prompt or --input)")
    src.add_argument("--input", "--prompt-file", dest="prompt_file", metavar="FILE",
                     help="read the prompt's bytes from this file, exactly; - reads stdin (default: none)")
    p.add_argument("--heal", choices=HEAL_MODES, default="exact", help="token healing mode (default exact)")
    p.add_argument("--strategy", choices=STRATEGIES, default="greedy", help="how tokens are picked")
    p.add_argument("--max-new-tokens", type=positive_int, default=32, help="most tokens generated")
    p.add_argument("--num-beams", type=beam_width, help="beam width (--strategy beam; default 4)")
    p.add_argument("--num-samples", type=rows_int, help="continuations drawn (--strategy sample; default 1)")
    p.add_argument("--back-off", type=nonneg_int, help="tokens to back off (default: dynamic; post: 1)")
    p.add_argument("--tol", type=probability, default=1e-6,
                   help="exact: certified total-variation budget for pruning unlikely tokenizations (0 = none)")
    p.add_argument("--max-rows", type=rows_int, default=128, help="exact: most tokenization paths stepped at once")
    p.add_argument("--bos", default="auto", help="start token before the prompt: auto, none or an id")
    p.add_argument("--no-eos", action="store_true", help="do not stop at the end-of-text token")
    p.add_argument("--engine", choices=("genloom", "hf", "llamacpp"), default="genloom",
                   help="Hugging Face models: convert to genloom's Transformer, or run them as they are; "
                        "GGUF models on llama.cpp (llamacpp)")
    _quant_flag(p)
    add_json(p, "each continuation, with what healing did,")
    p.set_defaults(func=_run_continue)


PARSERS = {"generate": _generate_parser, "continue": _continue_parser}


def add_parser(subparsers: Any, *, name: str, help: str) -> argparse.ArgumentParser:
    """Register `genloom generate` or `genloom continue` (by `name`, a key of PARSERS)."""
    p = subparsers.add_parser(name, help=help, description=help)
    PARSERS[name](p)
    return p
