"""The decoding protocol every generator model implements (DESIGN.md, "The decoding protocol").

Letters: B batch rows, V vocabulary size, t tokens generated so far.

A model is a step function with a cache: `start` prefills the prompt (or encodes the source) and
returns the logits for the first new token; `step` feeds one token per row and returns the logits
for the next; `select` keeps or reorders rows of the state (beam reordering, dropping finished
rows). Search loops call `model.start(**inputs, max_new_tokens=N)`: every `start` accepts
`max_new_tokens` (the most tokens that will be stepped, so a cache can be allocated once) and may
ignore it. Rows of the returned logits are in the order of the input rows. Search loops in
`genloom.decode` see models only through these three methods, so the LSTM's (h, c), a
Transformer's KV cache and an RTF shift register all live behind the same interface.

Two optional methods serve continuous batching (genloom.serve.engine): `join(states) -> state`
stacks the rows of states started apart (each row decoding exactly as it did alone) and
`clone_state(state) -> state` copies a state so one prefill can be decoded twice; genloom's
`Transformer` has both, and a model without them is batched by waves.

Two helpers read what every caller needs from any model: `model_device` (where its inputs go)
and `context_length` (the most prompt + new tokens its `start` accepts; a model states it as a
`max_len` attribute, None for unlimited, or through its config's `max_len`).

A logits processor is a pure callable `(logits (B, V), history (B, t)) -> logits (B, V)` that
derives what it needs from the history (the generated tokens so far, long, on the logits' device)
and never modifies its input in place.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

State = Any
LogitsProcessor = Callable[[Tensor, Tensor], Tensor]


@runtime_checkable
class Decodable(Protocol):
    vocab_size: int

    def start(self, **inputs: Any) -> tuple[Tensor, State]:
        """Prefill / encode; returns logits (B, V) for the first new token and the state."""
        ...

    def step(self, tokens: Tensor, state: State) -> tuple[Tensor, State]:
        """tokens (B,) long -> logits (B, V) for the next token, and the new state."""
        ...

    def select(self, state: State, index: Tensor) -> State:
        """Keep / reorder rows: index (B',) long into the current rows; returns the new state."""
        ...


@runtime_checkable
class Scorer(Protocol):
    """Sequence scoring for MCMC (decode/mcmc.py): total log-probability of each row."""

    def log_prob(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """tokens (B, T), mask (B, T) bool -> log p(tokens) (B,) summed over unmasked positions."""
        ...


def model_device(model: Any) -> torch.device:
    """Where a Decodable's inputs go: its parameters' device (or those of the module it wraps,
    `model.model`, as `HFCausalLM` does), else the CPU."""
    for holder in (model, getattr(model, "model", None)):
        if isinstance(holder, nn.Module):
            p = next(holder.parameters(), None)
            if p is not None:
                return p.device
    return torch.device("cpu")


def context_length(model: Any) -> int | None:
    """The most prompt + new tokens `model.start` accepts (None: unlimited): the model's own
    `max_len` attribute when it has one, else its config's `max_len`."""
    if hasattr(model, "max_len"):
        return model.max_len
    return getattr(getattr(model, "config", None), "max_len", None)
