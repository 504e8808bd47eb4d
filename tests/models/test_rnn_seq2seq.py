"""The title models, RNNSeq2Seq and UniLMSeq2Seq with the prior / pointer head: the prior vector,
padding, cached steps against the full forward, the efficient loss against the full distribution,
beam 1 against greedy, and the cached beam search against the no-cache reference that re-runs the
whole model at every step."""

from __future__ import annotations

import pytest
import torch

from genloom.decode.loops import beam_search, greedy
from genloom.models.rnn_seq2seq import RNNSeq2Seq, RNNSeq2SeqState, title_rnn_small
from genloom.models.unilm import UniLMSeq2Seq, title_unilm_small
from genloom.nn.pointer import source_presence, successor_matches
from genloom.nn.rows import reverse_rows
from genloom.models.nocache import NoCache
from genloom.tasks.title.infer import title_processors

V, PAD, BOS, EOS = 40, 0, 2, 3


def _rnn(**kw) -> RNNSeq2Seq:
    torch.manual_seed(0)
    cfg = title_rnn_small(V, emb_dim=16, enc_hidden=8, dec_hidden=12, out_hidden=24, dropout=0.0,
                          **kw)
    return RNNSeq2Seq(cfg).eval()


def _rnn_plain(**kw) -> RNNSeq2Seq:
    """The post's shape with no successor bias."""
    return _rnn(successor=False, **kw)


def _rnn_g(**kw) -> RNNSeq2Seq:
    """The generator restricted to the 20 most frequent ids (the rest only by copy)."""
    return _rnn(gen_vocab=20, **kw)


def _unilm(copy: bool = True, **kw) -> UniLMSeq2Seq:
    torch.manual_seed(0)
    cfg = title_unilm_small(V, d_model=32, n_layer=2, n_head=4, d_ff=64, dropout=0.0,
                            max_source_len=12, max_target_len=10, pointer=copy, **kw)
    model = UniLMSeq2Seq(cfg).eval()
    with torch.no_grad():  # make the prior and the gate matter (they start neutral)
        for name, p in model.named_parameters():
            if name.startswith(("head.prior", "head.gate")):
                p.normal_(0, 0.5)
    return model


def _logp(m, src, tgt):
    """Teacher-forced log-probs (B, T, V) of either model (the UniLM returns a Seq2SeqOutput,
    logits when it has no head)."""
    out = m(src, tgt)
    return (out.logits if isinstance(out, tuple) else out).float().log_softmax(-1)


def _batch() -> torch.Tensor:
    """Three right-padded sources of lengths 7, 3, 10 (ids 4.. are characters)."""
    g = torch.Generator().manual_seed(1)
    src = torch.randint(4, V, (3, 10), generator=g)
    src[0, 7:] = PAD
    src[1, 3:] = PAD
    return src


def test_reverse_rows_reverses_within_length_and_keeps_padding():
    x = torch.arange(12).view(2, 6, 1).float()
    out = reverse_rows(x, torch.tensor([4, 6]))[..., 0]
    assert out.tolist() == [[3, 2, 1, 0, 4, 5], [11, 10, 9, 8, 7, 6]]
    mask = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])  # the same lengths as a mask, (B, T) ids
    assert reverse_rows(x[..., 0].long(), mask).tolist() == out.long().tolist()


def test_prior_vector_marks_exactly_the_source_characters_of_padded_rows():
    src = _batch()
    chi = source_presence(src, V, PAD)
    for b in range(src.shape[0]):
        real = {int(i) for i in src[b] if i != PAD}
        assert {int(i) for i in chi[b].nonzero()} == real  # pad never marked, repeats once
    assert set(chi.unique().tolist()) <= {0.0, 1.0}


def test_successor_matches_equal_brute_force():
    src = torch.tensor([[5, 6, 7, 5, 6, 0], [8, 8, 8, 9, 0, 0]])
    prev1 = torch.tensor([[2, 5, 6, 7], [2, 8, 8, 9]])
    prev2 = torch.tensor([[-2, 2, 5, 6], [-2, 2, 8, 8]])
    m1, m2 = successor_matches(src, prev1, prev2, start_id=2)
    for b in range(2):
        padded = [2, 2] + src[b].tolist()  # the source preceded by bos (id 2)
        for t in range(4):
            for j in range(6):
                one = padded[j + 1] == int(prev1[b, t])
                two = one and padded[j] == int(prev2[b, t])
                assert (m1[b, t, j], m2[b, t, j]) == (float(one), float(two))
    assert m1[0, 0].tolist() == [1, 0, 0, 0, 0, 0]  # after bos: the article's first character
    assert m1[0, 1].tolist() == [0, 1, 0, 0, 1, 0] and m2[0, 2].tolist() == [0, 0, 1, 0, 0, 1]
    assert m2[0, 1].tolist() == [0, 1, 0, 0, 0, 0]  # bos, 5 -> continue the article's start


def test_prior_is_initialised_to_scale_one_shift_zero():
    m = _rnn()
    assert torch.equal(m.prior_log_scale.exp(), torch.ones(V))
    assert torch.equal(m.prior_shift, torch.zeros(V))


