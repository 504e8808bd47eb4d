"""Condition guidance (decode/guidance.py): the guided scores equal the formula computed from
separate runs of the model under each condition, step after step and through `select`; weight 0
is the plain model; bad inputs are one-line errors."""

import pytest
import torch

from genloom.decode.guidance import Guided
from genloom.decode.loops import sample
from genloom.errors import UserError
from genloom.models import Transformer, TransformerConfig


def _model():
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=17, n_layer=2, n_head=2, d_model=16, d_ff=32, max_len=16,
                            cond_dim=6, cond_labels=3)
    model = Transformer(cfg).eval()
    with torch.no_grad():  # CLN starts as the plain model: make the condition matter
        for name, p in model.named_parameters():
            if "cond" in name:
                p.normal_(0, 0.5)
    return model


def _run(model, label, prompt, tokens, index):
    """Log-probs of a plain run under one label: start, one step, select, one step."""
    b = prompt.shape[0]
    lp, st = model.start(input_ids=prompt, condition=torch.full((b,), label), max_new_tokens=4)
    out = [lp.log_softmax(-1)]
    lp, st = model.step(tokens[0], st)
    out.append(lp.log_softmax(-1))
    st = model.select(st, index)
    lp, st = model.step(tokens[1], st)
    out.append(lp.log_softmax(-1))
    return out


@pytest.mark.parametrize("weight", [0.0, 1.5])
def test_guided_scores_equal_the_formula_from_separate_runs(weight):
    model = _model()
    prompt = torch.tensor([[1, 4], [1, 5], [1, 9]])
    tokens = [torch.tensor([3, 7, 8]), torch.tensor([2, 2, 6, 5])]
    index = torch.tensor([2, 0, 0, 1])
    requested, others = 0, [1, 2]
    guided = Guided(model, [{"condition": torch.full((3,), j)} for j in others], weight)
    got, st = guided.start(input_ids=prompt, condition=torch.full((3,), requested), max_new_tokens=4)
    scores = [got]
    got, st = guided.step(tokens[0], st)
    scores.append(got)
    st = guided.select(st, index)
    got, st = guided.step(tokens[1], st)
    scores.append(got)
    pos = _run(model, requested, prompt, tokens, index)
    neg = [_run(model, j, prompt, tokens, index) for j in others]
    assert not torch.allclose(pos[0], neg[0][0], atol=1e-2)  # the labels do differ
    for t in range(3):
        want = (1 + weight) * pos[t] - weight * (neg[0][t] + neg[1][t]) / 2
        assert torch.allclose(scores[t], want, atol=1e-5)
        if weight == 0:
            assert torch.allclose(scores[t], pos[t], atol=1e-6)


def test_guided_sampling_runs_through_the_search_loop():
    model = _model()
    guided = Guided(model, [{"condition": torch.full((5,), 1)}], 2.0)
    out = sample(guided, max_new_tokens=6, generator=torch.Generator().manual_seed(0),
                 input_ids=torch.ones(5, 1, dtype=torch.long), condition=torch.zeros(5, dtype=torch.long))
    assert len(out.sequences) == 5 and all(1 <= len(s) <= 6 for s in out.sequences)


def test_errors():
    model = _model()
    with pytest.raises(UserError, match="weight must be >= 0"):
        Guided(model, [{"condition": torch.zeros(2, dtype=torch.long)}], -1)
    with pytest.raises(UserError, match="at least one contrasting"):
        Guided(model, [], 1.0)
    g = Guided(model, [{"condition": torch.zeros(3, dtype=torch.long)}], 1.0)
    with pytest.raises(UserError, match="shape"):
        g.start(input_ids=torch.ones(2, 1, dtype=torch.long), condition=torch.ones(2, dtype=torch.long),
                max_new_tokens=2)
    g = Guided(model, [{"segment_ids": torch.zeros(2, 1, dtype=torch.long)}], 1.0)
    with pytest.raises(UserError, match="not batched tensor inputs"):
        g.start(input_ids=torch.ones(2, 1, dtype=torch.long), condition=torch.ones(2, dtype=torch.long),
                max_new_tokens=2)
