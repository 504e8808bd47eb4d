"""Conditional Layer Normalization: the layers against their formula written out by hand, the
zero-init property (an untrained CLN Transformer equals the unconditioned one for every
condition), cached decoding with the condition held in the state, the one `condition` API
(label ids or vectors), save/load, and one-line errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from genloom.errors import UserError
from genloom.models import Transformer, TransformerConfig, load, save
from genloom.nn.cln import ConditionalLayerNorm, ConditionalRMSNorm, ConditionInput
from genloom.nn.norms import make_norm

V, E, K = 29, 6, 3


def randomise_cond(model: torch.nn.Module, seed: int = 1) -> None:
    """Give every zero-initialised condition projection random weights (a 'trained' CLN)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "cond_mod" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def by_hand_layer(x, cond, norm: ConditionalLayerNorm, act):
    """(gamma + Wg h(c)) * (x - mean) / sqrt(var + eps) + (beta + Wb h(c)), one row at a time."""
    mod = norm.cond_mod
    out = torch.empty_like(x)
    for b in range(x.shape[0]):
        h = cond[b] if mod.hidden is None else act(mod.hidden.weight @ cond[b])
        gain = norm.weight + mod.gain.weight @ h
        shift = norm.bias + mod.shift.weight @ h
        xb = x[b].double()
        xhat = (xb - xb.mean(-1, keepdim=True)) / torch.sqrt(xb.var(-1, unbiased=False, keepdim=True) + norm.eps)
        out[b] = (xhat * gain.double() + shift.double()).float()
    return out


@pytest.mark.parametrize("hidden,activation", [(None, "linear"), (4, "relu"), (5, "tanh")])
@pytest.mark.parametrize("shape", [(3, 7, 8), (3, 8)])
def test_conditional_layer_norm_matches_formula(hidden, activation, shape):
    torch.manual_seed(0)
    norm = ConditionalLayerNorm(8, E, hidden=hidden, activation=activation)
    randomise_cond(norm)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    x, cond = torch.randn(shape) * 3 + 1, torch.randn(3, E)
    act = {"linear": lambda t: t, "relu": torch.relu, "tanh": torch.tanh}[activation]
    torch.testing.assert_close(norm(x, cond), by_hand_layer(x, cond, norm, act), atol=1e-5, rtol=1e-5)


