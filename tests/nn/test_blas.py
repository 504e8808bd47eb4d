"""genloom.nn.blas: one-row products through numpy's OpenBLAS equal torch's."""

from __future__ import annotations

import pytest
import torch

from genloom.nn import blas

pytestmark = pytest.mark.skipif(not blas.available(), reason="numpy's BLAS is not OpenBLAS here")


@pytest.mark.parametrize("bias", [False, True])
def test_gemv_equals_torch_and_reads_the_weight_in_place(bias):
    torch.manual_seed(0)
    w = torch.randn(64, 300)  # (I, O) contiguous, as the decoder binds an input-major weight
    b = torch.randn(300) if bias else None
    f = blas.gemv(w, b)
    x = torch.randn(1, 64)
    ref = x @ w + (b if bias else 0)
    assert (f(x) - ref).abs().max() <= 1e-5 * ref.abs().max()
    w.mul_(2)  # bound to the same memory: no stale copy
    assert (f(x) - (x @ w + (b if bias else 0))).abs().max() <= 1e-5 * ref.abs().max() * 2


def test_gemv_refuses_what_it_cannot_do():
    assert blas.gemv(torch.randn(4, 4, dtype=torch.float64)) is None
    assert blas.gemv(torch.randn(4)) is None


def test_match_threads_follows_torch():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        blas.match_threads()
        assert all(c.get_num_threads() == 1 for c in blas._openblas())
    finally:
        torch.set_num_threads(before)
        blas.match_threads()
