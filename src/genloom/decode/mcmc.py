"""Chain samplers over token sequences (【搜出来的文本】): Metropolis-Hastings over any proposal,
simulated annealing, and Gibbs sampling from a masked LM.

Letters: N chains, T positions (the longest a state may grow), V vocabulary size.

A target (`genloom.decode.targets`) is an unnormalised log-density f(x) = log rho(x). The
samplers here never normalise it (independent-proposal samplers, rejection and importance
sampling, are in `genloom.decode.independent`):

- `metropolis_hastings` runs N chains in parallel. A `Proposal` returns, for every chain, a
  proposed state y with log q(y|x) and log q(x|y); y is accepted with probability
  min(1, exp((f(y) - f(x)) / tau) * q(x|y) / q(y|x)), tau from an annealing schedule
  (`Constant`, `Linear`, `Geometric`; tau = 1 samples rho, tau -> 0 searches its maximum).
  `correct=False` drops the q ratio: that is Metropolis' rule, right only for a symmetric
  proposal (the tests use it to show the bias an asymmetric one then has).
- `gibbs` resamples one free position per chain per step from a `fill` model's conditional
  (BERT's "mouth": a masked LM, or `ExactConditional` of a target), acceptance 1, length fixed.

Both are batched over chains, seeded with a `torch.Generator`, and return the last and the
best (highest f) state of every chain (`SearchResult`). States are `Chains`: right-padded token
rows of a fixed width T with a span id per position (> 0 marks a pinned keyword token that moves
may not touch) and a condition index per chain (which reference or keyword set it serves).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import Tensor
from tqdm import tqdm

from genloom.decode.targets import Target
from genloom.errors import UserError


@dataclass
class Chains:
    """N states, one per chain."""

    tokens: Tensor  # (N, T) long, right-padded with pad_id; T bounds the length of every state
    lengths: Tensor  # (N,) long, real tokens per state
    spans: Tensor  # (N, T) long, keyword span id (>= 1) at pinned tokens, 0 at free ones and padding
    log_target: Tensor  # (N,) float, f(x) (temperature 1); NaN where not scored yet
    cond: Tensor  # (N,) long, condition index of each chain (see targets.py)
    pad_id: int = 0  # id written under padding

    @property
    def mask(self) -> Tensor:
        """(N, T) bool, True at real tokens."""
        return torch.arange(self.tokens.shape[1], device=self.tokens.device)[None] < self.lengths[:, None]

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def select(self, index: Tensor) -> Chains:
        """The chains at `index` (repeats allowed)."""
        return replace(self, tokens=self.tokens[index], lengths=self.lengths[index], spans=self.spans[index],
                       log_target=self.log_target[index], cond=self.cond[index])

    def where(self, take: Tensor, other: Chains) -> Chains:
        """Rows of `other` where take (N,) is True, of self elsewhere."""
        t = take[:, None]
        return replace(self, tokens=torch.where(t, other.tokens, self.tokens),
                       lengths=torch.where(take, other.lengths, self.lengths),
                       spans=torch.where(t, other.spans, self.spans),
                       log_target=torch.where(take, other.log_target, self.log_target),
                       cond=torch.where(take, other.cond, self.cond))

    def rows(self) -> list[list[int]]:
        """Each state's tokens as a list."""
        return [r[:n] for r, n in zip(self.tokens.tolist(), self.lengths.tolist())]