def test_encoder_ignores_padding():
    """A row's encoder states and outputs do not depend on how much padding follows it."""
    m = _rnn()
    src = _batch()
    wide = torch.cat([src, torch.zeros(3, 5, dtype=torch.long)], 1)
    tgt = torch.randint(4, V, (3, 6))
    assert torch.allclose(m(src, tgt), m(wide, tgt), atol=1e-6)
    for b, n in enumerate([7, 3, 10]):
        alone = m(src[b:b + 1, :n], tgt[b:b + 1])
        assert torch.allclose(alone, m(src, tgt)[b:b + 1], atol=1e-5)


@pytest.mark.parametrize("make,prior,copy", [
    pytest.param(make, prior, copy, id=f"{name}-prior{int(prior)}-copy{int(copy)}")
    for make, name in [(_rnn, "rnn"), (_unilm, "unilm"), (_rnn_g, "rnn-gen20"), (_rnn_plain, "rnn-no-successor")]
    for prior, copy in [(True, True), (False, True), (True, False), (False, False)]
    if copy or make is not _rnn_g])  # a restricted generator needs copy
def test_step_log_probs_equal_full_forward(make, prior, copy):
    m = make(prior=prior, copy=copy)
    src = _batch()
    tgt = torch.cat([torch.full((3, 1), BOS), torch.randint(4, V, (3, 7))], 1)  # (B, T)
    full = _logp(m, src, tgt)  # (B, T, V)
    assert torch.allclose(full.exp().sum(-1), torch.ones(3, 8), atol=1e-5)
    with torch.no_grad():
        logp, state = m.start(src=src, max_new_tokens=8)
        steps = [logp]
        for t in range(1, tgt.shape[1]):
            logp, state = m.step(tgt[:, t], state)
            steps.append(logp)
    assert (torch.stack(steps, 1).float().log_softmax(-1) - full).abs().max() <= 1e-5


@pytest.mark.parametrize("make,copy", [
    pytest.param(make, copy, id=f"{name}-copy{int(copy)}")
    for make, name in [(_rnn, "rnn"), (_unilm, "unilm"), (_rnn_g, "rnn-gen20")]
    for copy in (True, False) if copy or make is not _rnn_g])  # a restricted generator needs copy
def test_loss_equals_nll_of_the_full_distribution(make, copy):
    m = make(copy=copy)
    src = _batch()
    g = torch.Generator().manual_seed(3)
    tgt = torch.cat([torch.full((3, 1), BOS), torch.randint(4, V, (3, 6), generator=g)], 1)
    tgt[2, 4:] = PAD
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:].clone()
    tgt_out[0, 0] = src[0, 2]  # a target in the source: the copy term counts
    tgt_out[1, 0] = 39  # id 39 is not in source row 1: with gen_vocab=20 it cannot be produced
    assert 39 not in src[1].tolist()
    full = _logp(m, src, tgt_in)  # (B, T, V)
    lp = full.gather(2, tgt_out[..., None])[..., 0]  # (B, T)
    keep = (tgt_out != PAD) & (lp > -60)  # impossible targets (p = 0) leave the mean
    assert bool((lp <= -60).any()) == (make is _rnn_g)
    ref = -(lp * keep).sum() / keep.sum()
    assert torch.allclose(m(src, tgt_in, tgt_out), ref, atol=1e-6)


@pytest.mark.parametrize("make", [_rnn, _unilm], ids=["rnn", "unilm"])
def test_select_reorders_every_part_of_the_state(make):
    m = make()
    src = _batch()
    with torch.no_grad():
        _, st = m.start(src=src, max_new_tokens=4)
        _, st = m.step(torch.tensor([5, 6, 7]), st)
        idx = torch.tensor([2, 0, 0])
        a, _ = m.step(torch.tensor([9, 9, 9]), m.select(st, idx))
        _, ref = m.start(src=src[idx], max_new_tokens=4)
        _, ref = m.step(torch.tensor([7, 5, 5]), ref)
        b, _ = m.step(torch.tensor([9, 9, 9]), ref)
    assert (a - b).abs().max() <= 1e-5
    assert type(st) is (RNNSeq2SeqState if make is _rnn else type(ref))  # a typed state


@pytest.mark.parametrize("make", [_rnn, _unilm], ids=["rnn", "unilm"])
def test_beam_one_equals_greedy(make):
    m = make()
    src = _batch()
    procs = title_processors(_Tok, no_repeat_ngram=3)
    g = greedy(m, max_new_tokens=8, eos_id=EOS, processors=procs, src=src).sequences
    b = beam_search(m, num_beams=1, max_new_tokens=8, eos_id=EOS, processors=procs,
                    src=src).sequences
    assert g == b and any(len(s) > 0 for s in g)


@pytest.mark.parametrize("make", [_rnn, _unilm], ids=["rnn", "unilm"])
def test_cached_beam_search_equals_no_cache_reference(make):
    m = make()
    src = _batch()
    procs = title_processors(_Tok, no_repeat_ngram=3)
    kw = dict(num_beams=3, max_new_tokens=8, eos_id=EOS, processors=procs, src=src)
    cached = beam_search(m, **kw)
    slow = beam_search(NoCache(m, bos_id=BOS), **kw)
    assert cached.sequences == slow.sequences
    assert cached.scores == pytest.approx(slow.scores, abs=1e-5)


class _Tok:
    pad_id, unk_id, bos_id, eos_id = PAD, 1, BOS, EOS
