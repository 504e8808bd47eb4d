"""The training loop every task uses: one explicit function, `fit`, in the manner of nanoGPT's
train.py (STYLE.md item 9). What varies between tasks comes in as two functions:

    loss_fn(model, batch) -> (loss, n_tokens)   # loss: mean over the batch's n_tokens (a scalar)
    eval_fn(model) -> {"loss": ..., "rouge_l": ...}   # any numbers; one of them is `config.metric`

(`loss_fn` may return a third item, a dict of floats, logged token-weighted in the "train" lines
beside the loss) and, where a task needs them, a few hooks: `optimizer_fn(params)` builds another
optimizer than AdamW; `lr_fn(fraction)` and `on_step(fraction)` follow the fraction of the budget
used, the larger of steps / total steps and minutes / max_minutes, so a schedule (or a KL
warm-up) fits a wall-time budget as well as a step budget; `nonfinite="skip"` skips a step whose
loss or gradient is not finite instead of stopping the run.

and what the loop does is all visible below: AdamW with linear warm-up then cosine / linear
decay; gradient accumulation over `accum_steps` micro-batches; optional bf16 autocast; clipping;
an EMA update after each optimizer step; evaluation every `eval_every` steps (or at each epoch's
end) under the EMA weights; early stopping on a dev metric with patience, the best checkpoint
kept; limits on steps, epochs and minutes; a tqdm bar with loss and tokens/s; `metrics.jsonl`,
`curves.png` and the resolved `config.json` in the run directory; a NaN guard (stop, or skip
the step); `resume=True`.

Loss weighting. Each micro-batch contributes loss * n_tokens to the gradient; after the
backward passes (and DDP's all-reduce, which averages over ranks) the gradients are scaled by
world_size / (tokens of the whole step over all ranks). The step's gradient is therefore that of
the token-mean loss of everything the step saw, however it was split into micro-batches or ranks:
two ranks with batch b, one process with 2 micro-batches of b, and one process with batch 2b
take the same step (tests/train/test_ddp.py, tests/train/test_trainer.py).

DDP: run the same script under `torchrun --nproc_per_node N`; `fit` joins the process group
(gloo on CPU, nccl on GPU), wraps the model in DistributedDataParallel, and only rank 0 writes
files, evaluates and shows the bar (its decisions are broadcast). `loss_fn` must call the model
it is given (its forward), so DDP's gradient hooks fire.

Exact resume: checkpoints hold model, EMA, optimizer, scheduler, data position, every rank's RNG
states and the loop's counters, so a run killed and resumed retraces the uninterrupted run bit for
bit on CPU when its batches come from `genloom.train.data.Loader` (a plain DataLoader is
fast-forwarded by drawing and dropping batches: exact only if its order is deterministic).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm

from genloom import __version__
from genloom.errors import UserError
from genloom.train import distributed
from genloom.files import write_json_atomic
from genloom.train.checkpoint import (latest_checkpoint, list_checkpoints, load_checkpoint,
                                      rng_state, save_checkpoint, set_rng_state)
from genloom.train.ema import EMA
from genloom.train.loop_io import BatchStream, MetricsLog, to_device

LossFn = Callable[[nn.Module, Any], tuple]  # (loss, n_tokens) or (loss, n_tokens, {stat: float})
EvalFn = Callable[[nn.Module], dict[str, float]]
OptimizerFn = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
SCHEDULES = ("cosine", "linear", "constant")
NONFINITE = ("raise", "skip")


@dataclass
class TrainConfig:
    lr: float = 3e-4  # peak learning rate of AdamW
    weight_decay: float = 0.01  # decoupled weight decay, on tensors with dim >= 2 only
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    eps: float = 1e-8  # AdamW epsilon
    warmup_steps: int = 0  # linear warm-up over this many optimizer steps
    schedule: str = "cosine"  # after warm-up: "cosine", "linear" or "constant"
    min_lr_ratio: float = 0.0  # decay ends at lr * min_lr_ratio
    max_steps: int | None = None  # stop after this many optimizer steps
    max_epochs: int | None = None  # stop after this many passes over the batches
    max_minutes: float | None = None  # stop once this much training time has passed
    accum_steps: int = 1  # micro-batches per optimizer step
    grad_clip: float | None = 1.0  # clip the global gradient norm to this (None: no clipping)
    bf16: bool = False  # bf16 autocast for the forward pass
    ema_decay: float | None = None  # keep an EMA of the weights with this decay (None: none)
    ema_bias_correction: bool = False  # bert4keras-style bias correction of the EMA
    ema_warmup: bool = False  # timm-style warm-up of the EMA decay
    eval_every: int = 0  # optimizer steps between evaluations; 0: at the end of every epoch
    eval_with_ema: bool = True  # evaluate under the EMA weights when there is an EMA
    metric: str = "loss"  # the eval_fn key that picks the best checkpoint and stops early
    mode: str = "min"  # "min" or "max": which way `metric` improves
    patience: int | None = None  # stop after this many evaluations without improvement
    log_every: int = 10  # optimizer steps per "train" line of metrics.jsonl (mean loss)
    ckpt_every: int = 0  # optimizer steps between checkpoints (0: at evaluations and the end)
    keep_last: int = 2  # checkpoints kept besides the best one
    restore_best: bool = True  # finish with the best checkpoint's weights (and EMA) loaded
    seed: int = 0  # seeds torch / numpy / random (plus the rank) when the loop starts
    device: str | None = None  # "cpu" / "cuda"; default: cuda when available
    progress: bool = True  # show the tqdm bar (rank 0)
    nonfinite: str = "raise"  # a step with a non-finite loss or gradient: "raise" (stop) or "skip" it
    max_skipped_in_row: int = 20  # with nonfinite="skip": stop after this many skipped steps in a row
    exclude_eval_time: bool = False  # max_minutes and the logged times leave out evaluations and checkpoints


@dataclass
class Progress:
    """The loop's counters; saved in every checkpoint."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # epochs completed
    batches_in_epoch: int = 0  # batches of the current epoch consumed (plain iterables)
    elapsed_s: float = 0.0  # training seconds over all launches
    tokens: float = 0.0  # tokens trained on (all ranks)
    window_loss: float = 0.0  # loss * tokens since the last "train" log line
    window_tokens: float = 0.0  # tokens since the last "train" log line
    best_step: int | None = None  # step of the best evaluation
    best_value: float | None = None  # its metric value
    evals_since_best: int = 0  # evaluations without improvement since then
    last_eval_step: int = -1  # step of the last evaluation
    last_ckpt_step: int = -1  # step of the last checkpoint
    skipped: int = 0  # steps skipped for a non-finite loss or gradient (nonfinite="skip")
    skipped_in_row: int = 0  # of them, since the last step taken
    window_stats: dict[str, float] = field(default_factory=dict)  # loss_fn's stats * tokens (rank 0)
    window_stat_tokens: float = 0.0  # this rank's tokens behind window_stats


