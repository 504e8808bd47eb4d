"""Samplers of whole token sequences from an independent proposal q (【搜出来的文本】): rejection
and importance sampling, and the proposals they draw from.

Letters: B draws, T positions (the longest draw).

A target (`genloom.decode.targets`) is an unnormalised log-density f(x) = log rho(x):

- `rejection_sample` draws x ~ q (a `SequenceSampler`) and keeps it with probability
  exp(f(x) - log M - log q(x)); the kept draws follow rho exactly when M bounds rho / q (a draw
  that breaks the bound is an error, not a silent bias).
- `importance_sample` draws from q and returns the self-normalised weights rho / q with the
  estimate of log Z = log sum rho.

Proposals: `UniformSequences` (length, then every token, uniform) and `LMSequences` (ancestral
samples of a causal LM, with their exact q). The chain samplers (Metropolis-Hastings, Gibbs) are in
`genloom.decode.mcmc`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from genloom.decode.targets import Target
from genloom.errors import UserError


@dataclass
class Drawn:
    """Independent draws from a proposal distribution q."""

    tokens: Tensor  # (B, T) long, right-padded
    mask: Tensor  # (B, T) bool
    log_q: Tensor  # (B,) log q of each draw


class SequenceSampler(Protocol):
    """Draws whole sequences with their proposal log-probabilities."""

    def draw(self, n: int, *, generator: torch.Generator | None) -> Drawn:
        ...


class UniformSequences:
    """Length uniform in [min_len, max_len], then every token uniform over `vocab`."""

    def __init__(self, vocab: Sequence[int], *, min_len: int, max_len: int, pad_id: int = 0) -> None:
        if not 0 <= min_len <= max_len or not vocab:
            raise UserError("need a vocabulary and 0 <= min_len <= max_len")
        self.vocab = torch.tensor(list(vocab), dtype=torch.long)
        self.min_len, self.max_len, self.pad_id = min_len, max_len, pad_id

    def draw(self, n: int, *, generator: torch.Generator | None) -> Drawn:
        lengths = torch.randint(self.min_len, self.max_len + 1, (n,), generator=generator)
        idx = torch.randint(0, self.vocab.numel(), (n, self.max_len), generator=generator)
        mask = torch.arange(self.max_len)[None] < lengths[:, None]
        tokens = self.vocab[idx].masked_fill(~mask, self.pad_id)
        log_q = -math.log(self.max_len - self.min_len + 1) - lengths * math.log(self.vocab.numel())
        return Drawn(tokens=tokens, mask=mask, log_q=log_q.float())


class LMSequences:
    """Ancestral samples of a causal LM (any Decodable) after [BOS], ending at EOS or after
    `max_len` tokens: q is the probability of the drawn tokens (EOS included when drawn) under the
    processed distribution, which is exactly the probability of the string under this sampler
    (a string of max_len tokens is cut there, so its q is its prefix probability).

    Args:
        model: a Decodable whose `start(input_ids=(B, 1))` takes a one-token prompt.
        bos_id, eos_id: the prompt token and the stop token.
        min_len: EOS is forbidden before this many tokens.
        banned: token ids never drawn (e.g. pad, bos, unk).
    """

    def __init__(self, model: Any, *, bos_id: int, eos_id: int, max_len: int, min_len: int = 0,
                 banned: Sequence[int] = (), pad_id: int = 0) -> None:
        self.model, self.bos_id, self.eos_id = model, bos_id, eos_id
        self.max_len, self.min_len, self.banned, self.pad_id = max_len, min_len, list(banned), pad_id

    def draw(self, n: int, *, generator: torch.Generator | None) -> Drawn:
        from genloom.decode.processors import BannedTokens
        from genloom.decode.loops import sample

        procs = [BannedTokens(self.banned)] if self.banned else []
        out = sample(self.model, max_new_tokens=self.max_len, num_samples=n, generator=generator,
                     eos_id=self.eos_id, min_new_tokens=self.min_len, processors=procs,
                     input_ids=torch.tensor([[self.bos_id]]))
        tokens = torch.full((n, self.max_len), self.pad_id, dtype=torch.long)
        for i, s in enumerate(out.sequences):
            tokens[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        lengths = torch.tensor([len(s) for s in out.sequences])
        mask = torch.arange(self.max_len)[None] < lengths[:, None]
        return Drawn(tokens=tokens, mask=mask, log_q=torch.tensor(out.scores, dtype=torch.float32))


@dataclass
class RejectionResult:
    """Accepted draws of `rejection_sample`."""

    samples: list[list[int]]  # the accepted sequences, in draw order
    draws: int  # proposals drawn in all
    accept_rate: float  # accepted / drawn (an estimate of Z / M)


def rejection_sample(
    target: Target,
    sampler: SequenceSampler,
    *,
    log_bound: float,
    n: int,
    generator: torch.Generator | None = None,
    batch: int = 1024,
    max_draws: int = 10_000_000,
) -> RejectionResult:
    """Draw until `n` proposals are accepted with probability rho(x) / (M q(x)), M = exp(log_bound).

    Raises:
        ValueError: a draw with log rho - log q > log M (the bound is wrong; the samples would be biased).
        UserError: `max_draws` proposals gave fewer than n acceptances.
    """
    samples: list[list[int]] = []
    draws = 0
    while len(samples) < n:
        if draws >= max_draws:
            raise UserError(f"rejection sampling accepted {len(samples)} of {draws} draws; the target "
                            f"is too far from the proposal (raise max_draws or use MCMC)")
        d = sampler.draw(batch, generator=generator)
        draws += batch
        log_ratio = target(d.tokens, d.mask) - d.log_q - log_bound  # (B,)
        if bool((log_ratio > 1e-4).any()):
            raise ValueError(f"log rho - log q exceeds log_bound by {float(log_ratio.max()):.4g}: "
                             f"the bound is too small and the samples would be biased")
        take = torch.log(torch.rand(batch, generator=generator)) < log_ratio
        for row in take.nonzero().squeeze(1).tolist():
            if len(samples) < n:
                samples.append(d.tokens[row, : int(d.mask[row].sum())].tolist())
    return RejectionResult(samples=samples, draws=draws, accept_rate=len(samples) / draws)


@dataclass
class ImportanceResult:
    """Weighted draws of `importance_sample`."""

    tokens: Tensor  # (B, T) the draws
    mask: Tensor  # (B, T)
    weights: Tensor  # (B,) self-normalised weights rho / q (sum 1)
    log_z: float  # log of the estimate of Z = sum_x rho(x): log mean(rho / q)
    ess: float  # effective sample size 1 / sum(weights^2)


def importance_sample(target: Target, sampler: SequenceSampler, *, n: int,
                      generator: torch.Generator | None = None) -> ImportanceResult:
    """Draw `n` sequences from q and weight them by rho / q (module docstring)."""
    d = sampler.draw(n, generator=generator)
    log_w = target(d.tokens, d.mask).float() - d.log_q  # (B,)
    log_z = float(torch.logsumexp(log_w, 0)) - math.log(n)
    if not math.isfinite(log_z):
        raise UserError(f"all {n} draws have zero target density: the proposal misses the target")
    weights = (log_w - torch.logsumexp(log_w, 0)).exp()
    return ImportanceResult(tokens=d.tokens, mask=d.mask, weights=weights, log_z=log_z,
                            ess=float(1.0 / (weights**2).sum()))