def test_conditional_rms_norm_matches_formula():
    torch.manual_seed(0)
    norm = ConditionalRMSNorm(8, E, hidden=4, activation="silu", eps=1e-6)
    randomise_cond(norm)
    assert norm.cond_mod.shift is None  # RMSNorm has no shift, so no conditional shift
    x, cond = torch.randn(3, 5, 8), torch.randn(3, E)
    h = F.silu(cond @ norm.cond_mod.hidden.weight.T)  # (B, M)
    gain = norm.weight + h @ norm.cond_mod.gain.weight.T  # (B, C)
    want = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * gain[:, None]
    torch.testing.assert_close(norm(x, cond), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_zero_init_norm_equals_plain_norm_for_every_condition(kind):
    torch.manual_seed(0)
    cln = make_norm(kind, 8, cond_dim=E, cond_hidden=4, cond_act="gelu")
    plain = make_norm(kind, 8)
    x = torch.randn(4, 5, 8)
    base = cln(x)  # no condition: the offsets taken as zero
    for cond in (torch.randn(4, E), torch.randn(4, E) * 100, torch.zeros(4, E)):
        assert torch.equal(cln(x, cond), base)  # bit for bit: the projections are exactly zero
    torch.testing.assert_close(base, plain(x), atol=1e-6, rtol=1e-6)


def model_pair(norm: str, **cond_kw) -> tuple[Transformer, Transformer]:
    """An untrained CLN Transformer and the unconditioned one holding the same weights."""
    torch.manual_seed(0)
    common = dict(vocab_size=V, n_layer=2, n_head=2, d_model=16, d_ff=24, max_len=32, norm=norm,
                  pos="rope" if norm == "rms" else "learned", bias=norm == "layer")
    cln = Transformer(TransformerConfig(**common, cond_dim=E, **cond_kw)).eval()
    plain = Transformer(TransformerConfig(**common)).eval()
    missing, unexpected = plain.load_state_dict(cln.state_dict(), strict=False)
    assert not missing and all(".cond_" in n or n.startswith("cond_") for n in unexpected)
    return cln, plain


@pytest.mark.parametrize("norm,cond_kw", [("layer", dict(cond_labels=K)),
                                          ("layer", dict(cond_labels=K, cond_hidden=4, cond_act="relu")),
                                          ("rms", dict(cond_labels=K))])
def test_zero_init_model_logits_equal_unconditioned_for_every_condition(norm, cond_kw):
    cln, plain = model_pair(norm, **cond_kw)
    ids = torch.randint(0, V, (K, 12))
    want = plain(ids)  # (K, T, V)
    conditions = [torch.arange(K), torch.full((K,), K - 1), torch.randn(K, E), 50 * torch.randn(E)]
    first = cln(ids, condition=conditions[0])
    torch.testing.assert_close(first, want, atol=1e-5, rtol=1e-5)
    for c in conditions[1:]:
        assert torch.equal(cln(ids, condition=c), first)  # every condition: the very same logits
    logits, _ = cln.start(input_ids=ids[:, :5], max_new_tokens=3, condition=torch.randn(K, E))
    torch.testing.assert_close(logits, want[:, 4], atol=1e-5, rtol=1e-5)


def test_zero_init_survives_model_reinitialisation():
    cln, _ = model_pair("layer", cond_labels=K, cond_hidden=4)
    cln.reset_parameters()
    for name, p in cln.named_parameters():
        if name.endswith(("cond_mod.gain.weight", "cond_mod.shift.weight")):
            assert not p.any(), name
    assert cln.cond_input.labels.weight.std() > 0.5  # label embeddings start at unit scale


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_cached_decoding_holds_the_condition(norm):
    cln, _ = model_pair(norm, cond_labels=K, cond_hidden=4, cond_act="tanh")
    randomise_cond(cln)
    torch.manual_seed(3)
    ids = torch.randint(4, V, (3, 10))
    lengths = torch.tensor([4, 6, 3])
    cond = torch.randn(3, E)
    logits, state = cln.start(input_ids=ids, lengths=lengths, max_new_tokens=4, condition=cond)
    steps = [logits]
    for j in range(3):
        logits, state = cln.step(ids[torch.arange(3), lengths + j], state)
        steps.append(logits)
    for b in range(3):
        n = int(lengths[b])
        full = cln(ids[b : b + 1, : n + 3], condition=cond[b : b + 1])[0]  # (T, V)
        for j, got in enumerate(steps):
            torch.testing.assert_close(got[b], full[n - 1 + j], atol=1e-4, rtol=1e-4)
    # the conditions really differ after "training", and select carries them with the rows
    other = cln(ids[:, :4], condition=torch.randn(3, E))
    assert not torch.allclose(other, cln(ids[:, :4], condition=cond))
    logits, state = cln.start(input_ids=ids[:, :4], max_new_tokens=2, condition=cond)
    order = torch.tensor([2, 0, 0, 1])
    state = cln.select(state, order)
    got, _ = cln.step(ids[order, 4], state)
    want = cln(ids[order, :5], condition=cond[order])[:, -1]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_label_condition_equals_its_embedding_vector():
    cln, _ = model_pair("layer", cond_labels=K)
    randomise_cond(cln)
    ids = torch.randint(0, V, (K, 8))
    labels = torch.tensor([2, 0, 1])
    by_label = cln(ids, condition=labels)
    by_vector = cln(ids, condition=cln.cond_input.labels.weight[labels].detach())
    assert torch.equal(by_label, by_vector)
    assert torch.equal(cln(ids, condition=1), cln(ids, condition=torch.ones(K, dtype=torch.long)))
    assert torch.equal(cln(ids, condition=[2, 0, 1]), by_label)


def test_condition_gradients_reach_the_projections_and_embedding():
    cln, _ = model_pair("layer", cond_labels=K, cond_hidden=4)
    ids = torch.randint(0, V, (K, 8))
    loss = F.cross_entropy(cln(ids[:, :-1], condition=torch.arange(K)).flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    for name, p in cln.named_parameters():
        if name.endswith(("cond_mod.gain.weight", "cond_mod.shift.weight")):
            assert p.grad.abs().sum() > 0, name  # zero weights, non-zero gradient: it can learn
    # h(c) feeds only the zero maps, so the hidden layer and the embedding start with zero gradient
    assert cln.cond_input.labels.weight.grad is None or not cln.cond_input.labels.weight.grad.any()


def test_save_load_round_trip(tmp_path):
    cln, _ = model_pair("layer", cond_labels=K, cond_hidden=4, cond_act="relu")
    randomise_cond(cln)
    ids = torch.randint(0, V, (2, 9))
    want = cln(ids, condition=torch.tensor([0, 2]))
    save(cln, None, tmp_path / "m")
    loaded, tok = load(tmp_path / "m")
    assert tok is None and loaded.config == cln.config
    assert torch.equal(loaded(ids, condition=torch.tensor([0, 2])), want)


def test_condition_errors_are_one_line():
    cln, plain = model_pair("layer", cond_labels=K)
    ids = torch.randint(0, V, (2, 5))
    cases = [
        (lambda: plain(ids, condition=torch.tensor([0, 1])), "not conditional"),
        (lambda: cln(ids), "this model is conditional"),
        (lambda: cln.start(input_ids=ids, max_new_tokens=2), "this model is conditional"),
        (lambda: cln(ids, condition=torch.tensor([0, K])), "label ids must be in 0..2"),
        (lambda: cln(ids, condition=torch.tensor([0, 1, 2])), "3 label ids for 2 rows"),
        (lambda: cln(ids, condition=torch.randn(2, E + 1)), r"must be \(2, 6\) or \(6,\)"),
        (lambda: cln(ids, condition=torch.full((2, E), float("nan"))), "NaN"),
        (lambda: cln(ids, condition=torch.tensor([True, False])), "label ids .integers. or float"),
    ]
    for call, message in cases:
        with pytest.raises(UserError, match=message) as e:
            call()
        assert "\n" not in str(e.value)
    vectors_only = ConditionInput(E)
    with pytest.raises(UserError, match="vectors only"):
        vectors_only(torch.tensor([0, 1]), 2, like=torch.zeros(1))
    for bad in (dict(cond_labels=2), dict(cond_hidden=3), dict(cond_dim=4, cond_act="swish"), dict(cond_dim=0)):
        with pytest.raises(UserError):
            TransformerConfig(d_model=16, n_head=2, **bad)
    with pytest.raises(ValueError, match="unknown norm 'cond_layer'"):
        make_norm("cond_layer", 8)
