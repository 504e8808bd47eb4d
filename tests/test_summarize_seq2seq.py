"""The SPACES seq2seq (tasks/summarize_seq2seq.py): cached decoding equals the full forward, the
copy labels of a batch, save/load, copy-constrained decoding on the real model."""

import random

import pytest
import torch

from genloom.decode.copy import B, I, O, CopyConstraint, SparseSoftmax
from genloom.decode.loops import beam_search, greedy
from genloom.models import load, save
from genloom.tasks.summarize_seq2seq import (CopyUniLM, CopyUniLMConfig, Seq2SeqCollate, Seq2SeqData,
                                             decode_processors, generate_ids, pad_sources, seq2seq_losses)
from genloom.tokenizers import CharTokenizer

V = 30


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = CopyUniLMConfig(vocab_size=V, d_model=32, n_layer=2, n_head=2, d_ff=64, dropout=0.0,
                          max_source_len=12, max_target_len=6, **kw)
    return CopyUniLM(cfg).eval()


def _sources():
    return [[5, 6, 7, 8, 9, 10, 11], [12, 13, 5, 6], [20, 21, 22, 23, 24, 25, 26, 27, 28]]


MIXED = [{}, {"pointer": True, "prior": True}, {"pointer": True, "copy": False}]


@pytest.mark.parametrize("kw", MIXED)
def test_cached_steps_equal_the_full_forward(kw):
    model = _model(**kw)
    sources = _sources()
    src = pad_sources(sources, 0)
    res = greedy(model, max_new_tokens=5, processors=[], src=src)  # no EOS: 5 tokens each
    logits, state = model.start(src=src, max_new_tokens=5)
    step_logits, step_copy = [logits], [model.copy_logits]
    for t in range(4):
        logits, state = model.step(torch.tensor([s[t] for s in res.sequences]), state)
        step_logits.append(logits)
        step_copy.append(model.copy_logits)
    tgt_in = torch.tensor([[2, *s[:4]] for s in res.sequences])  # (B, 5) BOS + generated
    with torch.no_grad():
        full, copy = model(src, tgt_in)  # (B, 5, V), (B, S + 5, 3)
    S = src.shape[1]
    for t in range(5):
        assert torch.allclose(step_logits[t], full[:, t], atol=1e-5)
        if copy is not None:
            assert torch.allclose(step_copy[t], copy[:, S + t], atol=1e-5)


@pytest.mark.parametrize("kw", MIXED)
def test_select_reorders_copy_scores_with_the_cache(kw):
    model = _model(**kw)
    src = pad_sources(_sources(), 0)
    _, state = model.start(src=src, max_new_tokens=3)
    before = model.copy_logits.clone()
    index = torch.tensor([2, 0, 0, 1])
    state = model.select(state, index)
    assert torch.equal(model.copy_logits, before[index])
    logits, _ = model.step(torch.tensor([5, 6, 6, 7]), state)
    assert torch.allclose(logits[1], logits[2])  # the repeated row stays identical
    # row 3 is source 1 again: the same step from a fresh start gives the same logits
    _, alone = model.start(src=pad_sources([_sources()[1]], 0), max_new_tokens=3)
    one, _ = model.step(torch.tensor([7]), alone)
    assert torch.allclose(logits[3], one[0], atol=1e-5)


def test_pointer_outputs_a_distribution_that_copies_from_the_source():
    model = _model(pointer=True, prior=True)
    with torch.no_grad():
        model.gate.bias.fill_(-20.0)  # all mass on the pointer
    sources = _sources()
    logp, _ = model.start(src=pad_sources(sources, 0), max_new_tokens=2)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(3), atol=1e-5)
    for r, src in enumerate(sources):
        outside = [v for v in range(V) if v not in src]
        assert float(logp[r].exp()[src].sum()) > 0.999 and float(logp[r, outside].max()) < -10


