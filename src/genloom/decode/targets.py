"""Targets for search-based generation: unnormalised log-densities over token sequences.

Letters: B rows (chains x candidates), T positions, V vocabulary size, E sentence-vector width,
R conditions (references or keyword sets; one per condition index, or one for all).

【搜出来的文本】 writes a generation goal as rho(x) = p(x) * sim(x, c) * chi(x, c): fluency, soft
relevance to a condition, and a hard 0/1 constraint. Here each factor is a `Target`, a callable

    target(tokens (B, T) long, mask (B, T) bool, cond (B,) long | None) -> log rho (B,)

over right-padded rows (`mask` marks the real tokens; what lies under padding is ignored). `cond`
is the index of each row's condition c (the chain it belongs to carries it), so one batch can hold
chains for many references or keyword sets; targets without a condition ignore it, and None means
condition 0 for every row.
Targets compose as log-densities: `lm + 2.0 * sim + LengthRange(5, 20)` is the product of the
factors, sim squared. Hard constraints (`hard = True`) are evaluated first in a sum, and rows they
rule out (-inf) are never shown to the expensive terms, so a language model scores only the
feasible rows.

Language models enter through the scoring protocol of `genloom.decode.protocol.Scorer`
(`log_prob(tokens, mask) -> (B,)`): `CausalLMScorer` wraps any genloom causal `Transformer` or any
Hugging Face causal LM (one batched forward over whole sequences, [BOS] x [EOS]), and
`MaskedLMScorer` a bidirectional masked LM, adding `fill(tokens, positions) -> logits` (the
conditional of one masked position, BERT's "mouth") and its pseudo-log-likelihood as `log_prob`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from genloom.errors import UserError
from genloom.nn.rows import reverse_rows

NEG_INF = float("-inf")
_LOGIT_BUDGET = 1 << 26  # most logits (B * T * V floats, 256 MiB) one forward chunk may hold


class Target:
    """An unnormalised log-density over token sequences (module docstring). Subclasses define
    `__call__`; `+` adds log-densities (multiplies densities), `w * target` scales one."""

    hard: bool = False  # True for 0 / -inf constraints (evaluated first in a sum)

    def __call__(self, tokens: Tensor, mask: Tensor, cond: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def __add__(self, other: Target) -> SumTarget:
        if not isinstance(other, Target):
            return NotImplemented
        left = self.terms if isinstance(self, SumTarget) else [self]
        right = other.terms if isinstance(other, SumTarget) else [other]
        return SumTarget([*left, *right])

    def __mul__(self, weight: float) -> Target:
        if not isinstance(weight, (int, float)) or isinstance(weight, bool):
            return NotImplemented
        if self.hard:
            raise ValueError("scaling a hard constraint changes nothing (it is 0 or -inf)")
        return ScaledTarget(self, float(weight))

    __rmul__ = __mul__


class SumTarget(Target):
    """The sum of log-densities; hard terms first, soft terms only on the rows still feasible."""

    def __init__(self, terms: Sequence[Target]) -> None:
        if not terms:
            raise ValueError("a sum of targets needs at least one term")
        self.terms = list(terms)
        self.hard = all(t.hard for t in self.terms)

    def __call__(self, tokens: Tensor, mask: Tensor, cond: Tensor | None = None) -> Tensor:
        total = torch.zeros(tokens.shape[0], dtype=torch.float32, device=tokens.device)  # (B,)
        for term in (t for t in self.terms if t.hard):
            total += term(tokens, mask, cond)
        ok = torch.isfinite(total).nonzero().squeeze(1)  # rows still feasible
        if ok.numel() == 0:
            return total
        sub = (tokens, mask, cond) if ok.numel() == total.numel() else (
            tokens[ok], mask[ok], None if cond is None else cond[ok])
        for term in (t for t in self.terms if not t.hard):
            total[ok] += term(*sub).float()
        return total


class ScaledTarget(Target):
    """weight * log-density of `target` (the density raised to `weight`)."""

    def __init__(self, target: Target, weight: float) -> None:
        self.target, self.weight = target, weight

    def __call__(self, tokens: Tensor, mask: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.weight * self.target(tokens, mask, cond)


def _logits(out: Any) -> Tensor:
    """Logits from a genloom model (a tensor) or a Hugging Face one (an output with .logits)."""
    return out.logits if hasattr(out, "logits") else out


def _chunk_rows(model: Any, width: int) -> int:
    """Rows per forward chunk so that its logits (rows * width * V floats) stay under the budget."""
    vocab = getattr(model, "vocab_size", None) or getattr(getattr(model, "config", None), "vocab_size", None)
    return max(1, _LOGIT_BUDGET // max(1, width * int(vocab or 65536)))


class CausalLMScorer(Target):
    """log p(x) of each row under a causal LM: the sum of log p(x_t | BOS, x_<t) and, with an
    `eos_id`, log p(EOS | BOS, x) (a complete sentence). One forward over whole sequences per
    chunk of rows (chunks are sized to keep the logits under 256 MiB).

    Args:
        model: a genloom causal `Transformer` (`model(ids) -> logits (B, T, V)`) or any Hugging
            Face causal LM (`model(ids).logits`); put in eval mode.
        bos_id: prepended to every row (the context of the first token).
        eos_id: appended as the last scored token; None scores the row as a prefix.
        reverse: score each row reversed (a right-to-left LM trained on reversed text).
    """

    def __init__(self, model: Any, *, bos_id: int, eos_id: int | None, reverse: bool = False) -> None:
        self.model = model.eval()
        self.bos_id, self.eos_id, self.reverse = bos_id, eos_id, reverse

    @torch.inference_mode()
    def token_log_probs(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """(B, T + 1) log-probability of each scored token (x_1..x_L then EOS), 0 elsewhere."""
        if self.reverse:
            tokens = reverse_rows(tokens, mask)
        b, t = tokens.shape
        lengths = mask.sum(1)  # (B,)
        out = torch.zeros(b, t + 1, dtype=torch.float32, device=tokens.device)
        width = int(lengths.max()) if b else 0
        tokens = tokens[:, :width].masked_fill(~mask[:, :width], self.bos_id)  # (B, W)
        col = torch.arange(width + 1, device=tokens.device)[None]  # (1, W + 1)
        targets = torch.cat([tokens, tokens.new_full((b, 1), self.bos_id)], dim=1)  # (B, W + 1)
        if self.eos_id is not None:
            targets = torch.where(col == lengths[:, None], self.eos_id, targets)
        scored = col < lengths[:, None] + (self.eos_id is not None)  # (B, W + 1)
        targets = targets.masked_fill(~scored, -100)
        ids = torch.cat([tokens.new_full((b, 1), self.bos_id), tokens], dim=1)  # (B, W + 1)
        step = _chunk_rows(self.model, width + 1)
        for lo in range(0, b, step):
            hi = lo + step
            logits = _logits(self.model(ids[lo:hi])).float()  # (b, W + 1, V)
            nll = F.cross_entropy(logits.flatten(0, 1), targets[lo:hi].flatten(), reduction="none",
                                  ignore_index=-100)  # (b * (W + 1),)
            out[lo:hi, : width + 1] = -nll.view(-1, width + 1)
        return out

    def log_prob(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """The Scorer protocol: tokens (B, T), mask (B, T) -> log p (B,)."""
        return self.token_log_probs(tokens, mask).sum(1)

    def __call__(self, tokens: Tensor, mask: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.log_prob(tokens, mask)


class MaskedLMScorer(Target):
    """A bidirectional masked LM behind `fill` (and its pseudo-log-likelihood as a target).

    Rows are fed as [BOS] x [EOS] (each optional) with an attention mask over the real tokens.

    Args:
        model: genloom `Transformer(mask="bidirectional")` (`model(ids, attention_mask=...)`) or a
            Hugging Face masked LM (`.logits`).
        mask_id: the [MASK] id.
        bos_id, eos_id: wrapped around every row when not None (as in training).
    """

    def __init__(self, model: Any, *, mask_id: int, bos_id: int | None = None, eos_id: int | None = None) -> None:
        self.model = model.eval()
        self.mask_id, self.bos_id, self.eos_id = mask_id, bos_id, eos_id

    def _wrap(self, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, int]:
        """[BOS] x [EOS] rows (B, W), their attention mask, and the column offset of x."""
        b = tokens.shape[0]
        lengths = mask.sum(1)
        width = int(lengths.max()) if b else 0
        ids, valid = tokens[:, :width].masked_fill(~mask[:, :width], self.mask_id), mask[:, :width]
        shift = 0
        if self.bos_id is not None:
            ids = torch.cat([ids.new_full((b, 1), self.bos_id), ids], dim=1)
            valid = torch.cat([valid.new_ones(b, 1), valid], dim=1)
            shift = 1
        if self.eos_id is not None:
            ids = torch.cat([ids, ids.new_full((b, 1), self.eos_id)], dim=1)
            valid = torch.cat([valid, valid.new_zeros(b, 1)], dim=1)
            end = lengths + shift  # (B,) column of EOS
            ids = ids.scatter(1, end[:, None], self.eos_id)
            valid = valid.scatter(1, end[:, None], True)
        return ids, valid, shift

    @torch.inference_mode()
    def fill(self, tokens: Tensor, positions: Tensor, mask: Tensor | None = None) -> Tensor:
        """Logits (B, V) of the token at `positions` (B,) with [MASK] put there; `mask` (B, T)
        marks real tokens (default: all)."""
        mask = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        tokens = tokens.clone()
        tokens[rows, positions] = self.mask_id
        ids, valid, shift = self._wrap(tokens, mask)
        out = []
        step = _chunk_rows(self.model, ids.shape[1])
        for lo in range(0, ids.shape[0], step):
            hi = lo + step
            logits = _logits(self.model(ids[lo:hi], attention_mask=valid[lo:hi]))  # (b, W, V)
            out.append(logits[torch.arange(logits.shape[0]), positions[lo:hi] + shift].float())
        return torch.cat(out)  # (B, V)

    def log_prob(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """Pseudo-log-likelihood: sum over positions of log p(x_i | x_-i) (one masked copy per token)."""
        lengths = mask.sum(1)  # (B,)
        row = torch.repeat_interleave(torch.arange(tokens.shape[0], device=tokens.device), lengths)
        start = torch.cumsum(lengths, 0) - lengths
        pos = torch.arange(row.numel(), device=tokens.device) - start[row]  # position within its row
        logp = self.fill(tokens[row], pos, mask[row]).log_softmax(-1)  # (sum L, V)
        picked = logp.gather(1, tokens[row, pos][:, None]).squeeze(1)
        return torch.zeros(tokens.shape[0], device=tokens.device).index_add_(0, row, picked)

    def __call__(self, tokens: Tensor, mask: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.log_prob(tokens, mask)


# ---- hard constraints ---------------------------------------------------------------------------


def _per_cond(cond: Tensor | None, rows: int, device: torch.device) -> Tensor:
    return torch.zeros(rows, dtype=torch.long, device=device) if cond is None else cond


class KeywordsPresent(Target):
    """0 if every keyword (a token-id sequence) occurs contiguously in the row, else -inf.

    Args:
        keywords: one keyword list for every row, or (with `per_cond=True`) one list per
            condition index.
    """

    hard = True

    def __init__(self, keywords: Sequence[Sequence[int]] | Sequence[Sequence[Sequence[int]]], *,
                 per_cond: bool = False) -> None:
        sets = list(keywords) if per_cond else [keywords]
        self.sets = [[list(k) for k in s] for s in sets]
        if any(len(k) == 0 for s in self.sets for k in s):
            raise UserError("a keyword encodes to no tokens")

    def __call__(self, tokens: Tensor, mask: Tensor, cond: Tensor | None = None) -> Tensor:
        cond = _per_cond(cond, tokens.shape[0], tokens.device)
        ok = torch.ones(tokens.shape[0], dtype=torch.bool, device=tokens.device)
        masked = tokens.masked_fill(~mask, -1)
        for c in cond.unique().tolist():
            rows = (cond == c).nonzero().squeeze(1)
            for kw in self.sets[c]:
                k = torch.tensor(kw, device=tokens.device)
                if masked.shape[1] < len(kw):
                    ok[rows] = False
                    continue
                windows = masked[rows].unfold(1, len(kw), 1)  # (b, T - K + 1, K)
                ok[rows] &= (windows == k).all(-1).any(-1)
        return torch.where(ok, 0.0, NEG_INF)


class LengthRange(Target):
    """0 if min_len <= length <= max_len; outside, -inf (hard, the default) or, with a `weight`,
    -weight per token short of min_len or beyond max_len (a soft bound that chains starting
    outside the range can climb into, e.g. from bare keywords towards a minimum length)."""

    def __init__(self, min_len: int, max_len: int, *, weight: float | None = None) -> None:
        if not 0 <= min_len <= max_len:
            raise UserError(f"need 0 <= min_len <= max_len, got {min_len} and {max_len}")
        if weight is not None and weight < 0:
            raise UserError(f"a length penalty must be >= 0, got {weight}")
        self.min_len, self.max_len, self.weight = min_len, max_len, weight
        self.hard = weight is None

    def __call__(self, tokens: Tensor, mask: Tensor, cond: Tensor | None = None) -> Tensor:
        n = mask.sum(1)
        if self.weight is None:
            return torch.where((n >= self.min_len) & (n <= self.max_len), 0.0, NEG_INF)
        outside = (self.min_len - n).clamp(min=0) + (n - self.max_len).clamp(min=0)
        return -self.weight * outside.float()


class LengthPrior(Target):
    """A length model for a search whose fluency term is log p(x): log P(L) + per_token * L.

    log p(x) falls by about the LM's entropy rate H (nats per token) with every token, so a search
    for high log p(x) shortens its sentences to the fewest tokens the constraints allow.
    `per_token` = H gives that back: log p(x) + H * L is near 0 for a typical sentence of any
    length, and the prior P(L) over natural lengths decides the length.

    Args:
        log_prior: log P(L) for L = 0, 1, ..., T (lengths beyond T take log P(T)).
        per_token: nats added per token (e.g. `entropy_rate` of the fluency LM).
    """

    def __init__(self, log_prior: Sequence[float] | Tensor, *, per_token: float) -> None:
        self.log_prior = torch.as_tensor(log_prior, dtype=torch.float32)
        if self.log_prior.ndim != 1 or len(self.log_prior) == 0 or torch.isnan(self.log_prior).any():
            raise UserError("a length prior needs log P(L) for L = 0, 1, ..., T")
        if not math.isfinite(per_token):
            raise UserError(f"per_token must be finite, got {per_token}")
        self.per_token = float(per_token)

    @staticmethod
    def gaussian(mean: float, sd: float, max_len: int) -> Tensor:
        """log P(L) of a Gaussian over lengths 1..max_len, normalised (P(0) = 0)."""
        if not (0 < mean and 0 < sd < math.inf) or max_len < 1:
            raise UserError(f"need a mean > 0, 0 < sd < inf and max_len >= 1, got {mean}, {sd}, {max_len}")
        lengths = torch.arange(max_len + 1, dtype=torch.float64)
        logp = -0.5 * ((lengths - mean) / sd) ** 2
        logp[0] = NEG_INF
        return (logp - torch.logsumexp(logp, 0)).float()

    def __call__(self, tokens: Tensor, mask: Tensor, cond: Tensor | None = None) -> Tensor:
        n = mask.sum(1)
        prior = self.log_prior.to(tokens.device)[n.clamp(max=len(self.log_prior) - 1)]
        return prior + self.per_token * n.float()


@torch.inference_mode()
def entropy_rate(model: Any, *, bos_id: int, eos_id: int | None, samples: int = 32, max_new_tokens: int = 48,
                 generator: torch.Generator | None = None, allowed: Sequence[int] | None = None,
                 temperature: float = 1.0) -> float:
    """H, the mean NLL per token of the LM's own samples under the distribution they were drawn
    from (the cost of a typical token of its text): `samples` ancestral samples after BOS, EOS
    counted as a token where a sample stopped. `allowed`: the tokens a sample may hold (the
    others banned and the rest renormalised, as a search over that vocabulary sees the LM).
    `temperature` != 1 draws likelier (< 1) text, the cost of a token of what a search settles on;
    that text's NLL is measured under the LM itself at temperature 1, over all its tokens (at
    temperature 1 it is the sampled, renormalised distribution's: the two differ by the mass of the
    banned tokens, which for a vocabulary of every non-special token is small)."""
    from genloom.decode.loops import sample
    from genloom.decode.processors import BannedTokens, Temperature

    processors: list[Any] = []
    if allowed is not None:
        keep = set(int(i) for i in allowed) | ({eos_id} if eos_id is not None else set())
        processors.append(BannedTokens(sorted(set(range(model.vocab_size)) - keep)))
    if temperature != 1.0:
        processors.append(Temperature(temperature))
    out = sample(model, max_new_tokens=max_new_tokens, eos_id=eos_id, processors=processors, generator=generator,
                 input_ids=torch.full((samples, 1), bos_id, dtype=torch.long))
    stopped = [len(r) < max_new_tokens for r in out.sequences]  # these end with EOS, which counts
    if temperature == 1.0:  # the samples' own scores: NLL under the distribution they came from
        return -sum(out.scores) / max(1, sum(len(r) + s for r, s in zip(out.sequences, stopped)))
    rows = out.sequences
    width = max(1, max(map(len, rows)))
    tokens = torch.tensor([list(r) + [bos_id] * (width - len(r)) for r in rows])
    mask = torch.arange(width)[None] < torch.tensor([len(r) for r in rows])[:, None]
    lp = CausalLMScorer(model, bos_id=bos_id, eos_id=eos_id).token_log_probs(tokens, mask)  # (B, W + 1): x, EOS
    keep_col = torch.arange(width + 1)[None] < (mask.sum(1) + torch.tensor(stopped))[:, None]
    return -float(lp[keep_col].double().sum()) / max(1, int(keep_col.sum()))


class NoRepeatNgram(Target):
    """0 if no n-gram of real tokens occurs twice in the row, else -inf (a search's version of
    `no_repeat_ngram_size`: the loops it bans are what makes beam search's text fluent-looking)."""

    hard = True

    def __init__(self, n: int) -> None:
        if n < 1:
            raise UserError(f"a repeated n-gram needs n >= 1, got {n}")
        self.n = n

    def __call__(self, tokens: Tensor, mask: Tensor, cond: Tensor | None = None) -> Tensor:
        b, t = tokens.shape
        if t < self.n:
            return torch.zeros(b, device=tokens.device)
        grams = tokens.unfold(1, self.n, 1)  # (B, G, n)
        real = mask.unfold(1, self.n, 1).all(-1)  # (B, G)
        same = (grams[:, :, None, :] == grams[:, None, :, :]).all(-1)  # (B, G, G)
        pair = real[:, :, None] & real[:, None, :] & torch.ones(grams.shape[1], grams.shape[1], dtype=torch.bool,
                                                                 device=tokens.device).triu(1)
        return torch.where((same & pair).flatten(1).any(1), NEG_INF, 0.0)


class MaxRun(Target):
    """0 if no real token occurs more than `n` times in a row, else -inf: a stutter ban (雷雷雷
    passes NoRepeatNgram(3), whose one trigram occurs once; n = 2 keeps 谢谢 and bans 谢谢谢)."""

    hard = True

    def __init__(self, n: int) -> None:
        if n < 1:
            raise UserError(f"a run of tokens needs n >= 1, got {n}")
        self.n = n

    def __call__(self, tokens: Tensor, mask: Tensor, cond: Tensor | None = None) -> Tensor:
        if tokens.shape[1] <= self.n:
            return torch.zeros(tokens.shape[0], device=tokens.device)
        windows = tokens.unfold(1, self.n + 1, 1)  # (B, G, n+1)
        run = (windows == windows[..., :1]).all(-1) & mask.unfold(1, self.n + 1, 1).all(-1)  # (B, G)
        return torch.where(run.any(1), NEG_INF, 0.0)


class ForbiddenTokens(Target):
    """0 if no real token of the row is in `token_ids`, else -inf."""

    hard = True

    def __init__(self, token_ids: Sequence[int]) -> None:
        self.token_ids = torch.tensor(sorted(set(int(i) for i in token_ids)), dtype=torch.long)

    def __call__(self, tokens: Tensor, mask: Tensor, cond: Tensor | None = None) -> Tensor:
        bad = torch.isin(tokens, self.token_ids.to(tokens.device)) & mask
        return torch.where(bad.any(1), NEG_INF, 0.0)


# ---- soft relevance -----------------------------------------------------------------------------


class CosineSimilarity(Target):
    """weight * cos(embed(x), reference): a soft relevance to a sentence vector (sim(x, c) =
    exp(weight * cos)). `references` is (R, E): one per condition index, or one for all (R = 1).

    Args:
        embed: (tokens (B, T), mask (B, T)) -> sentence vectors (B, E), e.g. `MeanHidden(model)`.
        references: (R, E) or (E,) reference vectors.
        weight: the strength of the pull towards the reference.
    """

    def __init__(self, embed: Callable[[Tensor, Tensor], Tensor], references: Tensor, *, weight: float = 1.0) -> None:
        self.embed = embed
        self.references = references[None] if references.dim() == 1 else references  # (R, E)
        self.weight = weight

    def __call__(self, tokens: Tensor, mask: Tensor, cond: Tensor | None = None) -> Tensor:
        vec = self.embed(tokens, mask)  # (B, E)
        ref = self.references[_per_cond(cond, tokens.shape[0], tokens.device) % self.references.shape[0]]  # (B, E)
        return self.weight * F.cosine_similarity(vec, ref.to(vec), dim=-1)


class MeanHidden:
    """Sentence vectors: the mean of a genloom Transformer's final hidden states over real tokens."""

    def __init__(self, model: Any) -> None:
        self.model = model.eval()

    @torch.inference_mode()
    def __call__(self, tokens: Tensor, mask: Tensor) -> Tensor:
        safe = tokens.masked_fill(~mask, 0)
        h = self.model.hidden_states(safe, attention_mask=mask)  # (B, T, C)
        w = mask.float()[..., None]  # (B, T, 1)
        return (h * w).sum(1) / w.sum(1).clamp(min=1)  # (B, C)


class HammingPenalty(Target):
    """-weight * (positions where the row differs from its reference + length difference):
    the "stay close to the input" term of error correction and paraphrase.

    Args:
        references: (R, T') token ids, right-padded; one per condition index (or one for all).
        lengths: (R,) real lengths of the references.
        weight: nats per edit.
    """

    def __init__(self, references: Tensor, lengths: Tensor, *, weight: float) -> None:
        self.references, self.lengths, self.weight = references, lengths, weight

    def __call__(self, tokens: Tensor, mask: Tensor, cond: Tensor | None = None) -> Tensor:
        idx = _per_cond(cond, tokens.shape[0], tokens.device) % self.references.shape[0]
        ref, ref_len = self.references[idx], self.lengths[idx]  # (B, T'), (B,)
        width = max(tokens.shape[1], ref.shape[1])
        a = F.pad(tokens.masked_fill(~mask, -1), (0, width - tokens.shape[1]), value=-1)
        ref_mask = torch.arange(ref.shape[1], device=ref.device)[None] < ref_len[:, None]
        r = F.pad(ref.masked_fill(~ref_mask, -1), (0, width - ref.shape[1]), value=-1)
        lengths = mask.sum(1)
        common = torch.arange(width, device=tokens.device)[None] < torch.minimum(lengths, ref_len)[:, None]
        edits = ((a != r) & common).sum(1) + (lengths - ref_len).abs()
        return -self.weight * edits.float()


class ExactConditional:
    """The exact full conditional of a target at one position, by scoring every allowed token:
    `fill(tokens, positions, mask)` -> logits (B, V) = log rho(x with w at the position) for w in
    `vocab`, -inf elsewhere. It costs len(vocab) scored rows per row: for small vocabularies (the
    enumerable tests) and as the reference a masked LM's conditional stands in for.

    Args:
        target: the target whose conditional is wanted (scored with cond=None).
        vocab: the token ids a position may take.
        vocab_size: V, the width of the returned logits.
    """

    def __init__(self, target: Target, vocab: Sequence[int], *, vocab_size: int) -> None:
        self.target, self.vocab_size = target, vocab_size
        self.vocab = torch.tensor(list(vocab), dtype=torch.long)

    @torch.inference_mode()
    def fill(self, tokens: Tensor, positions: Tensor, mask: Tensor | None = None) -> Tensor:
        """Logits (B, V) of the token at `positions` (B,) given the rest of each row."""
        mask = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask
        b, a = tokens.shape[0], self.vocab.numel()
        vocab = self.vocab.to(tokens.device)
        rows = tokens.repeat_interleave(a, dim=0)  # (B * A, T)
        rows[torch.arange(b * a, device=tokens.device), positions.repeat_interleave(a)] = vocab.repeat(b)
        scores = self.target(rows, mask.repeat_interleave(a, dim=0)).view(b, a)  # (B, A)
        out = torch.full((b, self.vocab_size), NEG_INF, device=tokens.device)
        out[:, vocab] = scores
        return out
