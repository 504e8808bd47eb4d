"""The HTTP API of `genloom serve`: OpenAI's completions and chat completions over the engine.

    POST /v1/completions        text completion (token healing on by default: heal "exact")
    POST /v1/chat/completions   chat through the model's chat template (heal "none" by default)
    GET  /v1/models             the one model served
    GET  /health                {"status": "ok", "waiting": .., "running": .., "rows": ..}
    GET  /                      the playground page (static/: HTML, CSS, JavaScript; nothing external)

Responses and stream chunks have OpenAI's shapes (`object`, `choices`, `usage`, `logprobs`,
`finish_reason` "stop" | "length"); streams are server-sent events, `data: {json}` chunks ending
with `data: [DONE]`, with a last chunk carrying `usage` when `stream_options.include_usage` is set.
Every response also has a `genloom` object saying what healing did to each prompt (the backed-off
text and its byte count, the tolerance and the certified total-variation bound of exact healing).

Logprobs are those of the distribution each token was drawn from: after healing's exact
conditional and the sampling processors (temperature, top-p, ...), so they sum to one over what
could have been picked; tokens are spelled as text, or "bytes:\\x.." when a token is part of a
character. `text_offset` counts characters of the returned text before the token.

Errors have OpenAI's shape `{"error": {"message", "type", "param", "code"}}`: 400 for a bad
request (malformed JSON, a field out of range, a prompt or max_tokens over the server's limits,
with the limit in the message), 401 without the API key, 404 for another model or path, 408 when
a request outlives `--timeout`, 429 with Retry-After when the queue is full, 500 for a failure
inside the model (no traceback is sent).
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from genloom.decode.generate import build_processors, validate_options
from genloom.decode.processors import MinLength
from genloom.errors import UserError
from genloom.serve import chat
from genloom.serve.engine import Engine, Job, QueueFull, Settings
from genloom.serve.schemas import ChatRequest, CompletionRequest

STATIC = Path(__file__).parent / "static"
POLL = 0.25  # seconds between checks that a waiting client is still connected


class ApiError(Exception):
    """An error sent to the client in OpenAI's shape."""

    TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
             408: "timeout", 429: "rate_limit_exceeded", 500: "server_error", 503: "server_error"}

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


@dataclass
class Limits:
    """What one request may ask for."""

    max_prompt_tokens: int = 4096
    max_tokens: int = 1024  # max_tokens (new tokens) per request
    default_chat_tokens: int = 256  # a chat request without max_tokens
    timeout: float = 300.0  # seconds from arrival to the last token
    retry_after: int = 1  # seconds, with a 429


@dataclass
class Served:
    """The model behind the API."""

    engine: Engine
    name: str
    context: int | None  # prompt + new tokens the model holds (None: unlimited)
    bos_id: int | None  # put before a completion prompt (the document separator)
    limits: Limits = field(default_factory=Limits)
    api_key: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))


# ---- request -> jobs --------------------------------------------------------------------------
def _unsupported(req: Any) -> None:
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name):
            raise ApiError(400, f"{name} is not supported by genloom serve (use repetition_penalty)", param=name)
    if req.logit_bias:
        raise ApiError(400, "logit_bias is not supported by genloom serve", param="logit_bias")
    if getattr(req, "echo", False):
        raise ApiError(400, "echo is not supported by genloom serve", param="echo")
    if getattr(req, "suffix", None):
        raise ApiError(400, "suffix (fill-in-the-middle) is not supported by genloom serve", param="suffix")


