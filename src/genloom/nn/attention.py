"""Multi-head self-attention with grouped-query heads, RoPE, masks, and a preallocated KV cache.

Letters: B batch rows, T query positions, S key positions (cache columns), C model width,
H query heads, K key/value heads (H = K * G, G query heads share one K/V head), D head width,
N heads of a projection slice.

The attention layer is a token *mixer* (see `genloom.models.transformer.MIXERS`): besides
`forward` (a whole sequence: training, scoring, prefill) it has `state_shape(length)`, the shape
of one row's decoding state for one layer, and `step` (one new token per row). For attention
the state is the KV cache of one layer, (2, K, S, D): keys at [0], values at [1], with
post-RoPE keys. The model allocates the caches of all layers in ONE tensor
(B, layers, 2, K, S, D) once per `start()`; `forward` with a state fills columns [0, T) and
`step` writes column `frame.column` in place (no concatenation), then attends to columns
[0, column]. Reordering rows (beams) gathers and copies back, in that single tensor, only the
rows that change.

Query heads are grouped as Hugging Face's `repeat_kv` does: query head h uses K/V head h // G.
In `step` the G query heads of a group are passed to SDPA as G query *positions* of one head,
(B, K, G, D) against (B, K, S, D), so no K/V is ever repeated or copied.

RoPE uses the "half" layout of GPT-NeoX / Hugging Face Llama (pairs (i, i + D/2)), so converted
Llama weights need no permutation. When `genloom.nn.probe` is listening, attention is computed
explicitly as softmax(Q K^T / sqrt(D) + mask) and the probabilities (B, H, T, S) are recorded
under "attn_probs"; otherwise `F.scaled_dot_product_attention` runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genloom.nn import probe


@dataclass
class Frame:
    """What every layer of one forward/step call shares (computed once per call by the model)."""

    cos: Tensor | None  # RoPE cosines broadcastable to the (.., N, D) head views; None: no RoPE
    sin: Tensor | None  # RoPE signed sines [-sin, sin], same shape as cos
    mask: Tensor | None  # (B, 1, T, S) bool, True = may attend; None = no mask beyond `causal`
    causal: bool  # forward only: add the causal mask (SDPA's is_causal) when mask is None
    column: int  # step only: the cache column written by this call's token


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[Tensor, Tensor]:
    """Cos and signed-sin tables (max_len, D) for positions 0..max_len-1, "half" layout.

    Computed exactly as Hugging Face Llama does in fp32 (inv_freq, then position * inv_freq), so
    converted models see bit-identical rotations. The sine table carries the rotation's sign:
    rope(x) = x * cos + roll(x, D/2) * sin_signed.
    """
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head width, got {head_dim}")
    cpu = torch.device("cpu")  # also under torch.device("meta") (models.io.load), where arange is slow
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=cpu).float() / head_dim))
    freqs = torch.arange(max_len, dtype=torch.int64, device=cpu).float()[:, None] * inv_freq[None, :]  # (S, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (S, D)
    half = head_dim // 2
    sin = emb.sin()  # (S, D)
    sin_signed = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)  # (S, D)
    return emb.cos(), sin_signed


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (..., N, D) by the angles whose cos / signed sin broadcast against it."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin)  # (..., N, D)


def allowed_mask(
    kind: str, *, seq_len: int, key_valid: Tensor | None = None, segment_ids: Tensor | None = None
) -> tuple[Tensor | None, bool]:
    """The boolean attention pattern of a whole sequence, as (mask, causal) for `Frame`.

    Args:
        kind: "causal", "prefix" (UniLM) or "bidirectional".
        seq_len: T.
        key_valid: (B, T) bool, False at padding (padding is never attended); None: no padding.
        segment_ids: (B, T) ints, for "prefix": 0 source, 1 target. Position i may attend j iff
            cumsum(s)[j] <= cumsum(s)[i] (bert4keras's UniLM rule): the source sees all of the
            source, each target token sees the source and the targets up to itself.

    Returns:
        (mask (B|1, 1, T, T) bool or None, causal flag). Every row may attend at least itself, so
        padding rows never produce NaN; real rows always attend themselves anyway.
    """
    if kind == "causal" and key_valid is None:
        return None, True
    if kind == "bidirectional" and key_valid is None:
        return None, False
    device = (key_valid if key_valid is not None else segment_ids).device
    idx = torch.arange(seq_len, device=device)
    eye = idx[:, None] == idx[None, :]  # (T, T)
    if kind == "causal":
        mask = (idx[:, None] >= idx[None, :])[None]  # (1, T, T)
    elif kind == "prefix":
        if segment_ids is None:
            raise ValueError("the prefix (UniLM) mask needs segment_ids")
        c = segment_ids.long().cumsum(dim=1)  # (B, T)
        mask = c[:, None, :] <= c[:, :, None]  # (B, T, T)
    elif kind == "bidirectional":
        mask = torch.ones(1, seq_len, seq_len, dtype=torch.bool, device=device)  # (1, T, T)
    else:
        raise ValueError(f"unknown mask kind {kind!r}")
    if key_valid is not None:
        mask = mask & key_valid[:, None, :]  # (B, T, T)
    return (mask | eye)[:, None], False  # (B|1, 1, T, T)


def explicit_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, *, causal: bool, dropout: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Reference attention: q (B, H, T, D), k/v (B, K, S, D) -> (out (B, H, T, D), probs (B, H, T, S)).

    `probs` are the probabilities before dropout; `dropout` > 0 drops them for `out` only.
    """
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)  # (B, H, S, D)
        v = v.repeat_interleave(groups, dim=1)  # (B, H, S, D)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    if causal and mask is None:
        t, s = scores.shape[-2:]
        mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t)  # (T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1)  # (B, H, T, S)
    dropped = F.dropout(probs, dropout) if dropout else probs  # (B, H, T, S)
    return dropped @ v, probs


