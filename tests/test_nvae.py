"""NVAE: cells, distributions, regularisers, data, the loop and the CLI (issue 9 acceptance)."""

from __future__ import annotations

import gzip
import itertools
import json
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genloom.cli import main as cli_main
from genloom.data.images import (FASHION_MNIST_DIR, batches, idx_length, image_sets,
                                 load_fashion_mnist, load_images, read_idx, tiny_shapes)
from genloom.errors import UserError
from genloom.models.nvae import (NVAE, balanced_kl, iw_log_likelihood, kl_warmup,
                                 load_image_model, nvae_fmnist_cpu, nvae_tiny, vae_loss)
from genloom.models.vae import ConvVAE, VAEConfig, VAEOutput, count_parameters, vae_matching
from genloom.nn.nvae_cells import (SE, ResidualCell, SpectralRegularizer, WNConv2d,
                                   bernoulli_log_prob, bn_gamma_penalty,
                                   disc_mix_logistic_channels, disc_mix_logistic_log_prob,
                                   disc_mix_logistic_sample, normal_from_params, power_iteration,
                                   reestimate_batchnorm, residual_kl, residual_posterior)
from genloom.tasks.nvae import NVAETrainConfig, eval_nelbo, make_model, train

SRC = Path(__file__).resolve().parents[1] / "src"


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


# ----------------------------------------------------------------------------- KL schedule, balance


def test_kl_balancing_coefficients_average_one() -> None:
    torch.manual_seed(7)
    kl = torch.rand(16, 5) * torch.tensor([1.0, 10.0, 0.0, 3.0, 50.0])
    alpha = torch.tensor([1.0, 1.0, 4.0, 4.0, 4.0])
    term, gamma = balanced_kl(kl, alpha, beta=0.3)
    assert abs(gamma.mean().item() - 1.0) < 1e-6
    ref = (kl.abs().mean(0) + 0.01) / alpha
    torch.testing.assert_close(gamma, ref / ref.mean())
    torch.testing.assert_close(term, 0.3 * (kl * gamma).sum(1))
    _, ones = balanced_kl(kl, alpha, beta=1.0)  # no balancing once the warm-up is over
    assert torch.equal(ones, torch.ones(5))


def test_kl_warmup_schedule() -> None:
    assert kl_warmup(0.0) == 1e-4
    assert kl_warmup(1.0) == 1.0 and kl_warmup(0.31) == 1.0
    assert abs(kl_warmup(0.15) - (0.15 - 1e-4) / 0.3) < 1e-12


def test_kl_alpha_is_area_over_groups() -> None:
    model = NVAE(nvae_fmnist_cpu())  # 2 groups at 8x8, 3 at 16x16
    expected = torch.tensor([64 / 2, 64 / 2, 256 / 3, 256 / 3, 256 / 3])
    torch.testing.assert_close(model.kl_alpha(), expected / expected.min())


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


# ----------------------------------------------------------------------------- model, devices


def test_no_cuda_calls_in_src() -> None:
    offenders = [str(p) for p in SRC.rglob("*.py") if re.search(r"\.cuda\(", p.read_text())]
    assert offenders == []


@pytest.mark.parametrize("output", ["bernoulli", "logistic"])
def test_model_runs_on_the_device_it_is_given(output: str) -> None:
    model = NVAE(nvae_tiny(output)).to("meta")
    x = torch.rand(3, 1, 16, 16, device="meta")
    out = model(x)
    assert out.params.device.type == "meta" and out.params.shape[0] == 3
    assert all(k.device.type == "meta" and k.shape == (3,) for k in out.kl)
    assert model.sample(2, temperature=0.7).device.type == "meta"
    assert model.log_px(out.params, x).device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_model_runs_on_cuda() -> None:
    torch.manual_seed(0)
    model = NVAE(nvae_tiny()).to("cuda")
    x = torch.rand(4, 1, 16, 16, device="cuda").bernoulli()
    loss, stats = vae_loss(model, x, beta=0.5, reg_weight=1e-2, spectral=SpectralRegularizer(model))
    loss.backward()
    assert loss.device.type == "cuda" and math.isfinite(stats["nelbo"])
    assert model.sample(2).device.type == "cuda"


