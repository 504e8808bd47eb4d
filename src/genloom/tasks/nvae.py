"""`genloom nvae train|eval|sample`: NVAE (or the plain VAE baseline) on images.

train   fits a model on Fashion-MNIST (dynamically binarised + Bernoulli output, or 8-bit +
        discretised logistic mixture), the built-in `shapes` set or any idx files; writes
        config.json, metrics.jsonl, curves.png, checkpoints/, model/ (config.json,
        model.safetensors raw, model_ema.safetensors EMA), recon.png and samples.png.
eval    importance-weighted NLL with K samples on the test split, in nats and bits/dim.
sample  a PNG grid of samples at a temperature, after re-estimating BatchNorm statistics.

The loop is a compact one here rather than `genloom.train.trainer.fit`, because NVAE needs
what `fit` does not offer: Adamax, schedules (lr warm-up + cosine, KL warm-up) that follow the
fraction of a *wall-time* budget as well as of a step budget (so two models given the same
minutes get the same schedules), per-term statistics (reconstruction, KL, beta) in
metrics.jsonl, and a NaN guard that skips a bad step instead of stopping. It uses the training
core's EMA, checkpoints (safetensors + JSON, atomic), save_weights and curve plot.

Letters: B batch, C channels, H/W image size, N images.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from genloom import __version__
from genloom.data.images import BUILTIN, batches, fixed_binarization, load_images, to_unit
from genloom.errors import UserError
from genloom.models.nvae import (NVAE, ImageVAE, bits_per_dim, count_parameters,
                                 iw_log_likelihood, kl_warmup, load_image_model, nvae_fmnist_cpu,
                                 nvae_fmnist_fast, nvae_tiny, vae_loss)
from genloom.models.vae import ConvVAE, vae_matching
from genloom.nn.nvae_cells import SpectralRegularizer, reestimate_batchnorm
from genloom.train.checkpoint import (latest_checkpoint, list_checkpoints, load_checkpoint,
                                      rng_state, save_checkpoint, save_weights, set_rng_state,
                                      write_atomic, write_json_atomic)
from genloom.train.ema import EMA
from genloom.train.plots import plot_curves

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
    ckpt_every: int = 1000  # steps between checkpoints (and one at the end)
    log_every: int = 10  # steps per "train" line of metrics.jsonl
    max_bad_steps: int = 20  # NaN guard: stop after this many non-finite steps in a row
    seed: int = 0  # seeds the model, data order and binarisation
    device: str = "cpu"  # "cpu", "cuda", "cuda:N" or "auto" (cuda when available)
    bf16: bool = False  # bf16 autocast for forward passes (GPU mixed precision)
    progress: bool = True  # tqdm bar


@dataclass
class TrainResult:
    model: ImageVAE  # the trained model (raw weights)
    ema: EMA | None  # its EMA, when kept
    steps: int  # optimizer steps taken
    train_seconds: float  # training time (evaluations and checkpoints excluded)
    nan_skipped: int  # steps skipped by the NaN guard
    eval_nelbo: float | None  # last negative ELBO on the eval images (nats per image)
    run_dir: Path  # where everything was written


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


def lr_at(progress: float, cfg: NVAETrainConfig) -> float:
    """Learning rate at a fraction of the budget: linear warm-up, then cosine to lr_min."""
    if progress < cfg.lr_warmup:
        return cfg.lr * max(progress / cfg.lr_warmup, 1e-3)
    p = min(1.0, (progress - cfg.lr_warmup) / max(1e-9, 1.0 - cfg.lr_warmup))
    return cfg.lr_min + (cfg.lr - cfg.lr_min) * 0.5 * (1.0 + math.cos(math.pi * p))


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


def _eval_set(cfg: NVAETrainConfig, device: torch.device) -> Tensor:
    images = load_images(cfg.data, "test", limit=cfg.eval_images)
    x = fixed_binarization(images, seed=1234) if cfg.binarize else to_unit(images, binarize=False)
    return x.to(device)


def train(cfg: NVAETrainConfig, run_dir: str | Path, *, resume: bool = False) -> TrainResult:
    """Train a model as `cfg` says, writing the run directory (module docstring)."""
    if cfg.max_steps is None and cfg.max_minutes is None:
        raise UserError("set --steps or --minutes: the run would never stop")
    if cfg.batch_size < 1 or cfg.log_every < 1 or not 0 < cfg.kl_warmup <= 1:
        raise UserError("batch size and log_every must be >= 1, kl_warmup in (0, 1]")
    device = resolve_device(cfg.device)
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    if resume and latest_checkpoint(ckpt_dir) is None:
        raise UserError(f"nothing to resume: no checkpoint in {ckpt_dir}")
    if not resume and list_checkpoints(ckpt_dir):
        raise UserError(f"{run_dir} already holds checkpoints: --resume, or pick a new --out")
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    train_images = load_images(cfg.data, "train", limit=cfg.train_limit)
    x_eval = _eval_set(cfg, device)
    # channels-last weights as well as activations: oneDNN's convolutions (depthwise above all)
    # then skip a layout reorder per call, about 1.5x faster a step on CPU for both models
    model = make_model(cfg, tuple(train_images.shape[1:])).to(device, memory_format=torch.channels_last)
    opt = torch.optim.Adamax(model.parameters(), lr=cfg.lr, eps=cfg.adamax_eps,
                             weight_decay=cfg.weight_decay)
    ema = EMA(model, cfg.ema_decay, warmup=True) if cfg.ema_decay is not None else None
    spectral = (SpectralRegularizer(model, n_iter=cfg.power_iters)
                if isinstance(model, NVAE) and cfg.reg_weight > 0 else None)
    prog = {"step": 0, "train_seconds": 0.0, "nan_skipped": 0}
    records: list[dict[str, Any]] = []
    if resume:
        ckpt = load_checkpoint(latest_checkpoint(ckpt_dir), model=model)  # type: ignore[arg-type]
        st = ckpt["state"]
        opt.load_state_dict(st["optimizer"])
        if ema is not None and st["ema"] is not None:
            ema.load_state_dict(st["ema"])
        prog = dict(st["progress"])
        set_rng_state(st["rng"])
        old = (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else []
        records = [r for r in map(json.loads, filter(None, old)) if r.get("step", 0) <= prog["step"]]
    n_params = count_parameters(model)
    write_json_atomic(run_dir / "config.json", {
        "train": asdict(cfg), "model": json.loads(model.config.to_json()), "parameters": n_params,
        "device": str(device), "resumed_from": prog["step"] if resume else None,
        "versions": {"genloom": __version__, "torch": torch.__version__}})
    write_atomic(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    log_file = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")

    def log(record: dict[str, Any]) -> None:
        records.append(record)
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()

    def evaluate() -> float:
        with ema.applied(model) if ema is not None else nullcontext():
            value = eval_nelbo(model, x_eval)
        dims = x_eval[0].numel()
        log({"event": "eval", "step": prog["step"], "time": prog["train_seconds"],
             "nelbo": value, "bpd": bits_per_dim(value, dims)})
        return value

    def checkpoint() -> None:
        state = {"optimizer": opt.state_dict(), "ema": ema.state_dict() if ema else None,
                 "progress": dict(prog), "rng": rng_state()}
        save_checkpoint(ckpt_dir, prog["step"], model=model, state=state)
        plot_curves(records, run_dir / "curves.png")

    stream = batches(train_images, batch_size=cfg.batch_size, binarize=cfg.binarize,
                     seed=cfg.seed + prog["step"], device=device)
    budget_s = cfg.max_minutes * 60 if cfg.max_minutes is not None else None
    bar = tqdm(total=cfg.max_steps, initial=prog["step"], disable=not cfg.progress, unit="step",
               dynamic_ncols=True)
    window: dict[str, float] = {}
    bad_in_row, last_eval, last_eval_step = 0, None, -1
    model.train()
    try:
        while True:
            progress = max(prog["step"] / cfg.max_steps if cfg.max_steps else 0.0,
                           prog["train_seconds"] / budget_s if budget_s else 0.0)
            if progress >= 1.0:
                break
            beta, lr = kl_warmup(progress, warmup=cfg.kl_warmup), lr_at(progress, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            x = next(stream)
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                loss, stats = vae_loss(model, x, beta=beta, reg_weight=cfg.reg_weight,
                                       spectral=spectral, balance=cfg.kl_balance)
            grad_norm = float("nan")
            if math.isfinite(loss.item()):
                loss.backward()
                grad_norm = float(torch.nn.utils.clip_grad_norm_(
                    model.parameters(), cfg.grad_clip if cfg.grad_clip else float("inf")))
            if not math.isfinite(grad_norm):  # NaN guard: skip the step, keep the weights
                opt.zero_grad(set_to_none=True)
                prog["nan_skipped"] += 1
                bad_in_row += 1
                prog["train_seconds"] += time.perf_counter() - t0
                log({"event": "nan_skipped", "step": prog["step"], "loss": loss.item()})
                if bad_in_row >= cfg.max_bad_steps:
                    raise UserError(f"{bad_in_row} non-finite steps in a row at step "
                                    f"{prog['step']}; lower --lr or raise the regularisation")
                continue
            bad_in_row = 0
            opt.step()
            if ema is not None:
                ema.update(model)
            prog["step"] += 1
            prog["train_seconds"] += time.perf_counter() - t0
            for k, v in {**stats, "loss": loss.item(), "grad_norm": grad_norm}.items():
                window[k] = window.get(k, 0.0) + v
            bar.update(1)
            if prog["step"] % cfg.log_every == 0:
                n = cfg.log_every
                means = {k: v / n for k, v in window.items()}
                log({"event": "train", "step": prog["step"], "time": prog["train_seconds"],
                     "lr": lr, **means})
                bar.set_postfix(nelbo=f"{means['nelbo']:.1f}", beta=f"{beta:.2f}", refresh=False)
                window = {}
            if cfg.eval_every and prog["step"] % cfg.eval_every == 0:
                last_eval, last_eval_step = evaluate(), prog["step"]
            if cfg.ckpt_every and prog["step"] % cfg.ckpt_every == 0:
                checkpoint()
        if prog["step"] == 0:
            raise UserError("the budget ended before the first step; give more --steps/--minutes")
        if last_eval_step != prog["step"]:
            last_eval = evaluate()
        checkpoint()
        model_dir = run_dir / "model"
        save_weights(model, model_dir, ema=ema)
        write_atomic(model_dir / "config.json", model.config.to_json() + "\n")
        log({"event": "end", "step": prog["step"], "time": prog["train_seconds"],
             "nan_skipped": prog["nan_skipped"], "parameters": n_params})
        plot_curves(records, run_dir / "curves.png")
    finally:
        bar.close()
        log_file.close()
    return TrainResult(model, ema, prog["step"], prog["train_seconds"], prog["nan_skipped"],
                       last_eval, run_dir)


# ----------------------------------------------------------------------------- evaluation, images


def iw_nll_per_image(model: ImageVAE, x: Tensor, *, k: int, chunk: int = 256,
                     progress: bool = False) -> Tensor:
    """Importance-weighted NLL (N,) in nats of each image of x (N, C, H, W) in [0, 1], 100
    images at a time (model in eval mode for the call); `iw_nll` summarises it."""
    model.eval()
    parts = []
    for i in tqdm(range(0, x.shape[0], 100), disable=not progress, unit="x100 images",
                  desc=f"IW-NLL K={k}", dynamic_ncols=True):
        parts.append(-iw_log_likelihood(model, x[i:i + 100], k=k, chunk=chunk))
    return torch.cat(parts)


def iw_nll(model: ImageVAE, x: Tensor, *, k: int, chunk: int = 256, progress: bool = False
           ) -> dict[str, float]:
    """Importance-weighted NLL of x (N, C, H, W) in [0, 1]: mean nats, its standard error,
    bits/dim and N (model in eval mode for the call)."""
    nll = iw_nll_per_image(model, x, k=k, chunk=chunk, progress=progress).double()  # (N,)
    dims = x[0].numel()
    mean = float(nll.mean())
    stderr = float(nll.std() / math.sqrt(len(nll))) if len(nll) > 1 else float("nan")
    return {"nll_nats": mean, "nll_stderr": stderr, "bpd": bits_per_dim(mean, dims),
            "k": k, "images": int(x.shape[0])}


def write_grid(images: Tensor, path: str | Path, *, nrow: int = 8, pad: int = 2) -> Path:
    """Save images (N, C, H, W) in [0, 1] (C = 1 or 3) as one PNG grid, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import image as mpimg

    x = images.detach().float().clamp(0, 1).cpu().numpy()
    n, c, h, w = x.shape
    rows = -(-n // nrow)
    grid = np.ones((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), np.float32)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h,
             pad + col * (w + pad):pad + col * (w + pad) + w] = x[i].transpose(1, 2, 0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        mpimg.imsave(tmp, grid[:, :, 0] if c == 1 else grid, cmap="gray", vmin=0, vmax=1,
                     format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@torch.no_grad()
def reconstruction_grid(model: ImageVAE, x: Tensor, path: str | Path, *, nrow: int = 8) -> Path:
    """Rows of originals (B, C, H, W) each followed by a row of their reconstructions (means)."""
    model.eval()
    rec = model.to_image(model(x).params, mode="mean")
    pairs = [t for i in range(0, x.shape[0], nrow) for t in (x[i:i + nrow], rec[i:i + nrow])]
    return write_grid(torch.cat(pairs), path, nrow=nrow)


@torch.no_grad()
def sample_grid(model: ImageVAE, path: str | Path, *, n: int = 64, temperature: float = 0.7,
                bn_iters: int = 100, bn_batch: int = 64, nrow: int = 8) -> Path:
    """Re-estimate BatchNorm statistics from `bn_iters` prior samples at `temperature` (in
    train mode), then write a grid of n samples (Bernoulli means / mixture samples)."""
    if bn_iters > 0:
        reestimate_batchnorm(model, lambda: model.sample(bn_batch, temperature=temperature),
                             iters=bn_iters)
    model.eval()
    images = model.to_image(model.sample(n, temperature=temperature), mode="mean")
    return write_grid(images, path, nrow=nrow)


def _model_dir(path: str | Path) -> Path:
    p = Path(path)
    return p / "model" if (p / "model" / "config.json").is_file() else p


def _binarized_of(model: ImageVAE) -> bool:
    return model.config.output == "bernoulli"


# ----------------------------------------------------------------------------- CLI


def _train_cmd(args: argparse.Namespace) -> int:
    overrides = {f.name: getattr(args, f.name) for f in fields(NVAETrainConfig)
                 if getattr(args, f.name, None) is not None}
    overrides["binarize"] = args.bits == "binary"
    overrides["progress"] = not args.quiet
    if args.no_ema:
        overrides["ema_decay"] = None
    cfg = replace(NVAETrainConfig(), **overrides)
    result = train(cfg, args.out, resume=args.resume)
    model = result.model
    x = _eval_set(replace(cfg, eval_images=32), next(model.parameters()).device)
    with result.ema.applied(model) if result.ema else nullcontext():
        reconstruction_grid(model, x, result.run_dir / "recon.png")
        sample_grid(model, result.run_dir / "samples.png", temperature=args.temperature,
                    bn_iters=args.bn_iters)
    print(f"trained {cfg.model} for {result.steps} steps ({result.train_seconds / 60:.1f} min), "
          f"eval -ELBO {result.eval_nelbo:.2f} nats, NaN-skipped steps {result.nan_skipped}; "
          f"wrote {result.run_dir}")
    return 0


def _eval_cmd(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    model = load_image_model(_model_dir(args.model_dir), device=device, weights=args.weights)
    images = load_images(args.data, "test", limit=args.limit)
    binar = _binarized_of(model)
    x = (fixed_binarization(images, seed=1234) if binar else to_unit(images, binarize=False))
    if tuple(x.shape[1:]) != (model.config.image_channels, model.config.image_size,
                              model.config.image_size):
        raise UserError(f"the data's images are {tuple(x.shape[1:])}, the model takes "
                        f"{model.config.image_channels}x{model.config.image_size}x"
                        f"{model.config.image_size}")
    torch.manual_seed(args.seed)
    res = iw_nll(model, x.to(device), k=args.k, chunk=args.chunk, progress=not args.quiet)
    print(f"IW-NLL (K={res['k']}, {res['images']} test images): {res['nll_nats']:.2f} "
          f"+- {res['nll_stderr']:.2f} nats, {res['bpd']:.4f} bits/dim")
    if args.json:
        write_json_atomic(args.json, res)
    return 0


def _sample_cmd(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    if args.n < 1 or args.temperature <= 0:
        raise UserError("--n must be >= 1 and --temperature > 0")
    model = load_image_model(_model_dir(args.model_dir), device=device, weights=args.weights)
    torch.manual_seed(args.seed)
    path = sample_grid(model, args.out, n=args.n, temperature=args.temperature,
                       bn_iters=args.bn_iters)
    print(f"wrote {args.n} samples at temperature {args.temperature} to {path}")
    return 0


def add_parser(subparsers: Any, *, name: str, help: str) -> argparse.ArgumentParser:
    """Register `genloom nvae train|eval|sample`."""
    p = subparsers.add_parser(name, help=help, description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="nvae_command", metavar="{train,eval,sample}",
                           parser_class=type(p), required=True)
    d = NVAETrainConfig()
    t = sub.add_parser("train", help="train an NVAE (or the plain VAE) on images")
    t.add_argument("--out", required=True, help="run directory to write")
    t.add_argument("--model", choices=MODEL_KINDS, default=d.model)
    t.add_argument("--preset", choices=sorted(PRESETS), default=d.preset)
    t.add_argument("--data", default=d.data,
                   help=f"fashion-mnist, {BUILTIN} (built-in) or a folder of idx files")
    t.add_argument("--bits", choices=("binary", "8"), default="binary",
                   help="binary: dynamically binarised, Bernoulli; 8: 8-bit, logistic mixture")
    t.add_argument("--steps", dest="max_steps", type=int)
    t.add_argument("--minutes", dest="max_minutes", type=float)
    t.add_argument("--batch-size", dest="batch_size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--limit", dest="train_limit", type=int, help="first N training images only")
    t.add_argument("--eval-images", dest="eval_images", type=int)
    t.add_argument("--eval-every", dest="eval_every", type=int)
    t.add_argument("--ckpt-every", dest="ckpt_every", type=int)
    t.add_argument("--reg-weight", dest="reg_weight", type=float)
    t.add_argument("--ema-decay", dest="ema_decay", type=float)
    t.add_argument("--no-ema", action="store_true")
    t.add_argument("--seed", type=int)
    t.add_argument("--device", default=d.device, help="cpu, cuda, cuda:N or auto")
    t.add_argument("--bf16", action="store_true", default=None, help="bf16 autocast (GPU)")
    t.add_argument("--temperature", type=float, default=0.7, help="of the final sample grid")
    t.add_argument("--bn-iters", dest="bn_iters", type=int, default=100,
                   help="BatchNorm re-estimation passes before sampling")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_train_cmd)

    for cmd, helptext in (("eval", "importance-weighted NLL on the test split"),
                          ("sample", "a PNG grid of samples")):
        s = sub.add_parser(cmd, help=helptext)
        s.add_argument("model_dir", help="a run directory or its model/ folder")
        s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
        s.add_argument("--weights", choices=("ema", "raw"), default="ema")
        s.add_argument("--seed", type=int, default=0)
        if cmd == "eval":
            s.add_argument("--data", default="fashion-mnist")
            s.add_argument("--k", type=int, default=100, help="importance samples per image")
            s.add_argument("--limit", type=int, help="first N test images only")
            s.add_argument("--chunk", type=int, default=256, help="rows per forward pass")
            s.add_argument("--json", help="also write the figures to this JSON file")
            s.add_argument("--quiet", action="store_true", help="no progress bar")
            s.set_defaults(func=_eval_cmd)
        else:
            s.add_argument("--out", required=True, help="PNG to write")
            s.add_argument("--n", type=int, default=64)
            s.add_argument("--temperature", type=float, default=0.7)
            s.add_argument("--bn-iters", dest="bn_iters", type=int, default=100)
            s.set_defaults(func=_sample_cmd)
    return p
