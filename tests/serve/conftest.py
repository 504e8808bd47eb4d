"""A tiny byte-level Llama-style genloom LM shared by the server tests, and a real server.

`tiny` is a small Transformer (RoPE, grouped K/V heads, RMSNorm, SwiGLU: SmolLM2's layout at
width 32) over a byte-level BPE, trained for 150 steps on a few English and Chinese sentences, so
its continuations look like its text (prompts cut mid-word are healed, Chinese characters are
split across byte tokens). `server` runs `genloom.serve` on it in uvicorn, on a free
loopback port, in a thread of the test process.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")  # the serve extra
import uvicorn  # noqa: E402

TEXTS = ["import numpy as np\nimport torch\n", "the quick brown fox jumps over the lazy dog. ",
         "广州的白云机场很大，白云山也很美。", "def main():\n    return 0\n", "hello world, hello genloom! 🙂"] * 20


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    from genloom.models import save
    from genloom.models.transformer import Transformer, TransformerConfig
    from genloom.tokenizers import BPETokenizer

    tok = BPETokenizer.train(TEXTS, vocab_size=300)
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=4, n_kv_head=2, d_model=32, d_ff=64,
                            max_len=256, norm="rms", mlp="swiglu", pos="rope", tie_embeddings=True, bias=False)
    model = Transformer(cfg)
    ids = torch.tensor(tok.encode("".join(TEXTS)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):  # a few seconds: enough for text-like continuations, healing matters
        at = torch.randint(0, len(ids) - 49, (8,), generator=gen)
        batch = torch.stack([ids[i : i + 49] for i in at.tolist()])  # (8, 49)
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return save(model.eval(), tok, tmp_path_factory.mktemp("serve") / "tiny")


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    """(model, tokenizer) of tiny_dir."""
    from genloom.models import io

    model, tok = io.load(tiny_dir)
    return model.eval(), tok


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """A uvicorn server in a thread; `url` is its base."""

    def __init__(self, app, served) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.served = served
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_server(model, tok, *, name: str = "tiny", api_key: str | None = None, **limits) -> Running:
    from genloom.serve.app import Limits, Served, create_app
    from genloom.serve.engine import Engine

    engine = Engine(model, tok, max_batch=limits.pop("max_batch", 64), max_queue=limits.pop("max_queue", 256))
    served = Served(engine=engine, name=name, context=model.config.max_len, bos_id=tok.bos_id,
                    limits=Limits(**limits), api_key=api_key)
    return Running(create_app(served), served)


@pytest.fixture(scope="session")
def serve():
    """`serve(model, tokenizer, **limits) -> Running` (stop it when done)."""
    return start_server


@pytest.fixture(scope="module")
def server(tiny):
    running = start_server(*tiny, max_prompt_tokens=64, max_tokens=64)
    yield running
    running.stop()
