"""The Transformer: cached decoding equals the full forward for every variant and mask, ragged
batches, one cache allocation, row selection, masks and RoPE against brute force, probes, model
directories, and one-line errors for bad input."""

from __future__ import annotations

import math

import pytest
import torch

from genloom.errors import UserError
from genloom.models import Transformer, TransformerConfig, gpt2_small_test, load, save, smollm2_135m
from genloom.nn import probe
from genloom.nn.attention import allowed_mask, apply_rope, rope_tables

V = 37
VARIANTS = {
    # GPT-2 family: learned positions, LayerNorm, GELU, biases, tied embeddings, plain MHA
    "gpt2": dict(norm="layer", mlp="gelu", pos="learned", bias=True, tie_embeddings=True),
    # Llama family with grouped-query attention (4 query heads over 2 K/V heads), tied and untied
    "llama_gqa_tied": dict(norm="rms", mlp="swiglu", pos="rope", n_kv_head=2, bias=False, tie_embeddings=True),
    "llama_gqa_untied": dict(norm="rms", mlp="swiglu", pos="rope", n_kv_head=2, bias=False, tie_embeddings=False),
    # multi-query attention, exact GELU, with segment embeddings (UniLM style)
    "mqa_segments": dict(norm="layer", mlp="gelu_erf", pos="rope", n_kv_head=1, n_segment=2),
}


def tiny(variant: str, mask: str = "causal", **kw) -> Transformer:
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=V, n_layer=2, n_head=4, d_model=32, d_ff=48, max_len=40, mask=mask,
                            **{**VARIANTS[variant], **kw})
    return Transformer(cfg).eval()


