"""Importance-weighted NLL of an image VAE on a set of images, in nats and bits/dim.

Letters: N images, C channels, H/W image size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from tqdm.auto import tqdm

from genloom.models.nvae import ImageVAE, bits_per_dim, iw_log_likelihood


def iw_nll_per_image(model: ImageVAE, x: Tensor, *, k: int, chunk: int = 256,
                     progress: bool = False) -> Tensor:
    """Importance-weighted NLL (N,) in nats of each image of x (N, C, H, W) in [0, 1], 100
    images at a time (model in eval mode for the call); `iw_nll` summarises it."""
    model.eval()
    parts = []
    for i in tqdm(range(0, x.shape[0], 100), disable=not progress, unit="x100 images",
                  desc=f"IW-NLL K={k}", dynamic_ncols=True):
        parts.append(-iw_log_likelihood(model, x[i:i + 100], k=k, chunk=chunk))
    return torch.cat(parts)


def iw_nll(model: ImageVAE, x: Tensor, *, k: int, chunk: int = 256, progress: bool = False
           ) -> dict[str, float]:
    """Importance-weighted NLL of x (N, C, H, W) in [0, 1]: mean nats, its standard error,
    bits/dim and N (model in eval mode for the call)."""
    nll = iw_nll_per_image(model, x, k=k, chunk=chunk, progress=progress).double()  # (N,)
    dims = x[0].numel()
    mean = float(nll.mean())
    stderr = float(nll.std() / math.sqrt(len(nll))) if len(nll) > 1 else float("nan")
    return {"nll_nats": mean, "nll_stderr": stderr, "bpd": bits_per_dim(mean, dims),
            "k": k, "images": int(x.shape[0])}
