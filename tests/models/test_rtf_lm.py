"""The RTF language model: cached decoding equals the full forward, state, padding, select.

Every check compares the O(1)-state path (start / step / select) with the parallel forward of
the same weights (the slow reference), on a tiny model with random (not identity) filters.
"""

from __future__ import annotations

import pytest
import torch

from genloom.decode import loops
from genloom.errors import UserError
from genloom.models import io, transformer
from genloom.models.rtf_lm import RTFLM, RTFLMConfig
from genloom.nn.attention import Frame, allowed_mask
from genloom.nn.rtf import HyenaRTF

V = 37


def tiny(**overrides) -> RTFLM:
    torch.manual_seed(0)
    cfg = dict(vocab_size=V, n_layer=2, d_model=16, d_ff=32, state_size=8, num_a=4, max_len=48)
    model = RTFLM(RTFLMConfig(**{**cfg, **overrides})).eval()
    with torch.no_grad():  # larger projections than GPT-2 init, so every path matters
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 2:
                p.mul_(10.0)
    return model


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> bool:
    return bool((a - b).abs().max() <= tol * b.abs().max())


# the second variant has an unstable pole (Xavier without Montel: a warning) and stays exact
@pytest.mark.filterwarnings("ignore:RTF has a pole of modulus")
@pytest.mark.parametrize("overrides", [{}, {"short_conv": 0, "norm": "layer", "montel": False}])
def test_step_by_step_logits_equal_full_forward(overrides):
    model = tiny(**overrides)
    ids = torch.randint(0, V, (3, 40))
    full = model(ids)  # (B, T, V)
    logits, state = model.start(input_ids=ids[:, :5], max_new_tokens=35)
    assert close(logits, full[:, 4])
    for t in range(5, 40):
        logits, state = model.step(ids[:, t], state)
        assert close(logits, full[:, t]), t


def test_prefill_state_equals_stepped_state():
    model = tiny()
    ids = torch.randint(0, V, (2, 30))
    _, prefilled = model.start(input_ids=ids)
    _, stepped = model.start(input_ids=ids[:, :1])
    for t in range(1, 30):
        _, stepped = model.step(ids[:, t], stepped)
    assert prefilled.layers.shape == (2, 2, 16, 3 * 2 + 8)  # (B, L, C, 3(K-1) + n)
    assert close(prefilled.layers, stepped.layers, 1e-5)


def test_right_padded_rows_equal_single_rows_and_select_reorders():
    model = tiny()
    ids = torch.randint(0, V, (3, 20))
    lengths = torch.tensor([20, 7, 1])
    logits, state = model.start(input_ids=ids, lengths=lengths)
    for row, T in enumerate(lengths.tolist()):
        assert close(logits[row], model(ids[row : row + 1, :T])[0, -1])
    index = torch.tensor([2, 0, 0, 1])
    picked = model.select(state, index)
    nxt = torch.randint(0, V, (4,))
    out, _ = model.step(nxt, picked)
    for j, row in enumerate(index.tolist()):
        T = int(lengths[row])
        seq = torch.cat([ids[row, :T], nxt[j : j + 1]])[None]
        assert close(out[j], model(seq)[0, -1])


def test_prompt_longer_than_parallel_pass_and_decoding_past_it():
    model = tiny()  # max_len = 48
    ids = torch.randint(0, V, (2, 60))
    lengths = torch.tensor([60, 10])
    logits, state = model.start(input_ids=ids, lengths=lengths)
    # reference: the first 48 tokens in parallel, the rest one by one
    ref, ref_state = model.start(input_ids=ids[:1, :48])
    for t in range(48, 60):
        ref, ref_state = model.step(ids[:1, t], ref_state)
    assert close(logits[0], ref[0])
    assert close(logits[1], model(ids[1:, :10])[0, -1])
    for _ in range(100):  # generation continues past max_len with a bounded state
        logits, state = model.step(logits.argmax(-1), state)
    assert torch.isfinite(logits).all() and torch.isfinite(state.layers).all()


