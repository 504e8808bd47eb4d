"""`generate()` and `genloom generate` on a tiny Hugging Face model saved to disk (random GPT-2 +
a byte-level BPE trained here): texts equal Hugging Face generate()'s on the same weights, seeded
sampling is reproducible, streaming equals the batch result, bad input is one line and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genloom.cli import main
from genloom.decode import loops
from genloom.decode.generate import build_processors, generate, generate_stream, validate_options
from genloom.errors import UserError

TEXTS = ["the quick brown fox jumps over the lazy dog", "hello world, a tiny model says hello",
         "你好世界，今天天气很好", "pack my box with five dozen liquor jugs"]
PROMPTS = ["the quick", "hello", "你好", "pack my box with"]
EOS = 0


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS * 3, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=300, n_positions=48, n_embd=32, n_layer=2, n_head=2, initializer_range=0.3,
                     bos_token_id=EOS, eos_token_id=EOS)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        model.transformer.wte.weight[EOS] *= 2.5  # EOS likely enough that some rows finish early
    path = tmp_path_factory.mktemp("tiny-gpt2")
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def loaded(hf_dir):
    """(HF model, genloom Transformer converted from it, its HFTokenizer)."""
    from genloom.models.hf import from_hf, load_hf

    hf_model, _ = load_hf(hf_dir)
    model, tokenizer = from_hf(hf_dir)
    return hf_model, model, tokenizer


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

def test_greedy_text_equals_hf(loaded):
    hf_model, model, tok = loaded
    ours = generate(model, tok, PROMPTS, max_new_tokens=20, repetition_penalty=1.3, no_repeat_ngram_size=2)
    ref = _hf_texts(hf_model, tok, PROMPTS, do_sample=False, max_new_tokens=20, repetition_penalty=1.3,
                    no_repeat_ngram_size=2)
    assert ours == ref
    assert len(set(ours)) == len(PROMPTS)


def test_beam_text_equals_hf(loaded):
    hf_model, model, tok = loaded
    ours = generate(model, tok, PROMPTS, strategy="beam", num_beams=3, num_return_sequences=2, max_new_tokens=16,
                    length_penalty=0.7, early_stopping=True)
    ref = _hf_texts(hf_model, tok, PROMPTS, do_sample=False, num_beams=3, num_return_sequences=2, max_new_tokens=16,
                    length_penalty=0.7, early_stopping=True)
    assert ours == ref and len(ours) == 8


def test_sampling_is_seeded_and_uses_the_listed_processors(loaded):
    _, model, tok = loaded
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
def test_stream_pieces_join_to_the_generated_text(loaded, kw):
    _, model, tok = loaded
    for prompt in PROMPTS:
        pieces = list(generate_stream(model, tok, prompt, max_new_tokens=16, **kw))
        assert "".join(pieces) == generate(model, tok, [prompt], max_new_tokens=16, **kw)[0]
        assert all(pieces) and not any(p.endswith("\ufffd") for p in pieces[:-1])  # held back until whole


def test_too_long_prompt_errors_or_truncates(loaded):
    _, model, tok = loaded
    long = " ".join(TEXTS)  # more tokens than the 48-position context leaves
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
    (["a"], dict(strategy="nucleus"), "unknown strategy 'nucleus'"),
    (["a"], dict(top_q=0.5), "unknown generate option(s): top_q"),
    ([""], {}, "prompt 0 is empty"),
])
def test_bad_input_is_a_one_line_user_error(loaded, prompts, kw, message):
    _, model, tok = loaded
    with pytest.raises(UserError) as e:
        generate(model, tok, prompts, **kw)
    assert message in str(e.value) and "\n" not in str(e.value)


# ---- the CLI ----------------------------------------------------------------------------------

def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "genloom.cli", "generate", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_cli_subprocess_prints_what_generate_returns(hf_dir, loaded):
    _, model, tok = loaded
    r = _cli("--model", str(hf_dir), "--prompt", PROMPTS[0], "--prompt", PROMPTS[2], "--max-new-tokens", "12",
             "--no-repeat-ngram-size", "2")
    assert r.returncode == 0, r.stderr
    expected = generate(model, tok, [PROMPTS[0], PROMPTS[2]], max_new_tokens=12, no_repeat_ngram_size=2)
    assert r.stdout == "".join(t.replace("\\", "\\\\").replace("\n", "\\n") + "\n" for t in expected)


@pytest.mark.parametrize("args,message", [
    (["--model", "/nonexistent/model-dir", "--prompt", "hi"], "no local Hugging Face model '/nonexistent/model-dir'"),
    (["--prompt", "hi", "--strategy", "sample", "--top-p", "1.5"], "top_p must be in (0, 1], got 1.5"),
    (["--prompt", "hi", "--strategy", "beam", "--num-beams", "0"], "num_beams must be an integer >= 1, got 0"),
])
def test_cli_subprocess_bad_input_exits_2_with_one_line(hf_dir, args, message):
    if "--model" not in args:
        args = ["--model", str(hf_dir), *args]
    r = _cli(*args)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("genloom: error: ") and message in r.stderr


def test_cli_input_file_jsonl_output_and_engines(hf_dir, loaded, tmp_path, capsys):
    _, model, tok = loaded
    src = tmp_path / "prompts.txt"
    src.write_text("\n".join(PROMPTS) + "\n\n", encoding="utf-8")
    outs = {}
    for engine in ("genloom", "hf"):
        dest = tmp_path / f"out-{engine}.jsonl"
        rc = main(["generate", "--model", str(hf_dir), "--input", str(src), "--strategy", "beam", "--num-beams", "3",
                   "--num-return-sequences", "2", "--max-new-tokens", "10", "--jsonl", "--output", str(dest),
                   "--engine", engine])
        assert rc == 0 and capsys.readouterr().out == ""
        outs[engine] = [json.loads(line) for line in dest.read_text(encoding="utf-8").splitlines()]
    assert outs["genloom"] == outs["hf"]  # converted Transformer == HF model behind HFCausalLM
    expected = generate(model, tok, PROMPTS, strategy="beam", num_beams=3, num_return_sequences=2, max_new_tokens=10)
    assert [o["output"] for o in outs["hf"]] == expected
    assert [(o["prompt"], o["index"]) for o in outs["hf"]] == [(p, i) for p in PROMPTS for i in range(2)]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["out-genloom.jsonl", "out-hf.jsonl", "prompts.txt"]


def test_cli_stream_equals_batch(hf_dir, loaded, capsys):
    _, model, tok = loaded
    args = ["--model", str(hf_dir), "--prompt", PROMPTS[1], "--strategy", "sample", "--seed", "5", "--top-k", "40",
            "--max-new-tokens", "14"]
    assert main(["generate", *args, "--stream"]) == 0
    streamed = capsys.readouterr().out
    expected = generate(model, tok, [PROMPTS[1]], strategy="sample", seed=5, top_k=40, max_new_tokens=14)[0]
    assert streamed == expected + "\n"


@pytest.mark.parametrize("extra,message", [
    (["--input", "{missing}"], "no input file"),
    (["--input", "{empty}"], "holds no prompts"),
    (["--prompt", "hi", "--output", "{nodir}"], "no directory"),
    (["--prompt", "hi", "--stream", "--strategy", "beam"], "streaming works with strategy 'greedy' or 'sample'"),
    (["--prompt", "hi", "--stream", "--jsonl"], "--stream prints to the terminal"),
])
def test_cli_in_process_bad_input(hf_dir, tmp_path, capsys, extra, message):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    paths = dict(missing=str(tmp_path / "nope.txt"), empty=str(empty), nodir=str(tmp_path / "no" / "out.txt"))
    extra = [a.format(**paths) for a in extra]
    assert main(["generate", "--model", str(hf_dir), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert sorted(f.name for f in tmp_path.iterdir()) == ["empty.txt"]


def test_cli_on_a_genloom_model_directory(hf_dir, loaded, tmp_path):
    """io.save of the converted model: `genloom generate` reads it back and gives the same text."""
    from genloom.models import io

    _, model, tok = loaded
    io.save(model, tok, tmp_path / "lm")
    r = _cli("--model", str(tmp_path / "lm"), "--prompt", PROMPTS[3], "--strategy", "beam", "--num-beams", "2",
             "--max-new-tokens", "10")
    assert r.returncode == 0, r.stderr
    expected = generate(model, tok, [PROMPTS[3]], strategy="beam", num_beams=2, max_new_tokens=10)
    assert r.stdout == expected[0].replace("\\", "\\\\").replace("\n", "\\n") + "\n"
    (tmp_path / "lm" / "model.safetensors").write_bytes(b"not safetensors")
    r = _cli("--model", str(tmp_path / "lm"), "--prompt", "hi")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cannot read the weights" in r.stderr


def test_engines_pick_the_model_class(hf_dir, tmp_path):
    from genloom.models import HFCausalLM, Transformer
    from genloom.tasks.generate import load_model

    assert isinstance(load_model(str(hf_dir))[0], Transformer)  # auto: GPT-2 converts
    assert isinstance(load_model(str(hf_dir), engine="genloom")[0], Transformer)
    assert isinstance(load_model(str(hf_dir), engine="hf")[0], HFCausalLM)
    with pytest.raises(UserError, match="unknown engine 'onnx'"):
        load_model(str(hf_dir), engine="onnx")
