"""Taps: probe-recorded attention probabilities equal a slow reference, module outputs are captured
by glob, and every hook is gone after the context. Plus the PNG helpers."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from genloom.errors import UserError
from genloom.nn import probe
from genloom.train.plots import cjk_font, plot_attention, plot_curves
from genloom.train.taps import Taps, hooks_left


class MiniAttention(nn.Module):
    """Multi-head causal self-attention that records its probabilities (B, H, T, S)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=-1)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(c // self.heads)  # (B, H, T, S)
        mask = torch.ones(t, t, dtype=torch.bool).tril()
        probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)  # (B, H, T, S)
        if probe.active():
            probe.record(self, "attn_probs", probs)
        return self.out((probs @ v).transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = MiniAttention(dim, heads)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.ff(x)


class Mini(nn.Module):
    def __init__(self, dim: int = 8, heads: int = 2, layers: int = 2) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


@torch.no_grad()
def slow_attention_probs(attn: MiniAttention, x: torch.Tensor) -> torch.Tensor:
    """Scalar loops in float64: softmax over s <= t of q_t . k_s / sqrt(d), per head."""
    b, t, c = x.shape
    h = attn.heads
    d = c // h
    w, bias = attn.qkv.weight.double(), attn.qkv.bias.double()
    out = torch.zeros(b, h, t, t, dtype=torch.float64)
    for bi in range(b):
        proj = [w @ x[bi, i].double() + bias for i in range(t)]
        for hi in range(h):
            for ti in range(t):
                q = proj[ti][hi * d:(hi + 1) * d]
                logits = [float(q @ proj[si][c + hi * d:c + (hi + 1) * d]) / math.sqrt(d)
                          for si in range(ti + 1)]
                m = max(logits)
                z = sum(math.exp(v - m) for v in logits)
                for si, v in enumerate(logits):
                    out[bi, hi, ti, si] = math.exp(v - m) / z
    return out


def test_attention_probs_shape_sum_and_slow_reference():
    torch.manual_seed(0)
    model = Mini(dim=8, heads=2, layers=2)
    x = torch.randn(3, 5, 8)
    with Taps(model, ["blocks.*.attn:attn_probs"]) as taps:
        model(x)
    assert taps.keys() == ["blocks.0.attn:attn_probs", "blocks.1.attn:attn_probs"]
    p0 = taps["blocks.0.attn:attn_probs"]
    assert p0.shape == (3, 2, 5, 5)
    assert not p0.requires_grad
    torch.testing.assert_close(p0.sum(-1), torch.ones(3, 2, 5), atol=1e-6, rtol=0)
    ref0 = slow_attention_probs(model.blocks[0].attn, x)
    torch.testing.assert_close(p0.double(), ref0, atol=1e-6, rtol=0)
    # layer 1 sees layer 0's output: its reference input comes from a tapped block output
    with Taps(model, ["blocks.0"]) as taps1:
        model(x)
    ref1 = slow_attention_probs(model.blocks[1].attn, taps1["blocks.0"])
    torch.testing.assert_close(taps["blocks.1.attn:attn_probs"].double(), ref1, atol=1e-6, rtol=0)
    assert taps.stack("blocks.*.attn:attn_probs").shape == (2, 3, 2, 5, 5)  # (L, B, H, T, S)


def test_module_outputs_by_glob_and_repeated_calls():
    torch.manual_seed(0)
    model = Mini()
    x = torch.randn(2, 4, 8)
    with Taps(model, ["blocks.*.ff", "blocks.0.ff.0"]) as taps:
        y = model(x)
        model(x + 1)
    assert set(taps.keys()) == {"blocks.0.ff", "blocks.1.ff", "blocks.0.ff.0"}
    assert len(taps.all("blocks.1.ff")) == 2
    # the last block's ff output is y minus the residual stream entering it
    with Taps(model, ["blocks.0", "blocks.1.attn"]) as t2:
        model(x)
    resid = t2["blocks.0"] + t2["blocks.1.attn"]
    torch.testing.assert_close(taps.all("blocks.1.ff")[0], y - resid, atol=1e-6, rtol=0)
    assert not torch.equal(taps.all("blocks.1.ff")[0], taps["blocks.1.ff"])  # 2nd call kept too
    with pytest.raises(KeyError, match="captured"):
        taps["blocks.9.ff"]


def test_no_hooks_remain_and_probe_inactive_even_after_exception():
    model = Mini()
    assert hooks_left(model) == 0 and not probe.active()
    with Taps(model, ["blocks.?", "blocks.*.attn:*"]):  # "?" is one character: 2 blocks
        assert hooks_left(model) == 2 and probe.active()
    with Taps(model, ["blocks.*"]):  # "*" crosses dots: every module under blocks
        assert hooks_left(model) == len([n for n, _ in model.named_modules() if "." in n])
    assert hooks_left(model) == 0 and not probe.active()
    with pytest.raises(RuntimeError, match="inside"):
        with Taps(model, ["blocks.0.attn", "blocks.1.attn:attn_probs"]):
            model(torch.randn(1, 3, 8))
            raise RuntimeError("inside")
    assert hooks_left(model) == 0 and not probe.active()


def test_probe_records_from_other_models_are_ignored_and_nesting_works():
    a, b = Mini(), Mini()
    x = torch.randn(1, 3, 8)
    with Taps(a, ["blocks.0.attn:attn_probs"]) as ta, Taps(b, ["blocks.1.attn:attn_probs"]) as tb:
        a(x)
        b(x)
    assert ta.keys() == ["blocks.0.attn:attn_probs"]
    assert tb.keys() == ["blocks.1.attn:attn_probs"]
    assert not probe.active()


def test_bad_pattern_is_a_user_error():
    with pytest.raises(UserError, match="matches no module"):
        Taps(Mini(), ["decoder.*"])


def test_detach_false_keeps_graph():
    model = Mini()
    with Taps(model, ["blocks.0.attn:attn_probs"], detach=False) as taps:
        model(torch.randn(1, 3, 8))
    p = taps["blocks.0.attn:attn_probs"]
    assert p.requires_grad
    p[..., 0].sum().backward()
    assert model.blocks[0].attn.qkv.weight.grad is not None


def test_plot_attention_renders_chinese(tmp_path):
    probs = torch.rand(4, 6).softmax(-1)
    out = tmp_path / "att.png"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_attention(probs, list("今天天气很好"), list("天气好。"), out, title="注意力")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    messages = [str(w.message) for w in caught]
    if cjk_font() is None:
        assert any("no CJK font" in m for m in messages)
    else:
        assert not any("missing from font" in m for m in messages), messages
    assert not list(tmp_path.glob(".*tmp"))
    with pytest.raises(UserError, match="labels"):
        plot_attention(probs, list("abc"), list("天气好。"), tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_plot_curves(tmp_path):
    recs = [{"event": "train", "step": s, "loss": 1 / s} for s in range(1, 20)]
    recs += [{"event": "eval", "step": s, "loss": 2 / s, "rouge_l": s / 40} for s in (5, 10, 15)]
    out = plot_curves(recs, tmp_path / "curves.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


@torch.no_grad()
def slow_transformer_probs(mixer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Scalar loops in float64 over genloom's Attention (fused qkv: H query heads, then K key
    heads, then K value heads; query head h reads key head h // (H / K); no RoPE; causal)."""
    b, t, _ = x.shape
    h, kh, d = mixer.n_head, mixer.n_kv_head, mixer.head_dim
    w, bias = mixer.qkv.weight.double(), mixer.qkv.bias.double()
    out = torch.zeros(b, h, t, t, dtype=torch.float64)
    for bi in range(b):
        proj = [w @ x[bi, i].double() + bias for i in range(t)]
        for hi in range(h):
            ko = (h + hi // (h // kh)) * d
            for ti in range(t):
                q = proj[ti][hi * d:(hi + 1) * d]
                logits = [float(q @ proj[si][ko:ko + d]) / math.sqrt(d) for si in range(ti + 1)]
                m = max(logits)
                z = sum(math.exp(v - m) for v in logits)
                for si, v in enumerate(logits):
                    out[bi, hi, ti, si] = math.exp(v - m) / z
    return out


def test_transformer_attention_probs_equal_slow_reference():
    from genloom.models import transformer as tf

    torch.manual_seed(0)
    cfg = tf.TransformerConfig(vocab_size=40, n_layer=2, n_head=4, n_kv_head=2, d_model=32,
                               d_ff=64, max_len=16)
    model = tf.Transformer(cfg).eval()
    ids = torch.randint(0, 40, (2, 7))
    with Taps(model, ["blocks.*.mixer:attn_probs", "blocks.*.norm1"]) as taps:
        logits = model(ids)
    assert hooks_left(model) == 0 and not probe.active()
    torch.testing.assert_close(logits, model(ids))  # tapping changes nothing
    for layer in range(2):
        probs = taps[f"blocks.{layer}.mixer:attn_probs"]
        assert probs.shape == (2, 4, 7, 7)  # (B, H, T, S)
        torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 7), atol=1e-6, rtol=0)
        ref = slow_transformer_probs(model.blocks[layer].mixer, taps[f"blocks.{layer}.norm1"])
        torch.testing.assert_close(probs.double(), ref, atol=1e-6, rtol=0)
