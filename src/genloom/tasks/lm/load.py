"""A `--model` argument -> (Decodable, tokenizer), for `genloom generate` and `genloom continue`.

`--model` is a genloom model directory (its config.json names a model type of
`genloom.models.io.MODEL_TYPES`: a Transformer, an RTF LM, any family `models.load` rebuilds) or a
Hugging Face model: the name "smollm2-135m", a local model directory or a .gguf file. A Hugging
Face model runs converted into genloom's own Transformer (`genloom.models.convert`, the faster
path; the conversion is kept in the cache folder after the first load, so later loads read
safetensors instead of the source: `genloom.models.hf.load_converted`) or unconverted through
`HFCausalLM`, by `engine`. A GGUF model (or "smollm2-135m") runs on
llama.cpp with `engine="llamacpp"` (`genloom.models.llamacpp`), optionally requantized by `quant`.
Nothing is downloaded.
"""

from __future__ import annotations


import json
from pathlib import Path
from typing import Any

from genloom.errors import UserError

# how a Hugging Face model runs: converted to genloom's Transformer, wrapped as it is, or
# converted when its architecture is supported (GPT-2, Llama family) and wrapped otherwise; a
# GGUF model can also run on llama.cpp
ENGINES = ("auto", "genloom", "hf", "llamacpp")
QUANTS = ("f32", "f16", "q8_0", "q4_0", "q4_1")  # the keys of genloom.models.llamacpp.QUANTS (no torch import here)


def is_genloom_dir(source: str | Path) -> bool:
    """True if `source` is a directory whose config.json names a genloom model type (Hugging
    Face's config.json names theirs: "gpt2", "llama", ...)."""
    from genloom.models import io

    try:
        data = json.loads((Path(source) / io.CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("model_type") in io.MODEL_TYPES


def _no_tokenizer(source: str) -> UserError:
    return UserError(f"{source} has no tokenizer files: a model needs one to read prompts")


def load_model(source: str, *, engine: str = "auto", quant: str | None = None) -> tuple[Any, Any]:
    """(Decodable, tokenizer) from a genloom model directory, a Hugging Face model or a GGUF.

    Args:
        source: a genloom model directory, "smollm2-135m", a Hugging Face directory or a .gguf.
        engine: Hugging Face models: "genloom" (convert), "hf" (wrap in HFCausalLM) or "auto"
            (convert GPT-2 / Llama-family models, wrap the rest); GGUF models also "llamacpp".
        quant: llamacpp only: requantize the GGUF (f32, f16, q8_0, q4_0, q4_1) into the cache
            (llama.cpp runs on torch's thread count, which `--threads` sets).
    Raises:
        UserError: an unknown engine, an unreadable model, or no tokenizer files.
    """
    if engine not in ENGINES:
        raise UserError(f"unknown engine {engine!r} (choose from {', '.join(ENGINES)})")
    if quant is not None and engine != "llamacpp":
        raise UserError("--quant applies to --engine llamacpp only")
    if engine == "llamacpp":
        if is_genloom_dir(source):
            raise UserError(f"{source} is a genloom model directory: --engine llamacpp runs GGUF models "
                            "(a .gguf file, a directory holding one, or smollm2-135m)")
        from genloom.models.llamacpp import load_llamacpp

        return load_llamacpp(source, quant=quant)
    if is_genloom_dir(source):
        from genloom.models import io

        model, tokenizer = io.load(source)
        if tokenizer is None:
            raise _no_tokenizer(source)
        return model, tokenizer
    from genloom.models.hf import HFCausalLM, load_converted, load_hf

    # quiet: no "Loading weights" bar on stderr, so an error stays one line
    if engine == "hf":
        hf_model, tokenizer = load_hf(source, quiet=True)
        model: Any = HFCausalLM(hf_model)
    else:  # converted once, then read from the cache (genloom.models.hf.load_converted)
        model, tokenizer = load_converted(source, wrap=engine == "auto", quiet=True)
    if tokenizer is None:
        raise _no_tokenizer(source)
    return model, tokenizer
