"""Conditional Layer Normalization (CLN) and the one way a condition enters a model.

Letters: B batch rows, T positions, C normalised width, E condition width (cond_dim),
M width of the optional hidden projection of the condition, K number of labels.

Su Jianlin's "基于Conditional Layer Normalization的条件文本生成" (kexue.fm 7124) makes a language
model conditional by letting every LayerNorm's gain and shift depend on a fixed-length condition
vector c:

    out = (gamma + W_g h(c)) * (x - mean) / std + (beta + W_b h(c))

with W_g and W_b zero-initialised, so a model is exactly the unconditioned one until training
moves them. h is the identity, or (bert4keras's `hidden_units` / `hidden_activation`) a dense
layer without bias and an activation projecting c to M dims first. As in bert4keras each norm
has its own projections and the shift is conditional only where the norm has a shift, so the
RMSNorm counterpart (Llama-style, no shift) modulates its gain only. The condition is one vector
per row, broadcast over the positions.

`ConditionInput` is the single entry point of a condition: label ids (B,) go through a learned
K x E embedding (a class-conditioned LM, the post's sentiment example), and float vectors (B, E)
pass through unchanged (the post's image-caption variant feeds an image vector; any sentence
vector works the same way). A model holds the result, one (B, E) tensor, in its decoding state.

Submodules of this file whose initialisation is their own are named `cond_*`; a model that
re-initialises its parameters by name (the Transformer does) leaves those alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genloom.errors import UserError


def _identity(x: Tensor) -> Tensor:
    return x


# activation of the hidden projection h(c) (bert4keras's hidden_activation, default linear)
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "linear": _identity, "relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh,
}


class _Modulation(nn.Module):
    """Zero-initialised maps from the condition to a gain offset (and a shift offset)."""

    def __init__(self, dim: int, cond_dim: int, *, hidden: int | None, activation: str, shift: bool) -> None:
        super().__init__()
        if cond_dim < 1 or (hidden is not None and hidden < 1):
            raise ValueError(f"cond_dim and hidden must be >= 1, got {cond_dim} and {hidden}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        self.act = ACTIVATIONS[activation]
        self.hidden = nn.Linear(cond_dim, hidden, bias=False) if hidden else None
        width = hidden or cond_dim
        self.gain = nn.Linear(width, dim, bias=False)
        self.shift = nn.Linear(width, dim, bias=False) if shift else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Glorot-uniform hidden projection (bert4keras's default); zero gain and shift maps."""
        if self.hidden is not None:
            nn.init.xavier_uniform_(self.hidden.weight)
        nn.init.zeros_(self.gain.weight)
        if self.shift is not None:
            nn.init.zeros_(self.shift.weight)

    def forward(self, cond: Tensor, ndim: int) -> tuple[Tensor, Tensor | None]:
        """cond (B, E) -> gain and shift offsets (B, 1, ..., C) broadcastable to an ndim input."""
        h = cond if self.hidden is None else self.act(self.hidden(cond))  # (B, M) or (B, E)
        view = (cond.shape[0],) + (1,) * (ndim - 2) + (-1,)
        gain = self.gain(h).view(view)  # (B, 1, .., C)
        return gain, None if self.shift is None else self.shift(h).view(view)


def _check_cond(x: Tensor, cond: Tensor) -> None:
    if cond.dim() != 2 or cond.shape[0] != x.shape[0]:
        raise ValueError(f"condition must be (B, E) with B = {x.shape[0]} rows, got {tuple(cond.shape)}")


class ConditionalLayerNorm(nn.Module):
    """LayerNorm whose gain and shift are offset by zero-initialised maps of a condition.

    Args:
        dim: C, the normalised (last) width.
        cond_dim: E, the condition width.
        hidden: M, project the condition to this width first (no bias); None = use it directly.
        activation: the hidden projection's activation, a key of `ACTIVATIONS`.
        eps: added to the variance.
        bias: whether the norm has a shift (and so a conditional shift).

    `forward(x (B, ..., C), cond (B, E) | None) -> (B, ..., C)`; cond None is the unconditioned
    norm (the offsets taken as zero). Before training every condition gives the same output.
    """

    def __init__(self, dim: int, cond_dim: int, *, hidden: int | None = None, activation: str = "linear",
                 eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim))  # (C,) gamma
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None  # (C,) beta
        self.cond_mod = _Modulation(dim, cond_dim, hidden=hidden, activation=activation, shift=bias)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        xhat = F.layer_norm(x, (self.dim,), None, None, self.eps)  # (B, .., C)
        gain, shift = self.weight, self.bias  # (C,)
        if cond is not None:
            _check_cond(x, cond)
            d_gain, d_shift = self.cond_mod(cond, x.dim())  # (B, 1, .., C)
            gain = gain + d_gain
            shift = None if shift is None else shift + d_shift
        return xhat * gain if shift is None else torch.addcmul(shift, xhat, gain)  # (B, .., C)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, bias={self.bias is not None}"


