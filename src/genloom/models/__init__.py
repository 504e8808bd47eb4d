"""genloom.models: the Transformer (GPT-2 / Llama families, causal / prefix / bidirectional),
Hugging Face interop (`from_hf`, `HFCausalLM`), any GGUF on llama.cpp (`LlamaCppLM`, imported
from `genloom.models.llamacpp`; llama-cpp-python loads only when one is made) and model
directories (`save`, `load`)."""

from genloom.models.hf import HFCausalLM, convert, from_hf, load_hf
from genloom.models.io import MODEL_TYPES, load, model_family, save
from genloom.models.llamacpp import LlamaCppLM, load_llamacpp
from genloom.models.transformer import (
    MIXERS,
    Transformer,
    TransformerConfig,
    TransformerState,
    gpt2_small_test,
    smollm2_135m,
)

__all__ = [
    "HFCausalLM",
    "LlamaCppLM",
    "MIXERS",
    "MODEL_TYPES",
    "Transformer",
    "TransformerConfig",
    "TransformerState",
    "convert",
    "from_hf",
    "gpt2_small_test",
    "load",
    "load_hf",
    "load_llamacpp",
    "model_family",
    "save",
    "smollm2_135m",
]
