"""Logits processors: small pure callables `(logits (B, V), history (B, t)) -> logits (B, V)`.

Letters: B rows, V vocabulary size, t tokens in the history, n the n-gram size.

Each processor checks its arguments in `__init__` (ValueError with a one-line message), derives
everything else from the history, and returns a new tensor: the input is never modified, so a
search loop may keep the raw logits. They compose in a list, applied in order by `apply`, in the
order Hugging Face's `generate()` applies its own (see `PROCESSORS`).

The history is the tokens generated so far, one row per search row (beams, samples), long, on the
logits' device. Hugging Face applies the repetition penalty and the no-repeat-n-gram ban to the
prompt as well; a processor that does the same sets `sees_prompt = True`, and when a search loop
is given the prompt ids it passes such a processor the prompt followed by the generated tokens,
with ragged prompts left-padded by -1. Processors that see the prompt therefore treat negative
ids as padding. All the others always get the generated tokens only, so `MinLength` and
`ForcedTokens` count new tokens whatever the prompt. A processor that needs what the model
returned beside the logits (`genloom.decode.copy.CopyConstraint`: the copy-label scores) sets
`sees_state = True` and is called `proc(logits, history, state)` with the decoding state that
came with these logits.

Each class below equals its `transformers.generation.logits_process` counterpart (named in its
docstring) to 1e-6 on the same inputs; `tests/decode/test_processors.py` checks this.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from genloom.decode.protocol import LogitsProcessor

NEG_INF = -math.inf


def _ids(token_ids: int | Iterable[int], what: str) -> tuple[int, ...]:
    """Validate one id or an iterable of ids (non-negative ints) into a tuple."""
    ids = (token_ids,) if isinstance(token_ids, int) else tuple(token_ids)
    if not ids or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids):
        raise ValueError(f"{what} must be one or more non-negative token ids, got {token_ids!r}")
    return ids


def _positive_int(value: int, what: str, *, minimum: int = 1) -> int:
    """Validate an int >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def _token_mask(ids: Sequence[int], vocab_size: int, device: torch.device) -> Tensor:
    """(V,) bool mask of `ids`; an id outside the vocabulary is a ValueError."""
    if max(ids) >= vocab_size:
        raise ValueError(f"token id {max(ids)} is outside the vocabulary of {vocab_size}")
    mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)  # (V,)
    mask[list(ids)] = True
    return mask


class Temperature:
    """Divide the logits by `temperature` (> 0). HF: TemperatureLogitsWarper."""

    sees_prompt: ClassVar[bool] = False

    def __init__(self, temperature: float):
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            0 < temperature < math.inf
        ):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        self.temperature = float(temperature)

    def __call__(self, logits: Tensor, history: Tensor) -> Tensor:
        return logits / self.temperature  # (B, V)


class TopK:
    """Keep the `k` highest logits (ties with the k-th kept), set the rest to -inf.
    HF: TopKLogitsWarper."""

    sees_prompt: ClassVar[bool] = False

    def __init__(self, k: int, *, min_tokens_to_keep: int = 1):
        _positive_int(k, "top_k")
        _positive_int(min_tokens_to_keep, "min_tokens_to_keep")
        self.k = max(k, min_tokens_to_keep)

    def __call__(self, logits: Tensor, history: Tensor) -> Tensor:
        k = min(self.k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1)
        return logits.masked_fill(logits < kth, NEG_INF)  # (B, V)


