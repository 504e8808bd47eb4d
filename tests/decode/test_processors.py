"""Each logits processor equals its Hugging Face counterpart on random logits and never modifies
its input; bad arguments raise ValueError."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.generation import logits_process as hf

from genloom.decode import processors as P

B, V, T = 6, 50, 12


def _logits(seed: int, *, with_inf: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, V, generator=g) * 3  # (B, V)
    if with_inf:
        x[0, :5] = -math.inf  # a row with already-masked entries
        x[1, 7] = -math.inf
    x[2, 3] = x[2, 4]  # a tie
    return x


def _history(seed: int, t: int = T, *, vocab: int = 8) -> torch.Tensor:
    # small id range so repeats and repeated n-grams are common
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B, t), generator=g)  # (B, t)


def _same(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape
    assert torch.equal(torch.isneginf(ours), torch.isneginf(ref))
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(ours), finite)
    if finite.any():
        assert (ours[finite] - ref[finite]).abs().max().item() <= 1e-6


def _check(ours, ref, logits, history, hf_input_ids=None) -> None:
    """ours(logits, history) equals ref(input_ids, logits); neither input is modified."""
    logits_copy, history_copy = logits.clone(), history.clone()
    out = ours(logits, history)
    assert torch.equal(logits, logits_copy)  # -inf == -inf, so masked entries compare too
    assert torch.equal(history, history_copy)
    assert out is not logits
    expected = ref(history if hf_input_ids is None else hf_input_ids, logits.clone())
    _same(out, expected)


CASES = [
    ("temperature 0.7", lambda: P.Temperature(0.7), lambda: hf.TemperatureLogitsWarper(0.7)),
    ("temperature 2", lambda: P.Temperature(2.0), lambda: hf.TemperatureLogitsWarper(2.0)),
    ("top_k 1", lambda: P.TopK(1), lambda: hf.TopKLogitsWarper(1)),
    ("top_k 5", lambda: P.TopK(5), lambda: hf.TopKLogitsWarper(5)),
    ("top_k 500", lambda: P.TopK(500), lambda: hf.TopKLogitsWarper(500)),
    ("top_k 2 keep 4", lambda: P.TopK(2, min_tokens_to_keep=4), lambda: hf.TopKLogitsWarper(2, min_tokens_to_keep=4)),
    ("top_p 0.1", lambda: P.TopP(0.1), lambda: hf.TopPLogitsWarper(0.1)),
    ("top_p 0.9", lambda: P.TopP(0.9), lambda: hf.TopPLogitsWarper(0.9)),
    ("top_p 1", lambda: P.TopP(1.0), lambda: hf.TopPLogitsWarper(1.0)),
    ("top_p 0.5 keep 3", lambda: P.TopP(0.5, min_tokens_to_keep=3),
     lambda: hf.TopPLogitsWarper(0.5, min_tokens_to_keep=3)),
    ("min_p 0.05", lambda: P.MinP(0.05), lambda: hf.MinPLogitsWarper(0.05)),
    ("min_p 0.5", lambda: P.MinP(0.5), lambda: hf.MinPLogitsWarper(0.5)),
    ("min_p 1 keep 2", lambda: P.MinP(1.0, min_tokens_to_keep=2),
     lambda: hf.MinPLogitsWarper(1.0, min_tokens_to_keep=2)),
    ("repetition 1.3", lambda: P.RepetitionPenalty(1.3), lambda: hf.RepetitionPenaltyLogitsProcessor(1.3)),
    ("repetition 0.6", lambda: P.RepetitionPenalty(0.6), lambda: hf.RepetitionPenaltyLogitsProcessor(0.6)),
    ("no-repeat 1", lambda: P.NoRepeatNGram(1), lambda: hf.NoRepeatNGramLogitsProcessor(1)),
    ("no-repeat 2", lambda: P.NoRepeatNGram(2), lambda: hf.NoRepeatNGramLogitsProcessor(2)),
    ("no-repeat 3", lambda: P.NoRepeatNGram(3), lambda: hf.NoRepeatNGramLogitsProcessor(3)),
    ("no-repeat 20", lambda: P.NoRepeatNGram(20), lambda: hf.NoRepeatNGramLogitsProcessor(20)),
    ("banned", lambda: P.BannedTokens([3, 9, 49]), lambda: hf.SuppressTokensLogitsProcessor([3, 9, 49])),
]


@pytest.mark.parametrize("name,ours,ref", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_hf_and_pure(name, ours, ref, seed):
    _check(ours(), ref(), _logits(seed), _history(seed + 10))


@pytest.mark.parametrize("seed", [0, 1])
def test_short_histories(seed):
    # empty and one-token histories hit the early exits of the n-gram and penalty processors
    for t in (0, 1, 2):
        h = _history(seed, t)
        _check(P.NoRepeatNGram(2), hf.NoRepeatNGramLogitsProcessor(2), _logits(seed), h)
        _check(P.RepetitionPenalty(1.5), hf.RepetitionPenaltyLogitsProcessor(1.5), _logits(seed), h)


def test_min_length_counts_new_tokens():
    logits, prompt = _logits(3), _history(4, 5)
    for t in (0, 3, 4, 5, 7):
        new = _history(5, t)
        ref = hf.MinNewTokensLengthLogitsProcessor(prompt_length_to_skip=5, min_new_tokens=4, eos_token_id=[2, 11])
        _check(P.MinLength(4, [2, 11]), ref, logits, new, hf_input_ids=torch.cat([prompt, new], 1))
    _check(P.MinLength(3, 7), hf.MinLengthLogitsProcessor(3, 7), logits, _history(6, 2))


def test_forced_tokens_are_hf_forced_bos_and_eos():
    logits = _logits(7)
    # HF's ForcedBOS fires when the decoder input holds only the start token (t = 1 there, 0 here)
    start = torch.zeros(B, 1, dtype=torch.long)
    _check(P.ForcedTokens({0: 5}), hf.ForcedBOSTokenLogitsProcessor(5), logits, start[:, :0], hf_input_ids=start)
    _check(P.ForcedTokens({0: 5}), hf.ForcedBOSTokenLogitsProcessor(5), logits, _history(8, 1),
           hf_input_ids=_history(8, 2))
    # ForcedEOS at max_length - 1: prompt of 3, at most 6 new tokens -> position 5
    prompt = _history(9, 3)
    ref = hf.ForcedEOSTokenLogitsProcessor(max_length=9, eos_token_id=4)
    for t in (4, 5):
        new = _history(10, t)
        _check(P.ForcedTokens({5: 4}), ref, logits, new, hf_input_ids=torch.cat([prompt, new], 1))


def test_banned_at_positions_is_hf_suppress_at_begin():
    logits, prompt = _logits(11), _history(12, 4)
    ref = hf.SuppressTokensAtBeginLogitsProcessor([1, 2], begin_index=4)
    for t in (0, 1, 3):
        new = _history(13, t)
        _check(P.BannedTokens([1, 2], positions=[0]), ref, logits, new, hf_input_ids=torch.cat([prompt, new], 1))


@pytest.mark.parametrize("proc_hf", [
    (lambda: P.RepetitionPenalty(1.7), lambda: hf.RepetitionPenaltyLogitsProcessor(1.7)),
    (lambda: P.NoRepeatNGram(2), lambda: hf.NoRepeatNGramLogitsProcessor(2)),
    (lambda: P.NoRepeatNGram(3), lambda: hf.NoRepeatNGramLogitsProcessor(3)),
])
def test_prompt_padding_is_ignored(proc_hf):
    """Processors that see the prompt get ragged prompts left-padded with -1: each row equals HF
    on that row's unpadded tokens."""
    ours, ref = proc_hf[0](), proc_hf[1]()
    logits, hist = _logits(14), _history(15, 10)
    pads = [0, 1, 3, 5, 9, 10]
    padded = hist.clone()
    for r, p in enumerate(pads):
        padded[r, :p] = -1
    out = ours(logits, padded)
    for r, p in enumerate(pads):
        _same(out[r : r + 1], ref(hist[r : r + 1, p:], logits[r : r + 1].clone()))


