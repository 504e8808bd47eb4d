"""Image data for the NVAE task: Fashion-MNIST idx files, a tiny built-in set, and batching.

Fashion-MNIST comes from the Debian package `dataset-fashion-mnist` (files under
/usr/share/datasets/fashion-mnist/, gzipped) or from any directory of idx files a user names
(`train-images-idx3-ubyte[.gz]`, `t10k-images-idx3-ubyte[.gz]`, and the label files). The idx
format (LeCun's MNIST format) is read with numpy: a big-endian header of magic
(0, 0, dtype code, ndim) and ndim int32 sizes, then the raw array. Written by hand because it is
20 lines and the libraries that read it (torchvision, idx2numpy) are not dependencies here.

`shapes` is a built-in set for tests and smoke runs: grey rectangles, ellipses, crosses and
rings at random places and intensities, generated from a seed (no downloads).

Images are held as uint8 tensors (N, C, H, W); `batches` turns them into float batches in
[0, 1], dynamically binarised (a fresh Bernoulli draw per pixel each time, as NVAE does for
MNIST) or as 8-bit values.

Letters: N images, C channels, H/W height/width, B batch.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from genloom.errors import UserError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = "apt-get install dataset-fashion-mnist"
SPLITS = ("train", "test")
_PREFIX = {"train": "train", "test": "t10k"}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
BUILTIN = "shapes"
BUILTIN_SIZES = {"train": 2000, "test": 500}  # images per split of the built-in set


def read_idx(path: str | Path) -> np.ndarray:
    """Read one idx file (optionally gzipped) into a numpy array of its stored shape."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"cannot read idx file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise UserError(f"{path} is not an idx file (bad magic number)")
    ndim = raw[3]
    if ndim == 0 or len(raw) < 4 + 4 * ndim:
        raise UserError(f"{path} is not an idx file (bad header)")
    shape = tuple(int(s) for s in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    body = raw[4 + 4 * ndim:]
    if len(body) != expected:
        raise UserError(f"{path}: header says {shape} ({expected} bytes) but holds {len(body)}")
    return np.frombuffer(body, dtype).reshape(shape).astype(dtype.newbyteorder("="))


def idx_length(path: str | Path) -> int:
    """The first dimension of an idx file (optionally gzipped), from its header alone."""
    path = Path(path)
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            head = f.read(8)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"cannot read idx file {path}: {e}") from None
    if len(head) < 8 or head[0] != 0 or head[1] != 0 or head[2] not in _DTYPES or head[3] == 0:
        raise UserError(f"{path} is not an idx file (bad header)")
    return int(np.frombuffer(head, ">i4", count=1, offset=4)[0])


def image_sets() -> list[dict[str, str]]:
    """What `genloom corpora` lists under image sets: name, installed, train/test sizes, install."""
    fm = {"name": "fashion-mnist", "installed": "no", "train": "-", "test": "-", "install": INSTALL_HINT,
          "note": f"Zalando's 28x28 grey clothing images (MIT), read from {FASHION_MNIST_DIR}"}
    if FASHION_MNIST_DIR.is_dir():
        fm["installed"] = "yes"
        for split in SPLITS:
            try:
                fm[split] = str(idx_length(_find(FASHION_MNIST_DIR, f"{_PREFIX[split]}-images-idx3-ubyte")))
            except UserError:
                fm[split] = "?"
    shapes = {"name": BUILTIN, "installed": "built in", "install": "-",
              **{split: str(n) for split, n in BUILTIN_SIZES.items()},
              "note": "generated 16x16 shapes (rectangles, ellipses, crosses, rings) for tests"}
    return [fm, shapes]


