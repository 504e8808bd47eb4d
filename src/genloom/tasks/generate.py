"""`genloom generate`: continue prompts with any genloom model directory or Hugging Face model.

    genloom generate --model runs/lm --prompt "Once upon a time" --max-new-tokens 40
    genloom generate --model smollm2-135m --input prompts.txt --strategy beam --num-beams 4
    genloom generate --model smollm2-135m --prompt "The capital of" --strategy sample \\
        --top-p 0.9 --temperature 0.8 --seed 1 --stream

`--model` is a genloom model directory (its config.json names a genloom model type; loaded with
`genloom.models.io.load`) or a Hugging Face model: the name "smollm2-135m", a local model
directory, or a .gguf file. With `--engine auto` (the default) a GPT-2 / Llama-family model is
converted into genloom's own Transformer (`genloom.models.convert`, the faster path) and any
other architecture runs unconverted through `HFCausalLM`; `--engine genloom` / `--engine hf`
force one or the other. Nothing is downloaded.

`--input FILE` reads one prompt per non-empty line. Output: the generated continuations, one per
line (newlines inside a continuation escaped as \\n), or JSON lines with --jsonl; `--output FILE`
writes them to a file (atomically) instead of stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from genloom.errors import UserError

# how a Hugging Face model runs: converted to genloom's Transformer, wrapped as it is, or
# converted when its architecture is supported (GPT-2, Llama family) and wrapped otherwise
ENGINES = ("auto", "genloom", "hf")


def _is_genloom_dir(path: Path) -> bool:
    """True if config.json names a genloom model type (Hugging Face's name theirs: "gpt2", ...)."""
    from genloom.models import io

    try:
        data = json.loads((path / io.CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("model_type") in io.MODEL_TYPES


def load_model(source: str, *, engine: str = "auto") -> tuple[Any, Any]:
    """(Decodable, tokenizer) from a genloom model directory or a Hugging Face model (see module)."""
    path = Path(source)
    if path.is_dir() and _is_genloom_dir(path):
        from genloom.models import io

        model, tokenizer = io.load(path)
        if tokenizer is None:
            raise UserError(f"{source} has no tokenizer files: generate needs one to read prompts")
        return model, tokenizer
    if engine not in ENGINES:
        raise UserError(f"unknown engine {engine!r} (choose from {', '.join(ENGINES)})")
    from genloom.models.hf import CONVERTERS, HFCausalLM, convert, load_hf

    try:  # no "Loading weights" bar on stderr, so an error stays one line
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # load_hf reports the missing extra
        pass
    hf_model, tokenizer = load_hf(source)
    if tokenizer is None:
        raise UserError(f"{source} has no tokenizer files: generate needs one to read prompts")
    convertible = getattr(hf_model.config, "model_type", None) in CONVERTERS
    if engine == "genloom" or (engine == "auto" and convertible):
        return convert(hf_model), tokenizer
    return HFCausalLM(hf_model), tokenizer


def read_prompts(args: argparse.Namespace) -> list[str]:
    """The prompts from --prompt (repeatable) or --input FILE (one per non-empty line)."""
    if args.prompt is not None:
        return list(args.prompt)
    try:
        text = Path(args.input).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"no input file {args.input}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {args.input}: {e}".splitlines()[0]) from None
    prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"{args.input} holds no prompts (one per non-empty line)")
    return prompts


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The generate() options the flags set."""
    early = {"true": True, "false": False, "never": "never"}[args.early_stopping]
    return dict(strategy=args.strategy, max_new_tokens=args.max_new_tokens, min_new_tokens=args.min_new_tokens,
                num_beams=args.num_beams, num_return_sequences=args.num_return_sequences,
                length_penalty=args.length_penalty, early_stopping=early, temperature=args.temperature,
                top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                no_repeat_ngram_size=args.no_repeat_ngram_size, seed=args.seed, add_bos=args.add_bos,
                truncate=args.truncate)


def _format(prompts: list[str], outputs: list[str], *, jsonl: bool) -> str:
    """One line per output: the text (newlines escaped) or a JSON object with its prompt."""
    per = len(outputs) // len(prompts)
    lines = []
    for i, text in enumerate(outputs):
        if jsonl:
            lines.append(json.dumps({"prompt": prompts[i // per], "index": i % per, "output": text},
                                    ensure_ascii=False))
        else:
            lines.append(text.replace("\\", "\\\\").replace("\n", "\\n"))
    return "".join(line + "\n" for line in lines)


def write_atomic(path: str, text: str) -> None:
    """Write text to path through a temporary file in the same directory, then rename."""
    target = Path(path)
    if not target.parent.is_dir():
        raise UserError(f"no directory {target.parent} for --output")
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run(args: argparse.Namespace) -> int:
    """Load the model, generate, print (or stream) the continuations."""
    from genloom.decode.generate import generate, generate_stream, validate_options

    prompts = read_prompts(args)
    options = _options(args)
    validate_options(options)  # option errors before the (slow) model load
    if args.stream and (args.output or args.jsonl):
        raise UserError("--stream prints to the terminal; it cannot be combined with --output or --jsonl")
    if args.output and not Path(args.output).parent.is_dir():
        raise UserError(f"no directory {Path(args.output).parent} for --output")
    model, tokenizer = load_model(args.model, engine=args.engine)
    if args.stream:
        for prompt in prompts:
            for piece in generate_stream(model, tokenizer, prompt, **options):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
        return 0
    text = _format(prompts, generate(model, tokenizer, prompts, **options), jsonl=args.jsonl)
    if args.output:
        write_atomic(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


def add_parser(subparsers: Any, *, name: str, help: str) -> argparse.ArgumentParser:
    """Register `genloom generate`."""
    p = subparsers.add_parser(name, help=help, description=help)
    p.add_argument("--model", required=True, help="genloom model directory, or Hugging Face name/dir/.gguf")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    src.add_argument("--input", help="a UTF-8 text file, one prompt per non-empty line")
    p.add_argument("--strategy", choices=("greedy", "beam", "sample"), default="greedy")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--min-new-tokens", type=int, default=0)
    p.add_argument("--num-beams", type=int, default=4, help="beam width (--strategy beam)")
    p.add_argument("--num-return-sequences", type=int, default=1, help="n-best (beam) or samples per prompt")
    p.add_argument("--length-penalty", type=float, default=1.0, help="beam: sum log p / length ** this")
    p.add_argument("--early-stopping", choices=("false", "true", "never"), default="false",
                   help="beam stopping rule (Hugging Face semantics)")
    p.add_argument("--temperature", type=float, help="sampling temperature (> 0)")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, help="nucleus sampling, in (0, 1]")
    p.add_argument("--min-p", type=float, help="keep tokens with p >= min_p * p(top token)")
    p.add_argument("--repetition-penalty", type=float, help="> 1 discourages repeating prompt/output tokens")
    p.add_argument("--no-repeat-ngram-size", type=int, help="never repeat an n-gram of this size")
    p.add_argument("--seed", type=int, help="seed for sampling")
    p.add_argument("--add-bos", action="store_true", help="prepend the tokenizer's BOS token to prompts")
    p.add_argument("--truncate", action="store_true", help="left-truncate prompts too long for the context")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="Hugging Face models: convert to genloom's Transformer (genloom), run them as they are "
                        "(hf), or convert when the architecture allows (auto)")
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    p.add_argument("--jsonl", action="store_true", help="print JSON lines {prompt, index, output}")
    p.add_argument("--output", help="write the results to this file instead of stdout")
    p.set_defaults(func=run)
    return p
