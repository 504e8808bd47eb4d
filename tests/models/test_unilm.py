"""UniLMSeq2Seq (models/unilm.py): cached steps equal the full forward, copy scores travel in the
state (reordered by select, two interleaved decodes independent), one state type whatever the
heads, save / load, and the configs and weight names of directories saved by the older classes."""

import dataclasses

import pytest
import torch

from genloom.decode.copy import CopyConstraint, SparseSoftmax
from genloom.decode.loops import greedy, stream
from genloom.models import load, save
from genloom.models.unilm import (CopyUniLMConfig, UniLMCopyConfig, UniLMSeq2Seq, UniLMSeq2SeqConfig,
                                  UniLMState)
from genloom.tokenizers import CharTokenizer
from genloom.train.lm import pad_rows

V = 30


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = UniLMSeq2SeqConfig(vocab_size=V, d_model=32, n_layer=2, n_head=2, d_ff=64, dropout=0.0,
                             max_source_len=12, max_target_len=7, **{"copy_labels": True, "sparse_k": 10, **kw})
    return UniLMSeq2Seq(cfg).eval()


def _sources():
    return [[5, 6, 7, 8, 9, 10, 11], [12, 13, 5, 6], [20, 21, 22, 23, 24, 25, 26, 27, 28]]


HEADS = [{}, {"pointer": True, "prior": True}, {"pointer": True, "copy_labels": False}, {"prior": True},
         {"copy_labels": False}]


@pytest.mark.parametrize("kw", HEADS)
def test_cached_steps_equal_the_full_forward(kw):
    model = _model(**kw)
    src = pad_rows(_sources(), 0)
    res = greedy(model, max_new_tokens=5, processors=[], src=src)  # no EOS: 5 tokens each
    logits, state = model.start(src=src, max_new_tokens=5)
    step_logits, step_copy = [logits], [state.copy_logits]
    for t in range(4):
        logits, state = model.step(torch.tensor([s[t] for s in res.sequences]), state)
        step_logits.append(logits)
        step_copy.append(state.copy_logits)
    assert isinstance(state, UniLMState)  # one state type whatever the heads
    tgt_in = torch.tensor([[2, *s[:4]] for s in res.sequences])  # (B, 5) BOS + generated
    with torch.no_grad():
        full, copy = model(src, tgt_in)  # (B, 5, V), (B, S + 5, 3)
    S = src.shape[1]
    for t in range(5):
        assert torch.allclose(step_logits[t], full[:, t], atol=1e-5)
        if copy is None:
            assert step_copy[t] is None
        else:
            assert torch.allclose(step_copy[t], copy[:, S + t], atol=1e-5)


@pytest.mark.parametrize("kw", HEADS[:3])
def test_select_reorders_copy_scores_with_the_cache(kw):
    model = _model(**kw)
    src = pad_rows(_sources(), 0)
    _, state = model.start(src=src, max_new_tokens=3)
    before = state.copy_logits
    index = torch.tensor([2, 0, 0, 1])
    state = model.select(state, index)
    if before is not None:
        assert torch.equal(state.copy_logits, before[index])
    logits, _ = model.step(torch.tensor([5, 6, 6, 7]), state)
    assert torch.allclose(logits[1], logits[2])  # the repeated row stays identical
    # row 3 is source 1 again: the same step from a fresh start gives the same logits
    _, alone = model.start(src=pad_rows([_sources()[1]], 0), max_new_tokens=3)
    one, _ = model.step(torch.tensor([7]), alone)
    assert torch.allclose(logits[3], one[0], atol=1e-5)


def test_interleaved_copy_constrained_decodes_do_not_share_state():
    """Two decodes of one model stepped alternately give what each gives alone: the copy scores
    the constraint reads are in each decode's own state, not on the model."""
    model = _model(seed=2, pointer=True, prior=True)
    with torch.no_grad():
        model.copy_head.bias.copy_(torch.tensor([-3.0, 1.0, 2.0]))  # B and I often win
    a_src, b_src = _sources()[:2], _sources()[2:]

    def run(sources):
        procs = [CopyConstraint(sources, always=[3]), SparseSoftmax(10)]
        return stream(model, max_new_tokens=6, eos_id=3, processors=procs, src=pad_rows(sources, 0))

    alone_a, alone_b = list(run(a_src)), list(run(b_src))
    together_a, together_b = [], []
    for x, y in zip(run(a_src), run(b_src)):
        together_a.append(x)
        together_b.append(y)
    assert together_a == alone_a and together_b == alone_b