def row_reference(model: Transformer, ids: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Full-forward logits of one unpadded row; for the prefix mask the prompt is the source."""
    seg = None
    if model.config.mask == "prefix":
        seg = torch.zeros_like(ids)
        seg[:, prompt_len:] = 1
    return model(ids, segment_ids=seg)[0]  # (T, V)


def decode_teacher_forced(model, ids, prompt_lens, steps):
    """start on each row's prompt, then step the row's true next tokens; logits per position."""
    logits, state = model.start(input_ids=ids, lengths=prompt_lens, max_new_tokens=steps)
    out = [logits]
    for j in range(steps - 1):
        tokens = ids[torch.arange(ids.shape[0]), prompt_lens + j]
        logits, state = model.step(tokens, state)
        out.append(logits)
    return torch.stack(out, 1), state  # (B, steps, V)


@pytest.mark.parametrize("mask", ["causal", "prefix"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cached_steps_equal_full_forward_ragged(variant, mask):
    model = tiny(variant, mask)
    torch.manual_seed(1)
    ids = torch.randint(0, V, (4, 16))
    prompt_lens = torch.tensor([5, 1, 8, 3])  # ragged, right-padded (the tail of each row is its future)
    steps = 8
    got, _ = decode_teacher_forced(model, ids, prompt_lens, steps)
    for b in range(4):
        p = int(prompt_lens[b])
        ref = row_reference(model, ids[b : b + 1, : p + steps], p)  # (p + steps, V)
        assert (got[b] - ref[p - 1 : p - 1 + steps]).abs().max() <= 1e-4


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_with_padding_equals_unpadded(variant):
    model = tiny(variant)
    torch.manual_seed(2)
    ids = torch.randint(0, V, (3, 9))
    lens = [9, 4, 6]
    for side in ("right", "left"):
        padded = torch.zeros_like(ids)
        attn = torch.zeros_like(ids)
        for b, n in enumerate(lens):
            cols = slice(0, n) if side == "right" else slice(9 - n, 9)
            padded[b, cols], attn[b, cols] = ids[b, :n], 1
        out = model(padded, attention_mask=attn)
        for b, n in enumerate(lens):
            cols = slice(0, n) if side == "right" else slice(9 - n, 9)
            assert (out[b, cols] - model(ids[b : b + 1, :n])[0]).abs().max() <= 1e-5


@pytest.mark.parametrize("variant", ["gpt2", "llama_gqa_untied"])
def test_conditional_norms_cached_steps_equal_full_forward(variant):
    """With conditional norms (issue 7) the condition held in the state drives every step exactly
    as in the full forward, also after select reorders rows."""
    model = tiny(variant, cond_dim=6, cond_labels=3)
    with torch.no_grad():  # leave the zero init, so the condition really changes the logits
        for name, p in model.named_parameters():
            if "cond_" in name:
                p.normal_(0, 0.3)
    torch.manual_seed(6)
    ids = torch.randint(0, V, (3, 12))
    lens, labels = torch.tensor([4, 6, 2]), torch.tensor([0, 2, 1])
    logits, state = model.start(input_ids=ids, lengths=lens, max_new_tokens=5, condition=labels)
    for j in range(3):
        logits, state = model.step(ids[torch.arange(3), lens + j], state)
    index = torch.tensor([1, 0])
    state = model.select(state, index)
    logits, _ = model.step(ids[index, lens[index] + 3], state)
    for r, b in enumerate(index.tolist()):
        p = int(lens[b])
        ref = model(ids[b : b + 1, : p + 4], condition=labels[b : b + 1])[0, -1]
        assert (logits[r] - ref).abs().max() <= 1e-4
    other = model(ids[:1, :4], condition=torch.tensor([1]))[0, -1]
    assert (other - model(ids[:1, :4], condition=torch.tensor([0]))[0, -1]).abs().max() > 1e-3


def test_bidirectional_start_scores_prompt_and_refuses_decoding():
    model = tiny("gpt2", "bidirectional")
    ids = torch.randint(0, V, (2, 7))
    logits, _ = model.start(input_ids=ids, lengths=torch.tensor([7, 4]), max_new_tokens=0)
    assert (logits[0] - model(ids[:1])[0, -1]).abs().max() <= 1e-5
    assert (logits[1] - model(ids[1:, :4])[0, -1]).abs().max() <= 1e-5
    with pytest.raises(UserError, match="cannot decode token by token"):
        model.start(input_ids=ids, max_new_tokens=3)


def test_prefix_segments_in_prompt_follow_unilm_rule():
    """A prompt holding source + the forced start of the target (segment 1) decodes like the
    full forward with the same segment ids."""
    model = tiny("mqa_segments", "prefix")
    ids = torch.randint(0, V, (1, 12))
    seg = torch.tensor([[0] * 5 + [1] * 7])
    logits, state = model.start(input_ids=ids[:, :8], segment_ids=seg[:, :8], max_new_tokens=4)
    ref = model(ids, segment_ids=seg)[0]  # (12, V)
    got = [logits]
    for j in range(3):
        logits, state = model.step(ids[:, 8 + j], state)
        got.append(logits)
    assert (torch.cat(got) - ref[7:11]).abs().max() <= 1e-4


def test_allowed_mask_equals_brute_force():
    torch.manual_seed(3)
    seg = torch.tensor([[0, 0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1, 1]])
    valid = torch.tensor([[1, 1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    for kind in ("causal", "prefix", "bidirectional"):
        mask, causal = allowed_mask(kind, seq_len=7, key_valid=valid, segment_ids=seg)
        assert not causal
        for b in range(2):
            c = [sum(seg[b, : k + 1].tolist()) for k in range(7)]
            for i in range(7):
                for j in range(7):
                    rule = {"causal": j <= i, "prefix": c[j] <= c[i], "bidirectional": True}[kind]
                    expect = (rule and bool(valid[b, j])) or i == j
                    assert bool(mask[min(b, mask.shape[0] - 1), 0, i, j]) == expect, (kind, b, i, j)
    assert allowed_mask("causal", seq_len=5) == (None, True)


def test_rope_equals_rotate_half_reference():
    d, theta = 8, 10000.0
    cos, sin = rope_tables(d, 20, theta)
    x = torch.randn(20, 3, d, dtype=torch.float64)
    got = apply_rope(x, cos[:, None].double(), sin[:, None].double())
    for pos in range(20):
        for i in range(d // 2):
            angle = pos * theta ** (-2 * i / d)
            a, b = x[pos, :, i], x[pos, :, i + d // 2]
            assert torch.allclose(got[pos, :, i], a * math.cos(angle) - b * math.sin(angle), atol=1e-5)
            assert torch.allclose(got[pos, :, i + d // 2], b * math.cos(angle) + a * math.sin(angle), atol=1e-5)


def test_cache_allocated_once_and_select_reorders_rows():
    model = tiny("llama_gqa_tied")
    torch.manual_seed(4)
    ids = torch.randint(0, V, (3, 14))
    lens = torch.tensor([6, 3, 5])
    logits, state = model.start(input_ids=ids, lengths=lens, max_new_tokens=6)
    ptr = state.buffer.data_ptr()
    for j in range(2):
        logits, state = model.step(ids[torch.arange(3), lens + j], state)
        assert state.buffer.data_ptr() == ptr and state.layers[0].data_ptr() == ptr
    index = torch.tensor([2, 0])  # drop row 1, swap the others: in place
    state = model.select(state, index)
    assert state.buffer.data_ptr() == ptr
    logits, state = model.step(ids[index, lens[index] + 2], state)
    for r, b in enumerate(index.tolist()):
        p = int(lens[b])
        assert (logits[r] - model(ids[b : b + 1, : p + 3])[0, -1]).abs().max() <= 1e-4
    # more rows than allocated (beams): one new buffer, then in place again
    state = model.select(state, torch.tensor([0, 0, 1, 1]))
    ptr2 = state.buffer.data_ptr()
    logits, state = model.step(ids[[2, 2, 0, 0], lens[[2, 2, 0, 0]] + 3], state)
    assert state.buffer.data_ptr() == ptr2
    assert torch.equal(logits[0], logits[1]) and torch.equal(logits[2], logits[3])
    assert (logits[2] - model(ids[:1, : int(lens[0]) + 4])[0, -1]).abs().max() <= 1e-4
    with pytest.raises(ValueError, match="past the"):
        for _ in range(5):
            logits, state = model.step(logits.argmax(-1), state)


def test_random_selects_between_steps_follow_each_row_history():
    """Beam-like traffic: rows reordered, repeated and dropped between steps (some keep their own
    row, some take another's); every row's logits equal the full forward of its own history."""
    model = tiny("llama_gqa_untied")
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(0, V, (2, 5), generator=gen)
    logits, state = model.start(input_ids=ids, lengths=torch.tensor([5, 3]), max_new_tokens=12)
    history = [ids[0].tolist(), ids[1, :3].tolist()]
    for _ in range(10):
        rows = len(history)
        index = torch.randint(0, rows, (int(torch.randint(1, 5, (1,), generator=gen)),), generator=gen)
        if torch.rand(1, generator=gen) < 0.5:
            index[: min(rows, len(index))] = torch.arange(min(rows, len(index)))  # rows keeping their own
        state = model.select(state, index)
        history = [list(history[i]) for i in index.tolist()]
        tokens = torch.randint(0, V, (len(history),), generator=gen)
        logits, state = model.step(tokens, state)
        for h, t in zip(history, tokens.tolist()):
            h.append(t)
        for r, h in enumerate(history):
            assert (logits[r] - model(torch.tensor([h]))[0, -1]).abs().max() <= 1e-4


def test_probe_records_attention_and_changes_nothing():
    model = tiny("llama_gqa_untied")
    ids = torch.randint(0, V, (2, 6))
    records = []
    with probe.listening(lambda m, k, t: records.append((m, k, t))):
        logits = model(ids)
        first, state = model.start(input_ids=ids, max_new_tokens=2)
        step_logits, _ = model.step(first.argmax(-1), state)
    assert (logits - model(ids)).abs().max() <= 1e-5
    plain, st = model.start(input_ids=ids, max_new_tokens=2)
    assert (step_logits - model.step(plain.argmax(-1), st)[0]).abs().max() <= 1e-5
    shapes = [tuple(t.shape) for _, k, t in records if k == "attn_probs"]
    assert shapes == [(2, 4, 6, 6)] * 4 + [(2, 4, 1, 7)] * 2  # forward, prefill, then one step
    for _, _, t in records:
        assert torch.allclose(t.sum(-1), torch.ones(()), atol=1e-6)
    assert records[0][0] is model.blocks[0].mixer


def test_bad_input_one_line_errors():
    model = tiny("gpt2")  # max_len 40
    with pytest.raises(UserError, match="no prompts") as e:
        model.start(input_ids=torch.zeros(0, 5, dtype=torch.long), max_new_tokens=4)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="prompt 1 is empty"):
        model.start(input_ids=torch.ones(2, 5, dtype=torch.long), lengths=[5, 0], max_new_tokens=4)
    long = torch.randint(0, V, (2, 39))
    with pytest.raises(UserError, match="exceeds the model's context of 40") as e:
        model.start(input_ids=long, max_new_tokens=4)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="exceeds the model's context"):
        model(torch.zeros(1, 41, dtype=torch.long))
    for bad in (dict(norm="batch"), dict(n_head=5), dict(mixer="lstm"), dict(n_kv_head=3), dict(dropout=1.5)):
        with pytest.raises(UserError):
            TransformerConfig(**{**dict(d_model=32, n_head=4), **bad})
    with pytest.raises(UserError, match="need cond_dim"):
        TransformerConfig(d_model=32, n_head=4, cond_labels=2)


def test_left_truncation_keeps_last_tokens():
    model = tiny("llama_gqa_tied")  # max_len 40
    torch.manual_seed(5)
    ids = torch.randint(0, V, (2, 45))
    lens = torch.tensor([45, 20])
    logits, state = model.start(input_ids=ids, lengths=lens, max_new_tokens=4, truncate=True)
    # row 0 keeps its last 36 tokens; row 1 fits and is untouched
    assert (logits[0] - model(ids[:1, 9:45])[0, -1]).abs().max() <= 1e-4
    assert (logits[1] - model(ids[1:, :20])[0, -1]).abs().max() <= 1e-4
    with pytest.raises(UserError, match="exceeds"):
        model.start(input_ids=ids, max_new_tokens=40, truncate=True)  # nothing of the prompt would fit


def test_input_major_layout_keeps_values_ties_and_files(tmp_path):
    import copy

    from safetensors.torch import load_model, save_model

    model = tiny("llama_gqa_tied")
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and m is not model.lm_head:
            assert m.weight.t().is_contiguous() and not m.weight.is_contiguous()
    assert model.lm_head.weight is model.tok_emb.weight and model.tok_emb.weight.is_contiguous()
    # the tied head's decoding copy follows in-place weight changes
    ids0 = torch.randint(0, V, (1, 5))
    model.start(input_ids=ids0, max_new_tokens=1)
    with torch.no_grad():
        model.tok_emb.weight.mul_(1.5)
    logits, _ = model.start(input_ids=ids0, max_new_tokens=1)
    assert (logits[0] - model(ids0)[0, -1]).abs().max() <= 1e-5
    twin = copy.deepcopy(model)  # e.g. torch.optim.swa_utils.AveragedModel deep-copies the model
    save_model(twin, str(tmp_path / "plain.safetensors"))  # safetensors' own tied-weight saving
    load_model(twin, str(tmp_path / "plain.safetensors"))
    ids = torch.randint(0, V, (2, 7))
    plain = Transformer(model.config)  # the same values, every weight back to row-major
    plain.load_state_dict(model.state_dict())
    for m in plain.modules():
        if isinstance(m, torch.nn.Linear):
            m.weight = torch.nn.Parameter(m.weight.detach().contiguous())
    plain.tok_emb.weight = plain.lm_head.weight
    assert (plain(ids) - model(ids)).abs().max() <= 1e-5
    save(model, None, tmp_path)
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "model.safetensors"))
    assert all(t.is_contiguous() for t in stored.values())
    assert torch.equal(stored["blocks.0.mixer.qkv.weight"], model.blocks[0].mixer.qkv.weight)
    loaded, _ = load(tmp_path)
    assert loaded.blocks[0].mlp.fc.weight.t().is_contiguous() and loaded.lm_head.weight is loaded.tok_emb.weight
    untied = tiny("llama_gqa_untied")
    assert untied.lm_head.weight.t().is_contiguous()  # an untied head is input-major itself
    save_model(untied, str(tmp_path / "untied.safetensors"))
    # training still works on the strided parameters (embedding lookups gather strided rows)
    loss = torch.nn.functional.cross_entropy(loaded(ids)[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))
    loss.backward()
    assert loaded.tok_emb.weight.grad is not None and loaded.tok_emb.weight.grad.shape == (V, 32)


def test_presets():
    small, smol = gpt2_small_test(), smollm2_135m()
    assert (small.n_layer, small.d_model, small.vocab_size) == (4, 256, 8000)
    with torch.device("meta"):
        n_params = sum(p.numel() for p in Transformer(smollm2_135m(max_len=64)).parameters())
    assert n_params == 134_515_008 and smol.kv_heads == 3  # SmolLM2-135M's parameter count


def test_save_load_roundtrip_with_tokenizer_and_ema(tmp_path):
    from genloom.tokenizers import CharTokenizer

    model = tiny("llama_gqa_tied")
    tok = CharTokenizer(list("abcdefghij"))
    ema = {k: v + 1.0 for k, v in model.named_parameters()}  # as genloom.train.ema.EMA.averaged()
    save(model, tok, tmp_path / "m")
    ids = torch.randint(0, V, (2, 6))
    loaded, tok2 = load(tmp_path / "m")
    assert torch.equal(loaded(ids), model(ids)) and loaded.config == model.config
    assert loaded.lm_head.weight is loaded.tok_emb.weight  # tying survives
    assert tok2.encode("abc") == tok.encode("abc")
    save(model, None, tmp_path / "m", ema=ema)
    by_default, _ = load(tmp_path / "m")  # EMA weights are the default
    assert torch.equal(by_default.tok_emb.weight, ema["tok_emb.weight"])
    raw, _ = load(tmp_path / "m", ema=False)
    assert torch.equal(raw(ids), model(ids))
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".")]  # no temp files left


def test_load_errors_and_registry(tmp_path):
    with pytest.raises(UserError, match="not a model directory"):
        load(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "nope"}')
    with pytest.raises(UserError, match="unknown model_type 'nope'"):
        load(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "transformer", "colour": 1}')
    with pytest.raises(UserError, match="unknown field"):
        load(tmp_path)
    model = tiny("gpt2")
    save(model, None, tmp_path / "ok")
    from safetensors.torch import load_file, save_file

    weights = load_file(str(tmp_path / "ok" / "model.safetensors"))
    assert "lm_head.weight" not in weights  # the tied head is stored once
    save_file({k: v for k, v in weights.items() if k != "norm.weight"}, str(tmp_path / "ok" / "model.safetensors"))
    with pytest.raises(UserError, match="missing \\['norm.weight'\\]"):
        load(tmp_path / "ok")
    (tmp_path / "ok" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="cannot read the weights"):
        load(tmp_path / "ok")
    with pytest.raises(ValueError, match="not a registered model type"):
        save(torch.nn.Linear(2, 2), None, tmp_path / "linear")


@pytest.mark.parametrize("mask", ["causal", "prefix"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fast_step_plan_equals_module_steps(variant, mask):
    """`step` runs plain blocks through bound torch calls (state.plan); it must give exactly what
    the blocks' own `step` methods give (plan switched off), on ragged prompts, after a select."""
    model = tiny(variant, mask)
    torch.manual_seed(2)
    ids = torch.randint(0, V, (3, 12))
    lens = torch.tensor([4, 1, 6])
    runs = []
    for fast in (True, False):
        logits, state = model.start(input_ids=ids, lengths=lens, max_new_tokens=6)
        assert (state.plan is not None) == (model.config.mask != "bidirectional")
        if not fast:
            state.plan = None
        out = [logits]
        for j in range(5):
            if j == 2:
                state = model.select(state, torch.tensor([2, 0, 0]))
            logits, state = model.step(ids[:, 6 + j], state)
            out.append(logits)
        runs.append(torch.stack(out, 1))
    assert torch.equal(runs[0], runs[1])


def test_no_fast_plan_for_conditional_norms():
    model = tiny("gpt2", cond_dim=8, cond_labels=2)
    _, state = model.start(input_ids=torch.tensor([[1, 2, 3]]), max_new_tokens=2, condition=torch.tensor([1]))
    assert state.plan is None


@pytest.mark.parametrize("variant", ["gpt2", "llama_gqa_tied", "llama_gqa_untied"])
def test_one_row_fast_steps_match_module_steps_and_model_still_pickles(variant):
    """At batch 1 the plan's products (and the head) may go through OpenBLAS: equal to the module
    path within float32 rounding; nothing unpicklable is left on the model."""
    import pickle

    model = tiny(variant)
    ids = torch.randint(0, V, (1, 9), generator=torch.Generator().manual_seed(3))
    runs = []
    for fast in (True, False):
        logits, state = model.start(input_ids=ids[:, :4], max_new_tokens=5)
        if not fast:
            state.plan = None
        out = [logits]
        for j in range(5):
            logits, state = model.step(ids[:, 4 + j], state)
            out.append(logits)
        runs.append(torch.stack(out, 1))
    assert (runs[0] - runs[1]).abs().max() <= 1e-5
    again = pickle.loads(pickle.dumps(model))
    assert torch.equal(again(ids), model(ids))


@pytest.mark.parametrize("mask", ["causal", "prefix"])
def test_output_hidden_is_the_state_behind_the_logits(mask):
    """start(output_hidden=True) keeps in state.hidden the final-norm hidden state (B, C) that the
    returned logits come from, after start and every step (fast plan or not, across a select); the
    logits are bitwise those of a decode without it."""
    model = tiny("gpt2", mask)
    torch.manual_seed(4)
    ids = torch.randint(0, V, (3, 10))
    lens = torch.tensor([4, 1, 6])
    for fast in (True, False):
        logits, state = model.start(input_ids=ids, lengths=lens, max_new_tokens=5, output_hidden=True)
        plain, ref = model.start(input_ids=ids, lengths=lens, max_new_tokens=5)
        assert ref.hidden is None and torch.equal(logits, plain)
        if not fast:
            state.plan = ref.plan = None
        for j in range(4):
            assert state.hidden.shape == (3, 32)
            assert torch.equal(model._head(state.hidden), logits)  # the hidden state behind these logits
            if j == 2:
                state, ref = model.select(state, torch.tensor([2, 0, 0])), model.select(ref, torch.tensor([2, 0, 0]))
            tokens = ids[:, 6 + j]
            logits, state = model.step(tokens, state)
            plain, ref = model.step(tokens, ref)
            assert torch.equal(logits, plain) and ref.hidden is None
