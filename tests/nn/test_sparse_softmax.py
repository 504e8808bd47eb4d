"""Sparse Softmax (nn/losses.py) and its decoding processor against brute-force definitions."""

import math

import pytest
import torch
import torch.nn.functional as F

from genloom.decode.copy import SparseSoftmax
from genloom.decode.processors import TopK
from genloom.nn.losses import sparse_log_softmax, sparse_softmax_cross_entropy, support_mask


def _top_set(row: list[float], k: int) -> list[int]:
    return sorted(range(len(row)), key=lambda i: -row[i])[:k]


def _nucleus(row: list[float], p: float) -> list[int]:
    z = max(row)
    probs = [math.exp(v - z) for v in row]
    total = sum(probs)
    order = sorted(range(len(row)), key=lambda i: -row[i])
    kept, mass = [], 0.0
    for i in order:
        if mass >= p:
            break
        kept.append(i)
        mass += probs[i] / total
    return kept


@pytest.mark.parametrize("k", [1, 3, 10])
def test_loss_is_logsumexp_of_top_k_minus_target(k):
    g = torch.Generator().manual_seed(k)
    logits = torch.randn(40, 23, generator=g, dtype=torch.float64)
    target = torch.randint(0, 23, (40,), generator=g)
    got = sparse_softmax_cross_entropy(logits, target, k=k, reduction="none")
    for n in range(40):
        row = logits[n].tolist()
        want = math.log(sum(math.exp(row[i]) for i in _top_set(row, k))) - row[int(target[n])]
        assert abs(float(got[n]) - want) < 1e-5
        assert float(got[n]) >= -1e-6  # also when the target is outside the top k
    assert torch.isclose(sparse_softmax_cross_entropy(logits, target, k=k), got.mean().float())


def test_gradient_is_sparse_softmax_minus_one_hot_and_zero_outside_top_k():
    g = torch.Generator().manual_seed(0)
    k, V = 5, 30
    logits = torch.randn(16, V, generator=g, requires_grad=True)
    target = torch.randint(0, V, (16,), generator=g)
    sparse_softmax_cross_entropy(logits, target, k=k, reduction="sum").backward()
    grad = logits.grad
    for n in range(16):
        row = logits[n].tolist()
        top = _top_set(row, k)
        z = sum(math.exp(row[i]) for i in top)
        for i in range(V):
            want = (math.exp(row[i]) / z if i in top else 0.0) - (1.0 if i == int(target[n]) else 0.0)
            assert abs(float(grad[n, i]) - want) < 1e-5
        outside = [i for i in range(V) if i not in top and i != int(target[n])]
        assert torch.all(grad[n, outside] == 0)


def test_k_equal_vocab_is_plain_cross_entropy_with_its_gradient():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(12, 17, generator=g, requires_grad=True)
    target = torch.randint(0, 17, (12,), generator=g)
    target[3] = -100
    ours = sparse_softmax_cross_entropy(logits, target, k=17)
    (g1,) = torch.autograd.grad(ours, logits)
    ref = F.cross_entropy(logits, target, ignore_index=-100)
    (g2,) = torch.autograd.grad(ref, logits)
    assert torch.allclose(ours, ref, atol=1e-6)
    assert torch.allclose(g1, g2, atol=1e-7)
    # a smaller set normalises over less mass: the loss can only drop
    assert float(sparse_softmax_cross_entropy(logits.detach(), target, k=16)) <= float(ours.detach()) + 1e-6
    assert torch.allclose(sparse_softmax_cross_entropy(logits, target, k=100), ref, atol=1e-6)


def test_top_p_variant_uses_the_nucleus():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(30, 12, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, 12, (30,), generator=g)
    for p in (0.3, 0.8, 0.95):
        got = sparse_softmax_cross_entropy(logits, target, k=None, top_p=p, reduction="none")
        for n in range(30):
            row = logits[n].tolist()
            keep = _nucleus(row, p)
            want = math.log(sum(math.exp(row[i]) for i in keep)) - row[int(target[n])]
            assert abs(float(got[n]) - want) < 1e-5
            assert sorted(support_mask(logits[n:n + 1], k=None, top_p=p)[0].nonzero()[:, 0].tolist()) == sorted(keep)
    full = sparse_softmax_cross_entropy(logits, target, k=None, top_p=1.0)
    assert torch.isclose(full, F.cross_entropy(logits, target).float(), atol=1e-6)


def test_ignore_index_and_reductions():
    logits = torch.randn(4, 6)
    target = torch.tensor([1, -100, 2, -100])
    none = sparse_softmax_cross_entropy(logits, target, k=2, reduction="none")
    assert none[1] == 0 and none[3] == 0
    assert torch.isclose(sparse_softmax_cross_entropy(logits, target, k=2, reduction="sum"), none.sum())
    assert torch.isclose(sparse_softmax_cross_entropy(logits, target, k=2), none.sum() / 2)
    all_ignored = torch.full((4,), -100)
    assert float(sparse_softmax_cross_entropy(logits, all_ignored, k=2)) == 0.0
    # (B, T, V) inputs are flattened
    l3 = torch.randn(2, 3, 6)
    t3 = torch.randint(0, 6, (2, 3))
    assert torch.allclose(sparse_softmax_cross_entropy(l3, t3, k=3, reduction="none"),
                          sparse_softmax_cross_entropy(l3.reshape(6, 6), t3.reshape(6), k=3, reduction="none"))


@pytest.mark.parametrize("kwargs, message", [
    ({"k": 0}, "k must be"), ({"k": None}, "exactly one"), ({"k": 3, "top_p": 0.5}, "exactly one"),
    ({"k": None, "top_p": 1.5}, "top_p"), ({"k": 2, "reduction": "avg"}, "reduction"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sparse_softmax_cross_entropy(torch.randn(2, 4), torch.tensor([0, 1]), **kwargs)


def test_decoding_processor_is_top_k_renormalised():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 40, generator=g)
    logits[0, :3] = 2.0  # ties at the k-th are kept, as TopK keeps them
    proc = SparseSoftmax(3)
    out = proc(logits, torch.zeros(5, 0, dtype=torch.long))
    want = TopK(3)(logits, torch.zeros(5, 0, dtype=torch.long)).log_softmax(-1)
    assert torch.equal(torch.isinf(out), torch.isinf(want))
    assert torch.allclose(out[~torch.isinf(out)], want[~torch.isinf(want)])
    assert torch.allclose(out.exp().sum(-1), torch.ones(5))
    assert torch.equal(sparse_log_softmax(logits, k=3), out)
    logits_before = logits.clone()
    SparseSoftmax(k=None, top_p=0.5)(logits, torch.zeros(5, 0, dtype=torch.long))
    assert torch.equal(logits, logits_before)  # never modified in place
    with pytest.raises(ValueError):
        SparseSoftmax(0)
