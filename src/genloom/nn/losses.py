"""Sparse Softmax (SPACES; arXiv 2112.12433): cross-entropy normalised over the top logits only.

Letters: N scored positions, V vocabulary size, k kept logits.

With s the logits of one position and t its target, plain cross-entropy is logsumexp(s) - s_t.
Sparse Softmax keeps only a set Omega of the largest logits in the normaliser:

    p_i = exp(s_i) / sum_{j in Omega} exp(s_j)  for i in Omega, else 0
    loss = logsumexp_{j in Omega} s_j - s_t

Omega is the k largest logits (the post's k = 10) or, the top-p variant of the 2024 follow-up
(kexue.fm /archives/10145), the smallest set of largest logits whose full-softmax probability
reaches p. The loss is exactly the formula above even when the target falls outside Omega (the
post's Keras code does the same): it is then still >= 0, since s_t <= every kept logit. The
gradient is softmax over Omega at the kept logits, -1 at the target, and zero everywhere else, so
logits outside the top set are left alone: the model only has to beat its k nearest rivals, not
push every other logit down by log(V - 1) (the post's over-learning argument). With k = V it is
plain cross-entropy.

`sparse_log_softmax` is the matching distribution at decoding time (log-probabilities over Omega,
-inf elsewhere); `genloom.decode.copy.SparseTopK` is it as a logits processor.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_sparse", "sparse_softmax_cross_entropy", "sparse_log_softmax", "support_mask"]


def check_sparse(k: int | None, top_p: float | None) -> None:
    """ValueError unless exactly one of k (an integer >= 1) and top_p (in (0, 1]) is given."""
    if (k is None) == (top_p is None):
        raise ValueError("give exactly one of k and top_p")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if top_p is not None and not (0.0 < float(top_p) <= 1.0):
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")


def support_mask(logits: Tensor, *, k: int | None = None, top_p: float | None = None) -> Tensor:
    """The kept set Omega as a bool mask (..., V): the k largest logits (ties with the k-th kept,
    as `TopK` does), or the top-p nucleus (the largest logits until their softmax mass reaches
    top_p; at least one). The selection is not differentiated (it is a set, not a value)."""
    check_sparse(k, top_p)
    logits = logits.detach()
    if k is not None:
        kth = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).values[..., -1:]  # (..., 1)
        return logits >= kth  # (..., V)
    ordered, order = torch.sort(logits, dim=-1, descending=True)  # (..., V)
    probs = ordered.float().softmax(dim=-1)  # (..., V)
    mass_before = probs.cumsum(dim=-1) - probs  # (..., V) softmax mass of the larger logits
    keep_sorted = mass_before < float(top_p)  # (..., V): the first always (mass before it is 0)
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)  # (..., V)


def sparse_log_softmax(logits: Tensor, *, k: int | None = None, top_p: float | None = None) -> Tensor:
    """log p over Omega (see `support_mask`) and -inf outside it: logits (..., V) -> (..., V)."""
    keep = support_mask(logits, k=k, top_p=top_p)
    return logits.masked_fill(~keep, float("-inf")).log_softmax(dim=-1)


def sparse_softmax_cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    k: int | None = 10,
    top_p: float | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    """Sparse Softmax cross-entropy: logsumexp over Omega minus the target logit.

    Args:
        logits: (N, V) (or (..., V): leading dimensions are flattened).
        target: (N,) long class ids (or (...,)); `ignore_index` marks positions not scored.
        k: keep the k largest logits (default 10, the post's); k >= V is plain cross-entropy.
        top_p: instead of k (pass k=None), keep the top-p nucleus of the full softmax.
        ignore_index: target value of positions that are skipped.
        reduction: "mean" (over scored positions; 0 if there are none), "sum" or "none" ((N,),
            0 at ignored positions).

    Returns:
        The loss, a scalar unless reduction="none".
    """
    check_sparse(k, top_p)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    v = logits.shape[-1]
    flat = logits.reshape(-1, v).float()  # (N, V)
    tgt = target.reshape(-1)  # (N,)
    if flat.shape[0] != tgt.shape[0]:
        raise ValueError(f"{flat.shape[0]} rows of logits but {tgt.shape[0]} targets")
    scored = tgt != ignore_index  # (N,)
    safe = tgt.masked_fill(~scored, 0)  # (N,)
    if k is not None and k >= v:
        norm = flat.logsumexp(dim=-1)  # (N,) plain cross-entropy
    elif k is not None:
        norm = torch.topk(flat, k, dim=-1).values.logsumexp(dim=-1)  # (N,)
    else:
        keep = support_mask(flat, top_p=top_p)  # (N, V)
        norm = flat.masked_fill(~keep, float("-inf")).logsumexp(dim=-1)  # (N,)
    loss = (norm - flat.gather(1, safe[:, None])[:, 0]).masked_fill(~scored, 0.0)  # (N,)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / scored.sum().clamp(min=1)
