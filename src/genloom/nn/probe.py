"""Probe points: let a layer hand an internal tensor to whoever is listening, at ~zero cost otherwise.

A layer that computes something worth inspecting (attention probabilities, CLN gains, an RTF
kernel) calls

    if probe.active():
        probe.record(self, "attn_probs", probs)   # probs (B, H, T, S)

`active()` is a single truth test on a module-level list, so the guarded call costs one function
call and one `bool` when nobody listens. Listeners are installed with `listening(sink)` (used by
`genloom.train.taps.Taps`, which maps the module back to its qualified name such as
"blocks.0.attn" and stores the tensor under "blocks.0.attn:attn_probs"). Listeners nest; each
active one receives every record. This module lives in `nn/` so layers can call it without
importing `train/`.

Shape letters: B batch, H heads, T target positions, S source positions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import Tensor, nn

Sink = Callable[[nn.Module, str, Tensor], None]

# The active listeners, innermost last. A plain list: its truth test is the cheapest check there is.
_SINKS: list[Sink] = []


def active() -> bool:
    """True only while at least one `listening(...)` context is open."""
    return bool(_SINKS)


def record(module: nn.Module, key: str, tensor: Tensor) -> None:
    """Forward `tensor`, recorded by `module` under `key`, to every active listener.

    Args:
        module: the layer recording (listeners map it back to its qualified name).
        key: what the tensor is, e.g. "attn_probs".
        tensor: the value; listeners decide whether to detach or copy it.
    """
    for sink in tuple(_SINKS):
        sink(module, key, tensor)


@contextmanager
def listening(sink: Sink) -> Iterator[None]:
    """Install `sink(module, key, tensor)` as a listener for the duration of the block.

    The listener is removed on exit, also when the block raises, so `active()` is False again
    once the outermost context closes.
    """
    _SINKS.append(sink)
    try:
        yield
    finally:
        # remove this very sink (identity), even if inner contexts were left out of order
        for i in range(len(_SINKS) - 1, -1, -1):
            if _SINKS[i] is sink:
                del _SINKS[i]
                break
