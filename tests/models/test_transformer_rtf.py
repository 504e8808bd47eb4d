"""`Transformer(mixer="rtf")`: the Hyena-RTF language model inside the project's one Transformer.

Every check compares a fast path with a slow reference of the same weights: cached start / step /
select with the full forward, each ragged row with its unpadded single-row run, the search loops
with brute-force argmax / exhaustive scoring over full forwards, the Transformer with RTFLM.
Tiny models (width 16, 2 layers, n = 8) with enlarged projections so every path matters.
"""

from __future__ import annotations

import json

import pytest
import torch

from genloom.decode.loops import beam_search, greedy, sample
from genloom.errors import UserError
from genloom.models import Transformer, TransformerConfig, load, save
from genloom.models.rtf_lm import RTFLM, RTFLMConfig
from genloom.nn.rtf import HyenaRTF

V = 37
SHAPE = dict(vocab_size=V, n_layer=2, d_model=16, d_ff=32, max_len=48, mixer="rtf",
             rtf_state_size=8, rtf_num_a=4)


def tiny(**overrides) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(**{**SHAPE, **overrides})).eval()
    with torch.no_grad():  # larger projections and embeddings than GPT-2 init, so every path matters
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 2:
                p.mul_(10.0)
    return model


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> bool:
    """Max error within `tol` relative to the reference's largest magnitude."""
    return bool((a - b).abs().max() <= tol * b.abs().max())


# the second variant has unstable poles (Xavier without Montel: a warning) and stays exact
@pytest.mark.filterwarnings("ignore:RTF has a pole of modulus")
@pytest.mark.parametrize("overrides", [{}, {"rtf_short_conv": 0, "norm": "rms", "rtf_montel": False,
                                            "tie_embeddings": False, "bias": False}])
@torch.no_grad()
def test_step_by_step_logits_equal_full_forward(overrides):
    model = tiny(**overrides)
    torch.manual_seed(1)
    ids = torch.randint(0, V, (3, 40))
    full = model(ids)  # (B, T, V)
    logits, state = model.start(input_ids=ids[:, :5], max_new_tokens=35)
    assert state.buffer.shape == (3, 2, 16, 3 * 2 * (overrides.get("rtf_short_conv", 3) > 0) + 8)
    assert close(logits, full[:, 4])
    for t in range(5, 40):
        logits, state = model.step(ids[:, t], state)
        assert close(logits, full[:, t]), t


@torch.no_grad()
def test_ragged_prompts_equal_their_unpadded_single_row_runs():
    model = tiny()
    torch.manual_seed(2)
    ids = torch.randint(0, V, (4, 20))
    prompt_lens = torch.tensor([5, 1, 9, 3])  # right-padded here; start left-packs them
    steps = 8
    logits, state = model.start(input_ids=ids, lengths=prompt_lens, max_new_tokens=steps)
    got = [logits]
    for j in range(steps - 1):
        logits, state = model.step(ids[torch.arange(4), prompt_lens + j], state)
        got.append(logits)
    got = torch.stack(got, 1)  # (B, steps, V)
    for b in range(4):
        p = int(prompt_lens[b])
        ref = model(ids[b : b + 1, : p + steps])[0]  # (p + steps, V)
        assert close(got[b], ref[p - 1 : p - 1 + steps]), b


@torch.no_grad()
def test_forward_with_left_or_right_padding_equals_unpadded():
    model = tiny()
    torch.manual_seed(3)
    ids = torch.randint(0, V, (2, 12))  # row 1 is 7 tokens long
    alone = model(ids[1:, :7])[0]  # (7, V)
    right = torch.ones(2, 12, dtype=torch.long)
    right[1, 7:] = 0
    assert close(model(ids, attention_mask=right)[1, :7], alone)
    left_ids = ids.clone()
    left_ids[1] = torch.cat([torch.zeros(5, dtype=torch.long), ids[1, :7]])
    left = right.flip(1)
    assert close(model(left_ids, attention_mask=left)[1, 5:], alone)
    assert close(model(left_ids, attention_mask=left)[0], model(ids[:1])[0], 1e-6)