def settings_for(served: Served, req: CompletionRequest | ChatRequest, *, is_chat: bool) -> Settings:
    """A request's decoding settings, checked against the server's limits (ApiError 400)."""
    _unsupported(req)
    limits, engine = served.limits, served.engine
    if is_chat:
        max_new = req.max_completion_tokens or req.max_tokens or min(limits.default_chat_tokens, limits.max_tokens)
        k = (req.top_logprobs or 0) if req.logprobs else None
        if req.top_logprobs and not req.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        beams = req.num_beams or 1
    else:
        max_new = req.max_tokens if req.max_tokens is not None else 16
        k = req.logprobs
        beams = max(req.num_beams or 1, req.best_of or 1)
    if max_new > limits.max_tokens:
        raise ApiError(400, f"max_tokens {max_new} is over this server's limit of {limits.max_tokens}",
                       param="max_tokens")
    temperature = 1.0 if req.temperature is None else req.temperature
    strategy = "beam" if beams > 1 else "greedy" if temperature == 0 else "sample"
    if strategy == "beam" and req.stream:
        raise ApiError(400, "beam search (best_of / num_beams > 1) cannot be streamed", param="stream")
    if strategy == "beam" and req.n > beams:
        raise ApiError(400, f"n ({req.n}) must be <= best_of / num_beams ({beams})", param="n")
    sampling = {}
    if strategy == "sample":
        sampling = {"temperature": None if temperature == 1 else temperature,
                    "top_p": None if req.top_p in (None, 1.0) else req.top_p, "top_k": req.top_k, "min_p": req.min_p}
    elif req.top_k is not None or req.min_p is not None:
        raise ApiError(400, "top_k and min_p apply to sampling (temperature > 0, no beams)", param="top_k")
    if req.ignore_eos:
        stop_ids: frozenset[int] = frozenset()
    elif is_chat:  # EOS and the template's end-of-turn token
        stop_ids = chat.end_of_turn_ids(engine.tokenizer)
    else:
        stop_ids = frozenset({engine.tokenizer.eos_id} - {None})
    try:
        opts = validate_options(dict(
            strategy=strategy, max_new_tokens=max_new, min_new_tokens=req.min_tokens, num_beams=beams,
            num_return_sequences=req.n, repetition_penalty=req.repetition_penalty,
            no_repeat_ngram_size=req.no_repeat_ngram_size, **sampling))
        procs = build_processors(opts, model_vocab=engine.model.vocab_size, tokenizer_vocab=engine.tokenizer.vocab_size)
    except UserError as e:
        raise ApiError(400, str(e)) from None
    if req.min_tokens and stop_ids:
        procs.insert(0, MinLength(req.min_tokens, sorted(stop_ids)))
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > 16:
        raise ApiError(400, f"at most 16 stop strings, got {len(stop)}", param="stop")
    return Settings(max_new_tokens=max_new, strategy=strategy, n=req.n, num_beams=beams, seed=req.seed,
                    processors=procs, stop=[s for s in stop if s], stop_ids=stop_ids, logprobs=k, heal=req.heal,
                    tol=req.tol, max_rows=req.max_rows, bos_id=None if is_chat else served.bos_id,
                    timeout=limits.timeout)


def _check_length(served: Served, ids_len: int, settings: Settings) -> None:
    limits = served.limits
    if ids_len > limits.max_prompt_tokens:
        raise ApiError(400, f"the prompt is {ids_len} tokens, over this server's limit of "
                            f"{limits.max_prompt_tokens}", param="prompt")
    if served.context is not None and ids_len + settings.max_new_tokens + 1 > served.context:
        raise ApiError(400, f"the prompt ({ids_len} tokens) plus max_tokens ({settings.max_new_tokens}) is over "
                            f"the model's context of {served.context} tokens", param="max_tokens")


def completion_prompts(served: Served, req: CompletionRequest, settings: Settings) -> list[str | list[int]]:
    p = req.prompt
    if isinstance(p, str):
        prompts: list = [p]
    elif p and all(isinstance(x, int) for x in p):
        prompts = [list(p)]
    else:
        prompts = list(p)
    if not prompts or any(len(x) == 0 for x in prompts):
        raise ApiError(400, "the prompt is empty: give some text to continue", param="prompt")
    vocab = served.engine.tokenizer.vocab_size
    for x in prompts:
        if isinstance(x, list) and any(not 0 <= i < vocab for i in x):
            raise ApiError(400, f"a prompt token id is outside the vocabulary (size {vocab})", param="prompt")
        n = len(served.engine.tokenizer.encode(x)) if isinstance(x, str) else len(x)
        _check_length(served, n, settings)
    return prompts


def chat_prompt(served: Served, req: ChatRequest, settings: Settings) -> list[int]:
    messages = []
    for m in req.messages:
        content = m.content if isinstance(m.content, str) or m.content is None else "".join(
            part.text or "" for part in m.content if part.type == "text")
        messages.append({"role": m.role, "content": content or ""})
    try:
        ids = chat.render(served.engine.tokenizer, messages)
    except UserError as e:
        raise ApiError(400, str(e), param="messages") from None
    _check_length(served, len(ids), settings)
    return ids


