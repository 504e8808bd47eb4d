"""Right-padded rows: each row's real positions first, padding after.

Letters: B rows, T positions.
"""

from __future__ import annotations

import torch
from torch import Tensor


def reverse_rows(x: Tensor, lengths: Tensor) -> Tensor:
    """Each row of x (B, T, ...) reversed within its first lengths[b] positions; the positions
    after them (padding) stay where they are. `lengths` is (B,), or a (B, T) bool mask of the
    real positions (their count is the length)."""
    if lengths.dtype == torch.bool:
        lengths = lengths.sum(1)
    col = torch.arange(x.shape[1], device=x.device)  # (T,)
    idx = torch.where(col < lengths[:, None], lengths[:, None] - 1 - col, col)  # (B, T)
    return x.gather(1, idx.view(*idx.shape, *[1] * (x.dim() - 2)).expand_as(x))
