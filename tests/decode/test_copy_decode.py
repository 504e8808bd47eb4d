"""Copy-constrained decoding (decode/copy.py): hand-made steps, a property test over random
models and sources (every token under B/I extends a span that is a substring of the source), and
equality with the plain search when the labels never leave O. The label scores come from the
decoding state the search loop hands the processor."""

import random
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from genloom.decode.copy import B, I, O, CopyConstraint, SourceNGrams, SparseSoftmax
from genloom.decode.loops import beam_search, greedy

NEG = float("-inf")


def _contains(seq, part) -> bool:
    n = len(part)
    return any(tuple(seq[i:i + n]) == tuple(part) for i in range(len(seq) - n + 1))


def test_source_ngrams_match_brute_force():
    rng = random.Random(0)
    for _ in range(50):
        toks = [rng.randrange(4) for _ in range(rng.randrange(1, 12))]
        grams = SourceNGrams(toks)
        for n in range(1, 5):
            for start in range(len(toks)):
                prefix = tuple(toks[start:start + n - 1])
                if len(prefix) < n - 1:
                    continue
                want = {toks[i + n - 1] for i in range(len(toks) - n + 1) if tuple(toks[i:i + n - 1]) == prefix}
                got = grams.following(prefix)
                assert (got is None and not want) or set(got) == want
        assert grams.following((9, 9)) is None
        assert set(grams.following(())) == set(toks)


def _state(scores):
    """A decoding state carrying copy-label scores (R, 3), as `UniLMState` does."""
    return SimpleNamespace(copy_logits=torch.as_tensor(scores, dtype=torch.float32))


def _step(proc, labels, history, scores, vocab=10):
    labels.copy_logits = torch.tensor([scores], dtype=torch.float32)
    logits = torch.arange(vocab, dtype=torch.float32)[None] / 10
    out = proc(logits, torch.tensor([history], dtype=torch.long).reshape(1, -1), labels)
    return out, {i for i in range(vocab) if out[0, i] > NEG}


def test_hand_made_steps():
    labels = _state([[0.0, 0.0, 0.0]])
    proc = CopyConstraint([[5, 6, 7, 5, 8]], always=[9])
    # t = 0: I is forbidden after nothing (O -> I), so B wins over the higher I: any source token
    out, allowed = _step(proc, labels, [], [0.0, 1.0, 2.0])
    assert allowed == {5, 6, 7, 8, 9}
    assert torch.isclose(out.exp().sum(), torch.tensor(1.0))  # renormalised over the allowed set
    assert proc.decisions[(0, ())] == (B, 1)
    # after [5] under B, I continues the bigram: 5 is followed by 6 or 8
    _, allowed = _step(proc, labels, [5], [0.0, 0.0, 5.0])
    assert allowed == {6, 8, 9} and proc.decisions[(0, (5,))] == (I, 2)
    # after [5, 6] under I, the trigram 5 6 -> 7
    _, allowed = _step(proc, labels, [5, 6], [0.0, 0.0, 5.0])
    assert allowed == {7, 9} and proc.decisions[(0, (5, 6))] == (I, 3)
    # after [5, 8], "5 8" is never followed in the source: fall back to any source token, n = 1
    _, allowed = _step(proc, labels, [5, 8], [0.0, 0.0, 5.0])
    assert allowed == {5, 6, 7, 8, 9} and proc.decisions[(0, (5, 8))] == (I, 1)
    # O leaves the logits untouched
    logits = torch.arange(10, dtype=torch.float32)[None] / 10
    # I would win, but the step before (history [1, 2]) is unseen, so n = 0 and I is forbidden
    out = proc(logits, torch.tensor([[1, 2, 3]]), _state([[3.0, 0.0, 9.0]]))
    assert torch.equal(out, logits) and proc.decisions[(0, (1, 2, 3))] == (O, 0)


def test_rows_map_to_sources_by_repeats():
    proc = CopyConstraint([[1, 2], [3, 4]])
    out = proc(torch.zeros(4, 6), torch.zeros(4, 0, dtype=torch.long), _state([[0.0, 1.0, 0.0]] * 4))
    allowed = [{i for i in range(6) if out[r, i] > NEG} for r in range(4)]
    assert allowed == [{1, 2}, {1, 2}, {3, 4}, {3, 4}]
    with pytest.raises(ValueError, match="split evenly"):
        proc(torch.zeros(3, 6), torch.zeros(3, 0, dtype=torch.long), _state(torch.zeros(3, 3)))


@dataclass
class ScriptedState:
    rows: list  # (source row, history) per search row
    copy_logits: torch.Tensor  # (R, 3) label scores of the logits returned with this state