def test_pointer_outputs_a_distribution_that_copies_from_the_source():
    model = _model(pointer=True, prior=True)
    with torch.no_grad():
        model.head.gate.bias.fill_(-20.0)  # all mass on the pointer
    sources = _sources()
    logp, _ = model.start(src=pad_rows(sources, 0), max_new_tokens=2)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(3), atol=1e-5)
    for r, src in enumerate(sources):
        outside = [v for v in range(V) if v not in src]
        assert float(logp[r].exp()[src].sum()) > 0.999 and float(logp[r, outside].max()) < -10


@pytest.mark.parametrize("kw", HEADS[:2])
def test_save_load_round_trip(tmp_path, kw):
    model = _model(seed=3, **kw)
    tok = CharTokenizer(list("abcdefghijklmnopqrstuvwxyz"))
    save(model, tok, tmp_path / "m")
    assert '"model_type": "unilm_seq2seq"' in (tmp_path / "m" / "config.json").read_text()
    again, tok2 = load(tmp_path / "m")
    assert isinstance(again, UniLMSeq2Seq) and again.config == model.config
    src = pad_rows(_sources(), 0)
    a, sa = model.start(src=src, max_new_tokens=2)
    b, sb = again.start(src=src, max_new_tokens=2)
    assert torch.equal(a, b) and torch.equal(sa.copy_logits, sb.copy_logits)
    assert tok2.vocab_size == tok.vocab_size


def test_older_configs_map_onto_the_one_model():
    title = UniLMCopyConfig(vocab_size=V, d_model=16, n_layer=1, n_head=2, d_ff=32, prior=True, copy=False,
                            max_source_len=40, max_title_len=13)
    spaces = CopyUniLMConfig(vocab_size=V, d_model=16, n_layer=1, n_head=2, d_ff=32, max_source_len=48,
                             max_target_len=12, copy=True, pointer=True, prior=False, sparse_k=None, sparse_p=0.9)
    t, s = UniLMSeq2Seq(title).config, UniLMSeq2Seq(spaces).config
    # the contexts the older classes gave their Transformers: S + T_title + 1 and S + T + 2
    assert t.transformer().max_len == 40 + 13 + 1 and s.transformer().max_len == 48 + 12 + 2
    assert (t.prior, t.pointer, t.copy_labels, t.sparse) == (True, False, False, None)
    assert (s.prior, s.pointer, s.copy_labels, s.sparse) == (False, True, True, {"k": None, "top_p": 0.9})
    assert {f.name for f in dataclasses.fields(UniLMSeq2SeqConfig)} >= {"copy_labels", "pointer", "prior"}


def test_flat_head_weights_of_older_files_are_renamed_or_dropped():
    prior_only = UniLMSeq2Seq(UniLMSeq2SeqConfig(vocab_size=V, d_model=16, n_layer=1, n_head=2, d_ff=32, prior=True))
    both = _model(pointer=True, prior=True)
    assert both.rename_weight("attention.q.weight") == "head.attention.q.weight"
    assert both.rename_weight("successor_weight") == "head.successor_weight"
    assert both.rename_weight("prior_shift") == "head.prior_shift"
    assert both.rename_weight("lm.tok_emb.weight") == "lm.tok_emb.weight"
    assert both.rename_weight("head.gate.bias") == "head.gate.bias" and both.rename_weight("copy_head.bias") == "copy_head.bias"
    # the older classes built an unused pointer with the prior alone: its weights are dropped
    assert prior_only.rename_weight("attention.k.weight") is None
    assert prior_only.rename_weight("prior_log_scale") == "head.prior_log_scale"