def make_chains(
    rows: Sequence[Sequence[int]],
    *,
    width: int,
    target: Target | None = None,
    spans: Sequence[Sequence[int]] | None = None,
    cond: Sequence[int] | Tensor | None = None,
    pad_id: int = 0,
) -> Chains:
    """Chains from token lists, scored by `target` (NaN log_target without one).

    Args:
        rows: N initial states.
        width: T, the longest a state may become (>= every row's length).
        spans: per row, a span id per token (0 = free); default all free.
        cond: condition index per chain; default 0.
    """
    n = len(rows)
    if n == 0:
        raise UserError("no chains to run")
    if any(len(r) > width for r in rows):
        raise UserError(f"an initial state is longer than the width {width}")
    tokens = torch.full((n, width), pad_id, dtype=torch.long)
    span_t = torch.zeros((n, width), dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        if spans is not None:
            span_t[i, : len(r)] = torch.tensor(list(spans[i]), dtype=torch.long)
    cond_t = torch.zeros(n, dtype=torch.long) if cond is None else torch.as_tensor(cond, dtype=torch.long)
    chains = Chains(tokens=tokens, lengths=torch.tensor([len(r) for r in rows]), spans=span_t,
                    log_target=torch.full((n,), math.nan), cond=cond_t, pad_id=pad_id)
    if target is not None:
        chains.log_target = target(chains.tokens, chains.mask, chains.cond).float()
    return chains


def keyword_chains(
    keyword_sets: Sequence[Sequence[Sequence[int]]],
    *,
    chains_per_set: int,
    width: int,
    target: Target | None = None,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
    pad_id: int = 0,
) -> Chains:
    """Chains that start as the concatenated keywords of their set, each keyword pinned.

    Args:
        keyword_sets: S sets, each a list of keywords (token-id lists).
        chains_per_set: chains per set; chain s * chains_per_set + j serves set s (cond = s).
        shuffle: chains after the first of each set start from a random order of the keywords
            (pinned keywords never swap places, so the order is chosen here).
    """
    rows, spans, cond = [], [], []
    for s, keywords in enumerate(keyword_sets):
        if not keywords or any(len(k) == 0 for k in keywords):
            raise UserError(f"keyword set {s} is empty or has a keyword with no tokens")
        for j in range(chains_per_set):
            order = list(range(len(keywords)))
            if shuffle and j > 0:
                order = torch.randperm(len(keywords), generator=generator).tolist()
            rows.append([t for i in order for t in keywords[i]])
            spans.append([i + 1 for i in order for _ in keywords[i]])
            cond.append(s)
    return make_chains(rows, width=width, target=target, spans=spans, cond=cond, pad_id=pad_id)


# ---- annealing schedules ------------------------------------------------------------------------


class Constant:
    """tau = value at every step (value 1 samples the target itself)."""

    def __init__(self, value: float = 1.0) -> None:
        if value <= 0:
            raise UserError(f"a temperature must be > 0, got {value}")
        self.value = value

    def __call__(self, step: int) -> float:
        return self.value


class Linear:
    """tau falls linearly from `start` (step 0) to `end` (step steps - 1), then stays."""

    def __init__(self, start: float, end: float, steps: int) -> None:
        if start <= 0 or end <= 0 or steps < 1:
            raise UserError(f"need temperatures > 0 and steps >= 1, got {start}, {end}, {steps}")
        self.start, self.end, self.steps = start, end, steps

    def __call__(self, step: int) -> float:
        p = min(1.0, step / max(1, self.steps - 1))
        return self.start + (self.end - self.start) * p


class Geometric(Linear):
    """tau falls geometrically from `start` to `end` over `steps` steps (the classic annealing
    schedule tau_k = start * r^k), then stays."""

    def __call__(self, step: int) -> float:
        p = min(1.0, step / max(1, self.steps - 1))
        return self.start * (self.end / self.start) ** p


# name -> schedule class, for the CLI (every class takes start, end, steps except Constant)
SCHEDULES: dict[str, Callable[..., Callable[[int], float]]] = {
    "constant": lambda start, end, steps: Constant(start),
    "linear": Linear,
    "geometric": Geometric,
}


# ---- Metropolis-Hastings ------------------------------------------------------------------------


@dataclass
class Move:
    """What a proposal returns for every chain."""

    proposed: Chains  # y (rows where `active` is False are copies of x)
    log_q_forward: Tensor  # (N,) log q(y | x)
    log_q_backward: Tensor  # (N,) log q(x | y)
    active: Tensor  # (N,) bool, False where no move could be made (the chain stays)
    scored: bool  # proposed.log_target already holds f(y)
    rows_scored: int = 0  # rows the proposal had the target score (throughput accounting)


class Proposal(Protocol):
    """A Metropolis-Hastings proposal over `Chains`."""

    def propose(self, chains: Chains, *, target: Target, temperature: float,
                generator: torch.Generator | None, step: int) -> Move:
        """One proposed state per chain with its forward and backward log-probabilities (`step`
        counts from 0, for proposals that scan positions in order)."""
        ...


@dataclass
class SearchResult:
    """What every sampler returns."""

    last: Chains  # the state of each chain after the last step
    best: Chains  # the highest-f state each chain visited (the initial state included)
    accept_rate: float  # accepted / proposed moves over the run (1.0 for Gibbs)
    rows_scored: int  # rows the target scored over the run


def _schedule(schedule: float | Callable[[int], float]) -> Callable[[int], float]:
    return Constant(float(schedule)) if isinstance(schedule, (int, float)) else schedule


def _keep_best(best: Chains, chains: Chains) -> Chains:
    better = chains.log_target > best.log_target
    better |= torch.isnan(best.log_target) & ~torch.isnan(chains.log_target)
    return best.where(better, chains)


def metropolis_hastings(
    target: Target,
    proposal: Proposal,
    init: Chains,
    *,
    steps: int,
    schedule: float | Callable[[int], float] = 1.0,
    generator: torch.Generator | None = None,
    correct: bool = True,
    on_step: Callable[[int, Chains], None] | None = None,
    progress: bool = False,
) -> SearchResult:
    """Run the chains `steps` moves of Metropolis-Hastings (simulated annealing with a falling
    schedule).

    Args:
        target: f = log rho; init.log_target is (re)computed when it holds NaN.
        proposal: makes one proposed state per chain per step (mcmc_edits.EditProposal, ...).
        init: the starting states.
        steps: moves per chain.
        schedule: tau per step (a number for a constant temperature).
        generator: the seeded source of every random choice.
        correct: use q(x|y) / q(y|x) in the acceptance (False: Metropolis, module docstring).
        on_step: called as on_step(step, chains) after every step (e.g. to collect samples).
        progress: show a tqdm bar.

    Returns:
        SearchResult with the last and best state of each chain.
    """
    tau_of = _schedule(schedule)
    chains = init
    scored_rows = 0
    if torch.isnan(chains.log_target).any():
        chains = replace(chains, log_target=target(chains.tokens, chains.mask, chains.cond).float())
        scored_rows += len(chains)
    best = chains
    proposed = accepted = 0
    for step in tqdm(range(steps), disable=not progress, unit="step", dynamic_ncols=True):
        tau = tau_of(step)
        move = proposal.propose(chains, target=target, temperature=tau, generator=generator, step=step)
        y = move.proposed
        scored_rows += move.rows_scored
        if not move.scored:
            y = replace(y, log_target=target(y.tokens, y.mask, y.cond).float())
            scored_rows += len(y)
        f_x, f_y = chains.log_target, y.log_target
        log_ratio = (f_y - f_x) / tau
        if correct:
            log_ratio = log_ratio + move.log_q_backward - move.log_q_forward
        x_out = torch.isneginf(f_x)  # an infeasible state: any feasible move is taken
        log_ratio = torch.where(x_out & torch.isfinite(f_y), math.inf, log_ratio)
        log_ratio = torch.where(torch.isneginf(f_y) | torch.isneginf(move.log_q_forward), -math.inf, log_ratio)
        log_ratio = torch.nan_to_num(log_ratio, nan=-math.inf)
        u = torch.rand(len(chains), generator=generator)
        take = move.active & (torch.log(u) < log_ratio)
        proposed += int(move.active.sum())
        accepted += int(take.sum())
        chains = chains.where(take, y)
        best = _keep_best(best, chains)
        if on_step is not None:
            on_step(step, chains)
    return SearchResult(last=chains, best=best, accept_rate=accepted / max(1, proposed), rows_scored=scored_rows)


# ---- Gibbs sampling -----------------------------------------------------------------------------


class FillModel(Protocol):
    """A model of one position given the rest: a masked LM (`MaskedLMScorer`) or `ExactConditional`."""

    def fill(self, tokens: Tensor, positions: Tensor, mask: Tensor | None = None) -> Tensor:
        ...


def gibbs(
    model: FillModel,
    init: Chains,
    *,
    steps: int,
    vocab: Sequence[int] | Tensor,
    generator: torch.Generator | None = None,
    schedule: float | Callable[[int], float] = 1.0,
    order: str = "random",
    target: Target | None = None,
    on_step: Callable[[int, Chains], None] | None = None,
    progress: bool = False,
) -> SearchResult:
    """Gibbs sampling with a fill model as the conditional (Su's "BERT has a mouth" sampler).

    Every step, each chain picks one free position (uniformly with order="random", or the next one
    left to right with order="sweep"), asks `model.fill` for the conditional of that position,
    restricts it to `vocab`, divides the logits by tau and draws the new token (acceptance 1).
    Lengths never change; a chain may start from all-[MASK] rows, which the fill model then sees
    as context until they are replaced.

    Args:
        target: scores the states to track the best one (None: `best` is the last state and
            log_target stays NaN).
        Other arguments as in `metropolis_hastings`.
    """
    if order not in ("random", "sweep"):
        raise UserError(f"order must be 'random' or 'sweep', got {order!r}")
    tau_of = _schedule(schedule)
    vocab_t = torch.as_tensor(vocab, dtype=torch.long)
    chains = init
    scored_rows = 0
    if target is not None and torch.isnan(chains.log_target).any():
        chains = replace(chains, log_target=target(chains.tokens, chains.mask, chains.cond).float())
        scored_rows += len(chains)
    best = chains
    n = len(chains)
    rows = torch.arange(n)
    for step in tqdm(range(steps), disable=not progress, unit="step", dynamic_ncols=True):
        free = (chains.spans == 0) & chains.mask  # (N, T)
        n_free = free.sum(1)
        movable = n_free > 0
        if order == "random":
            weights = free.float() + (~movable).float()[:, None]  # rows with nothing free: dummy
            pos = torch.multinomial(weights, 1, generator=generator).squeeze(1)  # (N,)
        else:
            rank = step % n_free.clamp(min=1)  # (N,) which free position this step visits
            pos = (free.long().cumsum(1) == rank[:, None] + 1).float().argmax(1)
        logits = model.fill(chains.tokens, pos, chains.mask)  # (N, V)
        allowed = torch.full_like(logits, -math.inf)
        allowed[:, vocab_t] = 0.0
        logits = (logits / tau_of(step) + allowed).float()
        new = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)
        tokens = chains.tokens.clone()
        tokens[rows, pos] = torch.where(movable, new, chains.tokens[rows, pos])
        log_target = torch.full((n,), math.nan)
        if target is not None:
            log_target = target(tokens, chains.mask, chains.cond).float()
            scored_rows += n
        chains = replace(chains, tokens=tokens, log_target=log_target)
        best = _keep_best(best, chains) if target is not None else chains
        if on_step is not None:
            on_step(step, chains)
    return SearchResult(last=chains, best=best, accept_rate=1.0, rows_scored=scored_rows)
