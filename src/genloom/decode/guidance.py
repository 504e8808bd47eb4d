"""Condition guidance for any model of the decoding protocol: sharpen p(x | c) against other
conditions (classifier-free guidance as Sanchez et al. 2023, "Stay on topic with Classifier-Free
Guidance", apply it to LMs; a contrastive reading of Bayes' rule p(c | x) ~ p(x | c) / p(x)).

With weight w >= 0, the scores of the next token are

    (1 + w) * log p(x_t | x_<t, c)  -  w * mean_j log p(x_t | x_<t, c_j)

where c is the requested condition and c_1..c_J the contrasting ones (for a class-conditioned LM:
the other labels, so the mean stands in for the unconditioned log p(x_t | x_<t)). w = 0 is plain
decoding. Every row of the batch is run 1 + J times in one batch (the contrasting copies follow
the requested ones); processors and sampling then act on the guided scores as on any logits.

Letters: B rows, J contrasting conditions, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from genloom.errors import UserError


class Guided:
    """Wrap `model` (decoding protocol) so its logits are guided towards `start`'s inputs and
    away from `contrast`: a list of J dicts, each overriding some of the start inputs (e.g.
    {"condition": other_label_ids (B,)} or {"input_ids": prompts with another label token}).

    Every tensor input of `start` must have B rows (pass a label as a (B,) tensor, a condition
    vector as (B, E)); a contrast overrides some of them with tensors of the same shape, the
    others are repeated. The state is (the inner state of the (1 + J) B rows, B)."""

    def __init__(self, model: Any, contrast: Sequence[Mapping[str, Any]], weight: float) -> None:
        if weight < 0:
            raise UserError(f"guidance weight must be >= 0, got {weight}")
        if not contrast:
            raise UserError("guidance needs at least one contrasting condition")
        self.model, self.contrast, self.weight = model, [dict(c) for c in contrast], float(weight)
        self.vocab_size = model.vocab_size

    def _combine(self, logits: Tensor, b: int) -> Tensor:
        """logits ((1 + J) B, V) -> guided scores (B, V)."""
        lp = logits.float().log_softmax(-1).view(1 + len(self.contrast), b, -1)  # (1 + J, B, V)
        return (1 + self.weight) * lp[0] - self.weight * lp[1:].mean(0)

    def start(self, **inputs: Any) -> tuple[Tensor, Any]:
        batched = {k: v for k, v in inputs.items() if isinstance(v, Tensor) and v.dim() > 0}
        sizes = {v.shape[0] for v in batched.values()}
        if len(sizes) != 1:
            raise UserError(f"guidance needs batched tensor inputs of one row count, got {sorted(sizes)}")
        b = sizes.pop()
        merged = dict(inputs)
        for key, value in batched.items():
            parts = [value, *(c.get(key, value) for c in self.contrast)]
            if any(not isinstance(p, Tensor) or p.shape != value.shape for p in parts):
                raise UserError(f"a contrasting {key!r} must be a tensor of the requested one's shape "
                                f"{tuple(value.shape)}")
            merged[key] = torch.cat(parts, 0)
        unknown = {k for c in self.contrast for k in c} - set(batched)
        if unknown:
            raise UserError(f"contrasting inputs {sorted(unknown)} are not batched tensor inputs of start")
        logits, state = self.model.start(**merged)
        return self._combine(logits, b), (state, b)

    def step(self, tokens: Tensor, state: Any) -> tuple[Tensor, Any]:
        inner, b = state
        logits, inner = self.model.step(tokens.repeat(1 + len(self.contrast)), inner)
        return self._combine(logits, b), (inner, b)

    def select(self, state: Any, index: Tensor) -> Any:
        inner, b = state
        full = torch.cat([index + j * b for j in range(1 + len(self.contrast))])
        return self.model.select(inner, full), index.shape[0]
