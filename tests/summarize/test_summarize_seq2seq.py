"""Training and decoding the SPACES seq2seq (tasks/summarize/seq2seq.py): the copy labels of a
batch, the source noise, the joint loss, and copy-constrained decoding on the real model (the model
itself: tests/models/test_unilm.py)."""

import random
from types import SimpleNamespace

import pytest
import torch

from genloom.decode.copy import B, I, O, CopyConstraint, SparseSoftmax
from genloom.decode.loops import beam_search
from genloom.models.unilm import UniLMSeq2Seq
from genloom.tasks.summarize.config import SummarizeConfig
from genloom.tasks.summarize.seq2seq import (Seq2SeqCollate, Seq2SeqData, decode_processors, generate_ids,
                                             seq2seq_losses)
from genloom.train.lm import pad_rows

TOKENIZER = SimpleNamespace(vocab_size=30, pad_id=0, bos_id=2, eos_id=3)
SOURCES = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 5, 6], [20, 21, 22, 23, 24, 25, 26, 27, 28]]


def _model(seed=0, **kw):
    """The seq2seq a tiny SummarizeConfig describes (the post's model: no pointer, no prior)."""
    settings = SummarizeConfig(window=12, max_target_len=6, d_model=32, n_layer=2, n_head=2, d_ff=64, dropout=0.0,
                               pointer=False, prior=False, **kw)
    torch.manual_seed(seed)
    return UniLMSeq2Seq(settings.seq2seq(TOKENIZER)).eval()


def _sources():
    return [list(s) for s in SOURCES]


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
    loss, n, parts = seq2seq_losses(model.train(), batch, copy_weight=1.5)
    assert int(n) == 5 and set(parts) == {"token", "copy"}
    assert abs(float(loss.detach()) - (parts["token"] + 1.5 * parts["copy"])) < 1e-5
    no_copy = _model(copy=False)
    _, _, parts = seq2seq_losses(no_copy.train(), batch)
    assert set(parts) == {"token"}


def test_copy_off_is_the_plain_beam_search():
    model = _model(seed=1)
    sources = _sources()
    got = generate_ids(model, sources, num_beams=3, copy=False)
    plain = beam_search(model, num_beams=3, max_new_tokens=7, eos_id=3, min_new_tokens=1,
                        processors=[SparseSoftmax(10)], src=pad_rows(sources, 0))
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
        proc = CopyConstraint(sources, always=[3])
        res = beam_search(model, num_beams=2, num_return_sequences=2, max_new_tokens=7, eos_id=3,
                          processors=[proc, SparseSoftmax(10)], src=pad_rows(sources, 0))
        for r, seq in enumerate(res.sequences):
            src = sources[r // 2]
            for t, (label, n, _) in enumerate(proc.spans(r // 2, seq)):
                if n:
                    gram = seq[t - n + 1: t + 1]
                    assert any(src[i:i + n] == gram for i in range(len(src) - n + 1))
                    longest = max(longest, n)
    assert longest >= 3  # I continued spans past bigrams