def test_forward_terms_are_consistent() -> None:
    """Given z_<g, E[log q(z_g) - log p(z_g)] is the closed-form KL_g, so over many draws the
    difference (log q - log p) - sum_g KL_g averages to 0 (a Monte-Carlo check of both)."""
    torch.manual_seed(11)
    model = NVAE(nvae_tiny()).eval()
    n = 2000
    x = torch.rand(1, 1, 16, 16).bernoulli().expand(n, -1, -1, -1)
    with torch.no_grad():
        out = model(x)
    diff = (out.log_q - out.log_p) - torch.stack(out.kl, 1).sum(1)  # (n,)
    assert abs(diff.mean().item()) < 4 * diff.std().item() / math.sqrt(n)
    assert diff.std().item() > 0.1  # a real Monte-Carlo sample, not a copy of the closed form


@pytest.mark.parametrize("kind", ["nvae", "vae"])
def test_channels_last_weights_change_no_value(kind: str) -> None:
    """The training loop and the loader keep 4-d weights channels-last (a speed-up on CPU): the
    loss and every gradient equal those of the same model in the default layout."""
    from genloom.tasks.nvae import vae_loss

    torch.manual_seed(5)
    cfg = NVAETrainConfig(model=kind, preset="tiny")
    ref = make_model(cfg, (1, 16, 16))
    fast = make_model(cfg, (1, 16, 16))
    fast.load_state_dict(ref.state_dict())
    fast.to(memory_format=torch.channels_last)
    assert any(p.dim() == 4 and not p.is_contiguous() for p in fast.parameters())
    x = torch.rand(8, 1, 16, 16).bernoulli()
    losses = []
    for model in (ref, fast):
        torch.manual_seed(6)
        loss, _ = vae_loss(model, x, beta=0.7)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-4)
    for (name, a), b in zip(ref.named_parameters(), fast.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_fast_preset_puts_the_latents_at_4x4_and_8x8() -> None:
    from genloom.models.nvae import nvae_fmnist_fast

    assert nvae_fmnist_fast() == replace(nvae_fmnist_cpu(), channels=8, pre_blocks=2, post_expand=1)
    model = make_model(NVAETrainConfig(preset="fmnist-fast"), (1, 28, 28))
    assert model.config.padded_size == 32  # 3 halvings: pre-process 32 -> 16 -> 8, then 4
    assert model.z_shapes == [(8, 4, 4)] * 2 + [(8, 8, 8)] * 3
    cfg = NVAETrainConfig(model="vae", preset="fmnist-fast")
    with torch.device("meta"):
        target = count_parameters(NVAE(nvae_fmnist_fast()))
    assert abs(count_parameters(make_model(cfg, (1, 28, 28))) - target) / target < 0.05


def test_iw_log_likelihood_reduction_is_logsumexp_over_k() -> None:
    class Fake(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[torch.Tensor] = []

        def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
            return [x.flatten(1).sum(1)]

        def decode(self, encoded: list[torch.Tensor]) -> VAEOutput:
            w = torch.randn(encoded[0].shape[0]) + encoded[0]  # row-dependent log weights
            self.seen.append(w)
            zero = torch.zeros_like(w)
            return VAEOutput(w, [zero], zero, w)

        def log_px(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(x.shape[0])

    torch.manual_seed(12)
    fake = Fake()
    x = torch.arange(5.0).view(5, 1, 1, 1) * 10
    ll = iw_log_likelihood(fake, x, k=7, chunk=15)  # 2 images per pass: 3 passes
    assert len(fake.seen) == 3
    w = torch.cat(fake.seen).view(5, 7)
    torch.testing.assert_close(ll, torch.logsumexp(w, 1) - math.log(7))
    offsets = torch.arange(5.0).view(5, 1) * 10  # image i's K weights are 10 i + noise
    assert ((w - offsets).abs() < 5).all()


def test_iw_log_likelihood_with_k_1_is_a_single_sample_elbo_estimate() -> None:
    torch.manual_seed(14)
    model = NVAE(nvae_tiny()).eval()
    x = torch.rand(3, 1, 16, 16).bernoulli()
    torch.manual_seed(5)
    ll = iw_log_likelihood(model, x, k=1)
    torch.manual_seed(5)
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(ll, model.log_px(out.params, x) + out.log_p - out.log_q)


def test_iw_bound_is_above_the_elbo_and_below_zero() -> None:
    torch.manual_seed(13)
    model = NVAE(nvae_tiny()).eval()
    x = torch.rand(4, 1, 16, 16).bernoulli()
    ll = iw_log_likelihood(model, x, k=64)
    with torch.no_grad():
        elbos = torch.stack([-(-model.log_px(o.params, x) + torch.stack(o.kl, 1).sum(1))
                             for o in (model(x) for _ in range(64))])  # (64, 4)
    assert (ll < 0).all() and (ll > elbos.mean(0)).all()


def test_vae_baseline_matches_nvae_parameter_count() -> None:
    with torch.device("meta"):
        target = count_parameters(NVAE(nvae_fmnist_cpu()))
        vae = ConvVAE(vae_matching(target))
    assert abs(count_parameters(vae) - target) / target < 0.05
    cfg = NVAETrainConfig(model="vae")
    assert abs(count_parameters(make_model(cfg, (1, 28, 28))) - target) / target < 0.05
    out = ConvVAE(VAEConfig(image_size=16, padded_size=16, width=4))(torch.rand(2, 1, 16, 16))
    assert out.params.shape == (2, 1, 16, 16) and len(out.kl) == 1


# ----------------------------------------------------------------------------- data


def _write_idx(path: Path, array: np.ndarray, *, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">i4").tobytes()
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def test_idx_reader_roundtrip_and_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (5, 28, 28)), rng.integers(0, 10, 5)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, gz=True)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels, gz=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "t10k-images-idx3-ubyte.gz"), images)
    x, y = load_fashion_mnist("test", directory=tmp_path)
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.uint8
    assert torch.equal(y, torch.from_numpy(labels))
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(UserError, match="not an idx file"):
        read_idx(tmp_path / "bad")
    with pytest.raises(UserError, match="no train-images"):
        load_fashion_mnist("train", directory=tmp_path)


