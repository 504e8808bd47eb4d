"""Text in, text out: `generate` and `generate_stream` over a Decodable and its tokenizer.

Letters: B prompts, T longest prompt (tokens), V vocabulary size.

`generate` tokenizes the prompts, builds the processor list from the options that are set (in
Hugging Face's order, `processors.PROCESSORS`), picks the search loop from `STRATEGIES`, and
decodes the results. It adds nothing a search loop does not already do; the loops themselves
(loops.py) are the API for anything finer. Options a user can get wrong (an empty prompt list,
top_p outside (0, 1], num_beams < 1, min_new_tokens above max_new_tokens, a sampling option with
greedy search, a prompt longer than the context) raise `UserError` with a one-line message.

Models are driven through `start(input_ids=(B, T) right-padded, lengths=(B,), truncate=...)`,
the prompt format genloom's `Transformer`, `RTFLM` and `HFCausalLM` share.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from genloom.decode import loops
from genloom.decode.processors import PROCESSORS, SAMPLING_ONLY, BannedTokens
from genloom.decode.protocol import Decodable, LogitsProcessor, context_length, model_device
from genloom.errors import UserError


@dataclass
class GenerateOptions:
    """Every option of `generate`; None leaves a processor out."""

    strategy: str = "greedy"  # "greedy", "beam" or "sample" (a key of STRATEGIES)
    max_new_tokens: int = 64  # the most tokens generated per result
    min_new_tokens: int = 0  # EOS forbidden before this many tokens
    num_beams: int = 4  # beam width (strategy "beam")
    num_return_sequences: int = 1  # results per prompt: n-best (beam) or samples (sample)
    length_penalty: float = 1.0  # beam: score = sum log p / length ** length_penalty
    early_stopping: bool | str = False  # beam: True, False or "never" (Hugging Face semantics)
    temperature: float | None = None  # sample: divide logits by this
    top_k: int | None = None  # sample: keep the k most likely tokens
    top_p: float | None = None  # sample: keep the smallest set with probability >= top_p
    min_p: float | None = None  # sample: keep tokens with p >= min_p * p(top token)
    repetition_penalty: float | None = None  # > 1 discourages tokens of the prompt and output
    no_repeat_ngram_size: int | None = None  # ban repeating any n-gram of this size
    seed: int | None = None  # sample: seed of the torch.Generator (None: global RNG)
    add_bos: bool = False  # prepend the tokenizer's BOS id to every prompt
    truncate: bool = False  # keep the last tokens of a prompt too long for the context


def validate_options(options: dict[str, Any]) -> GenerateOptions:
    """Options dict -> GenerateOptions, or a one-line UserError (checked before any model work)."""
    known = {f.name for f in fields(GenerateOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UserError(f"unknown generate option(s): {', '.join(unknown)}")
    opts = GenerateOptions(**options)
    if opts.strategy not in STRATEGIES:
        raise UserError(f"unknown strategy {opts.strategy!r} (choose from {', '.join(STRATEGIES)})")
    for name, least in (("max_new_tokens", 1), ("min_new_tokens", 0), ("num_beams", 1), ("num_return_sequences", 1)):
        value = getattr(opts, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise UserError(f"{name} must be an integer >= {least}, got {value!r}")
    if opts.min_new_tokens > opts.max_new_tokens:
        raise UserError(f"min_new_tokens ({opts.min_new_tokens}) must be <= max_new_tokens ({opts.max_new_tokens})")
    if not (opts.early_stopping is True or opts.early_stopping is False or opts.early_stopping == "never"):
        raise UserError(f'early_stopping must be True, False or "never", got {opts.early_stopping!r}')
    if opts.strategy == "beam" and opts.num_return_sequences > opts.num_beams:
        raise UserError(f"num_return_sequences ({opts.num_return_sequences}) must be <= num_beams ({opts.num_beams})")
    if opts.strategy == "greedy" and opts.num_return_sequences != 1:
        raise UserError("greedy search returns one sequence per prompt (num_return_sequences must be 1)")
    build_processors(opts, model_vocab=0, tokenizer_vocab=0)  # value checks (top_p in (0, 1], ...)
    if opts.strategy != "sample":
        used = [name for name in sorted(SAMPLING_ONLY) if getattr(opts, name) is not None]
        if used:
            what = "is a sampling option" if len(used) == 1 else "are sampling options"
            raise UserError(f"{', '.join(used)} {what}: use strategy 'sample', not {opts.strategy!r}")
    return opts


def build_processors(opts: GenerateOptions, *, model_vocab: int, tokenizer_vocab: int) -> list[LogitsProcessor]:
    """The processors for the options that are set, in Hugging Face's order; ids the tokenizer
    cannot decode (a model vocabulary padded past the tokenizer's) are banned."""
    procs: list[LogitsProcessor] = []
    if model_vocab > tokenizer_vocab:
        procs.append(BannedTokens(range(tokenizer_vocab, model_vocab)))
    for name, cls in PROCESSORS.items():
        value = getattr(opts, name)
        if value is not None:
            try:
                procs.append(cls(value))
            except ValueError as e:
                raise UserError(str(e)) from None
    return procs


def _generator(model: Decodable, seed: int | None) -> torch.Generator | None:
    """A seeded generator on the model's device (None: torch's global RNG)."""
    return None if seed is None else torch.Generator(device=model_device(model)).manual_seed(seed)


def _greedy(model: Decodable, opts: GenerateOptions, **kw: Any) -> loops.Generated:
    return loops.greedy(model, min_new_tokens=opts.min_new_tokens, **kw)


def _beam(model: Decodable, opts: GenerateOptions, **kw: Any) -> loops.Generated:
    return loops.beam_search(model, num_beams=opts.num_beams, length_penalty=opts.length_penalty,
                              early_stopping=opts.early_stopping, num_return_sequences=opts.num_return_sequences,
                              min_new_tokens=opts.min_new_tokens, **kw)


def _sample(model: Decodable, opts: GenerateOptions, **kw: Any) -> loops.Generated:
    generator = _generator(model, opts.seed)
    return loops.sample(model, num_samples=opts.num_return_sequences, generator=generator,
                         min_new_tokens=opts.min_new_tokens, **kw)


# strategy name -> loop; each takes (model, options, **common search arguments)
STRATEGIES: dict[str, Callable[..., loops.Generated]] = {"greedy": _greedy, "beam": _beam, "sample": _sample}


def _prepare(model: Decodable, tokenizer: Any, prompts: Sequence[str], opts: GenerateOptions) -> dict[str, Any]:
    """Tokenize and build the arguments every search loop takes."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise UserError("prompts must be a list of strings")
    if len(prompts) == 0:
        raise UserError("no prompts to generate from (the prompt list is empty)")
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0  # padding is never read (lengths)
    ids, lengths = tokenizer.encode_batch(list(prompts), add_bos=opts.add_bos, pad_id=pad)  # (B, T), (B,)
    empty = (lengths == 0).nonzero()
    if len(empty):
        raise UserError(f"prompt {int(empty[0])} is empty after tokenization (pass add_bos or a longer prompt)")
    rows = [row[:n] for row, n in zip(ids.tolist(), lengths.tolist())]
    context = context_length(model)
    if opts.truncate and context is not None and context > opts.max_new_tokens:
        rows = [r[-(context - opts.max_new_tokens):] for r in rows]  # what the model will keep
    vocab = int(model.vocab_size)
    procs = build_processors(opts, model_vocab=vocab, tokenizer_vocab=int(tokenizer.vocab_size))
    device = model_device(model)
    return dict(max_new_tokens=opts.max_new_tokens, eos_id=tokenizer.eos_id, processors=procs, prompt_ids=rows,
                input_ids=ids.to(device), lengths=lengths.to(device), truncate=opts.truncate)


def generate(model: Decodable, tokenizer: Any, prompts: Sequence[str], **options: Any) -> list[str]:
    """Continue each prompt and return the generated text (without the prompt).

    Args:
        model: a Decodable taking right-padded `input_ids` and `lengths` (genloom's Transformer,
            HFCausalLM).
        tokenizer: a genloom Tokenizer (encode_batch, decode, eos_id, vocab_size).
        prompts: B strings.
        **options: fields of `GenerateOptions` (strategy, max_new_tokens, num_beams, temperature,
            top_k, top_p, min_p, repetition_penalty, no_repeat_ngram_size, seed, ...).
    Returns:
        B * num_return_sequences strings, grouped by prompt (beam: best first).
    """
    opts = validate_options(options)
    kw = _prepare(model, tokenizer, prompts, opts)
    try:
        out = STRATEGIES[opts.strategy](model, opts, **kw)
    except ValueError as e:
        raise UserError(str(e).splitlines()[0]) from None
    return [tokenizer.decode(seq) for seq in out.sequences]


def generate_stream(model: Decodable, tokenizer: Any, prompt: str, **options: Any) -> Iterator[str]:
    """Continue one prompt, yielding text as it is produced (strategy "greedy" or "sample").

    Text is yielded only once it decodes cleanly: a byte-level BPE token that ends inside a
    multi-byte character is held back until the character is complete. For tokenizers whose
    decoding is prefix-stable (characters, byte-level BPE) the concatenated pieces equal
    `generate(model, tokenizer, [prompt], **options)[0]`.
    """
    opts = validate_options(options)
    if opts.strategy not in ("greedy", "sample") or opts.num_return_sequences != 1:
        raise UserError("streaming works with strategy 'greedy' or 'sample' and one sequence per prompt")
    kw = _prepare(model, tokenizer, [prompt], opts)
    generator = _generator(model, opts.seed)
    ids: list[int] = []
    shown = ""
    try:
        for tokens in loops.stream(model, do_sample=opts.strategy == "sample", generator=generator,
                                    min_new_tokens=opts.min_new_tokens, **kw):
            if tokens[0] is None:
                break
            ids.append(tokens[0])
            text = tokenizer.decode(ids)
            if not text.endswith("\ufffd") and len(text) > len(shown) and text.startswith(shown):
                yield text[len(shown):]
                shown = text
    except ValueError as e:
        raise UserError(str(e).splitlines()[0]) from None
    text = tokenizer.decode(ids)
    common = len(os.path.commonprefix([text, shown]))
    if text[common:]:  # the tail held back (after a decode that rewrote earlier text: its new part)
        yield text[common:]
