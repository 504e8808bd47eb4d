"""genloom serve over HTTP: the official openai client, raw SSE, and every error in OpenAI's shape."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

openai = pytest.importorskip("openai")


def sse(response: httpx.Response) -> list[dict]:
    """The JSON chunks of a stream; asserts the data-only SSE format and the final [DONE]."""
    lines = [line for line in response.text.split("\n\n") if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[len("data: "):]) for line in lines[:-1]]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def test_openai_client_completes_chats_and_streams(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    done = client.completions.create(model="tiny", prompt="import num", max_tokens=10, temperature=0, logprobs=3)
    choice = done.choices[0]
    assert choice.finish_reason in ("stop", "length") and choice.text
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) == done.usage.completion_tokens
    assert all(len(top) <= 3 and max(top.values()) >= lp_ - 1e-6 for top, lp_ in zip(lp.top_logprobs, lp.token_logprobs))
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt="import num", max_tokens=10, temperature=0, stream=True) if c.choices)
    assert streamed == choice.text
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}],
                                          max_tokens=8, temperature=0, logprobs=True, top_logprobs=2)
    msg = chat.choices[0]
    assert msg.message.role == "assistant" and msg.finish_reason in ("stop", "length")
    assert len(msg.logprobs.content) == chat.usage.completion_tokens
    assert all(bytes(e.bytes).decode("utf-8", "replace") and len(e.top_logprobs) <= 2 for e in msg.logprobs.content)
    chunks = list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}],
                                                 max_tokens=8, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == msg.message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == chat.usage.completion_tokens


@pytest.mark.parametrize("body", [
    {"prompt": "import num", "temperature": 0},
    {"prompt": "the quick bro", "temperature": 0.9, "seed": 3, "n": 2, "top_p": 0.9},
    {"prompt": "广州的白", "temperature": 0.7, "seed": 11, "stop": ["。", "白云"]},
    {"prompt": ["hello wor", "def ma"], "temperature": 0, "stop": "\n", "heal": "post"},
])
def test_stream_concatenates_to_the_whole_response(http, body):
    body = {"model": "tiny", "max_tokens": 24, "logprobs": 2, **body}
    whole = http.post("/v1/completions", json=body).json()
    chunks = sse(http.post("/v1/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}}))
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    for choice in whole["choices"]:
        mine = [c["choices"][0] for c in chunks[:-1] if c["choices"][0]["index"] == choice["index"]]
        assert all(c["object"] == "text_completion" and c["usage"] is None for c in chunks[:-1])
        assert "".join(m["text"] for m in mine) == choice["text"]
        assert [m["finish_reason"] for m in mine].count(None) == len(mine) - 1
        assert mine[-1]["finish_reason"] == choice["finish_reason"]
        tokens = [t for m in mine if m["logprobs"] for t in m["logprobs"]["tokens"]]
        assert tokens == choice["logprobs"]["tokens"]
        assert all("\ufffd" not in m["text"] for m in mine) or "\ufffd" in choice["text"]
        stops = body.get("stop") or []
        assert not any(s in choice["text"] for s in ([stops] if isinstance(stops, str) else stops))


def test_healing_is_reported(http):
    out = http.post("/v1/completions", json={"prompt": "import num", "max_tokens": 4, "temperature": 0}).json()
    heal = out["genloom"]["healing"][0]
    assert heal["heal"] == "exact" and heal["removed_bytes"] == len(heal["removed"].encode()) > 0
    assert heal["tv_bound"] is not None and heal["tv_bound"] <= heal["tol"] / (1 - heal["tol"]) + 1e-12
    plain = http.post("/v1/completions", json={"prompt": "import num", "max_tokens": 4, "temperature": 0,
                                               "heal": "none"}).json()
    assert plain["genloom"]["healing"][0]["removed_bytes"] == 0


@pytest.mark.parametrize("body,status,words", [
    ({"prompt": "x", "max_tokens": 1000}, 400, "limit of 64"),
    ({"prompt": "hello " * 80, "max_tokens": 4}, 400, "limit of 64"),
    ({"prompt": "x", "temperature": 3}, 400, "temperature"),
    ({"prompt": "", "max_tokens": 4}, 400, "empty"),
    ({"prompt": [99999], "max_tokens": 4}, 400, "vocabulary"),
    ({"prompt": "x", "model": "gpt-4"}, 404, "does not exist"),
    ({"prompt": "x", "best_of": 2, "stream": True}, 400, "cannot be streamed"),
    ({"prompt": "x", "echo": True}, 400, "echo"),
    ({"max_tokens": 4}, 400, "prompt"),
])
def test_bad_requests_get_openai_errors(http, body, status, words):
    r = http.post("/v1/completions", json=body)
    assert r.status_code == status
    err = r.json()["error"]
    assert words in err["message"] and set(err) == {"message", "type", "param", "code"}


def test_malformed_json_and_unknown_paths(http, client):
    r = http.post("/v1/completions", content=b'{"prompt": "x",', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    assert http.get("/v1/nothing").status_code == 404 and "error" in http.get("/v1/nothing").json()
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="x", max_tokens=10_000)
    extra = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 2, "temperature": 0, "whatever": 1})
    assert extra.status_code == 200  # unknown fields are ignored, as OpenAI does


def test_beam_search_returns_n_best(http):
    out = http.post("/v1/completions", json={"prompt": "import num", "max_tokens": 6, "best_of": 3, "n": 2}).json()
    assert [c["index"] for c in out["choices"]] == [0, 1]
    assert out["choices"][0]["text"] != out["choices"][1]["text"]


class Slow:
    """The tiny model with 20 ms added to every step: a request stays in the batch long enough
    to be met by others."""

    def __init__(self, model) -> None:
        self.model, self.vocab_size, self.config = model, model.vocab_size, model.config

    def start(self, **kw):
        return self.model.start(**kw)

    def step(self, tokens, state):
        time.sleep(0.02)
        return self.model.step(tokens, state)

    def select(self, state, index):
        return self.model.select(state, index)

    def join(self, states):
        return self.model.join(states)


def test_api_key_queue_full_and_disconnect(tiny, serve):
    model, tok = tiny
    running = serve(Slow(model), tok, api_key="k", max_batch=1, max_queue=1, max_tokens=64)
    try:
        url = running.url
        assert httpx.post(f"{url}/v1/completions", json={"prompt": "x"}).status_code == 401
        auth = {"Authorization": "Bearer k"}
        ok = httpx.post(f"{url}/v1/completions", json={"prompt": "x", "max_tokens": 2}, headers=auth)
        assert ok.status_code == 200
        # one request decodes (max_batch 1), one waits (max_queue 1): the next gets 429
        with httpx.Client(base_url=url, headers=auth, timeout=60) as c:
            body = {"prompt": "hello", "max_tokens": 64, "stream": True, "temperature": 0, "ignore_eos": True}
            with c.stream("POST", "/v1/completions", json=body) as first:
                lines = first.iter_lines()  # kept: a dropped iterator closes the connection
                assert next(lines).startswith("data: ")
                waiting = httpx.Client(base_url=url, headers=auth, timeout=60)
                got = {}
                t = threading.Thread(target=lambda: got.update(r=waiting.post("/v1/completions", json={
                    "prompt": "hi", "max_tokens": 2})))
                t.start()
                deadline = time.monotonic() + 10
                while running.served.engine.load()["waiting"] < 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
                full = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
                assert full.status_code == 429 and full.headers["retry-after"] == "1"
                assert full.json()["error"]["code"] == "queue_full"
            # the first stream was closed after one chunk: its row leaves, the waiting one runs
            t.join(30)
            assert got["r"].status_code == 200
            waiting.close()
        deadline = time.monotonic() + 10
        while running.served.engine.load()["rows"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert running.served.engine.load() == {"waiting": 0, "running": 0, "rows": 0}
    finally:
        running.stop()


def test_a_request_past_the_timeout_gets_408(tiny, serve):
    model, tok = tiny
    running = serve(Slow(model), tok, timeout=0.3, max_tokens=64)
    try:
        r = httpx.post(running.url + "/v1/completions", json={"prompt": "hello", "max_tokens": 64, "ignore_eos": True},
                       timeout=30)
        assert r.status_code == 408 and "timed out after 0.3 s" in r.json()["error"]["message"]
        deadline = time.monotonic() + 5
        while running.served.engine.load()["rows"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert running.served.engine.load()["rows"] == 0
    finally:
        running.stop()
