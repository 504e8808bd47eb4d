"""`generate()` and `generate_stream()` (decode/generate.py) on a tiny Hugging Face GPT-2 converted
to genloom's Transformer (tests/lm/conftest.py): texts equal Hugging Face generate()'s on the same
weights, seeded sampling is reproducible, streaming equals the batch result, bad options are
one-line user errors."""

from __future__ import annotations

import pytest
import torch

from genloom.decode import loops
from genloom.decode.generate import build_processors, generate, generate_stream, validate_options
from genloom.errors import UserError

PROMPTS = ["the quick", "hello", "你好", "pack my box with"]
EOS = 0  # the GPT-2's end of text


def _hf_texts(hf_model, tokenizer, prompts, **kw):
    """Hugging Face generate(), one prompt at a time, new tokens decoded by the same tokenizer."""
    out = []
    for p in prompts:
        ids = torch.tensor([tokenizer.encode(p)])
        seqs = hf_model.generate(ids, attention_mask=torch.ones_like(ids), eos_token_id=EOS, pad_token_id=EOS, **kw)
        for s in seqs:
            new = s[ids.shape[1]:].tolist()
            out.append(tokenizer.decode(new[: new.index(EOS)] if EOS in new else new))
    return out


# ---- generate() -------------------------------------------------------------------------------

def test_greedy_text_equals_hf(hf_gpt2):
    hf_model, model, tok = hf_gpt2
    ours = generate(model, tok, PROMPTS, max_new_tokens=20, repetition_penalty=1.3, no_repeat_ngram_size=2)
    ref = _hf_texts(hf_model, tok, PROMPTS, do_sample=False, max_new_tokens=20, repetition_penalty=1.3,
                    no_repeat_ngram_size=2)
    assert ours == ref
    assert len(set(ours)) == len(PROMPTS)


def test_beam_text_equals_hf(hf_gpt2):
    hf_model, model, tok = hf_gpt2
    ours = generate(model, tok, PROMPTS, strategy="beam", num_beams=3, num_return_sequences=2, max_new_tokens=16,
                    length_penalty=0.7, early_stopping=True)
    ref = _hf_texts(hf_model, tok, PROMPTS, do_sample=False, num_beams=3, num_return_sequences=2, max_new_tokens=16,
                    length_penalty=0.7, early_stopping=True)
    assert ours == ref and len(ours) == 8


def test_sampling_is_seeded_and_uses_the_listed_processors(hf_gpt2):
    _, model, tok = hf_gpt2
    kw = dict(strategy="sample", seed=3, temperature=0.9, top_k=20, top_p=0.95, num_return_sequences=3,
              max_new_tokens=12)
    a, b = generate(model, tok, PROMPTS, **kw), generate(model, tok, PROMPTS, **kw)
    assert a == b and len(a) == 12 and a != generate(model, tok, PROMPTS, **{**kw, "seed": 4})
    # the same as the loop with the processors built by hand, in Hugging Face's order
    from genloom.decode import processors as P

    ids, lengths = tok.encode_batch(PROMPTS, pad_id=0)
    out = loops.sample(model, input_ids=ids, lengths=lengths, max_new_tokens=12, num_samples=3, eos_id=EOS,
                        processors=[P.Temperature(0.9), P.TopK(20), P.TopP(0.95)],
                        generator=torch.Generator().manual_seed(3))
    assert a == [tok.decode(s) for s in out.sequences]


def test_processor_order_is_hf_order():
    opts = validate_options(dict(strategy="sample", top_p=0.9, temperature=0.7, repetition_penalty=1.2, top_k=5,
                                 min_p=0.1, no_repeat_ngram_size=3))
    names = [type(p).__name__ for p in build_processors(opts, model_vocab=10, tokenizer_vocab=8)]
    assert names == ["BannedTokens", "RepetitionPenalty", "NoRepeatNGram", "Temperature", "TopK", "TopP", "MinP"]


@pytest.mark.parametrize("kw", [dict(), dict(strategy="sample", seed=11, top_k=30)])
def test_stream_pieces_join_to_the_generated_text(hf_gpt2, kw):
    _, model, tok = hf_gpt2
    for prompt in PROMPTS:
        pieces = list(generate_stream(model, tok, prompt, max_new_tokens=16, **kw))
        assert "".join(pieces) == generate(model, tok, [prompt], max_new_tokens=16, **kw)[0]
        assert all(pieces) and not any(p.endswith("\ufffd") for p in pieces[:-1])  # held back until whole


def test_too_long_prompt_errors_or_truncates(hf_gpt2, gpt2_texts):
    _, model, tok = hf_gpt2
    long = " ".join(gpt2_texts)  # more tokens than the 48-position context leaves
    with pytest.raises(UserError, match="exceeds the model's context of 48 tokens"):
        generate(model, tok, [long], max_new_tokens=8)
    ids = tok.encode(long)
    assert len(ids) > 40
    cut = loops.greedy(model, input_ids=torch.tensor([ids[-40:]]), max_new_tokens=8, eos_id=EOS)
    assert generate(model, tok, [long], max_new_tokens=8, truncate=True) == [tok.decode(cut.sequences[0])]


@pytest.mark.parametrize("prompts,kw,message", [
    ([], {}, "no prompts to generate from"),
    (["a"], dict(strategy="sample", top_p=1.5), "top_p must be in (0, 1], got 1.5"),
    (["a"], dict(strategy="beam", num_beams=0), "num_beams must be an integer >= 1, got 0"),
    (["a"], dict(max_new_tokens=0), "max_new_tokens must be an integer >= 1, got 0"),
    (["a"], dict(temperature=0.5), "temperature is a sampling option: use strategy 'sample', not 'greedy'"),
    (["a"], dict(strategy="beam", num_beams=2, num_return_sequences=3), "must be <= num_beams (2)"),
    (["a"], dict(max_new_tokens=3, min_new_tokens=4), "min_new_tokens (4) must be <= max_new_tokens (3)"),
    (["a"], dict(strategy="nucleus"), "unknown strategy 'nucleus'"),
    (["a"], dict(top_q=0.5), "unknown generate option(s): top_q"),
    ([""], {}, "prompt 0 is empty"),
])
def test_bad_input_is_a_one_line_user_error(hf_gpt2, prompts, kw, message):
    _, model, tok = hf_gpt2
    with pytest.raises(UserError) as e:
        generate(model, tok, prompts, **kw)
    assert message in str(e.value) and "\n" not in str(e.value)
