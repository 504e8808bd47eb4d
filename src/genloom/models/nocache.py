"""`NoCache`: any seq2seq model's forward as a `Decodable` that keeps no cache, the way the post's
decoder works (bojone/seq2seq's `gen_title` re-runs the whole model on the source and the title so
far at every step). It is the slow reference a cached `start` / `step` / `select` must equal, and
the baseline of benchmarks/title_decode.py.

Letters: B rows, S source length, t tokens generated so far, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class NoCacheState:
    """All `NoCache` keeps: the sources and the title so far."""

    src: Tensor  # (B, S) source ids
    prefix: Tensor  # (B, t + 1) bos + the tokens generated so far

    def select(self, index: Tensor) -> NoCacheState:
        return NoCacheState(self.src.index_select(0, index), self.prefix.index_select(0, index))


class NoCache(nn.Module):
    """The post's decoder as a `Decodable`: no state but the tokens so far; every `step` re-runs
    the whole model (encoder included) on the source and the full title prefix, as
    bojone/seq2seq's `gen_title` does. The reference that the cached path must equal, and the
    baseline of benchmarks/title_decode.py.

    The wrapped model needs `forward(src, tgt_in)` -> scores (B, T, V), or an output whose first
    field they are (`UniLMSeq2Seq`'s `Seq2SeqOutput`).
    """

    def __init__(self, model: nn.Module, *, bos_id: int) -> None:
        super().__init__()
        self.model = model
        self.bos_id = bos_id
        self.vocab_size = model.vocab_size

    def _run(self, state: NoCacheState) -> Tensor:
        out = self.model(state.src, state.prefix)
        return (out[0] if isinstance(out, tuple) else out)[:, -1]  # (B, V)

    def start(self, *, src: Tensor, max_new_tokens: int | None = None) -> tuple[Tensor, NoCacheState]:
        """src (B, S) -> scores (B, V) of the first title token, state (src, prefix (B, 1))."""
        bos = torch.full((src.shape[0], 1), self.bos_id, dtype=torch.long, device=src.device)
        state = NoCacheState(src, bos)
        return self._run(state), state

    def step(self, tokens: Tensor, state: NoCacheState) -> tuple[Tensor, NoCacheState]:
        """tokens (B,) appended to the prefix (B, t+1); the whole model runs again."""
        new = NoCacheState(state.src, torch.cat([state.prefix, tokens[:, None]], 1))
        return self._run(new), new

    def select(self, state: NoCacheState, index: Tensor) -> NoCacheState:
        """Keep / reorder rows of the source and prefix."""
        return state.select(index)