def test_image_sets_count_from_the_idx_headers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    """`genloom corpora` lists the image sets; sizes come from the idx headers and equal the
    number of images the reader loads."""
    rng = np.random.default_rng(3)
    for prefix, n, gz in (("train", 7, True), ("t10k", 3, False)):
        ext = ".gz" if gz else ""
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 28, 28)), gz=gz)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{ext}", rng.integers(0, 10, n), gz=gz)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    assert idx_length(path) == len(read_idx(path)) == 7
    monkeypatch.setattr("genloom.data.images.FASHION_MNIST_DIR", tmp_path)
    fm = image_sets()[0]
    assert (fm["installed"], fm["train"], fm["test"]) == ("yes", "7", "3")
    assert len(load_fashion_mnist("test", directory=tmp_path)[0]) == int(fm["test"])
    assert cli_main(["corpora"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("fashion-mnist "))
    assert row.split()[:4] == ["fashion-mnist", "yes", "7", "3"]
    monkeypatch.setattr("genloom.data.images.FASHION_MNIST_DIR", tmp_path / "absent")
    assert image_sets()[0]["installed"] == "no"
    (tmp_path / "bad").write_bytes(b"\x00\x00\x08")
    with pytest.raises(UserError, match="not an idx file"):
        idx_length(tmp_path / "bad")


def test_missing_fashion_mnist_names_the_install_command(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    monkeypatch.setattr("genloom.data.images.FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train")


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_test_split() -> None:
    x, y = load_fashion_mnist("test")
    assert x.shape == (10000, 1, 28, 28) and sorted(y.unique().tolist()) == list(range(10))
    assert torch.bincount(y).tolist() == [1000] * 10


def test_tiny_shapes_and_dynamic_binarisation() -> None:
    a, b = tiny_shapes(50, seed=3), tiny_shapes(50, seed=3)
    assert torch.equal(a, b) and a.shape == (50, 1, 16, 16) and a.max() > 100
    it = batches(a, batch_size=10, binarize=True, seed=0)
    x1, x2 = next(it), next(it)
    assert set(x1.unique().tolist()) <= {0.0, 1.0} and x1.shape == (10, 1, 16, 16)
    assert not torch.equal(x1, x2)
    assert load_images("shapes", "test", limit=7).shape == (7, 1, 16, 16)


# ----------------------------------------------------------------------------- training, CLI


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, NVAETrainConfig, float]:
    run = tmp_path_factory.mktemp("nvae") / "run"
    cfg = NVAETrainConfig(preset="tiny", data="shapes", train_limit=480, eval_images=64,
                          batch_size=16, max_steps=60, eval_every=0, ckpt_every=30, lr=1e-2,
                          progress=False)
    torch.manual_seed(cfg.seed)
    from genloom.tasks.nvae import _eval_set
    x_eval = _eval_set(cfg, torch.device("cpu"))
    before = eval_nelbo(make_model(cfg, (1, 16, 16)), x_eval)
    return run, cfg, before


def test_tiny_training_decreases_the_loss_without_nan(tiny_run) -> None:
    run, cfg, before = tiny_run
    result = train(cfg, run)
    assert result.steps == 60 and result.nan_skipped == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trains = [r for r in records if r["event"] == "train"]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["nelbo"]) for r in trains)
    assert result.eval_nelbo is not None and result.eval_nelbo < before - 20
    assert trains[-1]["nelbo"] < trains[0]["nelbo"]
    for name in ("config.json", "curves.png", "metrics.jsonl", "model/model_ema.safetensors"):
        assert (run / name).is_file()
    # the saved EMA weights give the same outputs as the EMA applied in memory
    loaded = load_image_model(run / "model")
    x = torch.rand(2, 1, 16, 16).bernoulli()
    with result.ema.applied(result.model):
        result.model.eval()
        torch.manual_seed(0)
        ref = result.model(x).params
    torch.manual_seed(0)
    torch.testing.assert_close(loaded(x).params, ref)


