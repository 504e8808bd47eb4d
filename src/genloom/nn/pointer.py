"""A seq2seq output layer over the source: the title post's source-character prior and a
pointer-generator copy (See et al. 2017) with a successor bonus.

Letters: B rows, S source positions, T target positions, C hidden width, V vocabulary.

- The prior (玩转Keras之seq2seq自动生成标题): chi (B, V), 1 where a character occurs in the source,
  scaled and shifted per vocabulary item (exp(log s) * chi + t, s = 1 and t = 0 at the start) and
  averaged with the logits.
- The pointer: a scaled dot-product attention of target states over source states (its own
  query / key projections) and a gate g = sigmoid(w . h_t) mix the copy distribution into the
  output: p(y) = g * softmax(logits)[y] + (1 - g) * (pointer mass on source positions holding y).
- The successor bonus: a learned w1 added to the pointer score of every source position that
  follows an occurrence of the last generated id, w2 where the last two match
  (`successor_matches`), so a copied run goes on where it left off.

`PointerPrior` holds the parameters; the per-row source tensors it reads (ids, mask, pointer keys,
prior vector) are computed once per source by `source` into a `SourceSide`, which a decoder keeps
in its state. The output is log-probabilities of the mixture (search loops' log_softmax leaves
them unchanged). Used by `genloom.models.unilm.UniLMSeq2Seq`; `RNNSeq2Seq` shares the prior and
the successor matches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genloom.nn import probe


def source_presence(src: Tensor, vocab_size: int, pad_id: int) -> Tensor:
    """The prior's binary vector: chi[b, v] = 1 iff id v occurs at a non-pad position of row b."""
    real = (src != pad_id).float()  # (B, S)
    counts = torch.zeros(src.shape[0], vocab_size, device=src.device)  # (B, V)
    return (counts.scatter_add_(1, src, real) > 0.5).float()  # (B, V)


def successor_matches(src: Tensor, prev1: Tensor, prev2: Tensor, *, start_id: int) -> tuple[Tensor, Tensor]:
    """Where the source continues what was just generated.

    src (B, S); prev1 (B, T) the last id fed before each target position (bos first) and prev2
    (B, T) the one before it (negative where there is none). The source counts as preceded by
    `start_id` (bos), as the target is, so at the first step position 0 continues the bos.
    Returns float (B, T, S): m1[b, t, s] = 1 iff src[b, s-1] == prev1[b, t];
    m2 = m1 and src[b, s-2] == prev2[b, t] (src[-1], src[-2] = start_id).
    """
    before1 = F.pad(src, (1, 0), value=start_id)[:, :-1]  # (B, S) src[s-1]
    before2 = F.pad(src, (2, 0), value=start_id)[:, :-2]  # (B, S) src[s-2]
    m1 = before1[:, None, :] == prev1[:, :, None]  # (B, T, S)
    m2 = m1 & (before2[:, None, :] == prev2[:, :, None])  # (B, T, S)
    return m1.float(), m2.float()


class Pointer(nn.Module):
    """Scaled dot-product attention of target states over source states (the copy distribution);
    records "attn_probs" (B, 1, T, S) for taps."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, h: Tensor, keys: Tensor, mask: Tensor, bias: Tensor | None = None) -> Tensor:
        """h (B, T, C), keys (B, S, C) (already projected by `k`), mask (B, S), optional additive
        score bias (B, T, S) -> probs (B, T, S)."""
        scores = self.q(h) @ keys.transpose(1, 2) * self.scale  # (B, T, S)
        if bias is not None:
            scores = scores + bias
        attn = scores.masked_fill(~mask[:, None, :], float("-inf")).softmax(-1)  # (B, T, S)
        if probe.active():
            probe.record(self, "attn_probs", attn[:, None])  # (B, 1, T, S)
        return attn


@dataclass
class SourceSide:
    """Per-row source tensors a `PointerPrior` reads; rows follow the decoder's rows."""

    src: Tensor  # (B, S) source ids, pad_id at padding
    mask: Tensor  # (B, S) bool, True at real positions
    keys: Tensor | None  # (B, S, C) pointer keys (None without the pointer)
    prior: Tensor | None  # (B, V) the scaled, shifted prior vector (None without the prior)

    def select(self, index: Tensor) -> SourceSide:
        """Keep / reorder rows: index (B',) into the current rows."""
        return SourceSide(self.src.index_select(0, index), self.mask.index_select(0, index),
                          _rows(self.keys, index), _rows(self.prior, index))


