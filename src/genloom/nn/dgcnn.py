"""DGCNN: dilated gated residual 1-D convolutions over a sequence of vectors (SPACES's extractor).

Letters: B documents, N sentences (positions) per document, D input width, C hidden width.

The SPACES extractor labels each sentence of a document from its (frozen) sentence vector and its
neighbours': Dropout -> Linear(D, C, no bias) -> residual gated conv blocks (kernel 3, dilations
1, 2, 4, 8, 1, 1), each followed by dropout -> Linear(C, 1). One block is

    h = conv(x)                    # Conv1d(C, 2C, kernel, dilation, "same" zero padding)
    y = LayerNorm(h[:C] * sigmoid(h[C:]))
    out = x + alpha * y            # alpha a learned scalar, initialised to 0

so every block starts as the identity (the ReZero-style zero-initialised residual of the post's
Keras layer). Padding positions are zeroed before every convolution, so a padded document's
outputs at its real positions equal those of the same document alone (the convolution's own
"same" padding is zeros too). The head returns logits; the sigmoid belongs to the loss
(`binary_cross_entropy_with_logits`) and to prediction.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class ResidualGatedConv1d(nn.Module):
    """x + alpha * LayerNorm(conv_a(x) * sigmoid(conv_b(x))), with masked inputs (module docstring)."""

    def __init__(self, channels: int, kernel_size: int = 3, *, dilation: int = 1) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd for 'same' padding, got {kernel_size}")
        self.channels = channels
        self.conv = nn.Conv1d(channels, 2 * channels, kernel_size, dilation=dilation,
                              padding=dilation * (kernel_size - 1) // 2)
        self.norm = nn.LayerNorm(channels)
        self.alpha = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (B, N, C), mask (B, N) bool (True = real position) -> (B, N, C)."""
        if mask is not None:
            x = x * mask[:, :, None].to(x.dtype)
        h = self.conv(x.transpose(1, 2)).transpose(1, 2)  # (B, N, 2C)
        y = h[..., : self.channels] * torch.sigmoid(h[..., self.channels:])  # (B, N, C)
        return x + self.alpha * self.norm(y)


class DGCNN(nn.Module):
    """Sentence-vector sequence -> one logit per position (the SPACES extractor network)."""

    def __init__(self, input_dim: int, hidden: int = 384, *, dilations: Sequence[int] = (1, 2, 4, 8, 1, 1),
                 kernel_size: int = 3, dropout: float = 0.1) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Linear(input_dim, hidden, bias=False)
        self.blocks = nn.ModuleList(ResidualGatedConv1d(hidden, kernel_size, dilation=d) for d in dilations)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (B, N, D) sentence vectors, mask (B, N) bool -> logits (B, N)."""
        if mask is not None:
            x = x * mask[:, :, None].to(x.dtype)
        h = self.drop(self.proj(self.drop(x)))  # (B, N, C)
        for block in self.blocks:
            h = self.drop(block(h, mask))  # (B, N, C)
        return self.head(h)[..., 0]  # (B, N)

    def receptive_field(self) -> int:
        """How many positions one output sees: 1 + sum over blocks of (kernel - 1) * dilation."""
        return 1 + sum((b.conv.kernel_size[0] - 1) * b.conv.dilation[0] for b in self.blocks)
