"""NVAE: a deep hierarchical VAE (Vahdat & Kautz 2020; Su's 强大的NVAE), device-agnostic.

A bottom-up encoder (stem, pre-process cells that halve the size and double the width, then
the encoder tower) leaves one feature map per latent group; a shared top-down decoder starts
from a learned tensor, and for each group forms the prior from its state, the residual
posterior from the encoder feature combined with that state, and injects z by concat + 1x1
conv; post-process cells upsample back to an image's output distribution (Bernoulli for binary
pixels, a mixture of discretised logistics for 8-bit ones). The groups sit at several scales,
the top (smallest) scale first.

Nothing here names a device: tensors are created on the device of the input or of the model's
parameters (or a `device` argument), so the same code runs on CPU, CUDA or "meta".

Also here: the training objective pieces (KL warm-up, KL balancing, the regularised loss), the
importance-weighted log-likelihood, and `load_image_model`, which reads either model's directory
(`genloom.models.save` / `load`, model_type "nvae" or "vae"; directories written before
model_type existed name it under "model") with channels-last weights.

Letters: B batch, C image channels, H/W image size, S padded size, Z latent channels per group,
G latent groups, K importance samples, P output-parameter channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from genloom.errors import UserError
from genloom.models.vae import (ConvVAE, PixelVAE, VAEOutput, count_parameters, crop_to,
                                output_channels, pad_to)
from genloom.nn.nvae_cells import (DecCombiner, EncCombiner, ResidualCell, SpectralRegularizer,
                                   WNConv2d, bn_gamma_penalty, normal_from_params, residual_kl,
                                   residual_posterior)


@dataclass
class NVAEConfig:
    image_channels: int = 1  # C, channels of the images
    image_size: int = 28  # H = W of the images (padded to padded_size inside, output cropped back)
    padded_size: int = 32  # working size; a multiple of 2**(pre_blocks + scales - 1)
    output: str = "bernoulli"  # "bernoulli" (binary pixels) or "logistic" (8-bit, mixture)
    n_mix: int = 10  # mixture components when output == "logistic"
    n_bits: int = 8  # bits per pixel when output == "logistic"
    channels: int = 16  # width of the stem; every downsampling doubles it
    pre_blocks: int = 1  # pre-process blocks (each ends with a stride-2 cell); post-process mirrors
    pre_cells: int = 2  # cells per pre-process block, the last one downsampling
    post_cells: int = 2  # cells per post-process block, the first one upsampling
    groups_per_scale: tuple[int, ...] = (2, 3)  # latent groups per scale, top (smallest) first
    z_channels: int = 8  # Z, latent channels per group
    enc_cells: int = 1  # encoder-tower cells per group
    dec_cells: int = 1  # decoder-tower cells per group (not before the first group)
    dec_expand: int = 6  # expansion of the decoder-tower inverted bottleneck (mconv_e6k5)
    post_expand: int = 3  # expansion of the post-process cells (mconv_e3k5)
    use_se: bool = True  # squeeze-and-excitation in every cell

    def __post_init__(self) -> None:
        self.groups_per_scale = tuple(self.groups_per_scale)  # a JSON list read back


def nvae_fmnist_cpu() -> NVAEConfig:
    """The 2-core-CPU preset for 28x28 Fashion-MNIST (nvae-rtf.md section 1, "smallest setup"):
    16 channels, latent scales 8x8 (2 groups) and 16x16 (3 groups) of 8 channels, one cell per
    group, one pre/post block of a single (down/up) cell, and decoder cells expanded 3x instead
    of the official 6x (about 1.6x faster a step on CPU, where depthwise convs dominate)."""
    return NVAEConfig(pre_cells=1, post_cells=1, dec_expand=3)


def nvae_fmnist_fast() -> NVAEConfig:
    """The faster 2-core-CPU preset: latent groups at 4x4 (2) and 8x8 (3) of 8 channels, as the
    official MNIST setup places them (two pre-process blocks, images padded to 32), an 8-channel
    stem (so widths 16, 32, 64 and about `nvae_fmnist_cpu`'s parameter count), and post-process
    cells that do not expand. A step takes about half the time of `nvae_fmnist_cpu`'s, and in
    4-minute pilots it reached a 9 nats lower test -ELBO at the same lr."""
    return NVAEConfig(channels=8, pre_blocks=2, pre_cells=1, post_cells=1, dec_expand=3,
                      post_expand=1)


def nvae_tiny(output: str = "bernoulli") -> NVAEConfig:
    """A very small model for tests: 8 channels, 16x16 images, 1+2 groups of 4 channels."""
    return NVAEConfig(image_size=16, padded_size=16, output=output, n_mix=3, channels=8,
                      pre_cells=1, post_cells=1, groups_per_scale=(1, 2), z_channels=4,
                      dec_expand=2, post_expand=2)


class NVAE(PixelVAE):
    """The hierarchical VAE; the interface (forward, log_px, sample, to_image, kl_alpha) is
    shared with `ConvVAE` (forward, log_px, to_image through `PixelVAE`) so one loop trains and
    evaluates both."""

    def __init__(self, config: NVAEConfig) -> None:
        super().__init__()
        c = self.config = config
        n_scales = len(c.groups_per_scale)
        n_down = c.pre_blocks + n_scales - 1
        if n_scales < 1 or min(c.groups_per_scale) < 1:
            raise UserError("groups_per_scale needs at least one scale with at least one group")
        if c.padded_size % 2**n_down or c.image_size > c.padded_size:
            raise UserError(f"padded_size {c.padded_size} must be >= image_size and a multiple of "
                            f"2**{n_down}")
        # width and side of each latent scale, top (smallest) first
        widths = [c.channels * 2 ** (c.pre_blocks + n_scales - 1 - t) for t in range(n_scales)]
        sides = [c.padded_size // 2 ** (c.pre_blocks + n_scales - 1 - t) for t in range(n_scales)]
        self.scale_of_group = [t for t in range(n_scales) for _ in range(c.groups_per_scale[t])]

        self.stem = WNConv2d(c.image_channels, c.channels, 3, padding=1)
        pre: list[nn.Module] = []
        for b in range(c.pre_blocks):
            w = c.channels * 2**b
            pre += [ResidualCell(w, w, kind="enc", use_se=c.use_se) for _ in range(c.pre_cells - 1)]
            pre.append(ResidualCell(w, 2 * w, kind="enc", down=True, use_se=c.use_se))
        self.pre = nn.Sequential(*pre)

        # bottom-up: one Sequential per group, largest scale first
        self.enc_groups = nn.ModuleList()
        for t in reversed(range(n_scales)):
            for g in range(c.groups_per_scale[t]):
                cells: list[nn.Module] = []
                if g == 0 and t != n_scales - 1:
                    cells.append(ResidualCell(widths[t] // 2, widths[t], kind="enc", down=True,
                                              use_se=c.use_se))
                cells += [ResidualCell(widths[t], widths[t], kind="enc", use_se=c.use_se)
                          for _ in range(c.enc_cells)]
                self.enc_groups.append(nn.Sequential(*cells))
        self.enc0 = nn.Sequential(nn.ELU(), WNConv2d(widths[0], widths[0], 1), nn.ELU())

        # top-down: per group j (top first); lists indexed j - 1 exist for j >= 1 only
        self.prior_ftr0 = nn.Parameter(torch.rand(widths[0], sides[0], sides[0]))
        self.enc_samplers, self.dec_combiners = nn.ModuleList(), nn.ModuleList()
        self.enc_combiners, self.dec_samplers, self.dec_groups = (nn.ModuleList(), nn.ModuleList(),
                                                                  nn.ModuleList())
        for j, t in enumerate(self.scale_of_group):
            w = widths[t]
            self.enc_samplers.append(WNConv2d(w, 2 * c.z_channels, 3, padding=1))
            self.dec_combiners.append(DecCombiner(w, c.z_channels))
            if j == 0:
                continue
            cells = []
            if self.scale_of_group[j - 1] != t:
                cells.append(ResidualCell(widths[t - 1], w, kind="dec", up=True,
                                          expand=c.dec_expand, use_se=c.use_se))
            cells += [ResidualCell(w, w, kind="dec", expand=c.dec_expand, use_se=c.use_se)
                      for _ in range(c.dec_cells)]
            self.dec_groups.append(nn.Sequential(*cells))
            self.dec_samplers.append(nn.Sequential(nn.ELU(), WNConv2d(w, 2 * c.z_channels, 1)))
            self.enc_combiners.append(EncCombiner(w, w))

        post: list[nn.Module] = []
        for b in reversed(range(c.pre_blocks)):
            w = c.channels * 2**b
            post.append(ResidualCell(2 * w, w, kind="dec", up=True, expand=c.post_expand,
                                     use_se=c.use_se))
            post += [ResidualCell(w, w, kind="dec", expand=c.post_expand, use_se=c.use_se)
                     for _ in range(c.post_cells - 1)]
        self.post = nn.Sequential(*post)
        self.out = nn.Sequential(nn.ELU(), WNConv2d(c.channels, output_channels(
            c.output, c.image_channels, c.n_mix), 3, padding=1))
        self.z_shapes = [(c.z_channels, sides[t], sides[t]) for t in self.scale_of_group]

    def kl_alpha(self) -> Tensor:
        """KL-balancing weights alpha_g proportional to (scale area) / (groups at that scale),
        normalised to min 1 (the official `kl_balancer_coeff(..., 'square')`)."""
        a = torch.tensor([self.z_shapes[j][1] ** 2 / self.config.groups_per_scale[t]
                          for j, t in enumerate(self.scale_of_group)])
        return a / a.min()

    def _top_down(self, batch: int, feats: list[Tensor] | None, top: Tensor | None,
                  temperature: float) -> tuple[Tensor, list[Tensor], Tensor, Tensor]:
        """Run the decoder; posterior groups when `feats`/`top` are given, else prior samples."""
        ref = self.prior_ftr0
        kls: list[Tensor] = []
        log_q = log_p = ref.new_zeros(batch)
        # channels-last activations: depthwise convs run ~4x faster so on CPU (oneDNN), and
        # NHWC suits cuDNN; the layout does not change any value
        h = ref.unsqueeze(0).expand(batch, -1, -1, -1).contiguous(
            memory_format=torch.channels_last)  # (B, C', s, s)
        for j in range(len(self.scale_of_group)):
            if j == 0:
                zeros = ref.new_zeros(batch, *self.z_shapes[0])  # (B, Z, s, s)
                prior = torch.distributions.Normal(zeros, torch.ones_like(zeros) * temperature,
                                                   validate_args=False)
                enc_in = top
            else:
                h = self.dec_groups[j - 1](h)
                mu_p, log_sigma_p = self.dec_samplers[j - 1](h).chunk(2, dim=1)  # (B, Z, s, s) x2
                prior = normal_from_params(mu_p, log_sigma_p, temperature=temperature)
                enc_in = None if feats is None else self.enc_combiners[j - 1](feats[j - 1], h)
            if enc_in is None:
                z = prior.sample()  # (B, Z, s, s)
            else:
                d_mu, d_log_sigma = self.enc_samplers[j](enc_in).chunk(2, dim=1)
                q, d_mu, d_log_sigma = residual_posterior(prior, d_mu, d_log_sigma)
                z = q.rsample()  # (B, Z, s, s)
                kls.append(residual_kl(d_mu, d_log_sigma, prior.scale).sum(dim=(1, 2, 3)))
                log_q = log_q + q.log_prob(z).sum(dim=(1, 2, 3))
                log_p = log_p + prior.log_prob(z).sum(dim=(1, 2, 3))
            h = self.dec_combiners[j](h, z)
        params = self.out(self.post(h))  # (B, P, S, S)
        params = crop_to(params, self.config.image_size, self.config.image_size)
        return params, kls, log_q, log_p

    def encode(self, x: Tensor) -> list[Tensor]:
        """The deterministic bottom-up pass: x (B, C, H, W) in [0, 1] -> [top feature, then the
        encoder feature of each top-down group j >= 1]; every tensor has B rows."""
        x_in = (2 * pad_to(x, self.config.padded_size) - 1).contiguous(
            memory_format=torch.channels_last)  # (B, C, S, S)
        s = self.pre(self.stem(x_in))
        feats = []
        for group in self.enc_groups:
            s = group(s)
            feats.append(s)
        top = self.enc0(feats.pop())  # the last feature feeds the top group
        return [top, *reversed(feats)]  # feats[j] now serves top-down group j

    def decode(self, encoded: list[Tensor]) -> VAEOutput:
        """The stochastic top-down pass over `encode`'s output (rows may be repeated, e.g. K
        times for importance sampling): output params, per-group KL, log q(z|x), log p(z)."""
        top, *feats = encoded
        params, kls, log_q, log_p = self._top_down(top.shape[0], feats, top, 1.0)
        return VAEOutput(params, kls, log_q, log_p)

    def sample(self, n: int, *, temperature: float = 1.0, device: torch.device | str | None = None
               ) -> Tensor:
        """Output parameters (n, P, H, W) for z drawn from the prior, every group's sigma scaled
        by `temperature`. Samples on the model's device (`device`, if given, must match it)."""
        if device is not None and torch.device(device) != self.prior_ftr0.device:
            raise UserError(f"model is on {self.prior_ftr0.device}, asked to sample on {device}")
        return self._top_down(n, None, None, temperature)[0]