# ---- events -> OpenAI objects -------------------------------------------------------------------
class Bridge:
    """Events of several jobs from the engine thread to this request's coroutine."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()

    def sink(self, index: int):
        def put(event: tuple) -> None:
            try:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, event))
            except RuntimeError:  # the event loop is closed (the server stopped): nobody to tell
                pass

        return put


def heal_info(healed: Any) -> dict[str, Any]:
    removed = healed.removed
    tree = healed.tree
    return {"heal": healed.mode, "removed": removed.decode("utf-8", errors="replace"),
            "removed_bytes": len(removed), "context_tokens": len(healed.context),
            "tol": healed.tol if healed.mode == "exact" else None,
            "tv_bound": None if tree is None else (tree.bound if math.isfinite(tree.bound) else None),
            "approximate": healed.approximate if healed.mode == "exact" else None}


def completion_logprobs(entries: list[dict]) -> dict[str, Any]:
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [None if e["top"] is None else {t: lp for t, _, lp in e["top"]} for e in entries],
            "text_offset": [e["offset"] for e in entries]}


def chat_logprobs(entries: list[dict]) -> dict[str, Any]:
    return {"content": [{"token": e["token"], "logprob": e["logprob"], "bytes": e["bytes"],
                         "top_logprobs": [{"token": t, "logprob": lp, "bytes": b} for t, b, lp in e["top"] or []]}
                        for e in entries], "refusal": None}


class Run:
    """One HTTP request's jobs (one per prompt) and what they produced."""

    def __init__(self, served: Served, prompts: list, settings: Settings) -> None:
        self.served, self.settings = served, settings
        self.bridge = Bridge()
        self.jobs = [Job(p, settings, self.bridge.sink(i)) for i, p in enumerate(prompts)]
        n = settings.n
        self.text = [[""] * n for _ in prompts]
        self.entries: list[list[list[dict]]] = [[[] for _ in range(n)] for _ in prompts]
        self.finish: list[list[str | None]] = [[None] * n for _ in prompts]
        self.healed: list[dict | None] = [None] * len(prompts)
        self.usage: list[dict | None] = [None] * len(prompts)
        self.backlog: list[tuple[int, tuple]] = []  # events met while waiting for the prompt steps

    def submit(self) -> None:
        try:
            for job in self.jobs:
                self.served.engine.submit(job)
        except QueueFull as e:
            self.cancel()
            raise ApiError(429, str(e), code="queue_full",
                           headers={"Retry-After": str(self.served.limits.retry_after)}) from None

    def cancel(self) -> None:
        for job in self.jobs:
            self.served.engine.cancel(job)

    def done(self) -> bool:
        return all(u is not None for u in self.usage)

    def apply(self, index: int, event: tuple) -> None:
        """Record one event (an error raises ApiError)."""
        kind = event[0]
        if kind == "healed":
            self.healed[index] = heal_info(event[1])
        elif kind == "delta":
            _, row, text, entries = event
            self.text[index][row] += text
            self.entries[index][row].extend(entries)
        elif kind == "finish":
            self.finish[index][event[1]] = event[2]
        elif kind == "done":
            self.usage[index] = event[1]
        elif kind == "error":
            self.cancel()
            raise ApiError(event[1], event[2])

    async def next(self, request: Request) -> tuple[int, tuple] | None:
        """The next event (the backlog's first), or None when the client went away (the jobs are
        cancelled)."""
        if self.backlog:
            return self.backlog.pop(0)
        while True:
            try:
                return await asyncio.wait_for(self.bridge.queue.get(), timeout=POLL)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    self.cancel()
                    return None

    def total_usage(self) -> dict[str, int]:
        keys = ("prompt_tokens", "completion_tokens", "total_tokens")
        return {k: sum(u[k] for u in self.usage if u) for k in keys}


def _id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


