"""Training an NVAE (or the plain VAE) through `genloom.train.fit`.

The run trains on Fashion-MNIST (dynamically binarised + Bernoulli output, or 8-bit +
discretised logistic mixture), the built-in `shapes` set or any idx files, and writes what `fit`
writes (config.json, metrics.jsonl, curves.png, checkpoints/) plus model/, a
`genloom.models.save` directory (model_type "nvae" or "vae"; model.safetensors raw,
model_ema.safetensors EMA). What NVAE needs beyond `fit`'s defaults comes in through its hooks:
Adamax (`optimizer_fn`), lr warm-up + cosine (`lr_fn`) and the KL warm-up (`on_step`) over the
fraction of the step *or* wall-time budget (so two models given the same minutes get the same
schedules; evaluations and checkpoints are off the clock), the per-term statistics of the loss
(reconstruction, KL, beta, -ELBO) in metrics.jsonl, and a NaN guard that skips a bad step
instead of stopping (`nonfinite="skip"`). Weights are kept channels-last, like the activations:
oneDNN then skips a layout reorder per convolution (about 1.5x a step on CPU; values unchanged).

Letters: B batch, C channels, H/W image size, N images.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from genloom.data.images import batches, eval_images, load_images
from genloom.errors import UserError
from genloom.files import atomic_directory
from genloom.models.io import save
from genloom.models.nvae import NVAE, ImageVAE, bits_per_dim, count_parameters, kl_warmup, vae_loss
from genloom.nn.nvae_cells import SpectralRegularizer
from genloom.tasks.nvae.config import NVAETrainConfig, check, make_model, resolve_device
from genloom.train.checkpoint import latest_checkpoint
from genloom.train.ema import EMA
from genloom.train import outdir
from genloom.train.trainer import TrainConfig, fit


@dataclass
class TrainResult:
    model: ImageVAE  # the trained model (raw weights)
    ema: EMA | None  # its EMA, when kept
    steps: int  # optimizer steps taken
    train_seconds: float  # training time (evaluations and checkpoints excluded)
    nan_skipped: int  # steps skipped by the NaN guard
    eval_nelbo: float | None  # last negative ELBO on the eval images (nats per image)
    run_dir: Path  # where everything was written


def lr_at(progress: float, cfg: NVAETrainConfig) -> float:
    """Learning rate at a fraction of the budget: linear warm-up, then cosine to lr_min."""
    if progress < cfg.lr_warmup:
        return cfg.lr * max(progress / cfg.lr_warmup, 1e-3)
    p = min(1.0, (progress - cfg.lr_warmup) / max(1e-9, 1.0 - cfg.lr_warmup))
    return cfg.lr_min + (cfg.lr - cfg.lr_min) * 0.5 * (1.0 + math.cos(math.pi * p))


class VAEObjective:
    """`fit`'s loss_fn for an image VAE: the regularised negative ELBO of a batch (B, C, H, W)
    at the KL coefficient beta of the budget fraction, which `at` (fit's on_step) sets."""

    def __init__(self, cfg: NVAETrainConfig, spectral: SpectralRegularizer | None) -> None:
        self.cfg, self.spectral = cfg, spectral
        self.beta = kl_warmup(0.0, warmup=cfg.kl_warmup)

    def at(self, progress: float) -> None:
        self.beta = kl_warmup(progress, warmup=self.cfg.kl_warmup)

    def __call__(self, model: nn.Module, x: Tensor) -> tuple[Tensor, int, dict[str, float]]:
        loss, stats = vae_loss(model, x, beta=self.beta, reg_weight=self.cfg.reg_weight,
                               spectral=self.spectral, balance=self.cfg.kl_balance)
        return loss, x.shape[0], stats


@torch.no_grad()
def eval_nelbo(model: ImageVAE, x: Tensor, *, chunk: int = 250) -> float:
    """Mean single-sample negative ELBO (nats per image) of x (N, C, H, W), in eval mode."""
    was_training = model.training
    model.eval()
    total = 0.0
    for start in range(0, x.shape[0], chunk):
        xb = x[start:start + chunk]
        out = model(xb)
        total += float((-model.log_px(out.params, xb) + torch.stack(out.kl, 1).sum(1)).sum())
    model.train(was_training)
    return total / x.shape[0]


def eval_set(cfg: NVAETrainConfig, device: torch.device | str) -> Tensor:
    """The run's evaluation images (the first `eval_images` of the test split) on `device`."""
    return eval_images(cfg.data, binarize=cfg.binarize, limit=cfg.eval_images).to(device)


def loop_config(cfg: NVAETrainConfig, device: torch.device) -> TrainConfig:
    """The training loop's settings for a run (the schedules come as fit's hooks)."""
    return TrainConfig(
        lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.adamax_eps, schedule="constant",
        max_steps=cfg.max_steps, max_minutes=cfg.max_minutes, grad_clip=cfg.grad_clip,
        bf16=cfg.bf16, ema_decay=cfg.ema_decay, ema_warmup=True, eval_every=cfg.eval_every,
        metric="nelbo", log_every=cfg.log_every, ckpt_every=cfg.ckpt_every, restore_best=False,
        seed=cfg.seed, device=str(device), progress=cfg.progress, nonfinite="skip",
        max_skipped_in_row=cfg.max_bad_steps, exclude_eval_time=True)


def _check_resumable(ckpt_dir: Path) -> None:
    latest = latest_checkpoint(ckpt_dir)
    if latest is not None and "scheduler" not in json.loads((latest / "state.json").read_text())["state"]:
        raise UserError(f"{latest} was written by the older NVAE loop and cannot be resumed; "
                        "start a new run (its model/ still loads)")


def train(cfg: NVAETrainConfig, run_dir: str | Path, *, resume: bool = False, force: bool = False) -> TrainResult:
    """Train a model as `cfg` says, writing the run directory (module docstring). What `run_dir`
    may hold is `genloom.train.outdir`'s rule: new or empty; with `resume` the stopped run, continued
    in place; with `force` an nvae run, replaced only when the new one is complete; never
    another command's model."""
    check(cfg)
    device = resolve_device(cfg.device)
    final = Path(run_dir)
    outdir.check_out(final, kind="nvae", force=force, resume=resume)
    if resume:
        _check_resumable(final / "checkpoints")
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    train_images = load_images(cfg.data, "train", limit=cfg.train_limit)
    x_eval = eval_set(cfg, device)
    model = make_model(cfg, tuple(train_images.shape[1:])).to(device, memory_format=torch.channels_last)
    spectral = (SpectralRegularizer(model, n_iter=cfg.power_iters, warm_start=not resume)
                if isinstance(model, NVAE) and cfg.reg_weight > 0 else None)
    objective = VAEObjective(cfg, spectral)
    dims = x_eval[0].numel()

    def evaluate(m: nn.Module) -> dict[str, float]:
        value = eval_nelbo(m, x_eval)  # type: ignore[arg-type]
        return {"nelbo": value, "bpd": bits_per_dim(value, dims)}

    stream = batches(train_images, batch_size=cfg.batch_size, binarize=cfg.binarize, seed=cfg.seed)
    with outdir.output_directory(final, kind="nvae", force=force, resume=resume) as where:
        result = fit(
            model, objective, stream, config=loop_config(cfg, device), run_dir=where,
            eval_fn=evaluate, resume=resume,
            task_config={"writer": "nvae", **asdict(cfg), "model_config": asdict(model.config),
                         "parameters": count_parameters(model)},
            optimizer_fn=lambda params: torch.optim.Adamax(params, lr=cfg.lr, eps=cfg.adamax_eps,
                                                           weight_decay=cfg.weight_decay),
            lr_fn=lambda fraction: lr_at(fraction, cfg) / cfg.lr, on_step=objective.at)
        outdir.untrained(result)
        with atomic_directory(where / "model", replace=True) as tmp:
            save(model, None, tmp, ema=result.ema.averaged() if result.ema is not None else None)
    return TrainResult(model, result.ema, result.step, result.elapsed_s, result.skipped_steps,
                       result.last_metrics.get("nelbo"), final)
