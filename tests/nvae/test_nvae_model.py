"""NVAE and the plain VAE as models: KL warm-up and balancing, devices (meta, CUDA), the
forward terms' consistency, channels-last weights, presets, the importance-weighted bound, the
VAE's size, and model directories in the one on-disk format (and the old one)."""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from genloom.models import load, save
from genloom.models.nvae import (NVAE, balanced_kl, iw_log_likelihood, kl_warmup, load_image_model,
                                 nvae_fmnist_cpu, nvae_tiny, vae_loss)
from genloom.models.vae import ConvVAE, VAEConfig, VAEOutput, count_parameters, vae_matching
from genloom.nn.nvae_cells import SpectralRegularizer
from genloom.tasks.nvae.config import NVAETrainConfig, make_model

SRC = Path(__file__).resolve().parents[2] / "src"
OLD = Path(__file__).resolve().parents[1] / "fixtures" / "old_models"


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


# ----------------------------------------------------------------------------- model directories


@pytest.mark.parametrize("kind", ["nvae", "vae"])
def test_save_and_load_in_the_one_format(kind: str, tmp_path: Path) -> None:
    """`genloom.models.save` writes model_type "nvae" / "vae"; `models.load` and
    `load_image_model` rebuild the same model (EMA weights by default, raw on request), the
    latter channels-last."""
    torch.manual_seed(0)
    model = make_model(NVAETrainConfig(model=kind, preset="tiny"), (1, 16, 16)).eval()
    ema = {k: v + 0.01 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save(model, None, tmp_path, ema=ema)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["model_type"] == kind and "model" not in data
    generic, tok = load(tmp_path, ema=False)
    assert tok is None and type(generic) is type(model) and generic.config == model.config
    x = torch.rand(2, 1, 16, 16).bernoulli()
    outs = []
    for m in (model, generic, load_image_model(tmp_path, weights="raw")):
        torch.manual_seed(1)
        outs.append(m(x).params)
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=0)
    torch.testing.assert_close(outs[2], outs[0], rtol=1e-5, atol=1e-5)
    averaged = load_image_model(tmp_path)
    assert any(p.dim() == 4 and not p.is_contiguous() for p in averaged.parameters())
    assert all(torch.equal(averaged.state_dict()[k], v) for k, v in ema.items())


@pytest.mark.parametrize("kind", ["nvae", "vae"])
def test_old_format_directories_load_and_resave(kind: str, tmp_path: Path) -> None:
    """Directories written before model_type (config.json's "model" key) load through
    `genloom.models.load` as well as `load_image_model`, and saving one again writes the new
    format with the same weights."""
    assert json.loads((OLD / kind / "config.json").read_text())["model"] == kind
    generic, _ = load(OLD / kind)
    image = load_image_model(OLD / kind)
    assert type(generic) is type(image) and generic.config == image.config
    assert all(torch.equal(v, image.state_dict()[k]) for k, v in generic.state_dict().items())
    if kind == "nvae":
        assert generic.config.groups_per_scale == (1, 2)  # a JSON list read back as a tuple
    save(generic, None, tmp_path / "new")
    again = load_image_model(tmp_path / "new")
    assert json.loads((tmp_path / "new" / "config.json").read_text())["model_type"] == kind
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in generic.state_dict().items())


def test_load_image_model_errors(tmp_path: Path) -> None:
    from genloom.errors import UserError

    with pytest.raises(UserError, match="not a saved model"):
        load_image_model(tmp_path)
    with pytest.raises(UserError, match="not an NVAE or a VAE"):
        load_image_model(OLD / "transformer")
    shutil.copytree(OLD / "nvae", tmp_path / "cut")
    weights = tmp_path / "cut" / "model_ema.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    with pytest.raises(UserError, match="cannot read the weights") as err:
        load_image_model(tmp_path / "cut")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="weights must be"):
        load_image_model(OLD / "nvae", weights="best")
