"""SPACES extractor: DGCNN (nn/dgcnn.py), sentence vectors, k-fold cross-prediction."""

import json

import pytest
import torch

from genloom.errors import UserError
from genloom.models import Transformer, TransformerConfig, save
from genloom.nn.dgcnn import DGCNN, ResidualGatedConv1d
from genloom.tasks.summarize.extract import (EncoderConfig, Extractor, ExtractorConfig, clause_vectors, cross_fit,
                                             document_vectors, load_encoder, load_vectors, position_features,
                                             save_vectors, train_encoder)
from genloom.tokenizers import CharTokenizer


def _active_dgcnn(seed=0, dim=6, hidden=8):
    torch.manual_seed(seed)
    net = DGCNN(dim, hidden, dropout=0.0).eval()
    with torch.no_grad():
        for block in net.blocks:
            block.alpha.fill_(0.7)  # zero-initialised residual gates: open them
    return net


def test_blocks_start_as_identity():
    block = ResidualGatedConv1d(8, 3, dilation=2)
    x = torch.randn(2, 5, 8)
    assert torch.equal(block(x), x)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    assert torch.equal(block(x, mask), x * mask[:, :, None])


def test_padding_does_not_change_real_positions():
    net = _active_dgcnn()
    docs = [torch.randn(n, 6) for n in (7, 3, 12)]
    x = torch.zeros(3, 12, 6)
    mask = torch.zeros(3, 12, dtype=torch.bool)
    for i, d in enumerate(docs):
        x[i, : len(d)], mask[i, : len(d)] = d, True
        x[i, len(d):] = 99.0  # garbage in the padding must not leak
    with torch.no_grad():
        batched = net(x, mask)
        for i, d in enumerate(docs):
            alone = net(d[None], torch.ones(1, len(d), dtype=torch.bool))
            assert torch.allclose(batched[i, : len(d)], alone[0], atol=1e-5)


def test_receptive_field_of_the_posts_dilations():
    net = _active_dgcnn(1)
    assert net.receptive_field() == 1 + 2 * (1 + 2 + 4 + 8 + 1 + 1)
    x = torch.randn(1, 60, 6)
    y = x.clone()
    y[0, 30] += 5.0
    with torch.no_grad():
        changed = (net(x) - net(y)).abs()[0] > 0  # (60,)
    reach = (net.receptive_field() - 1) // 2  # 17 positions each side
    assert changed[30 - reach: 30 + reach + 1].all()
    assert not changed[: 30 - reach].any() and not changed[30 + reach + 1:].any()


def _encoder(tmp_path, mask="bidirectional"):
    tok = CharTokenizer(list("今天气很好我们去公园散步看到花人多"))
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, d_model=16, d_ff=32,
                                          max_len=10, mask=mask, pos="rope", norm="rms", mlp="swiglu", bias=False))
    return save(model, tok, tmp_path / f"enc-{mask}")