@torch.no_grad()
def test_greedy_equals_brute_force_argmax_over_full_forwards():
    model = tiny()
    torch.manual_seed(4)
    ids = torch.randint(0, V, (3, 10))
    lengths = [10, 4, 1]
    out = greedy(model, input_ids=ids, lengths=lengths, max_new_tokens=12)
    for b, p in enumerate(lengths):
        seq = ids[b, :p].tolist()
        for _ in range(12):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
        assert out.sequences[b] == seq[p:]


@torch.no_grad()
def test_exhaustive_beam_search_equals_brute_force_best_pair():
    """With K = V beams, two tokens are searched exhaustively (beams expand rows through select)."""
    model = tiny()
    torch.manual_seed(5)
    ids = torch.randint(0, V, (2, 6))
    lengths = [6, 3]
    out = beam_search(model, input_ids=ids, lengths=lengths, num_beams=V, max_new_tokens=2)
    for b, p in enumerate(lengths):
        prompt = ids[b, :p]
        first = model(prompt[None])[0, -1].log_softmax(-1)  # (V,)
        grown = torch.cat([prompt.expand(V, p), torch.arange(V)[:, None]], 1)  # (V, p + 1)
        second = model(grown)[:, -1].log_softmax(-1)  # (V, V)
        total = first[:, None] + second  # (V, V): log p(a, b | prompt)
        best = int(total.argmax())
        assert out.sequences[b] == [best // V, best % V]
        assert abs(out.scores[b] - float(total.max()) / 2) <= 1e-4  # length penalty 1: / 2 tokens


@torch.no_grad()
def test_sampled_scores_equal_full_forward_log_probs_and_repeat_with_the_seed():
    model = tiny()
    torch.manual_seed(6)
    ids = torch.randint(0, V, (2, 7))
    lengths = [7, 2]
    draw = lambda: sample(model, input_ids=ids, lengths=lengths, max_new_tokens=6, num_samples=3,
                          generator=torch.Generator().manual_seed(7))
    out = draw()
    assert out.sequences == draw().sequences
    assert len(out.sequences) == 6 and len({tuple(s) for s in out.sequences}) > 1
    for i, new in enumerate(out.sequences):
        b = i // 3
        p = lengths[b]
        seq = torch.tensor([ids[b, :p].tolist() + new])
        logp = model(seq)[0, p - 1 : -1].log_softmax(-1)  # (6, V)
        ref = float(logp.gather(1, torch.tensor(new)[:, None]).sum())
        assert abs(out.scores[i] - ref) <= 1e-4 * max(1.0, abs(ref))


def test_zeros_init_makes_every_rtf_filter_the_identity():
    model = Transformer(TransformerConfig(**{**SHAPE, "rtf_init": "zeros"}))
    mixers = [block.mixer for block in model.blocks]
    assert all(isinstance(m, HyenaRTF) for m in mixers)
    delta = torch.zeros(16, 20)
    delta[:, 0] = 1.0
    for m in mixers:
        assert torch.equal(m.rtf.h0, torch.ones(1, 16))
        assert torch.equal(m.rtf.kernel(20)[0], delta)  # k = h0 * delta, untouched by GPT-2 init
    # the Xavier filters keep their own init too: h0 ~ N(0, 1), not N(0, init_std)
    xavier = Transformer(TransformerConfig(**SHAPE))
    h0 = torch.cat([b.mixer.rtf.h0.flatten() for b in xavier.blocks])
    assert h0.std() > 0.3 and xavier.blocks[0].mixer.rtf.a_raw.abs().max() > 0.1


@torch.no_grad()
def test_equals_rtflm_with_the_same_weights_and_input_major_linears():
    """Transformer(mixer="rtf") is RTFLM plus learned position embeddings: with those zeroed and
    RTFLM's weights copied in, forward and decoding give the same logits."""
    torch.manual_seed(8)
    ref = RTFLM(RTFLMConfig(vocab_size=V, n_layer=2, d_model=16, d_ff=32, state_size=8, num_a=4,
                            max_len=48, norm="rms")).eval()
    model = tiny(norm="rms")
    missing, unexpected = model.load_state_dict(ref.state_dict(), strict=False)
    assert missing == ["pos_emb.weight"] and unexpected == []
    with torch.no_grad():
        model.pos_emb.weight.zero_()
    for block in model.blocks:
        for linear in (block.mixer.in_proj, block.mixer.out):
            assert linear.weight.t().is_contiguous()  # input-major, values unchanged
        assert block.mixer.conv.weight.is_contiguous()  # Conv1d untouched
    ids = torch.randint(0, V, (2, 30))
    assert close(model(ids), ref(ids), 1e-5)
    a, sa = model.start(input_ids=ids[:, :9], max_new_tokens=5)
    b, sb = ref.start(input_ids=ids[:, :9])
    assert close(a, b, 1e-5)
    for t in range(9, 14):
        (a, sa), (b, sb) = model.step(ids[:, t], sa), ref.step(ids[:, t], sb)
        assert close(a, b, 1e-5)


@pytest.mark.parametrize("overrides, message", [
    ({"mask": "prefix"}, "mixer='rtf' needs mask='causal'"),
    ({"mask": "bidirectional"}, "mixer='rtf' needs mask='causal'"),
    ({"pos": "rope"}, "no attention for RoPE"),
    ({"rtf_init": "normal"}, "rtf_init='normal' is not one of xavier, zeros"),
    ({"rtf_num_a": 3}, "rtf_num_a=3 does not divide d_model=16"),
    ({"rtf_short_conv": -1}, "rtf_short_conv >= 0"),
    ({"max_len": 8}, "RTF max_len (8) must exceed state_size (8)"),
])
def test_bad_options_are_one_line_user_errors(overrides, message):
    with pytest.raises(UserError) as err:
        Transformer(TransformerConfig(**{**SHAPE, **overrides}))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_heads_do_not_constrain_an_rtf_model():
    model = Transformer(TransformerConfig(**{**SHAPE, "d_model": 12, "n_head": 5, "rtf_num_a": None}))
    assert model.blocks[0].mixer.d_model == 12


def test_save_load_roundtrip_and_old_configs(tmp_path):
    model = tiny(rtf_short_conv=2, rtf_montel=False, rtf_init="zeros")
    with torch.no_grad():
        for block in model.blocks:
            block.mixer.rtf.reset_parameters("xavier")
            block.mixer.rtf.a_raw.mul_(0.1)  # stable poles
    save(model, None, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["mixer"] == "rtf" and config["rtf_short_conv"] == 2 and config["rtf_montel"] is False
    loaded, tokenizer = load(tmp_path / "m")
    assert tokenizer is None and loaded.config == model.config
    ids = torch.randint(0, V, (2, 25))
    assert torch.equal(loaded(ids), model(ids))
    a, sa = loaded.start(input_ids=ids[:, :6], max_new_tokens=3)
    b, sb = model.start(input_ids=ids[:, :6], max_new_tokens=3)
    assert torch.equal(a, b) and torch.equal(loaded.step(ids[:, 6], sa)[0], model.step(ids[:, 6], sb)[0])
    # a config.json written before the RTF fields existed still loads, with their defaults
    attn = Transformer(TransformerConfig(vocab_size=V, n_layer=1, n_head=2, d_model=8, d_ff=16, max_len=16))
    save(attn, None, tmp_path / "old")
    old = json.loads((tmp_path / "old" / "config.json").read_text())
    old = {k: v for k, v in old.items() if not k.startswith("rtf_")}
    (tmp_path / "old" / "config.json").write_text(json.dumps(old))
    again, _ = load(tmp_path / "old")
    assert again.config.rtf_state_size == 64 and again.config.mixer == "attention"
    assert torch.equal(again(ids[:, :16]), attn.eval()(ids[:, :16]))


def test_training_lowers_the_loss_and_reaches_the_filters():
    model = Transformer(TransformerConfig(**SHAPE))
    torch.manual_seed(9)
    model.train()
    ids = torch.randint(0, V, (4, 24))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def loss_fn() -> torch.Tensor:
        logits = model(ids[:, :-1])  # (B, T-1, V)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, V), ids[:, 1:].reshape(-1))

    first = float(loss_fn().detach())
    for _ in range(25):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    rtf = model.blocks[0].mixer.rtf
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in (rtf.a_raw, rtf.b, rtf.h0))
    assert float(loss_fn().detach()) < 0.8 * first
    model.eval()  # decoding after training uses the trained filters (recurrence rebuilt by start)
    full = model(ids)
    logits, state = model.start(input_ids=ids[:, :10], max_new_tokens=4)
    for t in range(10, 14):
        logits, state = model.step(ids[:, t], state)
        assert close(logits, full[:, t])
