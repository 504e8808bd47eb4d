"""NVAE's layers: the residual Normal and its KL, pixel likelihoods (discretised logistic
mixture, Bernoulli) against brute force, power iteration, weight-normalised convs, cells, the
BatchNorm penalty and re-estimation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genloom.models.nvae import NVAE, nvae_tiny
from genloom.nn.nvae_cells import (SE, ResidualCell, SpectralRegularizer, WNConv2d,
                                   bernoulli_log_prob, bn_gamma_penalty,
                                   disc_mix_logistic_channels, disc_mix_logistic_log_prob,
                                   disc_mix_logistic_sample, normal_from_params, power_iteration,
                                   reestimate_batchnorm, residual_kl, residual_posterior)


# ----------------------------------------------------------------------------- residual Normal


def test_residual_kl_is_zero_at_zero_deltas() -> None:
    torch.manual_seed(0)
    prior = normal_from_params(torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5))
    zeros = torch.zeros(3, 4, 5, 5)
    q, d_mu, d_ls = residual_posterior(prior, zeros, zeros)
    assert torch.equal(residual_kl(d_mu, d_ls, prior.scale), zeros)
    assert torch.equal(q.loc, prior.loc) and torch.equal(q.scale, prior.scale)


def test_residual_kl_matches_torch_distributions() -> None:
    torch.manual_seed(1)
    shape = (4, 3, 6, 6)
    prior = normal_from_params(3 * torch.randn(shape), torch.randn(shape))
    q, d_mu, d_ls = residual_posterior(prior, 2 * torch.randn(shape), torch.randn(shape))
    ours = residual_kl(d_mu, d_ls, prior.scale)
    ref = torch.distributions.kl_divergence(q, prior)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    assert (ours > 0).all()


def test_soft_clamp_and_sigma_floor() -> None:
    p = normal_from_params(torch.tensor([100.0, -100.0]), torch.tensor([-100.0, 100.0]))
    assert torch.allclose(p.loc, torch.tensor([5.0, -5.0]), atol=1e-4)
    assert torch.allclose(p.scale, torch.tensor([math.exp(-5) + 1e-2, math.exp(5) + 1e-2]), rtol=1e-4)
    t = normal_from_params(torch.zeros(1), torch.zeros(1), temperature=0.7)
    assert torch.allclose(t.scale, torch.tensor([0.7 * 1.01]))


# ----------------------------------------------------------------------------- pixel likelihoods


def _all_values(c: int, n_bits: int) -> torch.Tensor:
    """Every C-channel pixel value on the grid, as a (1, C, 1, V**C) image."""
    v = 2**n_bits
    grid = torch.tensor(list(itertools.product(range(v), repeat=c)), dtype=torch.float64).T
    return (grid / (v - 1)).view(1, c, 1, -1)


@pytest.mark.parametrize("scale", [-6.0, -2.0, 0.5])
def test_discretised_logistic_mixture_sums_to_one_over_256_values(scale: float) -> None:
    torch.manual_seed(2)
    m = 5
    x = _all_values(1, 8)  # (1, 1, 1, 256)
    params = torch.randn(1, disc_mix_logistic_channels(1, m), 1, 1, dtype=torch.float64)
    params[:, 2 * m:] = scale + 0.5 * params[:, 2 * m:]  # log-scales around `scale`
    params = params.expand(-1, -1, 1, 256)
    logp = disc_mix_logistic_log_prob(params, x, n_mix=m)  # (1, 1, 256)
    assert torch.isfinite(logp).all()
    assert abs(logp.exp().sum().item() - 1.0) < 1e-9


def test_discretised_logistic_matches_cdf_differences() -> None:
    """Brute force in float64: each bin's mass is a difference of logistic CDFs at bin edges."""
    torch.manual_seed(3)
    m = 3
    params = torch.randn(2, disc_mix_logistic_channels(1, m), 4, 4, dtype=torch.float64)
    x = torch.randint(0, 256, (2, 1, 4, 4)).double() / 255
    ours = disc_mix_logistic_log_prob(params, x, n_mix=m)
    pi = torch.softmax(params[:, :m], 1)
    mu, log_s = params[:, m:2 * m], params[:, 2 * m:3 * m].clamp(min=-7)
    xs = 2 * x - 1
    hi = torch.where(xs > 1 - 1e-6, torch.inf, xs + 1 / 255)
    lo = torch.where(xs < -1 + 1e-6, -torch.inf, xs - 1 / 255)
    mass = torch.sigmoid((hi - mu) / log_s.exp()) - torch.sigmoid((lo - mu) / log_s.exp())
    torch.testing.assert_close(ours, (pi * mass).sum(1).log(), rtol=1e-9, atol=1e-9)


def test_discretised_logistic_rgb_coupling_sums_to_one() -> None:
    torch.manual_seed(4)
    m, bits = 2, 3
    x = _all_values(3, bits)  # (1, 3, 1, 512)
    params = torch.randn(1, disc_mix_logistic_channels(3, m), 1, 1, dtype=torch.float64)
    logp = disc_mix_logistic_log_prob(params.expand(-1, -1, 1, x.shape[-1]), x, n_mix=m, n_bits=bits)
    assert abs(logp.exp().sum().item() - 1.0) < 1e-9


