"""Image data: the idx reader, the image sets `genloom corpora` lists, the real Fashion-MNIST sample
shipped in tests/fixtures (and the whole set where the Debian package is installed), the built-in
shapes and dynamic binarisation."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from genloom.cli import main as cli_main
from genloom.data.images import (FASHION_MNIST_DIR, batches, eval_images, idx_length, image_sets,
                                 load_fashion_mnist, load_images, read_idx, tiny_shapes)
from genloom.errors import UserError


# ----------------------------------------------------------------------------- data


def _write_idx(path: Path, array: np.ndarray, *, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">i4").tobytes()
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def test_idx_reader_roundtrip_and_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (5, 28, 28)), rng.integers(0, 10, 5)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, gz=True)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels, gz=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "t10k-images-idx3-ubyte.gz"), images)
    x, y = load_fashion_mnist("test", directory=tmp_path)
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.uint8
    assert torch.equal(y, torch.from_numpy(labels))
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(UserError, match="not an idx file"):
        read_idx(tmp_path / "bad")
    with pytest.raises(UserError, match="no train-images"):
        load_fashion_mnist("train", directory=tmp_path)


def test_image_sets_count_from_the_idx_headers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    """`genloom corpora` lists the image sets; sizes come from the idx headers and equal the
    number of images the reader loads."""
    rng = np.random.default_rng(3)
    for prefix, n, gz in (("train", 7, True), ("t10k", 3, False)):
        ext = ".gz" if gz else ""
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 28, 28)), gz=gz)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{ext}", rng.integers(0, 10, n), gz=gz)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    assert idx_length(path) == len(read_idx(path)) == 7
    monkeypatch.setattr("genloom.data.images.FASHION_MNIST_DIR", tmp_path)
    fm = image_sets()[0]
    assert (fm["installed"], fm["train"], fm["test"]) == ("yes", "7", "3")
    assert len(load_fashion_mnist("test", directory=tmp_path)[0]) == int(fm["test"])
    assert cli_main(["corpora"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("fashion-mnist "))
    assert row.split()[:4] == ["fashion-mnist", "yes", "7", "3"]
    monkeypatch.setattr("genloom.data.images.FASHION_MNIST_DIR", tmp_path / "absent")
    assert image_sets()[0]["installed"] == "no"
    (tmp_path / "bad").write_bytes(b"\x00\x00\x08")
    with pytest.raises(UserError, match="not an idx file"):
        idx_length(tmp_path / "bad")


def test_missing_fashion_mnist_names_the_install_command(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    monkeypatch.setattr("genloom.data.images.FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train")


SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "fashion_mnist_sample"


@pytest.mark.parametrize("split,prefix,pixel_sum", [("train", "train", 17600730), ("test", "t10k", 17257326)])
def test_real_fashion_mnist_sample(split: str, prefix: str, pixel_sum: int) -> None:
    """The shipped sample of the real set (30 images per class, see its README) goes through the
    same reader as the installed package; where the package is installed, the sample is exactly
    its first 30 images of each class."""
    x, y = load_fashion_mnist(split, directory=SAMPLE)
    assert x.shape == (300, 1, 28, 28) and x.dtype == torch.uint8
    assert torch.bincount(y).tolist() == [30] * 10 and int(x.long().sum()) == pixel_sum
    assert load_images(SAMPLE, split, limit=7).shape == (7, 1, 28, 28)
    if FASHION_MNIST_DIR.is_dir():  # the whole set: 10 balanced classes, the sample its prefix
        full_x, full_y = load_fashion_mnist(split)
        assert torch.bincount(full_y).tolist() == [len(full_y) // 10] * 10
        keep = torch.cat([torch.nonzero(full_y == c).flatten()[:30] for c in range(10)]).sort().values
        assert torch.equal(full_x[keep], x) and torch.equal(full_y[keep], y)


def test_tiny_shapes_and_dynamic_binarisation() -> None:
    a, b = tiny_shapes(50, seed=3), tiny_shapes(50, seed=3)
    assert torch.equal(a, b) and a.shape == (50, 1, 16, 16) and a.max() > 100
    it = batches(a, batch_size=10, binarize=True, seed=0)
    x1, x2 = next(it), next(it)
    assert set(x1.unique().tolist()) <= {0.0, 1.0} and x1.shape == (10, 1, 16, 16)
    assert not torch.equal(x1, x2)
    assert load_images("shapes", "test", limit=7).shape == (7, 1, 16, 16)


def test_eval_images_are_one_fixed_binarisation() -> None:
    a, b = eval_images("shapes", binarize=True, limit=5), eval_images("shapes", binarize=True, limit=5)
    assert torch.equal(a, b) and set(a.unique().tolist()) <= {0.0, 1.0}
    grey = eval_images("shapes", binarize=False, limit=5)
    assert torch.equal(grey, load_images("shapes", "test", limit=5).float() / 255)
    assert not torch.equal(eval_images("shapes", binarize=True, limit=5, seed=1), a)
