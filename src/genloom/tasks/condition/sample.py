"""Sampling under a condition: labels and vectors resolved to what a model takes, nucleus
sampling (`genloom.decode.loops.sample`), optionally guided against the other labels
(`genloom.decode.guidance.Guided`), and the mean NLL of texts under the plain LM.

Letters: B rows, E condition width.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from tqdm import tqdm

from genloom.decode.guidance import Guided
from genloom.decode.loops import sample
from genloom.decode.processors import BannedTokens, Temperature, TopP
from genloom.errors import UserError
from genloom.models import Transformer
from genloom.tasks.condition.config import GENERATORS
from genloom.tasks.condition.train import mean_loss
from genloom.tokenizers import CharTokenizer


def resolve_label(meta: dict[str, Any], label: str | int) -> int:
    """The id of a label given by name (or by id)."""
    names = meta["labels"]
    if isinstance(label, int) or (isinstance(label, str) and label.isdigit() and label not in names):
        k = int(label)
        if not 0 <= k < len(names):
            raise UserError(f"label id {k} is out of range (labels: {', '.join(names)})")
        return k
    if label not in names:
        raise UserError(f"unknown label {label!r} (labels: {', '.join(names)})")
    return names.index(label)


def condition_for(meta: dict[str, Any], *, label: str | int | None = None, vector: Any = None) -> Any:
    """What a model of `meta` takes for a label or a vector: a label id, a class-mean vector
    (a model trained on vectors), or the user's vector (E,)."""
    if (label is None) == (vector is None):
        raise UserError("give exactly one of a label and a condition vector")
    if vector is not None:
        if meta["kind"] != "cln":
            raise UserError(f"a {meta['kind']!r} model takes labels only, not condition vectors")
        return torch.as_tensor(vector, dtype=torch.float32)
    k = resolve_label(meta, label)
    if meta.get("class_means"):
        name = meta["labels"][k]
        if name not in meta["class_means"]:
            raise UserError(f"label {name!r} had no training text, so it has no mean vector")
        return torch.tensor(meta["class_means"][name])
    return k


def other_conditions(meta: dict[str, Any], label: str | int) -> list[Any]:
    """The conditions of every label but `label` (what guidance contrasts it with)."""
    k = resolve_label(meta, label)
    return [condition_for(meta, label=j) for j in range(len(meta["labels"])) if j != k]


def _start_inputs(kind: str, meta: dict[str, Any], tokenizer: CharTokenizer, condition: Any, b: int, *,
                  rows: bool = False) -> dict[str, Any]:
    """`start` inputs of b rows under one condition: the first token, and for cln the condition
    (with `rows`, as (b,) label ids or (b, E) vectors, as `Guided` needs)."""
    if kind == "prefix":
        return {"input_ids": torch.full((b, 1), meta["label_base"] + int(condition), dtype=torch.long)}
    inputs: dict[str, Any] = {"input_ids": torch.full((b, 1), tokenizer.bos_id, dtype=torch.long)}
    if kind == "cln":
        inputs["condition"] = condition
        if rows:
            cond = torch.as_tensor(condition)
            inputs["condition"] = cond.expand(b) if cond.dim() == 0 else cond.expand(b, cond.shape[-1])
    return inputs


def generate(model: Transformer, tokenizer: CharTokenizer, meta: dict[str, Any], *, condition: Any, n: int,
             top_p: float = 0.95, max_new_tokens: int | None = None, seed: int = 0,
             batch_size: int = 250, guidance: float = 0.0, contrast: list[Any] | None = None,
             temperature: float = 1.0, progress: bool = False) -> tuple[list[str], list[bool]]:
    """Sample `n` texts under `condition` (from `condition_for`) with nucleus sampling; with
    `guidance` w > 0, from the guided scores of `genloom.decode.guidance.Guided` against the
    `contrast` conditions (the other labels: `other_conditions`). `progress`: a tqdm bar on
    stderr over the batches when there is more than one.

    Returns:
        (texts, ended): ended[i] is True when sample i stopped with <eos> (not at the length cap).
    """
    if n < 1:
        raise UserError(f"--num-samples must be at least 1, got {n}")
    if not 0 < top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {top_p}")
    kind = meta["kind"]
    if kind not in GENERATORS:
        raise UserError(f"a {kind!r} model does not generate")
    if guidance < 0:
        raise UserError(f"--guidance must be >= 0, got {guidance}")
    if not 0 < temperature < math.inf:
        raise UserError(f"--temperature must be > 0, got {temperature}")
    if guidance > 0 and (kind == "plain" or not contrast):
        raise UserError("guidance needs a conditional model and a label to contrast with the others")
    cap = max_new_tokens or model.config.max_len - 1
    if not 1 <= cap <= model.config.max_len - 1:
        raise UserError(f"--max-new-tokens must be in 1..{model.config.max_len - 1}, got {cap}")
    banned = [tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id] + list(range(tokenizer.vocab_size,
                                                                              model.config.vocab_size))
    processors = [BannedTokens(banned), *([Temperature(temperature)] if temperature != 1 else []), TopP(top_p)]
    g = torch.Generator().manual_seed(seed)
    texts, ended = [], []
    for s in tqdm(range(0, n, batch_size), desc="sampling", unit="batch", leave=False,
                  disable=not progress or n <= batch_size):
        b = min(batch_size, n - s)
        inputs = _start_inputs(kind, meta, tokenizer, condition, b, rows=guidance > 0)
        decoder: Any = model
        if guidance > 0:
            others = [_start_inputs(kind, meta, tokenizer, c, b, rows=True) for c in contrast or []]
            decoder = Guided(model, others, guidance)
        out = sample(decoder, max_new_tokens=cap, generator=g, eos_id=tokenizer.eos_id, processors=processors,
                     **inputs)
        texts += [tokenizer.decode(seq) for seq in out.sequences]
        ended += [len(seq) < cap for seq in out.sequences]
    return texts, ended


def mean_nll(lm: Transformer, tokenizer: CharTokenizer, texts: list[str], ended: list[bool],
             *, batch_size: int = 128) -> float:
    """Mean negative log-likelihood per predicted token (nats) of `texts` under a plain LM:
    <bos> + characters (+ <eos> for the texts that ended), cut to the LM's context."""
    rows = [([tokenizer.bos_id] + tokenizer.encode(t) + ([tokenizer.eos_id] if e else []))[: lm.config.max_len]
            for t, e in zip(texts, ended)]
    return mean_loss(lm, [(r, None) for r in rows], batch_size=batch_size)
