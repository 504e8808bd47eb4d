"""`genloom generate`: continue prompts with any genloom model directory or Hugging Face model.

    genloom generate --model runs/lm --prompt "Once upon a time" --max-new-tokens 40
    genloom generate --model smollm2-135m --input prompts.txt --strategy beam --num-beams 4
    genloom generate --model smollm2-135m --prompt "The capital of" --strategy sample \\
        --top-p 0.9 --temperature 0.8 --seed 1 --stream

`--model` is read by `load.load_model` (every genloom family, or a Hugging Face model with
`--engine auto|genloom|hf`). `--input FILE` (or "-" for stdin) holds one prompt per line; blank
lines are skipped. Output: the generated continuations, one per line (newlines inside a
continuation escaped as \\n), or JSON lines with --jsonl; `--output FILE` writes them to a file
(atomically) instead of stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from genloom.errors import UserError


def read_prompts(args: argparse.Namespace) -> list[str]:
    """The prompts from --prompt (repeatable) or --input FILE (one per line, blank lines skipped)."""
    from genloom.data.readers import open_input, read_inputs

    if args.prompt is not None:
        return list(args.prompt)
    stream = open_input(args.input)
    try:
        raw = stream.readlines()
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    blank = {n for n, line in enumerate(raw, start=1) if not line.strip()}
    prompts = []
    for n, text, error in read_inputs(raw, fmt="lines", name=args.input):
        if error is not None and n not in blank:
            raise UserError(error)
        if text is not None:
            prompts.append(text)
    if not prompts:
        raise UserError(f"{args.input} holds no prompts (one per non-blank line)")
    return prompts


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The `genloom.decode.generate` options the flags set (beam-only flags default here)."""
    early = {"true": True, "false": False, "never": "never"}[args.early_stopping or "false"]
    return dict(strategy=args.strategy, max_new_tokens=args.max_new_tokens, min_new_tokens=args.min_new_tokens,
                num_beams=args.num_beams or 4, num_return_sequences=args.num_return_sequences,
                length_penalty=1.0 if args.length_penalty is None else args.length_penalty, early_stopping=early,
                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                repetition_penalty=args.repetition_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size,
                seed=args.seed, add_bos=args.add_bos, truncate=args.truncate)


def format_outputs(prompts: list[str], outputs: list[str], *, jsonl: bool) -> str:
    """One line per output: the text (backslashes and newlines escaped) or a JSON object with its prompt."""
    per = len(outputs) // len(prompts)
    lines = []
    for i, text in enumerate(outputs):
        if jsonl:
            lines.append(json.dumps({"prompt": prompts[i // per], "index": i % per, "output": text},
                                    ensure_ascii=False))
        else:
            lines.append(text.replace("\\", "\\\\").replace("\n", "\\n"))
    return "".join(line + "\n" for line in lines)


def run(args: argparse.Namespace) -> int:
    """Load the model, generate, print (or stream, or write) the continuations."""
    from genloom.cliargs import set_threads
    from genloom.decode.generate import generate, generate_stream, validate_options
    from genloom.files import check_output, write_atomic
    from genloom.tasks.lm.load import load_model

    prompts = read_prompts(args)
    options = options_from_args(args)
    validate_options(options)  # option errors before the (slow) model load
    if args.output:
        check_output(args.output, what="--output")  # creates nothing: a failed load leaves no folder
    set_threads(args.threads)
    model, tokenizer = load_model(args.model, engine=args.engine, quant=args.quant)
    if args.stream:
        for prompt in prompts:
            for piece in generate_stream(model, tokenizer, prompt, **options):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
        return 0
    text = format_outputs(prompts, generate(model, tokenizer, prompts, **options), jsonl=args.jsonl)
    if args.output:
        write_atomic(args.output, text, what="--output")
    else:
        sys.stdout.write(text)
    return 0