def _rows(t: Tensor | None, index: Tensor) -> Tensor | None:
    return None if t is None else t.index_select(0, index)


class PointerPrior(nn.Module):
    """The prior and the pointer-generator copy over hidden states (module docstring).

    Args:
        d_model: C, width of the hidden states.
        vocab_size: V.
        pad_id: padding id of the sources.
        start_id: the id the target starts with (bos), which the source counts as preceded by.
        prior: the source-character prior.
        pointer: the pointer-generator copy (gate + pointer attention).
        successor: the successor bonus in the pointer scores (with the pointer only).
    """

    def __init__(self, d_model: int, vocab_size: int, *, pad_id: int, start_id: int, prior: bool = True,
                 pointer: bool = True, successor: bool = True) -> None:
        super().__init__()
        self.vocab_size, self.pad_id, self.start_id = vocab_size, pad_id, start_id
        self.use_prior, self.use_pointer, self.use_successor = prior, pointer, pointer and successor
        if pointer:
            self.attention = Pointer(d_model)
            self.gate = nn.Linear(d_model, 1)
        if self.use_successor:  # continue 1- / 2-character source matches, as RNNSeq2Seq
            self.successor_weight = nn.Parameter(torch.ones(2))
        if prior:  # s = exp(log_scale) = 1 and t = 0 at the start, as the post
            self.prior_log_scale = nn.Parameter(torch.zeros(vocab_size))
            self.prior_shift = nn.Parameter(torch.zeros(vocab_size))

    def source(self, src: Tensor, h_src: Tensor | None) -> SourceSide:
        """The per-row tensors of sources src (B, S) with final hidden states h_src (B, S, C)
        (needed by the pointer only; None without it)."""
        keys = None
        if self.use_pointer:
            if h_src is None:
                raise ValueError("the pointer needs the source's hidden states")
            keys = self.attention.k(h_src)  # (B, S, C)
        prior = None
        if self.use_prior:
            chi = source_presence(src, self.vocab_size, self.pad_id)  # (B, V)
            prior = self.prior_log_scale.exp() * chi + self.prior_shift  # (B, V)
        return SourceSide(src=src, mask=src != self.pad_id, keys=keys, prior=prior)

    def forward(self, logits: Tensor, h: Tensor, source: SourceSide, prev1: Tensor, prev2: Tensor) -> Tensor:
        """logits (B, T, V), hidden states h (B, T, C), the ids fed at those positions prev1
        (B, T) and the ids before them prev2 (B, T) (negative: none) -> log-probs (B, T, V)."""
        if self.use_prior:
            logits = (logits + source.prior[:, None, :]) / 2
        logp = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)  # (B, T, V)
        if not self.use_pointer:
            return logp
        bias = None
        if self.use_successor:
            m1, m2 = successor_matches(source.src, prev1, prev2, start_id=self.start_id)
            bias = self.successor_weight[0] * m1 + self.successor_weight[1] * m2  # (B, T, S)
        attn = self.attention(h, source.keys, source.mask, bias)  # (B, T, S)
        g = torch.sigmoid(self.gate(h))  # (B, T, 1)
        src = source.src[:, None, :].expand(-1, h.shape[1], -1)  # (B, T, S)
        copy = torch.zeros_like(logp).scatter_add_(2, src, attn)  # (B, T, V)
        return torch.log((g * logp.exp() + (1 - g) * copy).clamp_min(1e-30))