class ConditionalRMSNorm(nn.Module):
    """RMSNorm (no shift) whose gain is offset by a zero-initialised map of a condition.

    Arguments as `ConditionalLayerNorm` (without `bias`: RMSNorm has no shift).
    """

    def __init__(self, dim: int, cond_dim: int, *, hidden: int | None = None, activation: str = "linear",
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim))  # (C,) gain
        self.cond_mod = _Modulation(dim, cond_dim, hidden=hidden, activation=activation, shift=False)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        xhat = F.rms_norm(x, (self.dim,), None, self.eps)  # (B, .., C)
        gain = self.weight  # (C,)
        if cond is not None:
            _check_cond(x, cond)
            gain = gain + self.cond_mod(cond, x.dim())[0]  # (B, 1, .., C)
        return xhat * gain  # (B, .., C)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


def cond_layer_norm(dim: int, *, eps: float, bias: bool, cond_dim: int, hidden: int | None = None,
                    activation: str = "linear") -> nn.Module:
    """The `make_norm` builder of "cond_layer"."""
    return ConditionalLayerNorm(dim, cond_dim, hidden=hidden, activation=activation, eps=eps, bias=bias)


def cond_rms_norm(dim: int, *, eps: float, bias: bool, cond_dim: int, hidden: int | None = None,
                  activation: str = "linear") -> nn.Module:
    """The `make_norm` builder of "cond_rms" (`bias` is ignored: RMSNorm has no shift)."""
    del bias
    return ConditionalRMSNorm(dim, cond_dim, hidden=hidden, activation=activation, eps=eps)


Condition = Tensor | Sequence[int] | Sequence[Sequence[float]] | int


class ConditionInput(nn.Module):
    """Turn what a user passes as `condition` into the (B, E) vectors the norms take.

    Args:
        cond_dim: E.
        n_labels: K, the number of label ids accepted (a learned K x E embedding, N(0, 1)
            initialised so the vectors start at unit scale); 0 = vectors only.
    """

    def __init__(self, cond_dim: int, *, n_labels: int = 0) -> None:
        super().__init__()
        if cond_dim < 1 or n_labels < 0:
            raise ValueError(f"cond_dim must be >= 1 and n_labels >= 0, got {cond_dim} and {n_labels}")
        self.cond_dim, self.n_labels = cond_dim, n_labels
        self.labels = nn.Embedding(n_labels, cond_dim) if n_labels else None

    def forward(self, condition: Condition, rows: int, *, like: Tensor) -> Tensor:
        """Label ids (B,) (or one id for every row) -> embeddings; vectors (B, E) (or one (E,)
        vector for every row) -> themselves, on the device and in the dtype of `like` (e.g. the
        model's embedding weight). Returns (B, E)."""
        c = condition if isinstance(condition, Tensor) else torch.as_tensor(condition)
        if c.is_floating_point():
            if c.dim() == 1:
                c = c[None].expand(rows, -1)
            if c.dim() != 2 or c.shape != (rows, self.cond_dim):
                raise UserError(f"a condition vector must be ({rows}, {self.cond_dim}) or ({self.cond_dim},), "
                                f"got {tuple(c.shape)}")
            if not bool(torch.isfinite(c).all()):
                raise UserError("the condition vector holds NaN or infinite values")
            return c.to(like.device, like.dtype)  # (B, E)
        if c.dtype == torch.bool or c.is_complex():
            raise UserError(f"a condition is label ids (integers) or float vectors, got {c.dtype}")
        if self.labels is None:
            raise UserError("this model takes condition vectors only (it has no label embedding); "
                            f"pass ({rows}, {self.cond_dim}) floats")
        c = c.reshape(-1).long()
        if c.numel() == 1:
            c = c.expand(rows)
        if c.numel() != rows:
            raise UserError(f"got {c.numel()} label ids for {rows} rows")
        if bool(((c < 0) | (c >= self.n_labels)).any()):
            raise UserError(f"label ids must be in 0..{self.n_labels - 1}, got {c.tolist()[:8]}")
        return self.labels(c.to(self.labels.weight.device)).to(like.dtype)  # (B, E)


def resolve_condition(
    cond_input: ConditionInput | None, condition: Condition | None, rows: int, *, like: Tensor
) -> Tensor | None:
    """The (B, E) condition of a model whose `cond_input` is given (None: an unconditional model),
    on the device and in the dtype of `like`.

    Raises:
        UserError: a condition for an unconditional model, or none for a conditional one.
    """
    if cond_input is None:
        if condition is not None:
            raise UserError("this model is not conditional (cond_dim is None); it takes no condition")
        return None
    if condition is None:
        raise UserError(f"this model is conditional: pass condition= (label ids or ({rows}, "
                        f"{cond_input.cond_dim}) vectors)")
    return cond_input(condition, rows, like=like)