ImageVAE = NVAE | ConvVAE


# ----------------------------------------------------------------------------- objective


def kl_warmup(progress: float, *, warmup: float = 0.3, constant: float = 1e-4,
              min_beta: float = 1e-4) -> float:
    """KL coefficient beta at a fraction `progress` of training: a linear ramp from 0 over
    `warmup` of the run after a `constant` lead-in, floored at `min_beta` (official kl_coeff)."""
    return max(min((progress - constant) / warmup, 1.0), min_beta)


def balanced_kl(kl: Tensor, alpha: Tensor, beta: float, *, balance: bool = True
                ) -> tuple[Tensor, Tensor]:
    """KL term of the loss with KL balancing while beta < 1.

    Args:
        kl: (B, G) per-group KL of each row.
        alpha: (G,) group weights (`model.kl_alpha()`).
        beta: the warm-up coefficient.
    Returns:
        beta * sum_g gamma_g * kl_g per row (B,), and gamma (G,), which averages 1 and is
        detached; gamma_g is proportional to (batch-mean |kl_g| + 0.01) / alpha_g, so groups that
        carry little information are pushed less, keeping all groups active during warm-up.
    """
    if balance and beta < 1.0:
        gamma = ((kl.detach().abs().mean(dim=0) + 0.01) / alpha).float()  # (G,)
        gamma = gamma / gamma.mean()
    else:
        gamma = torch.ones(kl.shape[1], device=kl.device)
    return beta * (kl * gamma.to(kl.dtype)).sum(dim=1), gamma


