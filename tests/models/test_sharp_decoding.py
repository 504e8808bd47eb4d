"""Cached decoding equals the full forward on models whose attention is far from uniform.

The tiny models of the other tests keep the GPT-2 initialisation (std 0.02): their attention is
near uniform, so a query or key at the wrong position barely moves a logit. Here every weight
matrix and embedding is redrawn from N(0, 0.5) and the models run in float64, where the cached
path must equal the full forward to 1e-9 of the logits' scale; a float32 run checks the one-row
BLAS path the same way at 1e-4. Every family, and the paths a single prompt takes: one unpadded
row, several rows of one length (no offsets), ragged rows, RoPE and learned positions.
"""

from __future__ import annotations

import pytest
import torch

from genloom.models import Transformer, TransformerConfig
from genloom.models.rnn_seq2seq import RNNSeq2Seq, title_rnn_small
from genloom.models.rtf_lm import RTFLM, RTFLMConfig
from genloom.models.unilm import UniLMSeq2Seq, UniLMSeq2SeqConfig
from genloom.nn import probe

V = 37
SHARP = 0.5
FAMILIES = {
    "gpt2": dict(norm="layer", mlp="gelu", pos="learned", bias=True, tie_embeddings=True),
    "llama_gqa": dict(norm="rms", mlp="swiglu", pos="rope", n_kv_head=2, bias=False, tie_embeddings=False),
    "llama_tied": dict(norm="rms", mlp="swiglu", pos="rope", n_kv_head=4, bias=False, tie_embeddings=True),
    "mqa_segments": dict(norm="layer", mlp="gelu_erf", pos="rope", n_kv_head=1, n_segment=2),
}
# (prompt lengths, steps): one unpadded row, three rows of one length, ragged rows
SHAPES = {"one_row": ([6], 9), "equal_rows": ([5, 5, 5], 7), "ragged": ([6, 1, 9], 7)}
TOL = {torch.float64: 1e-9, torch.float32: 1e-4}


def sharpen(model: torch.nn.Module, dtype: torch.dtype, *, seed: int = 11) -> torch.nn.Module:
    """Every weight matrix and embedding from N(0, SHARP), in `dtype`, eval mode."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, SHARP)
    return model.to(dtype).eval()


def close(got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    err = float((got - ref).abs().max())
    assert err <= TOL[dtype] * float(ref.abs().max()), f"max error {err:.3g}, scale {float(ref.abs().max()):.3g}"


def transformer(family: str, mask: str, dtype: torch.dtype) -> Transformer:
    cfg = TransformerConfig(vocab_size=V, n_layer=2, n_head=4, d_model=32, d_ff=48, max_len=40, mask=mask,
                            **FAMILIES[family])
    torch.manual_seed(0)
    return sharpen(Transformer(cfg), dtype)


def test_sharp_models_attend_far_from_uniformly():
    """The property the other checks here rely on: with std 0.5 a query's most attended key takes
    most of its attention (with the default 0.02 it takes little more than 1 / keys)."""
    ids = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(0))
    for std, low, high in ((0.5, 0.6, 1.0), (0.02, 0.0, 0.3)):
        model = Transformer(TransformerConfig(vocab_size=V, n_layer=2, n_head=4, d_model=32, d_ff=48,
                                              max_len=40, **FAMILIES["llama_gqa"]))
        if std == 0.5:
            sharpen(model, torch.float32)
        probs = []
        with probe.listening(lambda m, k, t: probs.append(t) if k == "attn_probs" else None), torch.no_grad():
            model.eval()(ids)
        top = torch.cat([p[..., 8:, :].amax(-1).flatten() for p in probs])  # queries with >= 9 keys
        assert low <= float(top.mean()) <= high


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("mask", ["causal", "prefix"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_transformer_cached_steps_equal_full_forward(family, mask, shape, dtype):
    model = transformer(family, mask, dtype)
    lens, steps = SHAPES[shape]
    b, width = len(lens), max(lens) + steps
    ids = torch.randint(0, V, (b, width), generator=torch.Generator().manual_seed(3))
    prompt_lens = torch.tensor(lens)
    for fast in (True, False):  # the bound-function plan and the blocks' own steps
        logits, state = model.start(input_ids=ids, lengths=prompt_lens, max_new_tokens=steps)
        assert (state.offsets is None) == (shape != "ragged")
        if not fast:
            state.plan = None
        got = [logits]
        for j in range(steps - 1):
            logits, state = model.step(ids[torch.arange(b), prompt_lens + j], state)
            got.append(logits)
        got = torch.stack(got, 1)  # (B, steps, V)
        for r, p in enumerate(lens):
            row = ids[r:r + 1, :p + steps]
            seg = None
            if mask == "prefix":
                seg = torch.zeros_like(row)
                seg[:, p:] = 1
            with torch.no_grad():
                ref = model(row, segment_ids=seg)[0, p - 1:p - 1 + steps]  # (steps, V)
            close(got[r], ref, dtype)


def seq2seq_case(lens: list[int], tgt_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded sources (B, S) of the given lengths (ids 4.. are characters, 0 pads) and
    targets (B, tgt_len) that start with bos (2)."""
    g = torch.Generator().manual_seed(seed)
    src = torch.zeros(len(lens), max(lens), dtype=torch.long)
    for r, n in enumerate(lens):
        src[r, :n] = torch.randint(4, V, (n,), generator=g)
    tgt = torch.cat([torch.full((len(lens), 1), 2), torch.randint(4, V, (len(lens), tgt_len - 1), generator=g)], 1)
    return src, tgt


