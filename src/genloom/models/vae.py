"""A plain convolutional VAE with one latent vector: the baseline NVAE is measured against.

It shares NVAE's interface (`forward(x) -> VAEOutput`, `log_px`, `sample`, `to_image`,
`kl_alpha`; the first three written once in the base class `PixelVAE`), its output distributions and its padding to a power-of-two size, so one training
loop and one evaluator drive both; the encoder is strided BN-Swish convs, the decoder nearest-
upsampling BN-Swish convs, and `vae_matching(n_params)` picks the width that gives about a
given parameter count.

Letters: B batch, C image channels, H/W image height/width, S padded size, D latent size,
P parameter channels of the output distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genloom.errors import UserError
from genloom.nn.nvae_cells import (bernoulli_log_prob, disc_mix_logistic_channels,
                                   disc_mix_logistic_log_prob, disc_mix_logistic_sample)

OUTPUTS = ("bernoulli", "logistic")


@dataclass
class VAEOutput:
    """What a forward pass of NVAE or the VAE returns (one posterior sample per row)."""

    params: Tensor  # (B, P, H, W) parameters of p(x|z), cropped to the image size
    kl: list[Tensor]  # one (B,) KL(q(z_g|x, z_<g) || p(z_g|z_<g)) per latent group, in nats
    log_q: Tensor  # (B,) log q(z|x) of the sampled z, all groups
    log_p: Tensor  # (B,) log p(z) of the sampled z, all groups


def output_channels(output: str, channels: int, n_mix: int) -> int:
    """Parameter channels P of p(x|z) for an output kind."""
    if output == "bernoulli":
        return channels
    if output == "logistic":
        return disc_mix_logistic_channels(channels, n_mix)
    raise UserError(f"unknown output {output!r}; choose one of {', '.join(OUTPUTS)}")


def pixel_log_prob(params: Tensor, x: Tensor, *, output: str, n_mix: int, n_bits: int) -> Tensor:
    """log p(x|z) summed over pixels: params (B, P, H, W), x (B, C, H, W) in [0, 1] -> (B,)."""
    if output == "bernoulli":
        return bernoulli_log_prob(params, x).sum(dim=(1, 2))
    return disc_mix_logistic_log_prob(params, x, n_mix=n_mix, n_bits=n_bits).sum(dim=(1, 2))


def pixel_image(params: Tensor, *, output: str, channels: int, n_mix: int, n_bits: int,
                mode: str = "mean", temperature: float = 1.0) -> Tensor:
    """Images (B, C, H, W) in [0, 1] from p(x|z): Bernoulli means/samples, mixture samples."""
    if output == "bernoulli":
        probs = torch.sigmoid(params)
        return probs if mode == "mean" else torch.bernoulli(probs)
    return disc_mix_logistic_sample(params, channels, n_mix=n_mix, n_bits=n_bits,
                                    temperature=temperature, mean=mode == "mean")


def pad_to(x: Tensor, size: int) -> Tensor:
    """Zero-pad (B, C, H, W) centrally to (B, C, size, size)."""
    dh, dw = size - x.shape[2], size - x.shape[3]
    if dh < 0 or dw < 0:
        raise UserError(f"images of {x.shape[2]}x{x.shape[3]} exceed the model's size {size}")
    return F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))


def crop_to(x: Tensor, h: int, w: int) -> Tensor:
    """Central crop of (B, P, S, S) to (B, P, h, w)."""
    top, left = (x.shape[2] - h) // 2, (x.shape[3] - w) // 2
    return x[:, :, top:top + h, left:left + w]


class PixelVAE(nn.Module):
    """What NVAE and ConvVAE share: `forward` is `decode(encode(x))`, and p(x|z) follows the
    output settings of `self.config` (output, image_channels, n_mix, n_bits)."""

    config: Any

    def forward(self, x: Tensor) -> VAEOutput:
        """x (B, C, H, W) in [0, 1] -> one posterior sample: `decode(encode(x))`."""
        return self.decode(self.encode(x))

    def log_px(self, params: Tensor, x: Tensor) -> Tensor:
        """log p(x|z) (B,) for images x (B, C, H, W) in [0, 1]."""
        c = self.config
        return pixel_log_prob(params, x, output=c.output, n_mix=c.n_mix, n_bits=c.n_bits)

    def to_image(self, params: Tensor, *, mode: str = "mean", temperature: float = 1.0) -> Tensor:
        """Images (B, C, H, W) in [0, 1] from output parameters."""
        c = self.config
        return pixel_image(params, output=c.output, channels=c.image_channels, n_mix=c.n_mix,
                           n_bits=c.n_bits, mode=mode, temperature=temperature)


@dataclass
class VAEConfig:
    image_channels: int = 1  # C, channels of the images
    image_size: int = 28  # H = W of the images (padded to padded_size inside the model)
    padded_size: int = 32  # working size; a multiple of 2**len(widths)
    output: str = "bernoulli"  # "bernoulli" (binary pixels) or "logistic" (8-bit, mixture)
    n_mix: int = 10  # mixture components when output == "logistic"
    n_bits: int = 8  # bits per pixel when output == "logistic"
    width: int = 32  # channels of the first conv; each stride-2 stage doubles it
    stages: int = 3  # stride-2 stages (32 -> 4 spatially with 3)
    latent: int = 64  # D, size of the single latent vector


def _conv_bn_swish(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.SiLU())


class ConvVAE(PixelVAE):
    """Single-latent convolutional VAE with a N(0, I) prior and a diagonal Gaussian posterior."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        side = c.padded_size // 2**c.stages
        if side * 2**c.stages != c.padded_size or c.image_size > c.padded_size:
            raise UserError("padded_size must be a multiple of 2**stages and >= image_size")
        widths = [c.width * 2**i for i in range(c.stages)]
        enc: list[nn.Module] = [_conv_bn_swish(c.image_channels, widths[0], 1)]
        for i, w in enumerate(widths):
            enc += [_conv_bn_swish(w, w, 2), _conv_bn_swish(w, widths[min(i + 1, c.stages - 1)], 1)]
        self.encoder = nn.Sequential(*enc)
        self.top_shape = (widths[-1], side, side)
        flat = widths[-1] * side * side
        self.to_posterior = nn.Linear(flat, 2 * c.latent)
        self.from_latent = nn.Linear(c.latent, flat)
        dec: list[nn.Module] = []
        for i in reversed(range(c.stages)):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"),
                    _conv_bn_swish(widths[i], widths[max(i - 1, 0)], 1)]
        self.decoder = nn.Sequential(*dec)
        self.out = nn.Conv2d(widths[0], output_channels(c.output, c.image_channels, c.n_mix), 3,
                             padding=1)

    def kl_alpha(self) -> Tensor:
        """KL-balancing weights per group (one group here)."""
        return torch.ones(1)

    def _decode(self, z: Tensor) -> Tensor:
        h = self.from_latent(z).view(z.shape[0], *self.top_shape)  # (B, C', s, s)
        params = self.out(self.decoder(F.silu(h)))  # (B, P, S, S)
        return crop_to(params, self.config.image_size, self.config.image_size)

    def encode(self, x: Tensor) -> list[Tensor]:
        """x (B, C, H, W) in [0, 1] -> [posterior mean (B, D), posterior log sigma (B, D)]."""
        h = self.encoder(2 * pad_to(x, self.config.padded_size) - 1)  # (B, C', s, s)
        mu, log_sigma = self.to_posterior(h.flatten(1)).chunk(2, dim=1)  # (B, D) each
        return [mu, 5 * torch.tanh(log_sigma / 5)]

    def decode(self, encoded: list[Tensor]) -> VAEOutput:
        """One posterior sample per row of `encode`'s output -> VAEOutput (one latent group)."""
        mu, log_sigma = encoded
        q = torch.distributions.Normal(mu, torch.exp(log_sigma), validate_args=False)
        z = q.rsample()  # (B, D)
        p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu), validate_args=False)
        kl = torch.distributions.kl_divergence(q, p).sum(dim=1)  # (B,)
        return VAEOutput(self._decode(z), [kl], q.log_prob(z).sum(1), p.log_prob(z).sum(1))

    def sample(self, n: int, *, temperature: float = 1.0, device: torch.device | str | None = None
               ) -> Tensor:
        """Parameters (n, P, H, W) of p(x|z) for z ~ N(0, temperature^2 I)."""
        device = device if device is not None else self.out.weight.device
        z = torch.randn(n, self.config.latent, device=device) * temperature  # (n, D)
        return self._decode(z)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def vae_matching(n_params: int, **overrides: Any) -> VAEConfig:
    """The VAEConfig whose width gives the parameter count closest to `n_params` (the other
    fields from `overrides`). Built on the meta device, so it allocates nothing."""
    best: tuple[int, VAEConfig] | None = None
    for width in range(4, 257):
        cfg = VAEConfig(**{**overrides, "width": width})
        with torch.device("meta"):
            n = count_parameters(ConvVAE(cfg))
        if best is None or abs(n - n_params) < best[0]:
            best = (abs(n - n_params), cfg)
        if n > n_params:
            break
    assert best is not None
    return best[1]