def test_clause_vectors_are_mean_pooled_and_batch_independent(tmp_path):
    encoder, tok = load_encoder(_encoder(tmp_path))
    clauses = ["今天天气很好，", "我们去公园", "花", "今天天气很好我们去公园散步看到花"]  # the last is cut to 8
    vecs = clause_vectors(encoder, tok, clauses, batch_size=3)
    for c, v in zip(clauses, vecs):
        ids = torch.tensor([tok.encode(c[:8], add_bos=True, add_eos=True)])
        with torch.no_grad():
            want = encoder.hidden_states(ids)[0].mean(0)
        assert torch.allclose(v, want, atol=1e-5)
    docs = document_vectors(encoder, tok, [clauses[:2], clauses[2:]])
    assert [len(d) for d in docs] == [2, 2] and torch.allclose(torch.cat(docs), vecs, atol=1e-6)
    save_vectors(docs, tmp_path / "v.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(load_vectors(tmp_path / "v.safetensors"), docs))


def test_encoder_is_a_masked_or_causal_lm(tmp_path):
    """A causal LM (genloom-zh-base) encodes too: mean-pooled, each position over its left context,
    so a clause's vector does not depend on what is padded after it in a batch; a prefix model is
    refused."""
    encoder, tok = load_encoder(_encoder(tmp_path, mask="causal"))
    clauses = ["今天天气很好，", "花", "我们去公园散步"]
    vecs = clause_vectors(encoder, tok, clauses, batch_size=3)
    for c, v in zip(clauses, vecs):
        with torch.no_grad():
            want = encoder.hidden_states(torch.tensor([tok.encode(c, add_bos=True, add_eos=True)]))[0].mean(0)
        assert torch.allclose(v, want, atol=1e-5)
    with pytest.raises(UserError, match="masked or causal"):
        load_encoder(_encoder(tmp_path, mask="prefix"))


def test_train_encoder_writes_a_loadable_masked_lm(tmp_path):
    clauses = ["今天天气很好，", "我们去公园散步，", "看到很多花。"] * 10
    path = train_encoder(clauses, tmp_path / "enc", EncoderConfig(d_model=16, n_layer=1, n_head=2, minutes=1.0,
                                                                  max_steps=3, batch_size=8), progress=False)
    encoder, tok = load_encoder(path)
    assert encoder.config.mask == "bidirectional" and tok.encode("花") != [tok.unk_id]
    assert (tmp_path / "enc" / "model_ema.safetensors").is_file()


def _separable(n_docs=30, seed=0):
    """Documents whose positive clauses have a positive first coordinate."""
    g = torch.Generator().manual_seed(seed)
    vectors, labels = [], []
    for _ in range(n_docs):
        n = int(torch.randint(4, 12, (1,), generator=g))
        v = torch.randn(n, 8, generator=g)
        pos = torch.randperm(n, generator=g)[:2]
        v[:, 0] = -1.0
        v[pos, 0] = 1.0
        vectors.append(v)
        labels.append(sorted(pos.tolist()))
    return vectors, labels


def test_cross_fit_never_labels_a_document_with_a_model_that_saw_it(tmp_path):
    vectors, labels = _separable()
    cfg = ExtractorConfig(hidden=16, folds=3, epochs=25, batch_size=8, lr=5e-3)
    fitted = cross_fit(vectors, labels, cfg, run_dir=tmp_path / "runs", progress=False)
    assert len(fitted.probabilities) == len(vectors) and len(fitted.trained_on) == 3
    for i in range(len(vectors)):
        f = fitted.fold_of[i]
        assert i not in fitted.trained_on[f]
        assert fitted.trained_on[f] == frozenset(j for j in range(len(vectors)) if fitted.fold_of[j] != f)
        # the cross prediction is exactly that fold model's output
        own = fitted.extractor.probabilities([vectors[i]], models=[f])[0]
        assert torch.allclose(fitted.probabilities[i], own, atol=1e-6)
    # a separable signal is learnt on documents the models never saw
    hits = sum(int((fitted.probabilities[i][labels[i]] > 0.5).sum()) for i in range(len(vectors)))
    false = sum(int((fitted.probabilities[i] > 0.5).sum()) for i in range(len(vectors))) - hits
    assert hits >= 0.9 * sum(map(len, labels)) and false <= 0.1 * sum(map(len, vectors))
    # save / load keeps every fold model
    fitted.extractor.save(tmp_path / "ext")
    again = Extractor.load(tmp_path / "ext")
    a = fitted.extractor.probabilities(vectors[:4])
    b = again.probabilities(vectors[:4])
    assert all(torch.allclose(x, y) for x, y in zip(a, b))


def test_position_features_by_hand():
    f = position_features(5, 2)  # one-hot of min(i, 2) over 3 bins, then i / 4
    assert f.tolist() == [[1, 0, 0, 0.0], [0, 1, 0, 0.25], [0, 0, 1, 0.5], [0, 0, 1, 0.75], [0, 0, 1, 1.0]]
    assert position_features(1, 3).tolist() == [[1, 0, 0, 0, 0.0]]


def test_position_lets_the_extractor_learn_the_lead(tmp_path):
    """Vectors that carry no signal; the positive clause is always the third: the fold models learn
    it from the position features (cross-predicted on documents they never saw)."""
    torch.manual_seed(0)
    vectors = [torch.randn(int(torch.randint(4, 10, ())), 6) for _ in range(60)]
    labels = [[2] for _ in vectors]
    share = {}
    for position in (4, 0):  # with and without the features
        cfg = ExtractorConfig(hidden=16, folds=3, epochs=15, batch_size=8, lr=5e-3, position=position)
        fitted = cross_fit(vectors, labels, cfg, run_dir=tmp_path / str(position), progress=False)
        share[position] = sum(int(p.argmax()) == 2 for p in fitted.probabilities) / len(vectors)
    assert share[4] >= 0.95 and share[0] <= 0.6, share


def test_extractors_saved_before_position_features_still_load(tmp_path):
    vectors, labels = _separable(6)
    fitted = cross_fit(vectors, labels, ExtractorConfig(hidden=8, folds=2, epochs=1, position=0),
                       run_dir=tmp_path / "runs", progress=False)
    fitted.extractor.save(tmp_path / "ext")
    meta_path = tmp_path / "ext" / "extractor.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["position"]  # what an older genloom wrote
    meta_path.write_text(json.dumps(meta))
    again = Extractor.load(tmp_path / "ext")
    assert again.config.position == 0
    assert all(torch.allclose(a, b) for a, b in zip(fitted.extractor.probabilities(vectors),
                                                      again.probabilities(vectors)))


def test_cross_fit_errors(tmp_path):
    vectors, labels = _separable(4)
    with pytest.raises(UserError, match="at least 2 folds"):
        cross_fit(vectors, labels, ExtractorConfig(folds=1), run_dir=tmp_path)
    with pytest.raises(UserError, match="cannot be split"):
        cross_fit(vectors, labels, ExtractorConfig(folds=5), run_dir=tmp_path)
    with pytest.raises(UserError, match="cannot read the extractor"):
        Extractor.load(tmp_path / "missing")
