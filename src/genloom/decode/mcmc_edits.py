"""CGMH's edit moves (replace, insert, delete) as a Metropolis-Hastings proposal, batched.

Letters: N chains, T width of the chains, V vocabulary size, K candidates per chain, A allowed
tokens (len(vocab)).

One step, for every chain at once (Miao et al. 2019, "CGMH"; 【搜出来的文本】(四)):

1. pick an action with fixed prior probabilities (replace / insert / delete) and a position:
   a free (not pinned) token for replace and delete, a slot for insert (any gap of 0..L that
   does not split a pinned keyword), uniformly (or, for replace-only runs, the next free token
   left to right: a deterministic scan, each of whose steps keeps the target invariant); an
   action that is impossible in this state (no free token, the length at its bound) leaves the
   chain where it is;
2. make the "hole" row: x itself for replace and delete, x with a blank inserted for insert; a
   `SlotModel` scores every token for the hole given the rest of the row (a masked LM with
   [MASK] there, or forward x backward LM scores, CGMH's proposal); the K best allowed tokens
   are the candidates C;
3. draw the new token t from C, weighted either by the target itself at the current temperature
   (weighting="target", CGMH: every candidate sentence is scored, all chains' candidates in one
   batch) or by the slot model's scores (weighting="model": only the chosen sentence is scored);
   with probability `explore` t is instead uniform over the allowed tokens, which makes every
   state reachable whatever K is;
4. report log q(y|x) and log q(x|y). Insert at slot i and delete at position i are each other's
   reverse, and replace is its own; the hole of "delete x_i" is the hole of "replace x_i", so the
   reverse insertion's candidate weights come from the same batch of rows. With
   q_tok(t) = (1 - explore) * p_C(t) + explore / A (p_C = 0 outside C):
     replace:  q(y|x) = q_tok(t),                             q(x|y) = q_tok(x_i)
     insert:   q(y|x) = p_ins / slots(x) * q_tok(t),           q(x|y) = p_del / free(y)
     delete:   q(y|x) = p_del / free(x),                      q(x|y) = p_ins / slots(y) * q_tok(x_i)
   (the replace and action/position factors cancel). Different paths to the same y (inserting
   "a" before or after an "a") are distinct moves with their own reverse, so detailed balance
   holds path by path and the Metropolis-Hastings chain is exact for the target (tests check the
   total variation distance to an enumerated distribution).

Candidate sets depend on the hole row only (never on the token in the hole), so the forward and
reverse moves see the same set; with explore = 0 and K < A a token outside its top-K can neither
be proposed nor replaced (the reverse move would be impossible), so a chain that holds one keeps
it: explore > 0 (the `genloom search` tasks use 0.05) makes every move reversible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
from torch import Tensor

from genloom.decode.mcmc import Chains, Move
from genloom.decode.targets import Target, _logits, reverse_rows
from genloom.errors import UserError

ACTIONS = ("replace", "insert", "delete")
WEIGHTINGS = ("target", "model")


class SlotModel(Protocol):
    """Scores the token of one position given the rest of its row."""

    def slot_scores(self, tokens: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        """tokens (B, T), mask (B, T), positions (B,) -> log-scores (B, V); the token at the
        position is ignored (it is the hole)."""
        ...


class MaskedSlots:
    """Slot scores from a masked LM: log_softmax of `fill` with [MASK] in the hole."""

    def __init__(self, masked_lm: Any) -> None:
        self.masked_lm = masked_lm  # a MaskedLMScorer (or anything with fill)

    def slot_scores(self, tokens: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        return self.masked_lm.fill(tokens, positions, mask).log_softmax(-1)  # (B, V)


class LMSlots:
    """CGMH's proposal: log p_fwd(w | BOS, x_<i) + log p_bwd(w | BOS, reversed x_>i).

    Args:
        forward: causal LM (`model(ids) -> logits` or `.logits`).
        backward: causal LM over reversed text, or None (forward scores only, e.g. SmolLM2).
        bos_id: the start token of both models.
    """

    def __init__(self, forward: Any, backward: Any | None, *, bos_id: int) -> None:
        self.forward, self.backward, self.bos_id = forward.eval(), backward, bos_id
        if backward is not None:
            backward.eval()

    @torch.inference_mode()
    def _next_logp(self, model: Any, tokens: Tensor, index: Tensor) -> Tensor:
        """log p(token at index | BOS, tokens[:index]) for every token: (B, V)."""
        width = int(index.max()) + 1
        ids = torch.cat([tokens.new_full((tokens.shape[0], 1), self.bos_id), tokens[:, : width - 1]], dim=1)
        logits = _logits(model(ids))  # (B, W, V)
        return logits[torch.arange(ids.shape[0]), index].float().log_softmax(-1)

    def slot_scores(self, tokens: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        safe = tokens.masked_fill(~mask, self.bos_id)
        scores = self._next_logp(self.forward, safe, positions)
        if self.backward is not None:
            rev = reverse_rows(safe, mask)
            scores = scores + self._next_logp(self.backward, rev, mask.sum(1) - 1 - positions)
        return scores


class UniformSlots:
    """Equal scores for every token (the candidates are then the first K allowed ids, or all)."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def slot_scores(self, tokens: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        return torch.zeros(tokens.shape[0], self.vocab_size, device=tokens.device)


