"""The parts of a `Transformer` block, and its fused decoding step.

Letters: B batch rows, T positions, C model width, F feed-forward width, K key/value heads,
S cache columns, D head width.

- `MLP` (gelu / gelu_erf / swiglu) and the token mixers of `MIXERS` (attention, Hyena-RTF), each
  built from a `TransformerConfig`;
- `Block`: pre-norm residual block (mixer, then MLP), plain or with conditional norms;
- `input_major_`: every Linear weight stored input-major (faster one-row products);
- `fast_step`: a plain attention block's decoding step bound to direct torch calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genloom.nn import blas
from genloom.nn.attention import Attention, Frame, apply_rope
from genloom.nn.norms import make_norm
from genloom.nn.rtf import HyenaRTF

if TYPE_CHECKING:
    from genloom.models.transformer import TransformerConfig


def _gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


MLP_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"gelu": _gelu_tanh, "gelu_erf": F.gelu}


class MLP(nn.Module):
    """Feed-forward branch: proj(act(fc(x))), or proj(silu(gate) * up) with one fused fc for swiglu."""

    def __init__(self, d_model: int, d_ff: int, *, kind: str, bias: bool) -> None:
        super().__init__()
        self.swiglu = kind == "swiglu"
        self.act = F.silu if self.swiglu else MLP_ACTIVATIONS[kind]
        self.fc = nn.Linear(d_model, 2 * d_ff if self.swiglu else d_ff, bias=bias)  # [gate; up] fused
        self.proj = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)  # (..., F) or (..., 2F)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)  # (..., F) each
            return self.proj(self.act(gate) * up)  # (..., C)
        return self.proj(self.act(h))  # (..., C)


def _attention_mixer(config: TransformerConfig) -> nn.Module:
    return Attention(config.d_model, config.n_head, config.kv_heads, config.dim_head,
                     bias=config.bias, dropout=config.dropout)


def _rtf_mixer(config: TransformerConfig) -> nn.Module:
    """Hyena-RTF: q * RTF(k * v) after short causal convs; its decoding state is
    (C, 3(K-1) + n) per row and layer whatever the length, and it reads padding from frame.mask."""
    c = config
    return HyenaRTF(c.d_model, state_size=c.rtf_state_size, max_len=c.max_len, num_a=c.rtf_num_a,
                    short_conv=c.rtf_short_conv, init=c.rtf_init, montel=c.rtf_montel, bias=c.bias)


# mixer name -> builder(config). A mixer maps (B, T, C) -> (B, T, C) in `forward(x, frame, state)`,
# (B, C) -> (B, C) in `step(x, frame, state)`, and says its per-row, per-layer decoding state shape
# with `state_shape(length)` and which axis of it grows with length (`state_time_axis`, or None).
MIXERS: dict[str, Callable[[TransformerConfig], nn.Module]] = {"attention": _attention_mixer, "rtf": _rtf_mixer}


def block_norm(c: TransformerConfig) -> nn.Module:
    """One norm of the model: plain, or conditional (CLN) when cond_dim is set."""
    return make_norm(c.norm, c.d_model, eps=c.norm_eps, bias=c.bias, cond_dim=c.cond_dim,
                     cond_hidden=c.cond_hidden, cond_act=c.cond_act)


def apply_norm(norm: nn.Module, x: Tensor, cond: Tensor | None) -> Tensor:
    """Apply a norm, passing the condition (B, E) to a conditional one."""
    return norm(x) if cond is None else norm(x, cond)


class Block(nn.Module):
    """Pre-norm residual block: x + mixer(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        c = config
        self.norm1 = block_norm(c)
        self.mixer = MIXERS[c.mixer](c)
        self.norm2 = block_norm(c)
        self.mlp = MLP(c.d_model, c.d_ff, kind=c.mlp, bias=c.bias)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: Tensor, frame: Frame, state: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        x = x + self.drop(self.mixer(apply_norm(self.norm1, x, cond), frame, state))  # (B, T, C)
        return x + self.drop(self.mlp(apply_norm(self.norm2, x, cond)))  # (B, T, C)

    def step(self, x: Tensor, frame: Frame, state: Tensor, cond: Tensor | None = None) -> Tensor:
        x = x + self.mixer.step(apply_norm(self.norm1, x, cond), frame, state)  # (B, C)
        return x + self.mlp(apply_norm(self.norm2, x, cond))  # (B, C)



def input_major_(model: nn.Module) -> nn.Module:
    """Store every nn.Linear weight of `model` input-major, in place; shapes, names, values and
    weight tying are unchanged.

    A Linear weight has shape (out, in); here it becomes the transposed view of an (in, out)
    row-major tensor (the layout of GPT-2's Conv1D). With one row per call, as in every decoding
    step at batch 1, MKL's matrix-vector product reads that layout 1.1-1.85x faster on the CPUs
    of this project (e.g. SmolLM2's 49152 x 576 head: 4.4 vs 7.5 ms, one thread), while batched
    products (prefill, training) run at the same speed either way. Checkpoints are unaffected:
    state_dict values are the same and files are written contiguous. A head tied to the token
    embedding keeps the embedding's row-major layout (safetensors' `save_model` cannot measure
    shared strided tensors); decoding reads it through `Transformer._head`'s input-major copy.
    """
    tied = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for module in model.modules():
        w = getattr(module, "weight", None)
        if isinstance(module, nn.Linear) and id(w) not in tied and w.is_contiguous():
            with torch.no_grad():
                module.weight = nn.Parameter(w.t().contiguous().t(), requires_grad=w.requires_grad)
    return model


def _norm_fn(norm: nn.Module) -> Callable[[Tensor], Tensor] | None:
    """torch's own norm function with the module's tensors bound; None for other norms (CLN)."""
    if type(norm) is nn.LayerNorm:
        shape, w, b, eps = norm.normalized_shape, norm.weight, norm.bias, norm.eps
        return lambda x: F.layer_norm(x, shape, w, b, eps)
    if type(norm) is nn.RMSNorm:
        shape, w, eps = norm.normalized_shape, norm.weight, norm.eps
        return lambda x: F.rms_norm(x, shape, w, eps)
    return None


def _linear_fn(linear: nn.Linear) -> Callable[[Tensor], Tensor]:
    """x @ W^T + b as one addmm on the (input-major) weight, with the module's tensors bound; a
    single row goes through OpenBLAS's GEMV when it is available (`genloom.nn.blas`)."""
    w, b = linear.weight.t(), linear.bias  # (in, out): contiguous when stored input-major
    one = blas.gemv(w, b)
    many = (lambda x: torch.mm(x, w)) if b is None else (lambda x: torch.addmm(b, x, w))
    if one is None:
        return many
    return lambda x: one(x) if x.shape[0] == 1 else many(x)


def fast_step(block: Block) -> Callable[[Tensor, Frame, Tensor], Tensor] | None:
    """`block.step` for a plain attention block as direct torch calls: (x (B, C), frame, layer
    state (B, 2, K, S, D)) -> (B, C). None when the block has another mixer or conditional norms.

    A decoding step of a small model is bound by Python dispatch (about 10 module calls and 30
    attribute lookups per layer); binding the tensors once per `start` and calling torch's
    functions directly removes most of it (the small GPT-2 config: about 10% of a step). The
    arithmetic is `Block.step` / `Attention.step` op for op (bitwise equal on two or more rows);
    a single row's products go through OpenBLAS (`genloom.nn.blas`), equal to about 1e-6.
    """
    att, mlp = block.mixer, block.mlp
    norm1, norm2 = _norm_fn(block.norm1), _norm_fn(block.norm2)
    if type(att) is not Attention or norm1 is None or norm2 is None:
        return None
    qkv, out, fc, proj = (_linear_fn(m) for m in (att.qkv, att.out, mlp.fc, mlp.proj))
    act, swiglu = mlp.act, mlp.swiglu
    h, kh, d = att.n_head, att.n_kv_head, att.head_dim
    g = h // kh

    def step(x: Tensor, frame: Frame, state: Tensor) -> Tensor:
        b, n = x.shape[0], frame.column
        y = qkv(norm1(x)).view(b, h + 2 * kh, d)  # (B, H+2K, D)
        column = state.select(3, n)  # (B, 2, K, D): this token's key and value
        if frame.cos is None:
            column.copy_(y[:, h:].view(b, 2, kh, d))
            q = y[:, :h]  # (B, H, D)
        else:
            qk = apply_rope(y[:, : h + kh], frame.cos, frame.sin)  # (B, H+K, D)
            column.select(1, 0).copy_(qk[:, h:])
            column.select(1, 1).copy_(y[:, h + kh :])
            q = qk[:, :h]  # (B, H, D)
        used = state.narrow(3, 0, n + 1)  # (B, 2, K, n+1, D)
        a = F.scaled_dot_product_attention(q.reshape(b, kh, g, d), used.select(1, 0), used.select(1, 1),
                                           attn_mask=frame.mask)  # (B, K, G, D)
        x = x + out(a.reshape(b, h * d))  # (B, C)
        m = fc(norm2(x))  # (B, F) or (B, 2F)
        if swiglu:
            gate, up = m.chunk(2, dim=-1)
            return x + proj(act(gate) * up)
        return x + proj(act(m))  # (B, C)

    return step