def test_cli_eval_and_sample(tiny_run, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tiny_run[0]
    if not (run / "model").is_dir():
        pytest.skip("needs the tiny training run")
    out = tmp_path / "nll.json"
    assert cli_main(["nvae", "eval", str(run), "--data", "shapes", "--k", "8", "--limit", "16",
                     "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["k"] == 8 and res["images"] == 16 and res["nll_nats"] > 0
    assert res["bpd"] == pytest.approx(res["nll_nats"] / (math.log(2) * 256))
    png = tmp_path / "s.png"
    assert cli_main(["nvae", "sample", str(run), "--out", str(png), "--n", "16",
                     "--bn-iters", "3"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["nvae", "eval", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genloom: error:") and "not a saved model" in err and "\n" not in err
    assert cli_main(["nvae", "train", "--out", str(tmp_path / "r"), "--data", "shapes"]) == 2
    assert "--steps or --minutes" in capsys.readouterr().err
    assert cli_main(["nvae", "train", "--out", str(tmp_path / "r"), "--data",
                     str(tmp_path / "nodir"), "--steps", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "r" / "model").exists()


def test_nan_guard_skips_bad_steps_and_stops_on_a_run_of_them(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import genloom.tasks.nvae as task

    real, calls = task.vae_loss, {"n": 0}

    def flaky(model, x, **kw):
        loss, stats = real(model, x, **kw)
        calls["n"] += 1
        return (loss * float("nan"), stats) if calls["n"] in bad else (loss, stats)

    monkeypatch.setattr(task, "vae_loss", flaky)
    cfg = NVAETrainConfig(preset="tiny", data="shapes", train_limit=64, eval_images=16,
                          batch_size=16, max_steps=5, eval_every=0, ckpt_every=0, progress=False)
    bad = {2, 3}
    result = train(cfg, tmp_path / "a")
    assert result.steps == 5 and result.nan_skipped == 2
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    bad, calls["n"] = set(range(1, 100)), 0
    with pytest.raises(UserError, match="non-finite steps in a row"):
        train(replace(cfg, max_bad_steps=3), tmp_path / "b")