def vae_loss(model: ImageVAE, x: Tensor, *, beta: float, reg_weight: float = 0.0,
             spectral: SpectralRegularizer | None = None, balance: bool = True
             ) -> tuple[Tensor, dict[str, float]]:
    """The training loss of a batch x (B, C, H, W) in [0, 1], and float statistics.

    loss = mean(-log p(x|z) + balanced beta-KL) + reg_weight * (spectral norms + BN max|gamma|);
    the regulariser is applied only when `spectral` is given (NVAE, not the plain VAE). The
    statistics hold the unweighted negative ELBO in nats per image.
    """
    out = model(x)
    rec = -model.log_px(out.params, x)  # (B,)
    kl = torch.stack(out.kl, dim=1)  # (B, G)
    kl_term, gamma = balanced_kl(kl, model.kl_alpha().to(kl.device), beta, balance=balance)
    loss = (rec + kl_term).mean()
    stats = {"rec": rec.mean().item(), "kl": kl.sum(1).mean().item(), "beta": beta,
             "active_groups": int((kl.mean(0) > 0.1).sum().item())}
    stats["nelbo"] = stats["rec"] + stats["kl"]
    if spectral is not None and reg_weight > 0:
        reg = spectral() + bn_gamma_penalty(model)
        loss = loss + reg_weight * reg
        stats["reg"] = reg.item()
    return loss, stats