@dataclass
class FitResult:
    step: int  # optimizer steps taken
    epochs: int  # epochs completed
    stop_reason: str  # "max_steps", "max_epochs", "max_minutes" or "early_stopping"
    best_step: int | None  # step of the best evaluation (None without eval_fn)
    best_value: float | None  # its metric value
    last_metrics: dict[str, float] = field(default_factory=dict)  # the last evaluation
    ema: EMA | None = None  # the EMA (best one when restore_best), for save_weights
    run_dir: Path = Path(".")  # where metrics.jsonl, curves.png, config.json, checkpoints are
    skipped_steps: int = 0  # steps skipped for a non-finite loss or gradient
    elapsed_s: float = 0.0  # training seconds over all launches (see exclude_eval_time)


def lr_factor(step: int, *, warmup: int, total: int | None, schedule: str, floor: float) -> float:
    """Multiplier of the peak lr for optimizer step `step` (0-based): linear warm-up to 1 over
    `warmup` steps, then `schedule` down to `floor` at step `total`."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total is None:
        return 1.0
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - (1.0 - floor) * p
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * p))


def _clock(seconds: float) -> str:
    """A time budget's remainder as tqdm writes times: "1:02:03" or "02:03" (never negative)."""
    m, sec = divmod(int(max(seconds, 0.0)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


def budget_fraction(step: int, elapsed_s: float, *, total: int | None, max_minutes: float | None) -> float:
    """The fraction of the run's budget used, in [0, 1]: the larger of `step / total` and
    `elapsed_s / (60 max_minutes)` over the limits that are set (0 when neither is)."""
    used = [step / total] if total else []
    if max_minutes:
        used.append(elapsed_s / (60.0 * max_minutes))
    return min(1.0, max(used, default=0.0))


def _total_steps(cfg: TrainConfig, batches: Iterable) -> int | None:
    per_epoch = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
    from_epochs = (math.ceil(cfg.max_epochs * per_epoch / cfg.accum_steps)
                   if cfg.max_epochs is not None and per_epoch is not None else None)
    known = [n for n in (cfg.max_steps, from_epochs) if n is not None]
    return min(known) if known else None


def _check(cfg: TrainConfig, total: int | None, *, has_eval: bool, has_lr_fn: bool, has_on_step: bool) -> None:
    if cfg.max_steps is None and cfg.max_epochs is None and cfg.max_minutes is None:
        raise UserError("set max_steps, max_epochs or max_minutes: the run would never stop")
    if (cfg.max_steps is not None and cfg.max_steps < 1 or cfg.max_epochs is not None and cfg.max_epochs < 1
            or cfg.max_minutes is not None and not 0 < cfg.max_minutes < math.inf):  # NaN too
        raise UserError(f"a budget must be positive and finite (a run of none saves no model, a NaN or infinite one "
                        f"never stops): max_steps={cfg.max_steps}, max_epochs={cfg.max_epochs}, "
                        f"max_minutes={cfg.max_minutes}")
    if cfg.schedule not in SCHEDULES:
        raise UserError(f"schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")
    if cfg.nonfinite not in NONFINITE:
        raise UserError(f"nonfinite must be one of {NONFINITE}, got {cfg.nonfinite!r}")
    if cfg.max_skipped_in_row < 1:
        raise UserError("max_skipped_in_row must be at least 1")
    if (has_lr_fn or has_on_step) and total is None and not cfg.max_minutes:
        raise UserError("lr_fn / on_step need max_steps, max_minutes (or max_epochs over data with "
                        "a length) to know the fraction of the budget used")
    if cfg.schedule != "constant" and total is None and not has_lr_fn:
        raise UserError(f"a {cfg.schedule} schedule needs max_steps (or max_epochs over data with"
                        " a length) to know where it ends")
    if cfg.mode not in ("min", "max"):
        raise UserError(f"mode must be 'min' or 'max', got {cfg.mode!r}")
    if cfg.accum_steps < 1 or cfg.log_every < 1 or cfg.keep_last < 1:
        raise UserError("accum_steps, log_every and keep_last must be at least 1")
    if cfg.patience is not None and not has_eval:
        raise UserError("patience (early stopping) needs an eval_fn")


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable,
    *,
    config: TrainConfig,
    run_dir: str | Path,
    eval_fn: EvalFn | None = None,
    task_config: dict[str, Any] | None = None,
    resume: bool = False,
    optimizer_fn: OptimizerFn | None = None,
    lr_fn: Callable[[float], float] | None = None,
    on_step: Callable[[float], None] | None = None,
) -> FitResult:
    """Train `model` on `batches` with `loss_fn`; see the module docstring for what happens.

    Args:
        model: the model (moved to the run's device; wrapped in DDP under torchrun).
        loss_fn: (model, batch) -> (mean loss over the batch's tokens, number of tokens).
        batches: a `genloom.train.data.Loader` (exact resume), a DataLoader or any re-iterable.
        config: the loop's settings.
        run_dir: where config.json, metrics.jsonl, curves.png and checkpoints/ go.
        eval_fn: model -> metrics dict, run on rank 0 under no_grad and eval mode.
        task_config: the task's own resolved settings, stored in config.json beside `config`.
        resume: continue from the latest checkpoint in run_dir.
        optimizer_fn: builds the optimizer from the trainable parameters (its lr is the peak);
            default AdamW from lr, betas, eps and weight_decay (none on 1-d tensors).
        lr_fn: the multiplier of the optimizer's lr at a budget fraction in [0, 1]
            (`budget_fraction`), set before every step; it replaces warmup_steps / schedule.
        on_step: called with the same fraction before every step (e.g. a KL warm-up).

    Returns:
        A FitResult; the model holds the best checkpoint's weights when `restore_best`.

    Raises:
        UserError: bad settings, resume without / fresh run over checkpoints, a non-finite loss
            (with nonfinite="raise", or max_skipped_in_row of them in a row with "skip").
    """
    cfg, run_dir = config, Path(run_dir)
    total = _total_steps(cfg, batches)
    _check(cfg, total, has_eval=eval_fn is not None, has_lr_fn=lr_fn is not None,
           has_on_step=on_step is not None)
    info = distributed.setup(cfg.device)
    main, world = info.is_main, info.world_size
    ckpt_dir = run_dir / "checkpoints"
    latest = latest_checkpoint(ckpt_dir)
    if resume and latest is None:
        raise UserError(f"nothing to resume: no checkpoint in {ckpt_dir}")
    if not resume and list_checkpoints(ckpt_dir):
        raise UserError(f"{run_dir} already holds checkpoints: continue them with --resume (resume=True), "
                        "or choose another --out")

    # --- model, optimizer, schedule, EMA -------------------------------------------------------
    torch.manual_seed(cfg.seed + info.rank)
    np.random.seed(cfg.seed + info.rank)
    random.seed(cfg.seed + info.rank)
    model.to(info.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = optimizer_fn(params) if optimizer_fn is not None else torch.optim.AdamW(
        [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
        lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    scheduler = LambdaLR(optimizer, (lambda s: 1.0) if lr_fn is not None else lambda s: lr_factor(
        s, warmup=cfg.warmup_steps, total=total, schedule=cfg.schedule, floor=cfg.min_lr_ratio))
    ema = (EMA(model, cfg.ema_decay, bias_correction=cfg.ema_bias_correction, warmup=cfg.ema_warmup)
           if cfg.ema_decay is not None else None)
    prog = Progress()
    stream = BatchStream(batches, epoch=prog.epoch, consumed=prog.batches_in_epoch)
    if resume:
        ckpt = load_checkpoint(latest, model=model)  # type: ignore[arg-type]
        st = ckpt["state"]
        optimizer.load_state_dict(st["optimizer"])
        scheduler.load_state_dict(st["scheduler"])
        if ema is not None and st["ema"] is not None:
            ema.load_state_dict(st["ema"])
        prog = Progress(**st["progress"])
        stream.load(st["data"])
        set_rng_state(st["rng"][info.rank] if len(st["rng"]) == world else st["rng"][0])
    net = (DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda"
                                   else None) if info.distributed else model)

    # --- run directory -------------------------------------------------------------------------
    if main:
        write_json_atomic(run_dir / "config.json", {
            "train": asdict(cfg), "task": task_config or {}, "world_size": world,
            "device": str(info.device), "total_steps": total, "resumed_from": prog.step if resume else None,
            "versions": {"genloom": __version__, "torch": torch.__version__}})
    log = MetricsLog(run_dir, enabled=main, keep_until=prog.step if resume else None)
    bar = tqdm(total=total, initial=prog.step, disable=not (main and cfg.progress), unit="step",
               dynamic_ncols=True)
    better = (lambda a, b: a < b) if cfg.mode == "min" else (lambda a, b: a > b)
    last_metrics: dict[str, float] = {}

    def off_clock(t0: float) -> None:
        """With exclude_eval_time, the seconds since t0 (an evaluation, a checkpoint) are not
        training time."""
        nonlocal started
        if cfg.exclude_eval_time:
            started += time.perf_counter() - t0

    def evaluate() -> bool:
        """Run eval_fn on rank 0 (RNG states untouched), log, track the best; True = improved."""
        nonlocal last_metrics
        t0 = time.perf_counter()
        flags = torch.zeros(2, dtype=torch.float64, device=info.device)
        if main:
            rng = rng_state()
            model.eval()
            with torch.no_grad(), (ema.applied(model) if ema and cfg.eval_with_ema else nullcontext()):
                metrics = {k: float(v) for k, v in eval_fn(model).items()}  # type: ignore[misc]
            model.train()
            set_rng_state(rng)
            if cfg.metric not in metrics:
                raise UserError(f"eval_fn returned {sorted(metrics)}, no {cfg.metric!r} to select on")
            value = metrics[cfg.metric]
            flags[0] = float(math.isfinite(value) and (prog.best_value is None or better(value, prog.best_value)))
            flags[1] = value
            last_metrics = metrics
            log.write({"event": "eval", "step": prog.step, "epoch": stream.completed_epochs(),
                       **metrics, "improved": bool(flags[0]), "time": prog.elapsed_s})
            log.plot(every_s=30.0)
        distributed.broadcast(flags)
        prog.last_eval_step = prog.step
        if flags[0]:
            prog.best_step, prog.best_value, prog.evals_since_best = prog.step, float(flags[1]), 0
        else:
            prog.evals_since_best += 1
        off_clock(t0)
        return bool(flags[0])

    def checkpoint() -> None:
        """Every rank's RNG to rank 0, which writes the checkpoint; all wait for it."""
        t0 = time.perf_counter()
        prog.batches_in_epoch, prog.epoch = stream.consumed, stream.epoch
        rngs = distributed.gather_objects(rng_state())
        if main:
            state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "ema": ema.state_dict() if ema else None, "data": stream.state(),
                     "rng": rngs, "progress": asdict(prog)}
            protect = {prog.best_step} if prog.best_step is not None else set()
            save_checkpoint(ckpt_dir, prog.step, model=model, state=state,
                            keep_last=cfg.keep_last, protect=protect)
        prog.last_ckpt_step = prog.step
        distributed.barrier()
        off_clock(t0)

    # --- the loop ------------------------------------------------------------------------------
    stop_reason = ""
    started = time.perf_counter() - prog.elapsed_s
    window_start = time.perf_counter()
    try:
        model.train()
        while True:
            if cfg.max_steps is not None and prog.step >= cfg.max_steps:
                stop_reason = "max_steps"
                break
            fraction = budget_fraction(prog.step, prog.elapsed_s, total=total, max_minutes=cfg.max_minutes)
            if lr_fn is not None:
                for group in optimizer.param_groups:
                    group["lr"] = group["initial_lr"] * lr_fn(fraction)
            if on_step is not None:
                on_step(fraction)
            epochs_before = stream.completed_epochs()
            micro = []
            while len(micro) < cfg.accum_steps:
                if cfg.max_epochs is not None and stream.completed_epochs() >= cfg.max_epochs:
                    break
                batch = stream.next()
                if batch is not None:
                    micro.append(batch)
            if not micro:
                stop_reason = "max_epochs"
                break

            # forward / backward over the micro-batches; DDP syncs gradients on the last one
            loss_sum = torch.zeros((), dtype=torch.float64, device=info.device)
            tokens = 0.0
            stats: dict[str, float] = {}  # loss_fn's statistics * tokens, this rank
            for i, batch in enumerate(micro):
                sync = i == len(micro) - 1
                with net.no_sync() if info.distributed and not sync else nullcontext():
                    with torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                        out = loss_fn(net, to_device(batch, info.device))
                    loss, n = out[0], float(out[1])
                    (loss.float() * n).backward()
                loss_sum += loss.detach().double() * n
                tokens += n
                for k, v in (out[2] if len(out) > 2 else {}).items():
                    stats[k] = stats.get(k, 0.0) + float(v) * n
            out_of_time = cfg.max_minutes is not None and (
                time.perf_counter() - started) / 60 >= cfg.max_minutes
            totals = torch.stack([loss_sum, torch.tensor(tokens, dtype=torch.float64, device=info.device),
                                  torch.tensor(float(out_of_time), dtype=torch.float64, device=info.device)])
            distributed.all_reduce_sum(totals)  # (3,): loss*tokens, tokens, ranks out of time
            step_loss, step_tokens = float(totals[0] / totals[1]), float(totals[1])
            if step_tokens <= 0:
                raise UserError(f"loss_fn reported no tokens at step {prog.step + 1}")
            grad_norm = math.nan
            if math.isfinite(step_loss):
                for p in params:
                    if p.grad is not None:
                        p.grad.mul_(world / step_tokens)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(
                    params, cfg.grad_clip if cfg.grad_clip is not None else float("inf")))
            if not math.isfinite(grad_norm):  # the NaN guard: stop, or skip the step
                what = f"gradient norm is {grad_norm}" if math.isfinite(step_loss) else f"loss is {step_loss}"
                where = f"at step {prog.step + 1}; stopped, last good checkpoint: " \
                        f"{latest_checkpoint(ckpt_dir) or 'none yet'}"
                if cfg.nonfinite == "raise":
                    raise UserError(f"{what} {where}")
                optimizer.zero_grad(set_to_none=True)
                prog.skipped += 1
                prog.skipped_in_row += 1
                prog.elapsed_s = time.perf_counter() - started
                log.write({"event": "skipped", "step": prog.step, "loss": step_loss,
                           "grad_norm": grad_norm, "time": prog.elapsed_s})
                if prog.skipped_in_row >= cfg.max_skipped_in_row:
                    raise UserError(f"{prog.skipped_in_row} non-finite steps in a row ({what}) {where}")
                if totals[2] > 0:
                    stop_reason = "max_minutes"
                    break
                continue
            prog.skipped_in_row = 0
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(model)
            prog.step += 1
            prog.tokens += step_tokens
            prog.window_loss += step_loss * step_tokens
            prog.window_tokens += step_tokens
            for k, v in stats.items():
                prog.window_stats[k] = prog.window_stats.get(k, 0.0) + v
            prog.window_stat_tokens += tokens
            prog.elapsed_s = time.perf_counter() - started

            if prog.step % cfg.log_every == 0:
                now = time.perf_counter()
                tok_s = prog.window_tokens / max(now - window_start, 1e-9)
                means = {k: v / prog.window_stat_tokens for k, v in prog.window_stats.items()}
                log.write({"event": "train", "step": prog.step, "epoch": stream.completed_epochs(),
                           **means, "loss": prog.window_loss / prog.window_tokens, "lr": lr,
                           "grad_norm": grad_norm, "tokens_per_s": tok_s, "time": prog.elapsed_s})
                left = {} if not cfg.max_minutes else {"left": _clock(60.0 * cfg.max_minutes - prog.elapsed_s)}
                bar.set_postfix(loss=f"{prog.window_loss / prog.window_tokens:.4f}",
                                tok_s=f"{tok_s:,.0f}", lr=f"{lr:.2e}", **left, refresh=False)
                prog.window_loss = prog.window_tokens = prog.window_stat_tokens = 0.0
                prog.window_stats = {}
                window_start = now
            bar.update(1)

            epoch_ended = stream.completed_epochs() > epochs_before
            if eval_fn is not None and (cfg.eval_every > 0 and prog.step % cfg.eval_every == 0
                                        or cfg.eval_every == 0 and epoch_ended):
                improved = evaluate()
                if improved or cfg.ckpt_every == 0:
                    checkpoint()
                if cfg.patience is not None and prog.evals_since_best >= cfg.patience:
                    stop_reason = "early_stopping"
                    break
            if cfg.ckpt_every > 0 and prog.step % cfg.ckpt_every == 0 and prog.last_ckpt_step != prog.step:
                checkpoint()
            if totals[2] > 0:
                stop_reason = "max_minutes"
                break

        # --- the end: last evaluation and checkpoint, best weights back -----------------------
        if eval_fn is not None and prog.last_eval_step != prog.step and prog.step > 0:
            evaluate()
        if prog.step > 0 and prog.last_ckpt_step != prog.step:
            checkpoint()
        if cfg.restore_best and prog.best_step is not None and prog.best_step != prog.step:
            best = load_checkpoint(ckpt_dir / f"step-{prog.best_step:08d}", model=model)
            if ema is not None and best["state"]["ema"] is not None:
                ema.load_state_dict(best["state"]["ema"])
        log.write({"event": "end", "step": prog.step, "epoch": stream.completed_epochs(),
                   "stop_reason": stop_reason, "best_step": prog.best_step,
                   "best_value": prog.best_value, "time": prog.elapsed_s, "skipped_steps": prog.skipped})
        log.plot()
    finally:
        bar.close()
        log.close()
    return FitResult(step=prog.step, epochs=stream.completed_epochs(), stop_reason=stop_reason,
                     best_step=prog.best_step, best_value=prog.best_value,
                     last_metrics=last_metrics, ema=ema, run_dir=run_dir, skipped_steps=prog.skipped,
                     elapsed_s=prog.elapsed_s)
