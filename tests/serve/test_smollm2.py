"""genloom serve on the real SmolLM2-135M: the prompt-boundary bug over HTTP, and its fix."""

from __future__ import annotations

import httpx
import pytest


@pytest.fixture(scope="module")
def smollm2_server(serve):
    pytest.importorskip("transformers")
    from genloom.tasks.lm.continue_ import start_token
    from genloom.tasks.lm.load import load_model

    model, tok = load_model("smollm2-135m", engine="genloom")
    running = serve(model.eval(), tok, name="smollm2-135m", max_tokens=64)
    running.served.bos_id = start_token(tok, "auto", hf=True)  # as genloom serve sets it
    yield running
    running.stop()


def test_exact_healing_completes_the_cut_word_and_none_does_not(smollm2_server):
    body = {"model": "smollm2-135m", "prompt": "# load the data\nimport num", "max_tokens": 8, "temperature": 0}
    exact = httpx.post(smollm2_server.url + "/v1/completions", json=body, timeout=120).json()
    none = httpx.post(smollm2_server.url + "/v1/completions", json={**body, "heal": "none"}, timeout=120).json()
    healed = exact["genloom"]["healing"][0]
    assert healed["removed"] == " num" and healed["removed_bytes"] == 4
    assert exact["choices"][0]["text"].startswith("py as np")  # import numpy as np
    assert not none["choices"][0]["text"].startswith("py")  # the boundary bug: " num" + a new token


def test_chat_uses_the_models_template(smollm2_server):
    r = httpx.post(smollm2_server.url + "/v1/chat/completions", timeout=120, json={
        "model": "smollm2-135m", "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 20, "temperature": 0}).json()
    choice = r["choices"][0]
    assert "Paris" in choice["message"]["content"] and choice["finish_reason"] == "stop"  # ended at <|im_end|>