@dataclass
class EditConfig:
    """Settings of `EditProposal`."""

    replace: float = 1 / 3  # prior probability of a replace move
    insert: float = 1 / 3  # prior probability of an insert move
    delete: float = 1 / 3  # prior probability of a delete move
    top_k: int = 20  # K, candidates per hole from the slot model
    weighting: str = "target"  # "target" (CGMH: candidates weighted by the target) or "model"
    explore: float = 0.0  # probability of a uniform token instead of a candidate (exactness for any K)
    min_len: int = 1  # no deletion below this length (chains must start at or above it)
    max_len: int | None = None  # no insertion above this length (None: the chains' width)
    order: str = "random"  # positions: "random" (uniform) or "sweep" (left to right; replace only)

    def __post_init__(self) -> None:
        priors = (self.replace, self.insert, self.delete)
        if min(priors) < 0 or sum(priors) <= 0:
            raise UserError(f"action priors must be >= 0 with a positive sum, got {priors}")
        if (self.insert > 0) != (self.delete > 0):
            raise UserError("insert and delete are each other's reverse: give both a prior > 0, or neither")
        if self.weighting not in WEIGHTINGS:
            raise UserError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")
        if self.order not in ("random", "sweep"):
            raise UserError(f"order must be 'random' or 'sweep', got {self.order!r}")
        if self.order == "sweep" and (self.insert > 0 or self.delete > 0):
            raise UserError("order='sweep' visits positions of a fixed length: use it with replace moves only")
        if self.top_k < 1 or not 0.0 <= self.explore <= 1.0:
            raise UserError(f"need top_k >= 1 and 0 <= explore <= 1, got {self.top_k}, {self.explore}")


def _slot_ok(spans: Tensor, lengths: Tensor) -> Tensor:
    """(N, T + 1) bool: slot j (before token j; j = L is the end) does not split a keyword."""
    n, t = spans.shape
    col = torch.arange(t + 1, device=spans.device)[None]
    inside = torch.zeros(n, t + 1, dtype=torch.bool, device=spans.device)
    inside[:, 1:t] = (spans[:, :-1] == spans[:, 1:]) & (spans[:, 1:] > 0)
    return (col <= lengths[:, None]) & ~inside


def _insert(x: Tensor, pos: Tensor, value: Tensor) -> Tensor:
    """x (N, T) with value (N,) inserted at pos (N,) (the last column falls off)."""
    col = torch.arange(x.shape[1], device=x.device)[None]
    out = x.gather(1, (col - (col > pos[:, None]).long()).clamp(min=0))
    return out.scatter(1, pos[:, None], value[:, None])


def _delete(x: Tensor, pos: Tensor, fill: int) -> Tensor:
    """x (N, T) with column pos (N,) removed (`fill` enters at the right)."""
    t = x.shape[1]
    col = torch.arange(t, device=x.device)[None]
    src = col + (col >= pos[:, None]).long()
    out = x.gather(1, src.clamp(max=t - 1))
    return out.masked_fill(src >= t, fill)


