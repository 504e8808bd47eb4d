"""`genloom continue`: continue a prompt that may end mid-word, with token healing.

    genloom continue --model smollm2-135m --prompt "import numpy as n"
    genloom continue --model models/zh-bpe-lm --prompt "广州的白" --strategy sample --seed 1
    genloom continue --model smollm2-135m --prompt "Visit http:" --heal hf
    genloom continue --model smollm2-135m --prompt-file cut.txt --json

`--model` is a genloom model directory (e.g. the Chinese LM built by benchmarks/build_zh_lm.py)
or a Hugging Face model: "smollm2-135m", a local model directory or a .gguf file (loaded as
`genloom generate` loads them; nothing is downloaded). `--heal` picks the mode of
`genloom.decode.heal`: exact (default; the exact conditional given the backed-off text), post (the
post's one-token back-off), none (plain), hf (transformers' `token_healing`, HF models only).
`--prompt-file` reads the prompt's bytes exactly (trailing spaces and newlines kept; it may even end
inside a UTF-8 character). The continuation is printed (the text after the prompt), or with --json
one JSON object per continuation with what healing did.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from genloom.errors import UserError

HEAL_MODES = ("exact", "post", "none", "hf")
STRATEGIES = ("greedy", "beam", "sample")


def _is_hf_source(source: str) -> bool:
    """True unless `source` is a genloom model directory (its config.json names a genloom type)."""
    from genloom.models import io

    try:
        data = json.loads((Path(source) / io.CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return True
    return not (isinstance(data, dict) and data.get("model_type") in io.MODEL_TYPES)


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
    """The prompt from --prompt (text) or --prompt-file (bytes, exactly)."""
    if args.prompt is not None:
        prompt: str | bytes = args.prompt
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


def _check(args: argparse.Namespace) -> None:
    for name in ("max_new_tokens", "num_beams", "num_samples", "max_rows"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if args.tol < 0:
        raise UserError("--tol must be >= 0")
    if args.back_off is not None and args.back_off < 0:
        raise UserError("--back-off must be >= 0")


def run(args: argparse.Namespace) -> int:
    """Load the model, heal the prompt, decode, print."""
    import torch

    from genloom.decode.heal import continue_prompt
    from genloom.decode.heal_tree import VocabIndex
    from genloom.tasks.generate import load_model

    _check(args)
    prompt = read_prompt(args)
    hf = _is_hf_source(args.model)
    if args.heal == "hf" and not hf:
        raise UserError("--heal hf runs transformers' token healing: it needs a Hugging Face model")
    engine = "hf" if args.heal == "hf" else args.engine
    model, tokenizer = load_model(args.model, engine=engine)
    generator = torch.Generator().manual_seed(args.seed)
    eos = None if args.no_eos else tokenizer.eos_id
    index = None if args.heal == "hf" else VocabIndex.from_tokenizer(tokenizer)
    results = continue_prompt(
        model, tokenizer, prompt, mode=args.heal, strategy=args.strategy, max_new_tokens=args.max_new_tokens,
        eos_id=eos, num_beams=args.num_beams, num_samples=args.num_samples, generator=generator,
        bos_id=start_token(tokenizer, args.bos, hf=hf), back_off_tokens=args.back_off, tol=args.tol,
        max_rows=args.max_rows, index=index)
    for c in results:
        if args.json:
            healed = c.healed
            record = {"mode": args.heal, "strategy": args.strategy, "continuation": c.text,
                      "token_ids": c.token_ids, "score": c.score,
                      "removed": None if healed is None else healed.removed.decode("utf-8", errors="replace"),
                      "removed_hex": None if healed is None else healed.removed.hex(),
                      "context_tokens": None if healed is None else len(healed.context),
                      "tv_bound": None if healed is None or healed.tree is None else healed.tree.bound}
            if c.text is None:
                record["hf_output"] = c.full_text
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        elif c.text is None:
            print("genloom: hf healing rewrote the end of the prompt; its whole output follows", file=sys.stderr)
            sys.stdout.write(f"{c.full_text}\n")
        else:
            sys.stdout.write(f"{c.text}\n")
    return 0


def add_parser(subparsers: Any, *, name: str, help: str) -> argparse.ArgumentParser:
    """Register `genloom continue`."""
    p = subparsers.add_parser(name, help=help, description=help)
    p.add_argument("--model", required=True, help="genloom model directory, or Hugging Face name/dir/.gguf")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the text to continue")
    src.add_argument("--prompt-file", help="read the prompt's bytes from this file, exactly")
    p.add_argument("--heal", choices=HEAL_MODES, default="exact", help="token healing mode (default exact)")
    p.add_argument("--strategy", choices=STRATEGIES, default="greedy")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--num-beams", type=int, default=4, help="beam width (--strategy beam)")
    p.add_argument("--num-samples", type=int, default=1, help="continuations drawn (--strategy sample)")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling")
    p.add_argument("--back-off", type=int, help="tokens to back off (default: dynamic; post: 1)")
    p.add_argument("--tol", type=float, default=1e-6,
                   help="exact: certified total-variation budget for pruning unlikely tokenizations (0 = none)")
    p.add_argument("--max-rows", type=int, default=128, help="exact: most tokenization paths stepped at once")
    p.add_argument("--bos", default="auto", help="start token before the prompt: auto, none or an id")
    p.add_argument("--no-eos", action="store_true", help="do not stop at the end-of-text token")
    p.add_argument("--engine", choices=("genloom", "hf"), default="genloom",
                   help="Hugging Face models: convert to genloom's Transformer, or run them as they are")
    p.add_argument("--json", action="store_true", help="one JSON object per continuation")
    p.set_defaults(func=run)
    return p
