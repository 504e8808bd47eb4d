"""`genloom continue`: continue a prompt that may end mid-word, with token healing.

    genloom continue --model smollm2-135m --prompt "import numpy as n"
    genloom continue --model models/zh-bpe-lm --prompt "广州的白" --strategy sample --seed 1
    genloom continue --model smollm2-135m --prompt "Visit http:" --heal hf
    genloom continue --model smollm2-135m --input cut.txt --json

`--model` is read by `load.load_model`: a genloom model directory (e.g. the Chinese LM built by
benchmarks/build_zh_lm.py) or a Hugging Face model ("smollm2-135m", a local model directory or a
.gguf file; nothing is downloaded). `--heal` picks the mode of `genloom.decode.heal`: exact
(default; the exact conditional given the backed-off text), post (the post's one-token back-off),
none (plain), hf (transformers' `token_healing`, Hugging Face models only). `--input FILE` (or
`-`, stdin; `--prompt-file` is its older name) reads the prompt's bytes exactly (trailing spaces
and newlines kept; it may even end inside a UTF-8 character). The continuation is printed (the
text after the prompt), or with --json one JSON line {id, input, output, index, ...} per
continuation with what healing did.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

from genloom.errors import UserError


def start_token(tokenizer: Any, choice: str, *, hf: bool) -> int | None:
    """The token put before the context: --bos none / an id / auto (a genloom model's BOS; for a
    Hugging Face model its document separator <|endoftext|> when it has one, else its BOS)."""
    if choice == "none":
        return None
    if choice != "auto":
        try:
            tid = int(choice)
        except ValueError:
            raise UserError(f"--bos must be auto, none or a token id, got {choice!r}") from None
        if not 0 <= tid < tokenizer.vocab_size:
            raise UserError(f"--bos {tid} is outside the vocabulary (size {tokenizer.vocab_size})")
        return tid
    if hf:
        tid = tokenizer.token_to_id("<|endoftext|>")
        if tid is not None:
            return tid
    return tokenizer.bos_id


def read_prompt(args: argparse.Namespace) -> str | bytes:
    """The prompt from --prompt (text) or --input FILE / - (bytes, exactly)."""
    if args.prompt is not None:
        prompt: str | bytes = args.prompt
    elif args.prompt_file == "-":
        prompt = sys.stdin.buffer.read()
    else:
        try:
            prompt = Path(args.prompt_file).read_bytes()
        except FileNotFoundError:
            raise UserError(f"no prompt file {args.prompt_file}") from None
        except OSError as e:
            raise UserError(f"cannot read {args.prompt_file}: {e.strerror}") from None
    if not prompt:
        raise UserError("the prompt is empty: give some text to continue")
    return prompt


def _record(c: Any, args: argparse.Namespace, prompt: str | bytes, index: int) -> str:
    """The --json line of one continuation: {id: 1, input: the prompt, output: the
    continuation, index (among the samples)}, its ids and what healing did."""
    from genloom.cliargs import json_record

    healed = c.healed
    text = prompt if isinstance(prompt, str) else prompt.decode("utf-8", errors="replace")
    record = {"index": index, "mode": args.heal, "strategy": args.strategy,
              "token_ids": c.token_ids, "score": c.score,
              "removed": None if healed is None else healed.removed.decode("utf-8", errors="replace"),
              "removed_hex": None if healed is None else healed.removed.hex(),
              "context_tokens": None if healed is None else len(healed.context),
              "tv_bound": None if healed is None or healed.tree is None else healed.tree.bound,
              "tol": args.tol if args.heal == "exact" else None,
              "approximate": None if healed is None or args.heal != "exact" else healed.approximate}
    if c.text is None:
        record["hf_output"] = c.full_text
    return json_record(1, text, c.text, **record)


def run(args: argparse.Namespace) -> int:
    """Load the model, heal the prompt, decode, print."""
    import torch

    from genloom.cliargs import set_threads
    from genloom.decode.heal import ApproximateHealingWarning, continue_prompt, encode_prompt
    from genloom.decode.heal_tree import VocabIndex
    from genloom.tasks.lm.load import is_genloom_dir, load_model

    prompt = getattr(args, "prompt_text", None) or read_prompt(args)
    hf = not is_genloom_dir(args.model)
    if args.heal == "hf" and not hf:
        raise UserError("--heal hf runs transformers' token healing: it needs a Hugging Face model")
    set_threads(args.threads)
    if args.heal == "hf" and args.engine == "llamacpp":
        raise UserError("--heal hf runs transformers' token healing: it cannot run on --engine llamacpp")
    model, tokenizer = load_model(args.model, engine="hf" if args.heal == "hf" else args.engine, quant=args.quant)
    index = None if args.heal == "hf" else VocabIndex.from_tokenizer(tokenizer)
    if args.back_off is not None:
        n = len(encode_prompt(tokenizer, index, prompt)[1])
        if args.back_off > n:
            raise UserError(f"--back-off {args.back_off} is more than the prompt's {n} tokens")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ApproximateHealingWarning)
        results = continue_prompt(
            model, tokenizer, prompt, mode=args.heal, strategy=args.strategy, max_new_tokens=args.max_new_tokens,
            eos_id=None if args.no_eos else tokenizer.eos_id, num_beams=args.num_beams or 4,
            num_samples=args.num_samples or 1, generator=torch.Generator().manual_seed(args.seed),
            bos_id=start_token(tokenizer, args.bos, hf=hf), back_off_tokens=args.back_off, tol=args.tol,
            max_rows=args.max_rows, index=index)
    for w in caught:  # one line each; other warnings go on as they came
        if issubclass(w.category, ApproximateHealingWarning):
            print(f"genloom: warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    for index, c in enumerate(results):
        if args.json:
            sys.stdout.write(_record(c, args, prompt, index) + "\n")
        elif c.text is None:
            print("genloom: hf healing rewrote the end of the prompt; its whole output follows", file=sys.stderr)
            sys.stdout.write(f"{c.full_text}\n")
        else:
            sys.stdout.write(f"{c.text}\n")
    return 0