class ScriptedCopyModel:
    """A Decodable whose logits and copy scores are pseudo-random functions of (source, history);
    the scores travel in the state, as `UniLMSeq2Seq`'s do."""

    def __init__(self, vocab: int, seed: int, *, bias=(0.0, 0.0, 0.0), eos: int = 0) -> None:
        self.vocab_size, self.seed, self.bias, self.eos = vocab, seed, torch.tensor(bias), eos

    def _out(self, rows):
        logits, labels = [], []
        for src, hist in rows:
            g = torch.Generator().manual_seed(hash((self.seed, src, hist)) & 0x7FFFFFFF)
            lg = torch.randn(self.vocab_size, generator=g) * 2
            lg[self.eos] -= 2.0  # keep sequences going for a while
            logits.append(lg)
            labels.append(torch.randn(3, generator=g) * 2 + self.bias)
        return torch.stack(logits), ScriptedState(rows, torch.stack(labels))

    def start(self, *, rows, max_new_tokens):
        return self._out([(int(r), ()) for r in rows])

    def step(self, tokens, state):
        return self._out([(s, h + (int(t),)) for (s, h), t in zip(state.rows, tokens.tolist())])

    def select(self, state, index):
        return ScriptedState([state.rows[i] for i in index.tolist()], state.copy_logits[index])


def _check_spans(proc, sources, sequences, per_row):
    longest = 0
    for r, seq in enumerate(sequences):
        b = r // per_row
        for t, (label, n, _tok) in enumerate(proc.spans(b, seq)):
            assert (b, tuple(seq[:t])) in proc.decisions  # every prefix was decided by the processor
            if label == I:
                assert proc.span_length(b, seq[:t]) > 0  # no O -> I
            if n > 0:
                assert _contains(sources[b], seq[t - n + 1: t + 1]), (sources[b], seq, t, n)
                longest = max(longest, n)
    return longest


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_every_copied_span_is_a_source_substring(search):
    rng = random.Random(7)
    longest = 0
    for trial in range(25):
        vocab = rng.randrange(6, 20)
        sources = [[rng.randrange(1, vocab) for _ in range(rng.randrange(1, 10))] for _ in range(rng.randrange(1, 4))]
        bias = (rng.uniform(-2, 1), rng.uniform(-1, 2), rng.uniform(-1, 3))
        model = ScriptedCopyModel(vocab, trial, bias=bias)
        proc = CopyConstraint(sources, always=[0])
        procs = [proc, SparseSoftmax(rng.choice([2, 5, 10]))]
        rows = list(range(len(sources)))
        if search == "greedy":
            res, per_row = greedy(model, max_new_tokens=8, eos_id=0, processors=procs, rows=rows), 1
        else:
            k = rng.randrange(2, 4)
            res = beam_search(model, num_beams=k, num_return_sequences=k, max_new_tokens=8, eos_id=0,
                              processors=procs, rows=rows)
            per_row = k
        assert len(res.sequences) == len(sources) * per_row
        longest = max(longest, _check_spans(proc, sources, res.sequences, per_row))
    assert longest >= 3  # the I path (n-grams past bigrams) was exercised


@pytest.mark.parametrize("sparse", [None, 4])
def test_labels_stuck_on_o_give_exactly_the_plain_search(sparse):
    for seed in range(5):
        sources = [[1, 2, 3], [4, 5, 6, 7]]
        plain_model = ScriptedCopyModel(12, seed)
        model = ScriptedCopyModel(12, seed, bias=(50.0, -50.0, -50.0))  # same logits, labels always O
        tail = [] if sparse is None else [SparseSoftmax(sparse)]
        a = beam_search(plain_model, num_beams=3, max_new_tokens=7, eos_id=0, processors=tail, rows=[0, 1])
        proc = CopyConstraint(sources, always=[0])
        b = beam_search(model, num_beams=3, max_new_tokens=7, eos_id=0, processors=[proc, *tail], rows=[0, 1])
        assert a.sequences == b.sequences and a.scores == b.scores
        assert all(label == O for (label, _) in proc.decisions.values())


def test_always_b_copies_only_source_tokens():
    sources = [[3, 4, 5], [6, 7]]
    model = ScriptedCopyModel(10, 3, bias=(-50.0, 50.0, -50.0))
    proc = CopyConstraint(sources, always=[0])
    res = greedy(model, max_new_tokens=6, eos_id=0, processors=[proc], rows=[0, 1])
    for seq, src in zip(res.sequences, sources):
        assert seq and set(seq) <= set(src)


def test_bad_construction():
    with pytest.raises(ValueError, match="at least one source"):
        CopyConstraint([])
    with pytest.raises(ValueError, match="at least one token"):
        CopyConstraint([[1], []])
    proc = CopyConstraint([[1]])
    with pytest.raises(ValueError, match="shape"):
        proc(torch.zeros(2, 4), torch.zeros(2, 0, dtype=torch.long), _state(torch.zeros(2, 2)))
    with pytest.raises(ValueError, match="copy_logits"):
        proc(torch.zeros(2, 4), torch.zeros(2, 0, dtype=torch.long), SimpleNamespace())
