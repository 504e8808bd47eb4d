"""`genloom generate`: continue prompts with any genloom model directory or Hugging Face model.

    genloom generate --model runs/lm --prompt "Once upon a time" --max-new-tokens 40
    genloom generate --model smollm2-135m --input prompts.txt --strategy beam --num-beams 4
    genloom generate --model smollm2-135m --prompt "The capital of" --strategy sample \\
        --top-p 0.9 --temperature 0.8 --seed 1 --stream

`--model` is read by `load.load_model` (every genloom family, or a Hugging Face model with
`--engine auto|genloom|hf`). `--input FILE` (or "-" for stdin) holds one prompt per line; blank
lines are skipped. Output: the generated continuations, one per line (newlines inside a
continuation escaped as \\n), or with --json one JSON line {id, input, output, index} per output
(id: the --input record's "id", else its line number; --prompt: 1, 2, ...); with --stream --json
a line {id, index, delta} per piece, then the output's record; `--out FILE` writes them to a file
(atomically) instead of stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any



def read_prompts(args: argparse.Namespace) -> list[tuple[Any, str]]:
    """(id, prompt) pairs from --prompt (repeatable; ids 1, 2, ...) or --input FILE / - (one per
    line, or JSONL records whose --field is the prompt and whose "id" is carried; blank lines
    skipped)."""
    from genloom.data.readers import read_input_file

    if args.prompt is not None:
        return list(enumerate(args.prompt, start=1))
    return read_input_file(args.input, fmt=args.format, field=args.field)


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The `genloom.decode.generate` options the flags set (beam-only flags default here)."""
    early = {"true": True, "false": False, "never": "never"}[args.early_stopping or "false"]
    return dict(strategy=args.strategy, max_new_tokens=args.max_new_tokens, min_new_tokens=args.min_new_tokens,
                num_beams=args.num_beams or 4, num_return_sequences=args.num_return_sequences,
                length_penalty=1.0 if args.length_penalty is None else args.length_penalty, early_stopping=early,
                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                repetition_penalty=args.repetition_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size,
                seed=args.seed, add_bos=args.add_bos, truncate=args.truncate)


def format_outputs(prompts: list[tuple[Any, str]], outputs: list[str], *, json_lines: bool) -> str:
    """One line per output: the text (backslashes and newlines escaped), or with `json_lines` the
    record {id, input (the prompt), output, index (among its prompt's outputs)}."""
    from genloom.cliargs import json_record

    per = len(outputs) // len(prompts)
    lines = []
    for i, text in enumerate(outputs):
        if json_lines:
            id_, prompt = prompts[i // per]
            lines.append(json_record(id_, prompt, text, index=i % per))
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
        for id_, prompt in prompts:
            pieces = []
            for piece in generate_stream(model, tokenizer, prompt, **options):
                pieces.append(piece)
                sys.stdout.write(json.dumps({"id": id_, "index": 0, "delta": piece}, ensure_ascii=False) + "\n"
                                 if args.json else piece)
                sys.stdout.flush()
            sys.stdout.write(format_outputs([(id_, prompt)], ["".join(pieces)], json_lines=True) if args.json else "\n")
        return 0
    outputs = generate(model, tokenizer, [prompt for _, prompt in prompts], **options)
    text = format_outputs(prompts, outputs, json_lines=args.json)
    if args.output:
        write_atomic(args.output, text, what="--output")
    else:
        sys.stdout.write(text)
    return 0