def test_apply_routes_prompt_only_to_processors_that_see_it():
    logits = _logits(16)
    prompt, new = _history(17, 4), _history(18, 2)
    full = torch.cat([prompt, new], 1)
    procs = [P.RepetitionPenalty(1.4), P.MinLength(3, 0), P.TopK(7)]
    out = P.apply(procs, logits, new, full)
    ref = hf.LogitsProcessorList([
        hf.RepetitionPenaltyLogitsProcessor(1.4),
        hf.MinNewTokensLengthLogitsProcessor(4, 3, 0),
        hf.TopKLogitsWarper(7),
    ])(full, logits.clone())
    _same(out, ref)


def test_registry_names_and_order():
    assert list(P.PROCESSORS) == [
        "repetition_penalty", "no_repeat_ngram_size", "temperature", "top_k", "top_p", "min_p"]
    assert P.SAMPLING_ONLY <= set(P.PROCESSORS)


@pytest.mark.parametrize("make,message", [
    (lambda: P.TopP(1.5), "top_p must be in (0, 1], got 1.5"),
    (lambda: P.TopP(0), "top_p must be in (0, 1], got 0"),
    (lambda: P.TopP(-0.1), "top_p must be in (0, 1]"),
    (lambda: P.TopP(0.5, min_tokens_to_keep=0), "min_tokens_to_keep must be an integer >= 1"),
    (lambda: P.TopK(0), "top_k must be an integer >= 1, got 0"),
    (lambda: P.TopK(2.5), "top_k must be an integer >= 1"),
    (lambda: P.MinP(1.2), "min_p must be in [0, 1]"),
    (lambda: P.Temperature(0), "temperature must be a finite number > 0"),
    (lambda: P.Temperature(-1.0), "temperature must be a finite number > 0"),
    (lambda: P.Temperature(math.inf), "temperature must be a finite number > 0"),
    (lambda: P.RepetitionPenalty(0.0), "repetition_penalty must be a finite number > 0"),
    (lambda: P.NoRepeatNGram(0), "no_repeat_ngram_size must be an integer >= 1"),
    (lambda: P.MinLength(-1, 0), "min_new_tokens must be an integer >= 0"),
    (lambda: P.MinLength(2, -3), "eos_id must be one or more non-negative token ids"),
    (lambda: P.MinLength(2, []), "eos_id must be one or more non-negative token ids"),
    (lambda: P.ForcedTokens({}), "forced tokens must be a non-empty"),
    (lambda: P.ForcedTokens({-1: 3}), "forced position must be an integer >= 0"),
    (lambda: P.BannedTokens([]), "banned tokens must be one or more"),
    (lambda: P.BannedTokens([1], positions=[-2]), "banned position must be an integer >= 0"),
])
def test_bad_arguments(make, message):
    with pytest.raises(ValueError) as e:
        make()
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_out_of_vocabulary_ids_are_value_errors():
    with pytest.raises(ValueError, match="token id 50 is outside the vocabulary of 50"):
        P.BannedTokens([50])(_logits(0), _history(0))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        P.ForcedTokens({0: 99})(_logits(0), _history(0, 0))
