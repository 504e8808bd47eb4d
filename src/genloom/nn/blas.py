"""One-row matrix products (GEMV) through numpy's OpenBLAS, for batch-1 decoding on CPU.

Letters: I input width, O output width.

A decoding step at batch 1 is a chain of vector-matrix products, bound by how fast the weights
stream from memory. torch's CPU wheel runs them through MKL, whose single-row kernels read far
below the memory bandwidth on the AMD CPUs this project runs on (measured, one thread, fp32:
SmolLM2's 576 x 49152 head 29 GB/s with MKL vs 35 GB/s with OpenBLAS; thirty 576 x 3072
feed-forward matrices 23 vs 31 GB/s). numpy's wheel ships OpenBLAS, so `gemv(w)` returns a
function computing x (1, I) @ w (I, O) with it, on numpy views of the same memory (no copy).
With two or more rows MKL's GEMM is kept (OpenBLAS was not faster there on every row count),
except for a model's output head: a wide (I, O) = (576, 49152) product reads 2.0-2.6x faster
through OpenBLAS at 4-16 rows and 1.5x at 64 (one thread, SmolLM2's head: 35.6 vs 17.5 ms at 16
rows), which is what a server's batched step spends most on after the layers; `HEAD_ROWS` is
the most rows sent that way.

OpenBLAS keeps its own thread pool; `match_threads()` sets it to torch's thread count so a
decoding step uses as many threads as torch would (threadpoolctl does the setting). Set
GENLOOM_BLAS=torch to keep every product in torch. Products differ from MKL's only in the
order of the float additions (about 1e-6 relative).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import Tensor

_state: dict[str, object] = {}  # "controllers": OpenBLAS thread controllers (or []), built once


def _openblas() -> list:
    """threadpoolctl controllers of numpy's OpenBLAS ([] when numpy uses another BLAS)."""
    if "controllers" not in _state:
        controllers = []
        if os.environ.get("GENLOOM_BLAS", "openblas") == "openblas":
            try:
                import numpy  # noqa: F401  (loads its BLAS so threadpoolctl can see it)
                from threadpoolctl import ThreadpoolController

                found = ThreadpoolController().select(internal_api="openblas")
                controllers = [c for c in found.lib_controllers if "numpy" in str(c.filepath)]
            except ImportError:
                controllers = []
        _state["controllers"] = controllers
    return _state["controllers"]  # type: ignore[return-value]


def available() -> bool:
    """Whether one-row products go through OpenBLAS (numpy's BLAS is OpenBLAS, not disabled)."""
    return bool(_openblas())


def match_threads() -> None:
    """Give OpenBLAS as many threads as torch uses (no-op when they already agree)."""
    n = torch.get_num_threads()
    for c in _openblas():
        if c.get_num_threads() != n:
            c.set_num_threads(n)


def qualifies(w: Tensor) -> bool:
    """Whether x @ w can go through OpenBLAS: it is available and w is a CPU float32 matrix."""
    return available() and w.device.type == "cpu" and w.dtype == torch.float32 and w.dim() == 2


HEAD_ROWS = 64  # the most rows of an output head's product sent through OpenBLAS (module docstring)


def row_product(x: Tensor, w: Tensor) -> Tensor:
    """x (B, I) @ w (I, O) through OpenBLAS, for a w that `qualifies` (read in place)."""
    return torch.from_numpy(x.numpy() @ w.detach().numpy())  # (B, O)


def gemv(w: Tensor, bias: Tensor | None = None) -> Callable[[Tensor], Tensor] | None:
    """x (1, I) -> x @ w (+ bias) as one OpenBLAS call, for a CPU float32 w (I, O); None when
    OpenBLAS is unavailable or w does not qualify. w is read in place: it must not be resized
    while the function is in use (decoding binds it per `start`)."""
    if not qualifies(w):
        return None
    wn = w.detach().numpy()  # (I, O), shares w's memory
    if bias is None:
        return lambda x: torch.from_numpy(x.numpy() @ wn)  # (1, O)
    return lambda x: torch.from_numpy(x.numpy() @ wn).add_(bias)  # (1, O)
