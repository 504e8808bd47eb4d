"""Conditional generation on the synthetic corpus (two labels with disjoint alphabets): a CLN
model, the label-token baseline and a CLN model conditioned on sentence vectors (driven by a
class-mean vector, not a label) all generate the requested class, with and without guidance;
perplexity equals step-by-step scoring; the training rows and loss by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from genloom.errors import UserError
from genloom.tasks.condition import condition_for, generate, load_data, load_model, lm_loss, mean_nll, other_conditions
from genloom.tasks.condition.train import collate, sequence
from genloom.tokenizers import CharTokenizer


def test_mean_nll_equals_step_by_step_scoring(trained):
    lm, tok, _ = load_model(trained / "plain", kind="plain")
    texts, ended = ["好棒赞", "差烂坏糟恨苦差", "美"], [True, False, True]
    total = count = 0.0
    for text, end in zip(texts, ended):
        ids = [tok.bos_id] + tok.encode(text) + ([tok.eos_id] if end else [])
        logits, state = lm.start(input_ids=torch.tensor([ids[:1]]), max_new_tokens=len(ids))
        for nxt in ids[1:]:
            total -= float(logits.log_softmax(-1)[0, nxt])
            count += 1
            logits, state = lm.step(torch.tensor([nxt]), state)
    assert mean_nll(lm, tok, texts, ended) == pytest.approx(total / count, rel=1e-5)


def test_training_rows_and_loss_by_hand(trained):
    """Rows: first token (bos or the label's), the characters cut to max_chars, eos only when
    not cut; the loss is the token mean over real targets of rows padded to one width."""
    tok = CharTokenizer.train(["好棒赞差"])
    ids = tok.encode("好棒赞差")
    assert sequence("cln", tok, "好棒赞差", 1, 10) == [tok.bos_id, *ids, tok.eos_id]
    assert sequence("prefix", tok, "好棒赞差", 1, 10) == [tok.vocab_size + 1, *ids, tok.eos_id]
    assert sequence("plain", tok, "好棒赞差", 0, 3) == [tok.bos_id, *ids[:3]]  # cut: no eos
    lm, tok, _ = load_model(trained / "plain", kind="plain")
    rows = [[tok.bos_id, *tok.encode("好棒"), tok.eos_id], [tok.bos_id, *tok.encode("差烂坏糟")]]
    with torch.no_grad():
        loss, n = lm_loss(lm, collate([(r, None) for r in rows]))
        want = [F.cross_entropy(lm(torch.tensor([r]))[0, :-1], torch.tensor(r[1:]), reduction="sum") for r in rows]
    assert n == sum(len(r) - 1 for r in rows) == 7
    assert float(loss) == pytest.approx(float(sum(want)) / n, rel=1e-5)


@pytest.mark.parametrize("name", ["cln", "prefix"])
def test_label_controls_the_alphabet(trained, in_alphabet, alphabets, name):
    model, tok, meta = load_model(trained / name)
    for label in alphabets:
        texts, _ = generate(model, tok, meta, condition=condition_for(meta, label=label), n=40, seed=3)
        assert in_alphabet(texts, label) >= 0.97, (name, label, texts[:5])


@pytest.mark.parametrize("name", ["cln", "prefix", "vec"])
def test_guided_sampling_keeps_the_label(trained, in_alphabet, alphabets, name):
    """Guidance against the other label, for labels, label tokens and class-mean vectors."""
    model, tok, meta = load_model(trained / name)
    for label in alphabets:
        texts, _ = generate(model, tok, meta, condition=condition_for(meta, label=label), n=40, seed=3,
                            guidance=2.0, contrast=other_conditions(meta, label))
        assert in_alphabet(texts, label) >= 0.97, (name, label, texts[:5])


def test_class_mean_vector_drives_a_vector_conditioned_model(trained, in_alphabet):
    """Not a label: the mean of a class's sentence vectors, through the same `condition` API."""
    model, tok, meta = load_model(trained / "vec")
    assert model.config.cond_labels == 0 and model.config.cond_dim == 8
    data = load_data(data=meta["source"]["data"], label_field="label", vector_field="vec")
    train = data.splits["train"]
    for k, label in enumerate(data.label_names):
        mean = train.vectors[torch.tensor(train.labels) == k].mean(0)  # (E,)
        assert torch.allclose(condition_for(meta, label=label), mean)  # what `--label` resolves to
        texts, _ = generate(model, tok, meta, condition=mean, n=40, seed=5)
        assert in_alphabet(texts, label) >= 0.97, (label, texts[:5])
    with pytest.raises(UserError, match=r"must be \(1, 8\) or \(8,\)"):
        generate(model, tok, meta, condition=torch.zeros(3), n=1)


def test_user_file_splits_by_hash_and_keeps_vectors(trained):
    data = load_data(data=str(trained / "syn.jsonl"), vector_field="vec")
    sizes = {k: len(s.texts) for k, s in data.splits.items()}
    assert sum(sizes.values()) == 500 and sizes["train"] > 400 and data.label_names == ("neg", "pos")
    for split in data.splits.values():
        assert split.vectors.shape == (len(split.texts), 8) and len(split.labels) == len(split.texts)
    again = load_data(data=str(trained / "syn.jsonl"))
    assert again.splits["test"].texts == data.splits["test"].texts and again.splits["test"].vectors is None