class TopP:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probability reaches
    `p` (0 < p <= 1), at least `min_tokens_to_keep` of them. HF: TopPLogitsWarper."""

    sees_prompt: ClassVar[bool] = False

    def __init__(self, p: float, *, min_tokens_to_keep: int = 1):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0 < p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {p!r}")
        self.p = float(p)
        self.min_tokens_to_keep = _positive_int(min_tokens_to_keep, "min_tokens_to_keep")

    def __call__(self, logits: Tensor, history: Tensor) -> Tensor:
        sorted_logits, order = torch.sort(logits, descending=False)  # (B, V) ascending
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # (B, V)
        drop_sorted = cum <= (1 - self.p)  # (B, V): the low tail holding at most 1 - p
        drop_sorted[:, -self.min_tokens_to_keep :] = False
        drop = drop_sorted.scatter(1, order, drop_sorted)  # (B, V) back in vocabulary order
        return logits.masked_fill(drop, NEG_INF)


class MinP:
    """Keep tokens whose probability is at least `p` times the top token's (0 <= p <= 1).
    HF: MinPLogitsWarper."""

    sees_prompt: ClassVar[bool] = False

    def __init__(self, p: float, *, min_tokens_to_keep: int = 1):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0 <= p <= 1):
            raise ValueError(f"min_p must be in [0, 1], got {p!r}")
        self.p = float(p)
        self.min_tokens_to_keep = _positive_int(min_tokens_to_keep, "min_tokens_to_keep")

    def __call__(self, logits: Tensor, history: Tensor) -> Tensor:
        probs = logits.softmax(dim=-1)  # (B, V)
        drop = probs < self.p * probs.amax(dim=-1, keepdim=True)  # (B, V)
        keep = torch.topk(probs, min(self.min_tokens_to_keep, probs.shape[-1]), dim=-1).indices
        drop = drop.scatter(1, keep, False)
        return logits.masked_fill(drop, NEG_INF)


class RepetitionPenalty:
    """Make every token already in the history less likely: a negative logit is multiplied by
    `penalty`, a positive one divided (penalty > 0; 1 is no change, < 1 rewards repeats).
    Sees the prompt when the loop has it, as Hugging Face does. HF: RepetitionPenaltyLogitsProcessor."""

    sees_prompt: ClassVar[bool] = True

    def __init__(self, penalty: float):
        if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not (
            0 < penalty < math.inf
        ):
            raise ValueError(f"repetition_penalty must be a finite number > 0, got {penalty!r}")
        self.penalty = float(penalty)

    def __call__(self, logits: Tensor, history: Tensor) -> Tensor:
        vocab = logits.shape[-1]
        if history.shape[1] == 0:
            return logits.clone()
        # padding (negative) and out-of-vocabulary ids go to a spare column, dropped at the end
        ids = torch.where((history < 0) | (history >= vocab), vocab, history)  # (B, t)
        padded = torch.nn.functional.pad(logits, (0, 1))  # (B, V + 1)
        seen = padded.gather(1, ids)  # (B, t)
        seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        return padded.scatter(1, ids, seen)[:, :vocab]  # (B, V)


class NoRepeatNGram:
    """Ban any token that would complete an n-gram already present in the history (n >= 1).
    Sees the prompt when the loop has it, as Hugging Face does; n-grams that touch padding are
    ignored. HF: NoRepeatNGramLogitsProcessor."""

    sees_prompt: ClassVar[bool] = True

    def __init__(self, n: int):
        self.n = _positive_int(n, "no_repeat_ngram_size")

    def __call__(self, logits: Tensor, history: Tensor) -> Tensor:
        n, t, vocab = self.n, history.shape[1], logits.shape[-1]
        if t < n:
            return logits.clone()
        suffix = history[:, t + 1 - n :]  # (B, n-1): the n-gram the next token would complete
        windows = history.unfold(1, n, 1)  # (B, W, n), W = t - n + 1
        match = (windows[..., :-1] == suffix[:, None, :]).all(dim=-1)  # (B, W)
        match &= (windows >= 0).all(dim=-1) & (suffix >= 0).all(dim=-1, keepdim=True)
        last = windows[..., -1].clamp(max=vocab)  # (B, W)
        banned = torch.zeros(logits.shape[0], vocab + 1, dtype=torch.bool, device=logits.device)
        banned.scatter_(1, torch.where(match, last, vocab), True)  # (B, V + 1), spare column last
        return logits.masked_fill(banned[:, :vocab], NEG_INF)


class MinLength:
    """Forbid `eos_id` (one id or several) until `min_new_tokens` tokens have been generated.
    HF: MinNewTokensLengthLogitsProcessor with the prompt length skipped."""

    sees_prompt: ClassVar[bool] = False

    def __init__(self, min_new_tokens: int, eos_id: int | Iterable[int]):
        self.min_new_tokens = _positive_int(min_new_tokens, "min_new_tokens", minimum=0)
        self.eos_ids = _ids(eos_id, "eos_id")
        self._mask: Tensor | None = None  # (V,) bool, cached for `_mask_key` (V, device)
        self._mask_key: tuple | None = None

    def __call__(self, logits: Tensor, history: Tensor) -> Tensor:
        if history.shape[1] >= self.min_new_tokens:
            return logits.clone()
        key = (logits.shape[-1], logits.device)
        if self._mask_key != key:  # built once per vocabulary size and device, not every step
            self._mask = _token_mask(self.eos_ids, logits.shape[-1], logits.device)  # (V,)
            self._mask_key = key
        return logits.masked_fill(self._mask, NEG_INF)


class ForcedTokens:
    """Force token `forced[i]` as the i-th generated token (0-based): every other logit becomes
    -inf and the forced one 0. `ForcedTokens({0: bos})` is HF's ForcedBOSTokenLogitsProcessor,
    `ForcedTokens({max_new_tokens - 1: eos})` its ForcedEOSTokenLogitsProcessor."""

    sees_prompt: ClassVar[bool] = False

    def __init__(self, forced: Mapping[int, int]):
        if not isinstance(forced, Mapping) or not forced:
            raise ValueError(f"forced tokens must be a non-empty {{position: token_id}} map, got {forced!r}")
        for pos, tok in forced.items():
            _positive_int(pos, "forced position", minimum=0)
            _ids(tok, "forced token")
        self.forced = dict(forced)

    def __call__(self, logits: Tensor, history: Tensor) -> Tensor:
        token = self.forced.get(history.shape[1])
        if token is None:
            return logits.clone()
        if token >= logits.shape[-1]:
            raise ValueError(f"token id {token} is outside the vocabulary of {logits.shape[-1]}")
        out = torch.full_like(logits, NEG_INF)  # (B, V)
        out[:, token] = 0
        return out


class BannedTokens:
    """Set the logits of `token_ids` to -inf, at every step or only when the number of generated
    tokens is in `positions`. HF: SuppressTokensLogitsProcessor (positions=None) and
    SuppressTokensAtBeginLogitsProcessor (positions={0})."""

    sees_prompt: ClassVar[bool] = False

    def __init__(self, token_ids: int | Iterable[int], *, positions: Iterable[int] | None = None):
        self.token_ids = _ids(token_ids, "banned tokens")
        self.positions = None
        if positions is not None:
            self.positions = frozenset(
                _positive_int(p, "banned position", minimum=0) for p in positions
            )

    def __call__(self, logits: Tensor, history: Tensor) -> Tensor:
        if self.positions is not None and history.shape[1] not in self.positions:
            return logits.clone()
        mask = _token_mask(self.token_ids, logits.shape[-1], logits.device)  # (V,)
        return logits.masked_fill(mask, NEG_INF)


def apply(
    processors: Sequence[LogitsProcessor], logits: Tensor, history: Tensor, full_history: Tensor | None = None,
    state: Any = None,
) -> Tensor:
    """Run `processors` in order. `history` (B, t) is the generated tokens; `full_history`
    (B, P + t), when the loop knows the prompt, is prompt (left-padded with -1) + generated and
    goes to the processors with `sees_prompt = True`. Processors with `sees_state = True` also
    get `state`, the decoding state returned with these logits (e.g. a model's copy scores)."""
    for proc in processors:
        seen = full_history if full_history is not None and getattr(proc, "sees_prompt", False) else history
        logits = proc(logits, seen, state) if getattr(proc, "sees_state", False) else proc(logits, seen)
    return logits


# Processors with one parameter, keyed by the option name the CLI and `generate()` use, in the
# order Hugging Face's `generate()` applies them: penalties and bans first, then the warpers.
PROCESSORS: dict[str, type] = {
    "repetition_penalty": RepetitionPenalty,
    "no_repeat_ngram_size": NoRepeatNGram,
    "temperature": Temperature,
    "top_k": TopK,
    "top_p": TopP,
    "min_p": MinP,
}

# Options that only make sense when sampling (Hugging Face applies them only with do_sample=True).
SAMPLING_ONLY = frozenset({"temperature", "top_k", "top_p", "min_p"})