@torch.no_grad()
def iw_log_likelihood(model: ImageVAE, x: Tensor, *, k: int, chunk: int = 256) -> Tensor:
    """Importance-weighted estimate of log p(x) (B,) in nats with K posterior samples:
    logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K (use the model in eval mode).

    The deterministic encoder runs once per image; its output is repeated K times for the
    stochastic decoder, about `chunk` rows at a time (at least K), so memory stays bounded.
    """
    if k < 1:
        raise UserError(f"the number of importance samples must be >= 1, got {k}")
    per = max(1, chunk // k)  # images per decoder pass
    out_ll = []
    for start in range(0, x.shape[0], per):
        xb = x[start:start + per]
        encoded = [t.repeat_interleave(k, dim=0) for t in model.encode(xb)]  # (b*K, ...) each
        out = model.decode(encoded)
        xr = xb.repeat_interleave(k, dim=0)  # (b*K, C, H, W)
        log_w = (model.log_px(out.params, xr) + out.log_p - out.log_q).view(-1, k)  # (b, K)
        out_ll.append(torch.logsumexp(log_w, dim=1) - math.log(k))
    return torch.cat(out_ll)


def bits_per_dim(nll_nats: float, dims: int) -> float:
    """Nats per image -> bits per dimension."""
    return nll_nats / (math.log(2.0) * dims)


# ----------------------------------------------------------------------------- files


def load_image_model(directory: str | Path, *, device: torch.device | str = "cpu",
                     weights: str = "ema") -> ImageVAE:
    """Rebuild an NVAE or ConvVAE from a model directory (config.json + model.safetensors, and
    model_ema.safetensors when trained with EMA) through `genloom.models.load`, in eval mode
    with channels-last weights; no code execution.

    `weights="ema"` takes the averaged weights when the directory has them (the default, as
    `genloom.models.save` writes them), `"raw"` the raw ones.
    """
    from genloom.models.io import load

    d = Path(directory)
    if weights not in ("ema", "raw"):
        raise UserError(f"weights must be 'ema' or 'raw', got {weights!r}")
    if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
        raise UserError(f"{d} is not a saved model (needs config.json and model.safetensors)")
    model, _ = load(d, ema=weights == "ema", device=device)
    if not isinstance(model, (NVAE, ConvVAE)):
        raise UserError(f"{d} holds a {type(model).__name__}, not an NVAE or a VAE")
    return model.to(device, memory_format=torch.channels_last).eval()


__all__ = ["NVAE", "NVAEConfig", "nvae_fmnist_cpu", "nvae_fmnist_fast", "nvae_tiny", "kl_warmup", "balanced_kl",
           "vae_loss", "iw_log_likelihood", "bits_per_dim", "load_image_model", "count_parameters",
           "ImageVAE"]