def test_mixer_follows_transformer_protocol_with_left_padding():
    torch.manual_seed(1)
    mixer = HyenaRTF(12, state_size=6, max_len=32, num_a=3)
    x = torch.randn(2, 9, 12)
    valid = torch.tensor([[True] * 9, [False] * 4 + [True] * 5])  # row 1 is left-padded
    mask, causal = allowed_mask("causal", seq_len=9, key_valid=valid, segment_ids=None)
    frame = Frame(cos=None, sin=None, mask=mask, causal=causal, column=0)
    state = torch.zeros(2, *mixer.state_shape(100))
    y = mixer(x, frame, state)
    alone_state = torch.zeros(1, *mixer.state_shape(100))
    alone = mixer(x[1:, 4:], None, alone_state)
    assert close(y[1, 4:], alone[0], 1e-5)
    assert close(state[1], alone_state[0], 1e-5)
    nxt = torch.randn(2, 12)
    out = mixer.step(nxt, None, state)
    assert close(out[1], mixer(torch.cat([x[1:, 4:], nxt[1:, None]], 1))[0, -1], 1e-5)
    assert mixer.state_time_axis is None


def test_plugs_into_the_transformer_mixer_registry(monkeypatch):
    """A mixer registered in MIXERS (here a custom HyenaRTF replacing the built-in "rtf" entry)
    keeps cached steps exact, also for left-packed prompts of different lengths and after a
    beam-style select."""

    def rtf_mixer(c: transformer.TransformerConfig) -> HyenaRTF:
        return HyenaRTF(c.d_model, state_size=8, max_len=c.max_len, num_a=4, bias=c.bias)

    monkeypatch.setitem(transformer.MIXERS, "rtf", rtf_mixer)
    torch.manual_seed(2)
    cfg = transformer.TransformerConfig(vocab_size=V, n_layer=2, n_head=2, d_model=16, d_ff=32,
                                        max_len=64, mixer="rtf")
    model = transformer.Transformer(cfg).eval()
    ids = torch.randint(0, V, (2, 30))
    lengths = torch.tensor([30, 12])
    logits, state = model.start(input_ids=ids, lengths=lengths, max_new_tokens=6)
    state = model.select(state, torch.tensor([1, 0]))
    seqs = [ids[1, :12].tolist(), ids[0].tolist()]
    prev = logits[[1, 0]]
    for _ in range(6):
        nxt = prev.argmax(-1)
        for row in range(2):
            seqs[row].append(int(nxt[row]))
        prev, state = model.step(nxt, state)
        for row in range(2):
            assert close(prev[row], model(torch.tensor([seqs[row]]))[0, -1])


def test_save_and_load_round_trip(tmp_path):
    model = tiny()
    io.save(model, None, tmp_path / "m")
    loaded, tok = io.load(tmp_path / "m")
    assert tok is None and isinstance(loaded, RTFLM) and loaded.config == model.config
    ids = torch.randint(0, V, (2, 20))
    assert torch.equal(loaded(ids), model(ids))


def test_greedy_search_runs_on_the_model():
    model = tiny()
    prompt = torch.randint(0, V, (2, 6))
    out = loops.greedy(model, max_new_tokens=8, input_ids=prompt)
    for row in range(2):  # brute force: re-run the full forward for every new token
        seq = prompt[row : row + 1]
        for _ in range(8):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
        assert out.sequences[row] == seq[0, 6:].tolist()


def test_user_errors():
    with pytest.raises(UserError, match="norm"):
        RTFLMConfig(vocab_size=V, norm="batch")
    model = tiny()
    with pytest.raises(UserError, match="empty"):
        model.start(input_ids=torch.zeros(2, 3, dtype=torch.long), lengths=[3, 0])
    with pytest.raises(UserError, match="max_len=48"):
        model(torch.zeros(1, 49, dtype=torch.long))
