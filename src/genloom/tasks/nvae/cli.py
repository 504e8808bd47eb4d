"""`genloom nvae train|eval|sample`: NVAE (or the plain VAE baseline) on images.

train   fits a model (`genloom.tasks.nvae.train`) and writes the run directory --out, its
        model/, recon.png and samples.png.
eval    importance-weighted NLL with K samples on the test split, in nats and bits/dim;
        `--out FILE` (old spelling `--json FILE`) also writes the figures as JSON.
sample  a PNG grid of `--num-samples` (old spelling `--n`) samples at a temperature, written
        to `--out PNG`, after re-estimating BatchNorm statistics.

eval and sample read a model as `--model DIR` or as the positional DIR: a run directory or its
model/ folder. Every command takes `--threads` and `--quiet` (no progress bars on stderr).
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from genloom.cliargs import (add_common, add_config_flags, at_most, check_outputs, config_from_args, decay,
                             decay_rate, learning_rate, nonneg_float, nonneg_int, number, output_flag, positive_float,
                             positive_int, probability, rows_int, set_threads, temperature, unit_fraction)
from genloom.data.images import BUILTIN, eval_images
from genloom.errors import UserError
from genloom.files import write_json_atomic
from genloom.models.nvae import ImageVAE, load_image_model
from genloom.tasks.nvae.config import MODEL_KINDS, PRESETS, NVAETrainConfig, check, resolve_device
from genloom.tasks.nvae.evaluate import iw_nll
from genloom.tasks.nvae.sample import reconstruction_grid, sample_grid
from genloom.tasks.nvae.train import eval_set, train

BN_ITERS = number(int, lo=0, hi=1000)  # passes of BatchNorm re-estimation (each samples a batch: 1000 took 11 min)
DATA_HELP = f"fashion-mnist (Debian package), {BUILTIN} (built in) or a folder of idx files"
# NVAETrainConfig fields that are flags of the same name: help, checked type
TRAIN_FLAGS = {
    "batch_size": ("images per optimizer step", positive_int),
    "lr": ("peak Adamax learning rate", learning_rate),
    "lr_min": ("floor of the cosine lr decay", decay_rate),
    "lr_warmup": ("fraction of the budget with linear lr warm-up", probability),
    "weight_decay": ("Adamax weight decay", decay_rate),
    "kl_warmup": ("fraction of the budget over which the KL weight ramps to 1", unit_fraction),
    "kl_balance": ("KL balancing across latent groups during the warm-up", None),
    "reg_weight": ("spectral + BatchNorm regularisation weight (NVAE)", nonneg_float),
    "grad_clip": ("clip the gradient norm to this", positive_float),
    "ema_decay": ("decay of the weights' moving average", decay),
    "eval_images": ("test images for the periodic -ELBO", positive_int),
    "eval_every": ("steps between evaluations (0: at the end only)", nonneg_int),
    "ckpt_every": ("steps between checkpoints", nonneg_int),
    "log_every": ("steps per train line of metrics.jsonl", positive_int),
    "max_bad_steps": ("stop after this many non-finite steps in a row", positive_int),
    "bf16": ("bf16 autocast (GPU)", None),
}


def _model_dir(args: argparse.Namespace) -> Path:
    """The model directory named by --model or the positional: a run directory or its model/."""
    if args.model and args.model_dir and args.model != args.model_dir:
        raise UserError("name the model once: --model DIR or the positional DIR, not both")
    name = args.model or args.model_dir
    if name is None:
        raise UserError("name the model to read: --model DIR (a run directory or its model/ folder)")
    p = Path(name)
    return p / "model" if (p / "model" / "config.json").is_file() else p


def _load(args: argparse.Namespace) -> tuple[ImageVAE, torch.device]:
    check_outputs(args)  # eval and sample --out: before the model is read
    set_threads(args.threads)
    device = resolve_device(args.device)
    return load_image_model(_model_dir(args), device=device, weights=args.weights), device


def _train_cmd(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    cfg = config_from_args(NVAETrainConfig, args, binarize=args.bits == "binary",
                           progress=not args.quiet,
                           ema_decay=None if args.no_ema else args.ema_decay)
    check(cfg)  # a budget and sane sizes before anything is read or written
    at_most(args, "lr_min", "lr")
    result = train(cfg, args.out, resume=args.resume, force=args.force)  # checks --out first
    model = result.model
    x = eval_set(replace(cfg, eval_images=32), next(model.parameters()).device)
    with result.ema.applied(model) if result.ema else nullcontext():
        reconstruction_grid(model, x, result.run_dir / "recon.png")
        sample_grid(model, result.run_dir / "samples.png", temperature=args.temperature,
                    bn_iters=args.bn_iters, progress=not args.quiet)
    print(f"trained {cfg.model} for {result.steps} steps ({result.train_seconds / 60:.1f} min), "
          f"eval -ELBO {result.eval_nelbo:.2f} nats, NaN-skipped steps {result.nan_skipped}; "
          f"wrote {result.run_dir}")
    return 0


def _eval_cmd(args: argparse.Namespace) -> int:
    model, device = _load(args)
    c = model.config
    x = eval_images(args.data, binarize=c.output == "bernoulli", limit=args.limit)
    if tuple(x.shape[1:]) != (c.image_channels, c.image_size, c.image_size):
        raise UserError(f"the data's images are {tuple(x.shape[1:])}, the model takes "
                        f"{c.image_channels}x{c.image_size}x{c.image_size}")
    torch.manual_seed(args.seed)
    res = iw_nll(model, x.to(device), k=args.k, chunk=args.chunk, progress=not args.quiet)
    print(f"IW-NLL (K={res['k']}, {res['images']} test images): {res['nll_nats']:.2f} "
          f"+- {res['nll_stderr']:.2f} nats, {res['bpd']:.4f} bits/dim")
    if args.out:
        write_json_atomic(args.out, res, what="--out")
    return 0


def _sample_cmd(args: argparse.Namespace) -> int:
    model, _ = _load(args)
    torch.manual_seed(args.seed)
    path = sample_grid(model, args.out, n=args.n, temperature=args.temperature,
                       bn_iters=args.bn_iters, progress=not args.quiet)
    print(f"wrote {args.n} samples at temperature {args.temperature} to {path}")
    return 0


def _add_train(sub: Any) -> None:
    t = sub.add_parser("train", help="train an NVAE (or the plain VAE) on images")
    add_common(t, out="run directory to write", force=True, quiet=True, seed=NVAETrainConfig.seed)
    d = NVAETrainConfig()
    t.add_argument("--model-type", dest="model", choices=MODEL_KINDS, default=d.model,
                   help="nvae, or vae: the plain baseline sized to the NVAE preset's parameters")
    t.add_argument("--preset", choices=sorted(PRESETS), default=d.preset, help="NVAE architecture")
    t.add_argument("--data", default=d.data, help=DATA_HELP)
    t.add_argument("--bits", choices=("binary", "8"), default="binary",
                   help="binary: dynamically binarised, Bernoulli; 8: 8-bit, logistic mixture")
    t.add_argument("--steps", dest="max_steps", type=positive_int, metavar="N", help="optimizer steps (default: none; give --steps or --minutes)")
    t.add_argument("--minutes", dest="max_minutes", type=positive_float, metavar="MIN",
                   help="training minutes (evaluations excluded) (default: no time limit)")
    t.add_argument("--limit", dest="train_limit", type=positive_int, metavar="N", help="first N training images only (default: all)")
    add_config_flags(t, NVAETrainConfig, {k: h for k, (h, _) in TRAIN_FLAGS.items()},
                     types_={k: f for k, (_, f) in TRAIN_FLAGS.items() if f is not None})
    t.add_argument("--no-ema", action="store_true", help="keep no moving average of the weights")
    t.add_argument("--device", default=d.device, help="cpu, cuda, cuda:N or auto")
    t.add_argument("--temperature", type=temperature, default=0.7, help="of the final sample grid")
    t.add_argument("--bn-iters", dest="bn_iters", type=BN_ITERS, default=100,
                   help="BatchNorm re-estimation passes before sampling")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    t.set_defaults(func=_train_cmd)


def _add_reader(sub: Any, name: str, help_: str) -> argparse.ArgumentParser:
    s = sub.add_parser(name, help=help_)
    s.add_argument("model_dir", nargs="?", metavar="DIR", help="the model (same as --model)")
    add_common(s, model="a run directory or its model/ folder (default: none; this or the MODEL_DIR argument)",
               model_required=False, seed=0, quiet=True)
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    s.add_argument("--weights", choices=("ema", "raw"), default="ema", help="the EMA weights or the raw ones")
    return s


def add_parser(subparsers: Any, *, name: str, help: str) -> argparse.ArgumentParser:
    """Register `genloom nvae train|eval|sample`."""
    p = subparsers.add_parser(name, help=help, description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="nvae_command", metavar="{train,eval,sample}",
                           parser_class=type(p), required=True)
    _add_train(sub)
    e = _add_reader(sub, "eval", "importance-weighted NLL on the test split")
    e.add_argument("--data", default="fashion-mnist", help=DATA_HELP)
    e.add_argument("--k", type=number(int, lo=1, hi=100_000), default=100,
                   help="importance samples per image")
    e.add_argument("--limit", type=positive_int, help="first N test images only (default: all)")
    e.add_argument("--chunk", type=rows_int, default=256, help="rows per forward pass")
    output_flag(e, "--out", "--json", dest="out",
                help="also write the figures to this JSON file (default: printed only)")
    e.set_defaults(func=_eval_cmd)
    s = _add_reader(sub, "sample", "a PNG grid of samples")
    output_flag(s, "--out", required=True, metavar="PNG", help="PNG to write")
    s.add_argument("--num-samples", "--n", dest="n", type=rows_int, default=64, help="samples in the grid")
    s.add_argument("--temperature", type=temperature, default=0.7, help="scales the prior's standard deviations")
    s.add_argument("--bn-iters", dest="bn_iters", type=BN_ITERS, default=100,
                   help="BatchNorm re-estimation passes before sampling")
    s.set_defaults(func=_sample_cmd)
    return p