@torch.no_grad()
def teacher_forced_steps(model: torch.nn.Module, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """start on the sources, then step the targets' tokens: the outputs (B, T, V) per position."""
    out, state = model.start(src=src, max_new_tokens=tgt.shape[1])
    got = [out]
    for t in range(1, tgt.shape[1]):
        out, state = model.step(tgt[:, t], state)
        got.append(out)
    return torch.stack(got, 1)


@pytest.mark.parametrize("shape", ["one_row", "ragged"])
@pytest.mark.parametrize("heads", [{}, {"pointer": True, "prior": True}], ids=["plain", "pointer_prior"])
def test_unilm_seq2seq_cached_steps_equal_full_forward(heads, shape):
    torch.manual_seed(0)
    cfg = UniLMSeq2SeqConfig(vocab_size=V, d_model=32, n_layer=2, n_head=4, d_ff=64, dropout=0.0,
                             max_source_len=12, max_target_len=9, **heads)
    model = sharpen(UniLMSeq2Seq(cfg), torch.float64)
    lens = [9] if shape == "one_row" else [9, 3, 6]
    src, tgt = seq2seq_case(lens, 8, seed=4)
    got = teacher_forced_steps(model, src, tgt)
    for r, n in enumerate(lens):  # each row alone and unpadded is the reference
        with torch.no_grad():
            out = model(src[r:r + 1, :n], tgt[r:r + 1])
        close(got[r], (out[0] if isinstance(out, tuple) else out)[0], torch.float64)


@pytest.mark.parametrize("shape", ["one_row", "ragged"])
def test_rnn_seq2seq_cached_steps_equal_full_forward(shape):
    torch.manual_seed(0)
    model = sharpen(RNNSeq2Seq(title_rnn_small(V, emb_dim=16, enc_hidden=8, dec_hidden=12, out_hidden=24,
                                               dropout=0.0)), torch.float64)
    lens = [8] if shape == "one_row" else [8, 2, 5]
    src, tgt = seq2seq_case(lens, 7, seed=5)
    got = teacher_forced_steps(model, src, tgt)
    for r, n in enumerate(lens):
        with torch.no_grad():
            ref = model(src[r:r + 1, :n], tgt[r:r + 1])[0]
        close(got[r].log_softmax(-1), ref.log_softmax(-1), torch.float64)


@pytest.mark.filterwarnings("ignore:RTF has a pole of modulus")
@pytest.mark.parametrize("kind", ["rtf_lm", "transformer_rtf"])
@pytest.mark.parametrize("shape", ["one_row", "ragged"])
def test_rtf_models_cached_steps_equal_full_forward(kind, shape):
    torch.manual_seed(0)
    if kind == "rtf_lm":
        model = RTFLM(RTFLMConfig(vocab_size=V, n_layer=2, d_model=16, d_ff=32, state_size=8, num_a=4, max_len=48))
    else:
        model = Transformer(TransformerConfig(vocab_size=V, n_layer=2, d_model=16, d_ff=32, max_len=48,
                                              mixer="rtf", rtf_state_size=8, rtf_num_a=4, rtf_init="xavier"))
    model = sharpen(model, torch.float64)
    lens, steps = SHAPES[shape]
    b = len(lens)
    ids = torch.randint(0, V, (b, max(lens) + steps), generator=torch.Generator().manual_seed(6))
    prompt_lens = torch.tensor(lens)
    with torch.no_grad():
        logits, state = model.start(input_ids=ids, lengths=prompt_lens, max_new_tokens=steps)
        got = [logits]
        for j in range(steps - 1):
            logits, state = model.step(ids[torch.arange(b), prompt_lens + j], state)
            got.append(logits)
        got = torch.stack(got, 1)
        for r, p in enumerate(lens):
            close(got[r], model(ids[r:r + 1, :p + steps])[0, p - 1:p - 1 + steps], torch.float64)