def test_collate_places_lcs_labels_on_source_and_target():
    collate = Seq2SeqCollate(pad_id=0, bos_id=2, eos_id=3)
    src, tgt = [5, 6, 7, 9, 8], [6, 7, 8]
    batch = collate([(src, tgt), ([4, 4], [4])])
    # LCS 6 7 8: source labels O B I O B, target labels B I B; target side: BOS predicts 6 (B),
    # 6 predicts 7 (I), 7 predicts 8 (B), 8 predicts EOS (O)
    assert batch["copy"][0].tolist() == [O, B, I, O, B, B, I, B, O]
    assert batch["tgt_in"][0].tolist() == [2, 6, 7, 8]
    assert batch["tgt_out"][0].tolist() == [6, 7, 8, 3]
    assert batch["src"][1].tolist() == [4, 4, 0, 0, 0]
    # the LCS backtrace (bert4keras order) matches the last 4 of the source
    assert batch["copy"][1].tolist() == [O, B, -100, -100, -100, B, O, -100, -100]
    assert batch["tgt_out"][1].tolist() == [4, 3, -100, -100]


def test_source_noise_draws_from_the_same_source():
    random.seed(0)
    data = Seq2SeqData([[[5, 6, 7, 8]], [[9, 10], [11, 12]]], [[1], [2]], noise=0.5, alt_rate=0.5)
    seen_alt = set()
    for _ in range(200):
        src, _ = data[0]
        assert len(src) == 4 and set(src) <= {5, 6, 7, 8}
        src, _ = data[1]
        seen_alt.add(tuple(sorted(set(src))) in {(11,), (12,), (11, 12)})
        assert set(src) <= {9, 10} or set(src) <= {11, 12}
    assert seen_alt == {True, False}  # both the predicted and the oracle source are used


@pytest.mark.parametrize("sparse_k", [None, 3])
def test_losses_sparse_and_copy_parts(sparse_k):
    model = _model(sparse_k=sparse_k)
    batch = Seq2SeqCollate(pad_id=0, bos_id=2, eos_id=3)([([5, 6, 7], [6, 7]), ([8, 9], [9])])
    loss, n, parts = seq2seq_losses(model.train(), batch)
    assert int(n) == 5 and set(parts) == {"token", "copy"}
    assert abs(float(loss.detach()) - (parts["token"] + 2.0 * parts["copy"])) < 1e-5
    no_copy = _model(copy=False)
    _, _, parts = seq2seq_losses(no_copy.train(), batch)
    assert set(parts) == {"token"}


@pytest.mark.parametrize("kw", MIXED[:2])
def test_save_load_round_trip(tmp_path, kw):
    model = _model(seed=3, **kw)
    tok = CharTokenizer(list("abcdefghijklmnopqrstuvwxyz"))
    save(model, tok, tmp_path / "m")
    again, tok2 = load(tmp_path / "m")
    assert isinstance(again, CopyUniLM) and again.config == model.config
    src = pad_sources(_sources(), 0)
    a, _ = model.start(src=src, max_new_tokens=2)
    b, _ = again.start(src=src, max_new_tokens=2)
    assert torch.equal(a, b) and torch.equal(model.copy_logits, again.copy_logits)
    assert tok2.vocab_size == tok.vocab_size


def test_copy_off_is_the_plain_beam_search():
    model = _model(seed=1)
    sources = _sources()
    got = generate_ids(model, sources, num_beams=3, copy=False)
    plain = beam_search(model, num_beams=3, max_new_tokens=7, eos_id=3, min_new_tokens=1,
                        processors=[SparseSoftmax(10)], src=pad_sources(sources, 0))
    assert got == plain.sequences
    assert [type(p) for p in decode_processors(model, sources, copy=False)] == [SparseSoftmax]
    assert decode_processors(_model(sparse_k=None), sources, copy=False) == []


def test_real_model_copies_source_substrings_under_b_and_i():
    longest = 0
    for seed in range(4):
        model = _model(seed=seed)
        with torch.no_grad():  # push the copy head towards B and I so spans get long
            model.copy_head.bias.copy_(torch.tensor([-3.0, 1.0, 2.0]))
        sources = _sources()
        proc = CopyConstraint(sources, lambda: model.copy_logits, always=[3])
        res = beam_search(model, num_beams=2, num_return_sequences=2, max_new_tokens=7, eos_id=3,
                          processors=[proc, SparseSoftmax(10)], src=pad_sources(sources, 0))
        for r, seq in enumerate(res.sequences):
            src = sources[r // 2]
            for t, (label, n, _) in enumerate(proc.spans(r // 2, seq)):
                if n:
                    gram = seq[t - n + 1: t + 1]
                    assert any(src[i:i + n] == gram for i in range(len(src) - n + 1))
                    longest = max(longest, n)
    assert longest >= 3  # I continued spans past bigrams
