"""PNG grids of an image VAE's samples (after BatchNorm re-estimation) and reconstructions.

Letters: N images, B batch, C channels, H/W image size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from genloom.files import write_with
from genloom.models.nvae import ImageVAE
from genloom.nn.nvae_cells import reestimate_batchnorm


def write_grid(images: Tensor, path: str | Path, *, nrow: int = 8, pad: int = 2) -> Path:
    """Save images (N, C, H, W) in [0, 1] (C = 1 or 3) as one PNG grid, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import image as mpimg

    x = images.detach().float().clamp(0, 1).cpu().numpy()
    n, c, h, w = x.shape
    rows = -(-n // nrow)
    grid = np.ones((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), np.float32)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h,
             pad + col * (w + pad):pad + col * (w + pad) + w] = x[i].transpose(1, 2, 0)
    return write_with(path, lambda tmp: mpimg.imsave(tmp, grid[:, :, 0] if c == 1 else grid,
                                                     cmap="gray", vmin=0, vmax=1, format="png"),
                      what="image")


@torch.no_grad()
def reconstruction_grid(model: ImageVAE, x: Tensor, path: str | Path, *, nrow: int = 8) -> Path:
    """Rows of originals (B, C, H, W) each followed by a row of their reconstructions (means)."""
    model.eval()
    rec = model.to_image(model(x).params, mode="mean")
    pairs = [t for i in range(0, x.shape[0], nrow) for t in (x[i:i + nrow], rec[i:i + nrow])]
    return write_grid(torch.cat(pairs), path, nrow=nrow)


@torch.no_grad()
def sample_grid(model: ImageVAE, path: str | Path, *, n: int = 64, temperature: float = 0.7,
                bn_iters: int = 100, bn_batch: int = 64, nrow: int = 8, progress: bool = False) -> Path:
    """Re-estimate BatchNorm statistics from `bn_iters` prior samples at `temperature` (in
    train mode; `progress`: a tqdm bar over them on stderr), then write a grid of n samples
    (Bernoulli means / mixture samples)."""
    if bn_iters > 0:
        with tqdm(total=bn_iters, desc="BatchNorm re-estimation", unit="batch", leave=False,
                  disable=not progress) as bar:
            def run() -> object:
                bar.update()
                return model.sample(bn_batch, temperature=temperature)

            reestimate_batchnorm(model, run, iters=bn_iters)
    model.eval()
    images = model.to_image(model.sample(n, temperature=temperature), mode="mean")
    return write_grid(images, path, nrow=nrow)