def test_discretised_logistic_samples_follow_the_mass() -> None:
    torch.manual_seed(5)
    m = 2
    params = torch.zeros(1, disc_mix_logistic_channels(1, m), 1, 1)
    params[0, :m, 0, 0] = torch.tensor([0.0, 1.0])  # mixture logits
    params[0, m:2 * m, 0, 0] = torch.tensor([-0.5, 0.5])  # means
    params[0, 2 * m:, 0, 0] = -2.5  # log-scales
    n = 40000
    s = disc_mix_logistic_sample(params.expand(n, -1, -1, -1), 1, n_mix=m,
                                 generator=torch.Generator().manual_seed(0))  # (n, 1, 1, 1)
    assert torch.equal(torch.round(s * 255), s * 255)  # on the 8-bit grid
    # P(x <= 127/255) from the model vs the sample frequency
    vals = _all_values(1, 8)
    logp = disc_mix_logistic_log_prob(params.double().expand(-1, -1, 1, 256), vals, n_mix=m)
    p_low = logp.exp()[0, 0, :128].sum().item()
    freq = (s <= 127 / 255).float().mean().item()
    assert abs(freq - p_low) < 4 * math.sqrt(p_low * (1 - p_low) / n)


def test_bernoulli_log_prob_matches_torch() -> None:
    torch.manual_seed(6)
    logits, x = torch.randn(2, 1, 5, 5), torch.randint(0, 2, (2, 1, 5, 5)).float()
    ref = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(1)
    torch.testing.assert_close(bernoulli_log_prob(logits, x), ref)


# ----------------------------------------------------------------------------- regularisers, cells


def test_power_iteration_matches_matrix_2_norm() -> None:
    torch.manual_seed(8)
    w = torch.randn(6, 32, 72)  # six conv-sized weight matrices
    u, v = F.normalize(torch.randn(6, 32), dim=1), F.normalize(torch.randn(6, 72), dim=1)
    sigma, _, _ = power_iteration(w, u, v, n_iter=100)
    ref = torch.linalg.matrix_norm(w, ord=2)
    assert ((sigma - ref).abs() / ref).max() < 0.02


def test_spectral_regularizer_converges_over_steps_and_has_gradient() -> None:
    torch.manual_seed(9)
    model = NVAE(nvae_tiny())
    sr = SpectralRegularizer(model, n_iter=4)
    for _ in range(25):  # 4 iterations per call, the vectors persist in each conv's buffers
        total = sr()
    convs = [m for m in model.modules() if isinstance(m, WNConv2d)]
    ref = sum(torch.linalg.matrix_norm(c.normalized_weight().flatten(1), ord=2) for c in convs)
    assert abs(total.item() - ref.item()) / ref.item() < 0.02
    total.backward()
    assert convs[0].weight.grad is not None and convs[0].weight.grad.abs().sum() > 0


def test_weight_norm_conv_rows_have_the_learned_norm() -> None:
    conv = WNConv2d(3, 5, 3, padding=1)
    with torch.no_grad():
        conv.log_weight_norm.fill_(math.log(2.0))
    norms = conv.normalized_weight().flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.full((5,), 2.0), rtol=1e-4, atol=1e-4)
    ref = F.conv2d(torch.ones(1, 3, 4, 4), conv.normalized_weight(), conv.bias, padding=1)
    torch.testing.assert_close(conv(torch.ones(1, 3, 4, 4)), ref)


def test_cells_shapes_and_se_gate() -> None:
    x = torch.randn(2, 8, 8, 8)
    assert ResidualCell(8, 16, kind="enc", down=True)(x).shape == (2, 16, 4, 4)
    assert ResidualCell(8, 4, kind="dec", up=True)(x).shape == (2, 4, 16, 16)
    assert ResidualCell(8, 8, kind="dec")(x).shape == x.shape
    se = SE(8)
    gate = se.gate(x.mean(dim=(2, 3)))
    torch.testing.assert_close(se(x), x * gate[:, :, None, None])
    assert ((gate > 0) & (gate < 1)).all()


def test_bn_gamma_penalty_is_sum_of_max_abs_gamma() -> None:
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 3, 1), nn.BatchNorm2d(2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([0.5, -3.0, 1.0]))
        model[2].weight.copy_(torch.tensor([2.0, -0.1]))
    assert bn_gamma_penalty(model).item() == pytest.approx(5.0)


def test_batchnorm_reestimation_averages_the_batches_it_sees() -> None:
    torch.manual_seed(10)
    used, unused = nn.BatchNorm2d(2, momentum=0.05), nn.BatchNorm2d(2)
    with torch.no_grad():
        unused.running_mean.fill_(7.0)
    model = nn.ModuleDict({"used": used, "unused": unused})
    xs = [torch.randn(4, 2, 3, 3) * (i + 1) + i for i in range(5)]
    it = iter(xs)
    reestimate_batchnorm(model, lambda: used(next(it)), iters=5)
    mean = torch.stack([x.mean(dim=(0, 2, 3)) for x in xs]).mean(0)
    var = torch.stack([x.transpose(0, 1).flatten(1).var(dim=1) for x in xs]).mean(0)
    torch.testing.assert_close(used.running_mean, mean)
    torch.testing.assert_close(used.running_var, var)
    assert used.momentum == 0.05 and not model.training
    assert torch.equal(unused.running_mean, torch.full((2,), 7.0))