def _find(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise UserError(f"no {stem}[.gz] in {directory}")


def load_fashion_mnist(split: str, *, directory: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """Images (N, 1, 28, 28) uint8 and labels (N,) int64 of a Fashion-MNIST split.

    Args:
        split: "train" (60,000 images) or "test" (10,000).
        directory: a folder of idx files; default the Debian package's folder.
    """
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    d = Path(directory) if directory is not None else FASHION_MNIST_DIR
    if not d.is_dir():
        if directory is None:
            raise UserError(f"Fashion-MNIST is not installed ({d} is missing): run "
                            f"`{INSTALL_HINT}` or pass --data DIR with the idx files")
        raise UserError(f"data directory {d} does not exist")
    images = read_idx(_find(d, f"{_PREFIX[split]}-images-idx3-ubyte"))
    labels = read_idx(_find(d, f"{_PREFIX[split]}-labels-idx1-ubyte"))
    if images.ndim != 3 or images.dtype != np.uint8 or labels.shape != images.shape[:1]:
        raise UserError(f"{d}: images {images.shape} and labels {labels.shape} do not match")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def tiny_shapes(n: int, *, size: int = 16, seed: int = 0) -> Tensor:
    """`n` generated grey-level images (n, 1, size, size) uint8 of simple shapes."""
    if n < 1 or size < 8:
        raise UserError("tiny_shapes needs n >= 1 and size >= 8")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.zeros((n, size, size), np.float32)
    for i in range(n):
        cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
        ry, rx = rng.uniform(size * 0.15, size * 0.35, 2)
        kind = rng.integers(4)
        if kind == 0:  # filled rectangle
            mask = (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
        elif kind == 1:  # filled ellipse
            mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        elif kind == 2:  # cross
            w = max(1.0, size / 10)
            mask = ((abs(yy - cy) <= w) & (abs(xx - cx) <= rx)) | ((abs(xx - cx) <= w) & (abs(yy - cy) <= ry))
        else:  # ring
            r = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
            mask = (r <= 1) & (r >= 0.45)
        out[i][mask] = rng.uniform(0.55, 1.0)
    return torch.from_numpy(np.round(out * 255).astype(np.uint8)).unsqueeze(1)


def load_images(source: str | Path, split: str, *, limit: int | None = None) -> Tensor:
    """Images (N, C, H, W) uint8 from a source: "fashion-mnist" (the Debian package), "shapes"
    (built-in: 2,000 train / 500 test images of 16x16), or a directory of idx files."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if str(source) == BUILTIN:
        images = tiny_shapes(BUILTIN_SIZES[split], seed=0 if split == "train" else 1)
    else:
        directory = None if str(source) == "fashion-mnist" else source
        images = load_fashion_mnist(split, directory=directory)[0]
    if limit is not None:
        if limit < 1:
            raise UserError(f"--limit must be >= 1, got {limit}")
        images = images[:limit]
    return images


def to_unit(images: Tensor, *, binarize: bool, generator: torch.Generator | None = None) -> Tensor:
    """uint8 (B, C, H, W) -> float in [0, 1]; binarised by a Bernoulli draw per pixel when asked."""
    x = images.float() / 255.0
    return torch.bernoulli(x, generator=generator) if binarize else x


def fixed_binarization(images: Tensor, *, seed: int = 0) -> Tensor:
    """One Bernoulli binarisation of a set, reproducible from `seed` (for evaluation sets)."""
    return to_unit(images, binarize=True, generator=torch.Generator().manual_seed(seed))


def batches(images: Tensor, *, batch_size: int, binarize: bool, seed: int,
            device: torch.device | str = "cpu") -> Iterator[Tensor]:
    """Endless shuffled float batches (B, C, H, W) in [0, 1] on `device`, epoch after epoch;
    every epoch has a fresh order and (when binarising) fresh Bernoulli draws from `seed`."""
    n = images.shape[0]
    if n < batch_size:
        raise UserError(f"{n} images are fewer than one batch of {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=gen)
        for start in range(0, n - batch_size + 1, batch_size):
            yield to_unit(images[order[start:start + batch_size]], binarize=binarize,
                          generator=gen).to(device)


def eval_images(source: str | Path, *, binarize: bool, limit: int | None = None,
                seed: int = 1234) -> Tensor:
    """The test split as float images (N, C, H, W) in [0, 1] for evaluation: binarised once from
    `seed` (every evaluation sees the same pixels) or the 8-bit values."""
    images = load_images(source, "test", limit=limit)
    return fixed_binarization(images, seed=seed) if binarize else to_unit(images, binarize=False)
