"""Exponential moving average (EMA) of a model's weights, the "权重滑动平均" of 让Keras更酷一些.

After each optimizer step the shadow weights move towards the live ones,

    shadow <- d * shadow + (1 - d) * theta        (torch._foreach_lerp_, as AveragedModel does)

which never changes the optimizer's trajectory; evaluation swaps the averaged weights in with
`with ema.applied(model): ...` and the raw ones are restored after, even on an exception.

Three flavours of the decay d:
- plain (default): the shadow starts as a copy of the weights at construction, d constant. This is
  `AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(d))` after its first (copying) update.
- `bias_correction=True` (bert4keras `apply_ema_weights(bias_correction=True)`): the shadow starts
  at zero and the averaged weights are shadow / (1 - d^t) after t updates (Adam's correction), so
  early averages are not pulled towards zero.
- `warmup=True` (timm `ModelEmaV3(use_warmup=True)`): update t uses
  d_t = min(d, 1 - (1 + (t - 1) / gamma) ** -power), d_1 = 0, so the average forgets the
  initial weights quickly and reaches d after a few hundred steps.

Buffers (BatchNorm running statistics): with `buffers="average"` (default, as timm and bert4keras,
whose `model.weights` include BN's moving statistics) floating-point buffers are averaged like
parameters; with `buffers="copy"` they are copied from the live model at every update. Integer
buffers (`num_batches_tracked`) are always copied.

Tied parameters are averaged once (`named_parameters()` skips duplicates).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from genloom.errors import UserError

BUFFER_MODES = ("average", "copy")


class EMA:
    """Shadow weights of `model`, updated by `update(model)` after each optimizer step.

    Args:
        model: the model whose parameters and buffers are averaged (its unwrapped module under DDP).
        decay: d in [0, 1); 0.999 averages over roughly the last 1,000 steps.
        bias_correction: bert4keras-style zero start divided by 1 - d^t when applied.
        warmup: timm-style decay warm-up (exclusive with `bias_correction`).
        warmup_gamma, warmup_power: the warm-up schedule 1 - (1 + t / gamma) ** -power.
        buffers: "average" or "copy" for floating-point buffers (module docstring).
    """

    def __init__(
        self,
        model: nn.Module,
        decay: float,
        *,
        bias_correction: bool = False,
        warmup: bool = False,
        warmup_gamma: float = 1.0,
        warmup_power: float = 2 / 3,
        buffers: str = "average",
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise UserError(f"EMA decay must be in [0, 1), got {decay}")
        if bias_correction and warmup:
            raise UserError("EMA: choose bias correction or decay warm-up, not both")
        if buffers not in BUFFER_MODES:
            raise UserError(f"EMA buffers must be one of {BUFFER_MODES}, got {buffers!r}")
        self.decay = decay
        self.bias_correction = bias_correction
        self.warmup = warmup
        self.warmup_gamma = warmup_gamma
        self.warmup_power = warmup_power
        self.buffers = buffers
        self.num_updates = 0
        self._averaged, self._copied = self._split_names(model)
        self.shadow: dict[str, Tensor] = {}
        for name, t in self._tensors(model).items():
            zero = bias_correction and name in self._averaged
            self.shadow[name] = (torch.zeros_like(t) if zero else t).detach().clone()

    # -- which tensors ---------------------------------------------------------------------------
    @staticmethod
    def _tensors(model: nn.Module) -> dict[str, Tensor]:
        """Parameters (deduplicated) then buffers, by qualified name."""
        out = {n: p for n, p in model.named_parameters()}
        out.update({n: b for n, b in model.named_buffers()})
        return out

    def _split_names(self, model: nn.Module) -> tuple[list[str], list[str]]:
        """(names averaged, names copied): integer tensors and, with buffers="copy", buffers
        are copied."""
        params = {n for n, _ in model.named_parameters()}
        avg, copy = [], []
        for name, t in self._tensors(model).items():
            if not t.is_floating_point() or (name not in params and self.buffers == "copy"):
                copy.append(name)
            else:
                avg.append(name)
        return avg, copy

    def _check(self, model: nn.Module) -> dict[str, Tensor]:
        live = self._tensors(model)
        if live.keys() != self.shadow.keys():
            missing = sorted(set(live) ^ set(self.shadow))[:3]
            raise UserError(f"EMA does not match this model (differing names: {missing})")
        return live

    # -- update ----------------------------------------------------------------------------------
    def current_decay(self) -> float:
        """The decay the next update will use (warm-up aware)."""
        if not self.warmup:
            return self.decay
        t = self.num_updates  # updates so far; the next one is number t + 1
        if t <= 0:
            return 0.0
        return min(self.decay, 1.0 - (1.0 + t / self.warmup_gamma) ** -self.warmup_power)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow towards the live weights of `model` (call after optimizer.step())."""
        live = self._check(model)
        d = self.current_decay()
        if self._averaged:
            shadow = [self.shadow[n] for n in self._averaged]
            current = [live[n].detach().to(self.shadow[n].device) for n in self._averaged]
            torch._foreach_lerp_(shadow, current, 1.0 - d)
        for n in self._copied:
            self.shadow[n].copy_(live[n].detach())
        self.num_updates += 1

    # -- use -------------------------------------------------------------------------------------
    @torch.no_grad()
    def averaged(self) -> dict[str, Tensor]:
        """The averaged weights by name (bias-corrected when asked); new tensors."""
        if not self.bias_correction:
            return {n: t.clone() for n, t in self.shadow.items()}
        if self.num_updates == 0:
            raise UserError("EMA with bias correction has no average before its first update")
        corr = 1.0 - self.decay**self.num_updates
        avg = set(self._averaged)
        return {n: (t / corr if n in avg else t.clone()) for n, t in self.shadow.items()}

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's weights and buffers with the averaged ones (no way back; see
        `applied`). Copied buffers get their value at the last update."""
        live = self._check(model)
        for name, value in self.averaged().items():
            live[name].copy_(value)

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """Swap the averaged weights into `model` for the block; restore the raw ones after.

        The raw weights are restored bit for bit, also when the block raises.
        """
        live = self._check(model)
        with torch.no_grad():
            backup = {n: t.detach().clone() for n, t in live.items()}
        try:
            self.copy_to(model)
            yield model
        finally:
            with torch.no_grad():
                for n, t in live.items():
                    t.copy_(backup[n])

    # -- persistence -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Shadow tensors plus the counters; plain types and tensors (checkpoint.py stores it)."""
        return {
            "decay": self.decay,
            "bias_correction": self.bias_correction,
            "warmup": self.warmup,
            "buffers": self.buffers,
            "num_updates": self.num_updates,
            "shadow": {n: t.detach().clone() for n, t in self.shadow.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`; the tensor names must match this EMA's."""
        shadow = state["shadow"]
        if shadow.keys() != self.shadow.keys():
            raise UserError("EMA state does not match this model's parameter names")
        for flag in ("bias_correction", "warmup", "buffers"):
            if state[flag] != getattr(self, flag):
                raise UserError(f"EMA state was saved with {flag}={state[flag]!r}, "
                                f"this EMA has {getattr(self, flag)!r}")
        with torch.no_grad():
            for n, t in shadow.items():
                self.shadow[n].copy_(t)
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
