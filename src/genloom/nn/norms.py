"""Normalisation layers, all built through one factory, `make_norm`.

Letters: C model width.

Every norm in a genloom model comes from `make_norm(kind, dim, ...)`, so a new kind (the
Conditional LayerNorm of the CLN post, which adds a condition-dependent gain and shift) is one more
entry in `NORMS` ("cond_layer" and "cond_rms", built in `genloom.nn.cln`; a model passes them
the condition as a second argument). The two plain kinds are torch's own modules
(`nn.LayerNorm`, `nn.RMSNorm`): their fused kernels are as exact as Hugging Face's GPT-2 /
Llama norms in fp32 (the conversion tests check the logits end to end).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from genloom.nn.cln import cond_layer_norm, cond_rms_norm


def _layer_norm(dim: int, *, eps: float, bias: bool) -> nn.Module:
    """LayerNorm over the last dimension: (x - mean) / std * gain (+ shift when bias)."""
    return nn.LayerNorm(dim, eps=eps, bias=bias)


def _rms_norm(dim: int, *, eps: float, bias: bool) -> nn.Module:
    """RMSNorm over the last dimension: x / rms(x) * gain (Llama); it never has a shift."""
    del bias  # RMSNorm has no shift parameter in any family we load
    return nn.RMSNorm(dim, eps=eps)


# kind -> builder(dim, *, eps, bias); "cond_<kind>" -> builder(dim, *, eps, bias, cond_dim,
# hidden, activation), the Conditional LayerNorm / RMSNorm of genloom.nn.cln.
NORMS: dict[str, Callable[..., nn.Module]] = {
    "layer": _layer_norm,
    "rms": _rms_norm,
    "cond_layer": cond_layer_norm,
    "cond_rms": cond_rms_norm,
}


def make_norm(
    kind: str, dim: int, *, eps: float = 1e-5, bias: bool = True, cond_dim: int | None = None,
    cond_hidden: int | None = None, cond_act: str = "linear",
) -> nn.Module:
    """Build the norm `kind` over a last dimension of size `dim`.

    Args:
        kind: a key of `NORMS` ("layer" or "rms").
        dim: C, the normalised width.
        eps: added to the variance (or mean square) before the square root.
        bias: whether a LayerNorm carries a learned shift (RMSNorm never does).
        cond_dim: width of a condition vector for a conditional norm; None for a plain norm.
        cond_hidden: a conditional norm first projects the condition to this width (None: no).
        cond_act: activation of that projection (a key of `genloom.nn.cln.ACTIVATIONS`).

    Returns:
        A module mapping (..., C) -> (..., C); a conditional one is called as norm(x, cond)
        with cond (B, cond_dim).

    Raises:
        ValueError: for an unknown kind, or a condition width no registered norm accepts.
    """
    if kind not in NORMS or kind.startswith("cond_"):  # conditional kinds: the plain kind + cond_dim
        plain = sorted(k for k in NORMS if not k.startswith("cond_"))
        raise ValueError(f"unknown norm {kind!r}; choose one of {plain} (conditional: add cond_dim)")
    if cond_dim is not None:
        cond_kind = f"cond_{kind}"
        if cond_kind not in NORMS:
            raise ValueError(
                f"no conditional norm {cond_kind!r} is registered (cond_dim={cond_dim}); "
                "conditional LayerNorm lives in genloom.nn.cln"
            )
        return NORMS[cond_kind](dim, eps=eps, bias=bias, cond_dim=cond_dim, hidden=cond_hidden,
                                activation=cond_act)
    return NORMS[kind](dim, eps=eps, bias=bias)