# ---- the app ------------------------------------------------------------------------------------
def create_app(served: Served) -> FastAPI:
    """The FastAPI app serving `served` (its engine thread starts with the app and stops with it)."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        served.engine.start()
        yield
        served.engine.close()

    app = FastAPI(title="genloom serve", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return ApiError(400, f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}".rstrip(": ")).response()
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        msg = first.get("msg", "invalid request")
        return ApiError(400, f"{param}: {msg}" if param else msg, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return ApiError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        return ApiError(500, f"internal error: {type(exc).__name__}").response()

    async def auth(request: Request) -> None:
        """--api-key: every /v1 route needs 'Authorization: Bearer KEY' (a dependency, not an HTTP
        middleware: Starlette's BaseHTTPMiddleware cancels streams whose client reads slowly)."""
        if served.api_key:
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {served.api_key}".encode()):
                raise ApiError(401, "a valid API key is needed (Authorization: Bearer KEY)", code="invalid_api_key")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(auth)])

    def check_model(name: str | None) -> None:
        if name is not None and name != served.name:
            raise ApiError(404, f"the model {name!r} does not exist here (this server serves {served.name!r})",
                           param="model", code="model_not_found")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": served.name, **served.engine.load()}

    @v1.get("/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": served.name, "object": "model", "created": served.created,
                                            "owned_by": "genloom", "context_length": served.context}]}

    @app.get("/")
    async def playground():
        page = STATIC / "index.html"
        if not page.is_file():
            raise ApiError(404, "no playground page is installed")
        return FileResponse(page)

    @v1.post("/completions")
    async def completions(body: CompletionRequest, request: Request):
        check_model(body.model)
        settings = settings_for(served, body, is_chat=False)
        prompts = completion_prompts(served, body, settings)
        return await respond(request, Run(served, prompts, settings), body, is_chat=False)

    @v1.post("/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        check_model(body.model)
        settings = settings_for(served, body, is_chat=True)
        ids = chat_prompt(served, body, settings)
        return await respond(request, Run(served, [ids], settings), body, is_chat=True)

    async def respond(request: Request, run: Run, body: Any, *, is_chat: bool):
        run.submit()
        # wait for every prompt step: its errors (a prompt healing cannot use, ...) get a status
        met = []
        while any(h is None for h in run.healed):
            got = await run.next(request)
            if got is None:
                return JSONResponse({}, status_code=499)
            if got[1][0] in ("healed", "error"):
                run.apply(*got)
            else:
                met.append(got)
        run.backlog = met
        if body.stream:
            return StreamingResponse(stream(request, run, body, is_chat=is_chat), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        while run.backlog or not run.done():
            got = await run.next(request)
            if got is None:
                return JSONResponse({}, status_code=499)
            run.apply(*got)
        return whole(run, body, is_chat=is_chat)

    def whole(run: Run, body: Any, *, is_chat: bool) -> dict[str, Any]:
        choices = []
        n = run.settings.n
        for i in range(len(run.jobs)):
            for r in range(n):
                entries = run.entries[i][r] if run.settings.logprobs is not None else None
                if is_chat:
                    choices.append({"index": i * n + r, "message": {"role": "assistant", "content": run.text[i][r]},
                                    "logprobs": None if entries is None else chat_logprobs(entries),
                                    "finish_reason": run.finish[i][r]})
                else:
                    choices.append({"index": i * n + r, "text": run.text[i][r],
                                    "logprobs": None if entries is None else completion_logprobs(entries),
                                    "finish_reason": run.finish[i][r]})
        return {"id": _id("chatcmpl" if is_chat else "cmpl"),
                "object": "chat.completion" if is_chat else "text_completion", "created": int(time.time()),
                "model": served.name, "choices": choices, "usage": run.total_usage(),
                "genloom": {"healing": run.healed}}

    async def stream(request: Request, run: Run, body: Any, *, is_chat: bool) -> AsyncIterator[str]:
        cid, created, n = _id("chatcmpl" if is_chat else "cmpl"), int(time.time()), run.settings.n
        kind = "chat.completion.chunk" if is_chat else "text_completion"
        want_logprobs = run.settings.logprobs is not None
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        started: set[int] = set()
        pending: dict[int, list[dict]] = {}  # logprob entries whose text is still held back

        def chunk(index: int, job: int, text: str | None, entries: list[dict] | None, finish: str | None) -> str:
            if is_chat:
                delta: dict[str, Any] = {}
                if index not in started:
                    delta["role"] = "assistant"
                if text is not None:
                    delta["content"] = text
                choice = {"index": index, "delta": delta,
                          "logprobs": chat_logprobs(entries) if entries else None, "finish_reason": finish}
            else:
                choice = {"index": index, "text": text or "",
                          "logprobs": completion_logprobs(entries) if entries else None, "finish_reason": finish}
            obj: dict[str, Any] = {"id": cid, "object": kind, "created": created, "model": served.name,
                                   "choices": [choice]}
            if include_usage:
                obj["usage"] = None
            if index not in started:
                obj["genloom"] = {"healing": run.healed[job]}
                started.add(index)
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        try:
            while run.backlog or not run.done():
                got = await run.next(request)
                if got is None:
                    return
                job, event = got
                try:
                    run.apply(job, event)
                except ApiError as e:
                    yield f"data: {json.dumps(json.loads(e.response().body))}\n\n"
                    break
                if event[0] == "delta":
                    _, row, text, entries = event
                    index = job * n + row
                    held = pending.setdefault(index, [])
                    held.extend(entries if want_logprobs else [])
                    if text or (index not in started and is_chat):
                        yield chunk(index, job, text, held, None)
                        pending[index] = []
                elif event[0] == "finish":
                    index = job * n + event[1]
                    held = pending.pop(index, [])
                    yield chunk(index, job, None if is_chat else "", held, event[2])
            if include_usage and run.done():
                obj = {"id": cid, "object": kind, "created": created, "model": served.name, "choices": [],
                       "usage": run.total_usage()}
                yield f"data: {json.dumps(obj)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            if not run.done():
                run.cancel()

    app.include_router(v1)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
