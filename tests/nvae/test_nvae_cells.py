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


def _randomise(module: nn.Module) -> nn.Module:
    """float64, eval mode, every BatchNorm's statistics and affine and every weight norm far from
    their initial values, so no term of a cell's formula is (near) an identity."""
    torch.manual_seed(7)
    module.double().eval()
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
        if isinstance(m, WNConv2d) and m.log_weight_norm is not None:
            m.log_weight_norm.data.normal_(0.0, 0.5)
    return module


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """Eval-mode BatchNorm by its formula."""
    view = (1, -1, 1, 1)
    return ((x - bn.running_mean.view(view)) / torch.sqrt(bn.running_var.view(view) + bn.eps)
            * bn.weight.view(view) + bn.bias.view(view))


def _wn_conv(x: torch.Tensor, conv: WNConv2d) -> torch.Tensor:
    """A (weight-normalised) conv by its formula: w = exp(g) * v / (|v| + 1e-5) per output row."""
    w = conv.weight
    if conv.log_weight_norm is not None:
        norm = torch.sqrt((w ** 2).sum(dim=(1, 2, 3), keepdim=True))
        w = torch.exp(conv.log_weight_norm) * w / (norm + 1e-5)
    return F.conv2d(x, w, conv.bias, conv.stride, conv.padding, groups=conv.groups)


def _se(x: torch.Tensor, se: SE) -> torch.Tensor:
    """x * sigmoid(W2 relu(W1 mean_hw(x) + b1) + b2) per channel."""
    l1, l2 = se.gate[0], se.gate[2]
    hidden = torch.relu(x.mean(dim=(2, 3)) @ l1.weight.T + l1.bias)
    return x * torch.sigmoid(hidden @ l2.weight.T + l2.bias)[:, :, None, None]


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def test_encoder_cell_equals_its_formula() -> None:
    """out = x + 0.1 * SE(f(x)), f = (BN, Swish, WN conv3x3) twice; and the stride-2 cell, whose
    skip is Swish then four 1x1 stride-2 convs on the grids shifted by (0,0), (1,1), (0,1), (1,0)."""
    x = torch.randn(2, 8, 8, 8, dtype=torch.float64)
    cell = _randomise(ResidualCell(8, 8, kind="enc"))
    (bn1, _), c1 = cell.f[0][0], cell.f[0][1]
    (bn2, _), c2 = cell.f[1][0], cell.f[1][1]
    fx = _wn_conv(_swish(_bn(_wn_conv(_swish(_bn(x, bn1)), c1), bn2)), c2)
    torch.testing.assert_close(cell(x), x + 0.1 * _se(fx, cell.se), rtol=1e-10, atol=1e-12)

    down = _randomise(ResidualCell(8, 16, kind="enc", down=True))
    (bn1, _), c1 = down.f[0][0], down.f[0][1]
    (bn2, _), c2 = down.f[1][0], down.f[1][1]
    fx = _wn_conv(_swish(_bn(_wn_conv(_swish(_bn(x, bn1)), c1), bn2)), c2)
    s = _swish(x)
    views = [s, s[:, :, 1:, 1:], s[:, :, :, 1:], s[:, :, 1:, :]]
    skip = torch.cat([_wn_conv(v, conv) for v, conv in zip(views, down.skip.convs)], dim=1)
    torch.testing.assert_close(down(x), skip + 0.1 * _se(fx, down.se), rtol=1e-10, atol=1e-12)


def test_decoder_cell_equals_its_formula() -> None:
    """out = skip(x) + 0.1 * SE(f(x)), f = BN, 1x1 expand, BN-Swish, depthwise 5x5, BN-Swish, 1x1,
    BN; the upsampling cell first doubles H, W (nearest) and its skip is bilinear x2 + WN 1x1."""
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    for up in (False, True):
        cell = _randomise(ResidualCell(8, 4 if up else 8, kind="dec", up=up))
        f = list(cell.f)
        h = F.interpolate(x, scale_factor=2, mode="nearest") if up else x
        if up:
            f = f[1:]
        h = _wn_conv(_bn(h, f[0]), f[1])
        h = _wn_conv(_swish(_bn(h, f[2][0])), f[3])
        h = _bn(_wn_conv(_swish(_bn(h, f[4][0])), f[5]), f[6])
        skip = _wn_conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True),
                        cell.skip.conv) if up else x
        torch.testing.assert_close(cell(x), skip + 0.1 * _se(h, cell.se), rtol=1e-10, atol=1e-12)


def test_each_groups_kl_is_the_closed_form_between_its_posterior_and_prior(monkeypatch) -> None:
    """The model's per-group KL (B, one per latent group) against torch's closed-form
    KL(q || p) of the very posterior and prior each group used; the top group's prior is N(0, 1)."""
    import genloom.models.nvae as nvae_module

    seen = []
    real = nvae_module.residual_posterior

    def spy(prior, d_mu, d_log_sigma):
        q, dm, dl = real(prior, d_mu, d_log_sigma)
        seen.append((prior, q))
        return q, dm, dl

    monkeypatch.setattr(nvae_module, "residual_posterior", spy)
    torch.manual_seed(3)
    model = NVAE(nvae_tiny()).double().eval()
    for p in model.parameters():  # far from the init, so every group's q differs from its prior
        p.data.add_(0.3 * torch.randn_like(p))
    x = torch.rand(3, 1, 16, 16, dtype=torch.float64)
    out = model(x)
    assert len(seen) == len(out.kl) == len(model.scale_of_group) >= 2
    top_prior = seen[0][0]
    assert torch.equal(top_prior.loc, torch.zeros_like(top_prior.loc))
    assert torch.equal(top_prior.scale, torch.ones_like(top_prior.scale))
    for (prior, q), kl in zip(seen, out.kl):
        ref = torch.distributions.kl_divergence(q, prior).sum(dim=(1, 2, 3))  # (B,)
        assert kl.shape == (3,) and (ref > 1e-3).all()
        torch.testing.assert_close(kl, ref, rtol=1e-9, atol=1e-9)


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