class EditProposal:
    """CGMH's replace / insert / delete moves (module docstring) for `metropolis_hastings`.

    Args:
        slots: the SlotModel that ranks candidates (MaskedSlots, LMSlots, UniformSlots).
        vocab: the token ids a move may write (no specials).
        config: action priors, K, weighting, explore, length bounds.
    """

    def __init__(self, slots: SlotModel, vocab: Sequence[int], config: EditConfig | None = None) -> None:
        self.slots, self.config = slots, config or EditConfig()
        self.vocab = torch.tensor(sorted(set(int(v) for v in vocab)), dtype=torch.long)
        if self.vocab.numel() == 0:
            raise UserError("no tokens to propose: the allowed vocabulary is empty")
        c = self.config
        total = c.replace + c.insert + c.delete
        self.priors = torch.tensor([c.replace, c.insert, c.delete]) / total  # (3,)

    def _log_qtok(self, log_pc: Tensor, cand: Tensor, token: Tensor) -> Tensor:
        """log q_tok(token) (N,): the candidate mass of `token` mixed with the uniform draw."""
        hit = cand == token[:, None]  # (N, K)
        log_p = torch.where(hit, log_pc, -math.inf).logsumexp(1)
        eps = self.config.explore
        if eps <= 0:
            return log_p
        uni = torch.full_like(log_p, math.log(eps) - math.log(self.vocab.numel()))
        if eps >= 1:
            return uni
        return torch.logaddexp(log_p + math.log1p(-eps), uni)

    @torch.inference_mode()
    def propose(self, chains: Chains, *, target: Target, temperature: float,
                generator: torch.Generator | None, step: int = 0) -> Move:
        c = self.config
        n, t = chains.tokens.shape
        dev = chains.tokens.device
        max_len = min(c.max_len or t, t)
        lengths, spans = chains.lengths, chains.spans
        if bool((lengths < c.min_len).any()) or bool((lengths > max_len).any()):
            raise UserError(f"every chain must start with {c.min_len}..{max_len} tokens (the edit moves keep "
                            f"lengths in that range and could not leave it)")
        col = torch.arange(t, device=dev)[None]
        free = (spans == 0) & (col < lengths[:, None])  # (N, T)
        n_free = free.sum(1)
        slot_ok = _slot_ok(spans, lengths)  # (N, T + 1)
        n_slots = slot_ok.sum(1)

        action = torch.multinomial(self.priors.expand(n, 3), 1, generator=generator).squeeze(1)  # (N,)
        is_ins, is_del = action == 1, action == 2
        active = torch.where(is_ins, (lengths < max_len) & (n_slots > 0),
                             (n_free > 0) & (~is_del | (lengths > c.min_len)))
        weights = torch.where(is_ins[:, None], slot_ok[:, :t].float(), free.float())
        weights[:, 0] += (weights.sum(1) == 0).float()  # a dummy position for chains that cannot move
        if c.order == "sweep":  # the (step mod free)-th free token: both directions see the same position
            rank = step % n_free.clamp(min=1)
            pos = (free.long().cumsum(1) == rank[:, None] + 1).float().argmax(1)
        else:
            pos = torch.multinomial(weights, 1, generator=generator).squeeze(1)  # (N,)
        zeros = torch.zeros(n, device=dev)
        if not bool(active.any()):
            return Move(proposed=chains, log_q_forward=zeros, log_q_backward=zeros, active=active, scored=True)
        sub = active.nonzero().squeeze(1)  # only the chains that can move are scored
        y_sub, q_f_sub, q_b_sub, ok, rows = self._moves(
            chains.select(sub), action[sub], pos[sub], n_free[sub], n_slots[sub],
            target=target, temperature=temperature, generator=generator)
        idx, y_sub = sub[ok], y_sub.select(ok.nonzero().squeeze(1))
        y = replace(chains, tokens=chains.tokens.index_copy(0, idx, y_sub.tokens),
                    lengths=chains.lengths.index_copy(0, idx, y_sub.lengths),
                    spans=chains.spans.index_copy(0, idx, y_sub.spans),
                    log_target=chains.log_target.index_copy(0, idx, y_sub.log_target))
        return Move(proposed=y, log_q_forward=zeros.index_copy(0, idx, q_f_sub[ok]),
                    log_q_backward=zeros.index_copy(0, idx, q_b_sub[ok]),
                    active=torch.zeros(n, dtype=torch.bool, device=dev).index_fill(0, idx, True),
                    scored=True, rows_scored=rows)

    def _moves(self, x: Chains, action: Tensor, pos: Tensor, n_free: Tensor, n_slots: Tensor, *,
               target: Target, temperature: float, generator: torch.Generator | None
               ) -> tuple[Chains, Tensor, Tensor, Tensor, int]:
        """The moves of chains that can move: (y, log q(y|x), log q(x|y), usable (N,), rows scored)."""
        c = self.config
        n, t = x.tokens.shape
        is_ins, is_del = action == 1, action == 2
        hole = torch.where(is_ins[:, None], _insert(x.tokens, pos, torch.full_like(pos, x.pad_id)), x.tokens)
        hole_len = x.lengths + is_ins.long()
        hole_mask = torch.arange(t, device=x.tokens.device)[None] < hole_len[:, None]
        vocab = self.vocab.to(x.tokens.device)
        scores = self.slots.slot_scores(hole, hole_mask, pos)[:, vocab].float()  # (N, A)
        k = min(c.top_k, vocab.numel())
        cand_scores, cand_idx = scores.topk(k, dim=1)  # (N, K)
        cand = vocab[cand_idx]  # (N, K)
        uniform = vocab[torch.randint(0, vocab.numel(), (n,), generator=generator)]  # (N,)

        deleted = _delete(x.tokens, pos, x.pad_id)
        extra = torch.where(is_del[:, None], deleted, hole.scatter(1, pos[:, None], uniform[:, None]))  # (N, T)
        extra_len = torch.where(is_del, x.lengths - 1, hole_len)
        rows_scored = 0
        if c.weighting == "target":
            filled = hole[:, None].repeat(1, k, 1)  # (N, K, T)
            filled.scatter_(2, pos[:, None, None].expand(n, k, 1), cand[..., None])
            all_rows = torch.cat([filled, extra[:, None]], dim=1).view(n * (k + 1), t)
            all_len = torch.cat([hole_len[:, None].expand(n, k), extra_len[:, None]], dim=1).reshape(-1)
            all_mask = torch.arange(t, device=x.tokens.device)[None] < all_len[:, None]
            f = target(all_rows, all_mask, x.cond.repeat_interleave(k + 1)).float().view(n, k + 1)
            rows_scored = n * (k + 1)
            f_cand, f_extra = f[:, :k], f[:, k]
            logits = f_cand / temperature
        else:
            logits, f_cand, f_extra = cand_scores, None, None
        dead = torch.isneginf(logits).all(1)  # (N,) no candidate has mass
        log_pc = torch.where(dead[:, None], -math.inf, logits.log_softmax(1))  # (N, K)

        pick = torch.multinomial(torch.where(dead[:, None], 1.0, log_pc.exp()), 1, generator=generator).squeeze(1)
        explore = torch.rand(n, generator=generator) < c.explore
        token = torch.where(explore, uniform, cand.gather(1, pick[:, None]).squeeze(1))  # (N,)
        current = x.tokens.gather(1, pos.clamp(max=t - 1)[:, None]).squeeze(1)  # x_i (replace/delete)
        log_q_new, log_q_cur = self._log_qtok(log_pc, cand, token), self._log_qtok(log_pc, cand, current)

        new_tokens = torch.where(is_del[:, None], deleted, hole.scatter(1, pos[:, None], token[:, None]))
        new_spans = torch.where(is_del[:, None], _delete(x.spans, pos, 0),
                                torch.where(is_ins[:, None], _insert(x.spans, pos, torch.zeros_like(pos)), x.spans))
        new_len = torch.where(is_del, x.lengths - 1, hole_len)
        if c.weighting == "target":
            f_new = torch.where(explore | is_del, f_extra, f_cand.gather(1, pick[:, None]).squeeze(1))
        else:
            new_mask = torch.arange(t, device=x.tokens.device)[None] < new_len[:, None]
            f_new = target(new_tokens, new_mask, x.cond).float()
            rows_scored = n
        y = replace(x, tokens=new_tokens, lengths=new_len, spans=new_spans, log_target=f_new)

        log_p_ins, log_p_del = (math.log(p) if p > 0 else -math.inf for p in self.priors[1:].tolist())
        n_slots_y = _slot_ok(new_spans, new_len).sum(1)
        q_f = torch.where(is_ins, log_p_ins - n_slots.float().log() + log_q_new,
                          torch.where(is_del, log_p_del - n_free.float().log(), log_q_new))
        # the reverse of an insertion is a deletion, allowed only above min_len
        q_del_back = torch.where(new_len > c.min_len, log_p_del - (n_free.float() + 1).log(), -math.inf)
        q_b = torch.where(is_ins, q_del_back,
                          torch.where(is_del, log_p_ins - n_slots_y.float().log() + log_q_cur, log_q_cur))
        usable = torch.isfinite(q_f) | is_del
        return y, q_f, q_b, usable, rows_scored
