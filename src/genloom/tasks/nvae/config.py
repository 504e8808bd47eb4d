"""The settings of an NVAE / VAE training run and the model a run builds from them."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from genloom.errors import UserError
from genloom.models.nvae import (NVAE, ImageVAE, count_parameters, nvae_fmnist_cpu,
                                 nvae_fmnist_fast, nvae_tiny)
from genloom.models.vae import ConvVAE, vae_matching

PRESETS = {"fmnist-cpu": nvae_fmnist_cpu, "fmnist-fast": nvae_fmnist_fast, "tiny": nvae_tiny}
MODEL_KINDS = ("nvae", "vae")


@dataclass
class NVAETrainConfig:
    model: str = "nvae"  # "nvae", or "vae": the plain baseline sized to the NVAE preset's params
    preset: str = "fmnist-fast"  # NVAE architecture preset (PRESETS); image size follows the data
    data: str = "fashion-mnist"  # "fashion-mnist" (Debian package), "shapes" or an idx folder
    binarize: bool = True  # binarised pixels + Bernoulli output; False: 8-bit + logistic mixture
    train_limit: int | None = None  # train on the first N training images only
    eval_images: int = 500  # test images (fixed binarisation) for the periodic ELBO
    batch_size: int = 32  # images per optimizer step
    lr: float = 1e-2  # peak Adamax lr (official 1e-2 at batch 200; best of 3e-3..1e-2 here)
    lr_min: float = 1e-4  # floor of the cosine decay
    lr_warmup: float = 0.05  # fraction of the budget with linear lr warm-up
    weight_decay: float = 3e-4  # Adamax weight decay (official)
    adamax_eps: float = 1e-3  # Adamax epsilon (official)
    kl_warmup: float = 0.3  # fraction of the budget over which beta ramps to 1
    kl_balance: bool = True  # KL balancing across groups while beta < 1
    reg_weight: float = 1e-2  # lambda: spectral + BN-gamma regularisation (NVAE only)
    power_iters: int = 4  # power-iteration steps per training step
    grad_clip: float | None = 200.0  # clip the gradient norm to this (None: no clipping)
    ema_decay: float | None = 0.999  # EMA of the weights, timm-style decay warm-up (None: none)
    max_steps: int | None = None  # stop after this many optimizer steps
    max_minutes: float | None = None  # stop after this much training time (evaluations excluded)
    eval_every: int = 200  # steps between ELBO evaluations on the eval images (0: at the end)
    ckpt_every: int = 1000  # steps between checkpoints (also at improving evaluations and the end)
    log_every: int = 10  # steps per "train" line of metrics.jsonl
    max_bad_steps: int = 20  # NaN guard: stop after this many non-finite steps in a row
    seed: int = 0  # seeds the model, data order and binarisation
    device: str = "cpu"  # "cpu", "cuda", "cuda:N" or "auto" (cuda when available)
    bf16: bool = False  # bf16 autocast for forward passes (GPU mixed precision)
    progress: bool = True  # tqdm bar


def check(cfg: NVAETrainConfig) -> None:
    """Raise a one-line UserError for settings a run cannot use (`make_model` checks the
    preset and model kind)."""
    if cfg.max_steps is None and cfg.max_minutes is None:
        raise UserError("set --steps or --minutes: the run would never stop")
    if cfg.max_steps is not None and cfg.max_steps < 1 or cfg.max_minutes is not None and cfg.max_minutes <= 0:
        raise UserError("--steps must be >= 1 and --minutes > 0")
    if cfg.batch_size < 1 or cfg.log_every < 1 or cfg.max_bad_steps < 1 or not 0 < cfg.kl_warmup <= 1:
        raise UserError("batch size, log_every and max_bad_steps must be >= 1, kl_warmup in (0, 1]")


def resolve_device(name: str) -> torch.device:
    """A torch.device from a --device value; "auto" picks cuda when available."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (use cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no CUDA GPU here")
    return device


def _padded(size: int, factor: int) -> int:
    return -(-size // factor) * factor


def make_model(cfg: NVAETrainConfig, image_shape: tuple[int, ...]) -> ImageVAE:
    """The model of a run for images of shape (C, H, W): the preset with size and output set
    from the data; the VAE gets about the NVAE's parameter count."""
    if cfg.preset not in PRESETS:
        raise UserError(f"unknown preset {cfg.preset!r}; choose one of {', '.join(PRESETS)}")
    if cfg.model not in MODEL_KINDS:
        raise UserError(f"unknown model {cfg.model!r}; choose one of {', '.join(MODEL_KINDS)}")
    c, h, w = image_shape
    if h != w:
        raise UserError(f"images must be square, got {h}x{w}")
    output = "bernoulli" if cfg.binarize else "logistic"
    base = PRESETS[cfg.preset]()
    n_down = base.pre_blocks + len(base.groups_per_scale) - 1
    nvae_cfg = replace(base, image_channels=c, image_size=h, output=output,
                       padded_size=_padded(h, 2**n_down))
    if cfg.model == "nvae":
        return NVAE(nvae_cfg)
    with torch.device("meta"):
        target = count_parameters(NVAE(nvae_cfg))
    stages = 3
    return ConvVAE(vae_matching(target, image_channels=c, image_size=h, output=output,
                                n_mix=nvae_cfg.n_mix, n_bits=nvae_cfg.n_bits, stages=stages,
                                padded_size=_padded(h, 2**stages)))