class Attention(nn.Module):
    """Self-attention with a fused q/k/v projection, optional RoPE and grouped K/V heads.

    Args:
        d_model: C.
        n_head: H query heads.
        n_kv_head: K key/value heads (divides H; K = H is plain multi-head attention).
        head_dim: D.
        bias: biases on the q/k/v and output projections.
        dropout: attention-probability dropout while training.
    """

    state_time_axis = 2  # the axis of `state_shape` that grows with decoding (S)

    def __init__(
        self, d_model: int, n_head: int, n_kv_head: int, head_dim: int, *, bias: bool, dropout: float
    ) -> None:
        super().__init__()
        if n_head % n_kv_head:
            raise ValueError(f"n_head={n_head} must be a multiple of n_kv_head={n_kv_head}")
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, head_dim
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, (n_head + 2 * n_kv_head) * head_dim, bias=bias)
        self.out = nn.Linear(n_head * head_dim, d_model, bias=bias)

    def state_shape(self, length: int) -> tuple[int, ...]:
        """One row's cache for one layer holding up to `length` positions: (2, K, S, D)."""
        return (2, self.n_kv_head, length, self.head_dim)

    def forward(self, x: Tensor, frame: Frame, state: Tensor | None = None) -> Tensor:
        """x (B, T, C) -> (B, T, C); with `state` (B, 2, K, S, D), its columns [0, T) are filled."""
        b, t, _ = x.shape
        h, kh, d = self.n_head, self.n_kv_head, self.head_dim
        qkv = self.qkv(x).view(b, t, h + 2 * kh, d)  # (B, T, H+2K, D)
        if frame.cos is not None:
            qk = apply_rope(qkv[:, :, : h + kh], frame.cos, frame.sin)  # (B, T, H+K, D)
            q, k = qk[:, :, :h], qk[:, :, h:]
        else:
            q, k = qkv[:, :, :h], qkv[:, :, h : h + kh]
        v = qkv[:, :, h + kh :]  # (B, T, K, D)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H|K, T, D)
        if state is not None:
            state[:, 0, :, :t] = k
            state[:, 1, :, :t] = v
        if probe.active():
            y, probs = explicit_attention(
                q, k, v, frame.mask, causal=frame.causal, dropout=self.dropout if self.training else 0.0
            )  # (B, H, T, D)
            probe.record(self, "attn_probs", probs)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=frame.mask, is_causal=frame.causal and frame.mask is None,
                dropout_p=self.dropout if self.training else 0.0, enable_gqa=kh != h,
            )  # (B, H, T, D)
        return self.out(y.transpose(1, 2).reshape(b, t, h * d))  # (B, T, C)

    def step(self, x: Tensor, frame: Frame, state: Tensor) -> Tensor:
        """One token per row: x (B, C) -> (B, C), writing its K/V at column `frame.column` of
        `state` (B, 2, K, S, D) and attending to columns [0, column] (`frame.mask` (B, 1, 1, S)
        hides padding)."""
        b = x.shape[0]
        h, kh, d, n = self.n_head, self.n_kv_head, self.head_dim, frame.column
        qkv = self.qkv(x).view(b, h + 2 * kh, d)  # (B, H+2K, D)
        if frame.cos is not None:
            qk = apply_rope(qkv[:, : h + kh], frame.cos, frame.sin)  # (B, H+K, D)
            q, k = qk[:, :h], qk[:, h:]
        else:
            q, k = qkv[:, :h], qkv[:, h : h + kh]
        state[:, 0, :, n] = k
        state[:, 1, :, n] = qkv[:, h + kh :]
        keys, values = state[:, 0, :, : n + 1], state[:, 1, :, : n + 1]  # (B, K, S, D)
        q = q.reshape(b, kh, h // kh, d)  # (B, K, G, D): a group's heads as G query rows
        if probe.active():
            y, probs = explicit_attention(q, keys, values, frame.mask, causal=False)  # (B, K, G, D)
            probe.record(self, "attn_probs", probs.reshape(b, h, 1, n + 1))
        else:
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=frame.mask)  # (B, K, G, D)
        return self.out(y.reshape(b, h * d))  # (B, C)
