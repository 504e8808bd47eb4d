"""The batcher behind `genloom serve`: one thread owns the model and steps every request together.

Letters: B rows decoding now (all requests), n rows of one request, V vocabulary size, t tokens
a request has generated.

Continuous batching over the decoding protocol (decode/protocol.py). A request becomes a `Job`;
the engine thread loops:

1. admit: waiting jobs are prefilled one by one (`model.start` on the job's own prompt: the
   prompt step of token healing, then its n rows by `select`) and joined to the rows already
   decoding (`model.join`); a job joins at its prefill, while the others are mid-way;
2. decide: each job's processors (healing, penalties, temperature, top-p ...) run on its own rows
   of the batch's logits with its own history, and its tokens are picked by argmax or by its own
   seeded generator, exactly as `decode.loops` pick them for that job alone;
3. retire: rows of jobs that ended (EOS, max_tokens, a stop string, cancelled, timed out) leave
   through `model.select`;
4. step: one `model.step` feeds every remaining row its token.

So N concurrent requests cost one batched step per token instead of N, and a job's tokens do not
depend on what else is in the batch: its logits come from its own cache rows (a joined row is
only padded on the left, masked), and everything picked from them is the job's own.

A model without `join` (Hugging Face's own cache, llama.cpp, the RTF LM) is batched by waves:
jobs waiting when the batch is empty start together in one `start` (right-padded prompts); jobs
that arrive meanwhile wait for the wave to end. Beam-search jobs (best_of / num_beams) run whole
through `decode.loops.beam_search` when they are admitted.

Results flow back to the HTTP side as events through `Job.sink`, a thread-safe callable:
("healed", HealedPrompt) once the prompt step is done, then ("delta", row, text, logprob
entries), ("finish", row, finish_reason) and ("done", usage), or ("error", status, message) at any
point (the job is over).
"""

from __future__ import annotations

import collections
import ctypes
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from genloom.decode.heal import HealedPrompt, heal_prompt
from genloom.decode.heal_tree import VocabIndex
from genloom.decode.loops import beam_search
from genloom.decode.processors import apply
from genloom.decode.protocol import LogitsProcessor, model_device
from genloom.errors import UserError
from genloom.serve.text import TextAssembler, token_text

Sink = Callable[[tuple], None]


class QueueFull(Exception):
    """The engine's queue of waiting requests is full (HTTP 429)."""


@dataclass
class Settings:
    """How one job decodes (already validated by the HTTP layer)."""

    max_new_tokens: int
    strategy: str = "greedy"  # "greedy", "sample" or "beam"
    n: int = 1  # rows returned
    num_beams: int = 1  # beam only
    seed: int | None = None  # sample: the job's own generator
    processors: list[LogitsProcessor] = field(default_factory=list)  # after healing's
    stop: list[str] = field(default_factory=list)  # stop strings
    stop_ids: frozenset[int] = frozenset()  # tokens that end a row (EOS, end of turn)
    logprobs: int | None = None  # None: no logprobs; k >= 0: the pick's and the top k
    heal: str = "none"  # "exact", "post" or "none"
    tol: float = 1e-6
    max_rows: int = 128
    bos_id: int | None = None  # start token put before a text prompt
    timeout: float | None = None  # seconds from submission


@dataclass
class Row:
    """One returned sequence of a job."""

    text: TextAssembler
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None


class Job:
    """One request inside the engine."""

    _ids = itertools.count()

    def __init__(self, prompt: str | Sequence[int], settings: Settings, sink: Sink) -> None:
        self.id = next(self._ids)
        self.prompt = prompt
        self.settings = settings
        self.sink = sink
        self.cancelled = False
        self.submitted = time.monotonic()
        self.deadline = None if settings.timeout is None else self.submitted + settings.timeout
        self.healed: HealedPrompt | None = None
        self.rows: list[Row] = []
        self.history: Tensor | None = None  # (n, t) generated tokens (fill after a row ended)
        self.full: Tensor | None = None  # (n, P + t) prompt + generated, for penalties on the prompt
        self.generator: torch.Generator | None = None
        self.prompt_tokens = 0
        self.prefilled: tuple[Tensor, Any] | None = None  # healing's prefill of the context, reused

    @property
    def n(self) -> int:
        return self.settings.n

    def alive(self) -> list[bool]:
        return [r.finish_reason is None for r in self.rows]

    def finished(self) -> bool:
        return bool(self.rows) and all(r.finish_reason is not None for r in self.rows)

    def usage(self) -> dict[str, int]:
        done = sum(len(r.tokens) for r in self.rows)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": done,
                "total_tokens": self.prompt_tokens + done}


def _release_memory() -> None:
    """The batch emptied: hand freed heap pages back to the system (glibc keeps them otherwise,
    so a burst of requests would leave the server's resident memory high); a no-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _KeepPrefill:
    """The model as exact healing sees it: the first one-row `start` (the prefill of the context
    the job will decode from) is made with room for the job's tokens and kept; the tree gets a
    copy (`clone_state`), so the job does not prefill its prompt twice."""

    def __init__(self, model: Any, max_new_tokens: int) -> None:
        self.model, self.max_new_tokens = model, max_new_tokens
        self.kept: tuple[list[int], Tensor, Any] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def start(self, *, input_ids: Tensor, max_new_tokens: int, **kw: Any) -> tuple[Tensor, Any]:
        if self.kept is not None or input_ids.shape[0] != 1 or kw:
            return self.model.start(input_ids=input_ids, max_new_tokens=max_new_tokens, **kw)
        logits, state = self.model.start(input_ids=input_ids, max_new_tokens=max(max_new_tokens, self.max_new_tokens))
        self.kept = (input_ids[0].tolist(), logits.clone(), state)
        return logits, self.model.clone_state(state)


class Engine:
    """The model, its tokenizer and the thread that decodes every job (module docstring).

    Args:
        model: a Decodable; with a `join` method it is batched continuously, else by waves.
        tokenizer: a genloom tokenizer (token_bytes, encode).
        max_batch: the most rows decoding at once.
        max_queue: the most jobs waiting to be admitted (more: `QueueFull`).
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_batch: int = 64, max_queue: int = 256) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.index = VocabIndex.from_tokenizer(tokenizer)
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.device = model_device(model)
        self.continuous = callable(getattr(model, "join", None))
        self._waiting: collections.deque[Job] = collections.deque()
        self._jobs: list[Job] = []  # decoding, in row order
        self._state: Any = None
        self._logits: Tensor | None = None  # (B, V) for the rows of _jobs
        self._wake = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.steps = 0  # batched steps taken (statistics)
        self.rows_stepped = 0

    # ---- the HTTP side --------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="genloom-engine", daemon=True)
            self._thread.start()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def submit(self, job: Job) -> None:
        """Queue a job; raises QueueFull when max_queue jobs are waiting already."""
        with self._wake:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"the server's queue is full ({self.max_queue} requests waiting)")
            self._waiting.append(job)
            self._wake.notify()

    def cancel(self, job: Job) -> None:
        """Drop a job (its client went away); its rows leave the batch at the next step."""
        job.cancelled = True
        with self._wake:
            self._wake.notify()

    def load(self) -> dict[str, int]:
        """Jobs waiting and decoding, rows decoding (for /health)."""
        return {"waiting": len(self._waiting), "running": len(self._jobs),
                "rows": sum(j.n for j in self._jobs)}

    # ---- the engine thread ------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._waiting and not self._jobs:
                    self._wake.wait()
                if self._closed:
                    break
            try:
                self._admit()
                if self._jobs:
                    self._decide()
                    self._retire()
                    self._advance()
            except Exception as e:  # a failure of the model itself ends every job in the batch
                for job in self._jobs:
                    self._fail(job, 500, f"decoding failed: {type(e).__name__}: {e}")
                self._jobs, self._state, self._logits = [], None, None
        for job in [*self._jobs, *self._waiting]:
            self._fail(job, 503, "the server is shutting down")

    def _fail(self, job: Job, status: int, message: str) -> None:
        job.sink(("error", status, message))

    def _take(self) -> list[Job]:
        """Waiting jobs that fit now (none while a wave runs on a model without join)."""
        taken: list[Job] = []
        with self._wake:
            if not self.continuous and self._jobs:
                return taken
            rows = sum(j.n for j in self._jobs)
            while self._waiting and rows + self._waiting[0].n <= self.max_batch:
                job = self._waiting.popleft()
                if job.cancelled or self._expired(job):
                    continue
                rows += job.n
                taken.append(job)
            if not taken and not self._jobs and self._waiting:  # a job wider than max_batch runs alone
                taken.append(self._waiting.popleft())
        return taken

    def _prepare(self, job: Job) -> bool:
        """The prompt step (healing) of a job, its rows and generator."""
        s = job.settings
        model = _KeepPrefill(self.model, s.max_new_tokens) if hasattr(self.model, "clone_state") else self.model
        text = isinstance(job.prompt, str)
        bos = s.bos_id if text else None  # token ids are taken as they are
        job.healed = heal_prompt(model, self.tokenizer, job.prompt, mode=s.heal, bos_id=bos,
                                 tol=s.tol, max_rows=s.max_rows, index=self.index)
        kept = getattr(model, "kept", None)
        job.prefilled = kept[1:] if kept is not None and kept[0] == job.healed.context else None
        prompt_ids = self.tokenizer.encode(job.prompt) if text else list(job.prompt)
        job.prompt_tokens = len(prompt_ids) + (bos is not None)
        job.rows = [Row(TextAssembler(skip=job.healed.removed, stop=s.stop)) for _ in range(job.n)]
        job.history = torch.zeros(job.n, 0, dtype=torch.long, device=self.device)
        context = torch.tensor(job.healed.context, dtype=torch.long, device=self.device)
        # prompt + generated tokens, kept only for processors that look at the prompt (as loops do)
        sees_prompt = any(getattr(p, "sees_prompt", False) for p in job.healed.processors + s.processors)
        job.full = context.repeat(job.n, 1) if sees_prompt else None  # (n, P)
        if s.strategy == "sample":
            job.generator = torch.Generator(device=self.device)
            if s.seed is not None:
                job.generator.manual_seed(s.seed)
            else:
                job.generator.seed()
        job.sink(("healed", job.healed))
        return True

    def _guarded(self, jobs: Job | list[Job], work: Callable[[], Any]) -> Any:
        """Run the work of one job (prompt step, prefill, beam search) or of a wave; a failure
        ends those jobs only (a UserError as a 400 with its message), never the batch or the thread."""
        try:
            return work()
        except Exception as e:  # noqa: BLE001 - reported to the clients without a traceback
            status, message = (400, str(e)) if isinstance(e, UserError) else (500, f"{type(e).__name__}: {e}")
            for job in jobs if isinstance(jobs, list) else [jobs]:
                self._fail(job, status, message)
        return None

    def _admit(self) -> None:
        fresh: list[Job] = []
        for job in self._take():
            if not self._guarded(job, lambda: self._prepare(job)):
                continue
            if job.settings.strategy == "beam":
                self._guarded(job, lambda: self._beam(job))
            else:
                fresh.append(job)
        if not fresh:
            return
        if self.continuous:
            states = [] if self._state is None else [self._state]
            logits = [] if self._logits is None else [self._logits]
            joined = []
            for job in fresh:
                started = self._guarded(job, lambda: self._prefill(job))
                if started is not None:
                    logits.append(started[0])
                    states.append(started[1])
                    joined.append(job)
            if not joined:
                return
            with torch.no_grad():
                self._state = self.model.join(states) if len(states) > 1 else states[0]
            self._logits = torch.cat(logits)
            self._jobs.extend(joined)
            return
        self._guarded(fresh, lambda: self._wave(fresh))

    def _prefill(self, job: Job) -> tuple[Tensor, Any]:
        """One job's prompt on its own: logits (n, V) and its state of n rows (exact healing's
        prefill of the same context is reused)."""
        ids = torch.tensor([job.healed.context], dtype=torch.long, device=self.device)  # (1, T)
        with torch.no_grad():
            if job.prefilled is not None:
                (logits, state), job.prefilled = job.prefilled, None
            else:
                logits, state = self.model.start(input_ids=ids, max_new_tokens=job.settings.max_new_tokens)
            if job.n > 1:
                index = torch.zeros(job.n, dtype=torch.long, device=self.device)
                logits, state = logits[index], self.model.select(state, index)
        return logits, state

    def _wave(self, fresh: list[Job]) -> None:
        """A model without join: every job admitted now starts in one `start` (right-padded)."""
        contexts = [j.healed.context for j in fresh]
        width = max(len(c) for c in contexts)
        ids = torch.zeros(len(fresh), width, dtype=torch.long, device=self.device)
        for i, c in enumerate(contexts):
            ids[i, : len(c)] = torch.tensor(c, dtype=torch.long)
        lengths = torch.tensor([len(c) for c in contexts], dtype=torch.long, device=self.device)
        with torch.no_grad():
            lg, st = self.model.start(input_ids=ids, lengths=lengths,
                                      max_new_tokens=max(j.settings.max_new_tokens for j in fresh))
        index = torch.tensor([i for i, j in enumerate(fresh) for _ in range(j.n)], device=self.device)
        if index.numel() != len(fresh):
            lg, st = lg[index], self.model.select(st, index)
        self._state, self._logits = st, lg
        self._jobs.extend(fresh)

    def _beam(self, job: Job) -> None:
        """Run a beam-search job whole (not streamed, not batched with others)."""
        s = job.settings
        ids = torch.tensor([job.healed.context], dtype=torch.long, device=self.device)
        out = beam_search(self.model, input_ids=ids, num_beams=s.num_beams, num_return_sequences=s.n,
                          max_new_tokens=s.max_new_tokens, eos_id=sorted(s.stop_ids) or None,
                          processors=job.healed.processors + s.processors, prompt_ids=[job.healed.context])
        for r, (row, seq) in enumerate(zip(job.rows, out.sequences)):
            entries = []
            for tok in seq:
                row.tokens.append(tok)
                entries.append(self._entry(row, tok, None, None))
                text = row.text.add(self.index.token_bytes[tok])
                if row.text.stopped:
                    break
            text += row.text.finish()
            ended = len(seq) < s.max_new_tokens or row.text.stopped
            row.finish_reason = "stop" if ended else "length"
            job.sink(("delta", r, text, entries))
            job.sink(("finish", r, row.finish_reason))
        job.sink(("done", job.usage()))

    def _expired(self, job: Job) -> bool:
        if job.deadline is not None and time.monotonic() > job.deadline:
            self._fail(job, 408, f"the request timed out after {job.settings.timeout:g} s")
            return True
        return False

    def _entry(self, row: Row, tok: int, logp: float | None, top: list[tuple[int, float]] | None) -> dict:
        """A logprobs entry of one token."""
        data = self.index.token_bytes[tok]
        return {"id": tok, "token": token_text(data), "bytes": list(data), "logprob": logp,
                "offset": row.text.offset(),
                "top": None if top is None else [(token_text(self.index.token_bytes[i]), list(self.index.token_bytes[i]), lp)
                                                 for i, lp in top]}

    def _decide(self) -> None:
        """Pick each job's next tokens from its rows of the batch's logits (module docstring)."""
        logits = self._logits
        self._picked: list[Tensor] = []
        start = 0
        for job in self._jobs:
            rows = logits[start : start + job.n]  # (n, V)
            start += job.n
            if job.cancelled or self._expired(job):
                job.cancelled = True
                self._picked.append(torch.zeros(job.n, dtype=torch.long, device=rows.device))
                continue
            s = job.settings
            alive = torch.tensor(job.alive(), device=rows.device)  # (n,)
            scores = apply(job.healed.processors + s.processors, rows.float(), job.history, job.full)  # (n, V)
            if not bool(alive.all()):
                scores = torch.where(alive[:, None], scores, 0.0)
            norm = scores.logsumexp(dim=-1)  # (n,)
            if bool(torch.isneginf(norm).any()):
                self._fail(job, 400, "the sampling options removed every token")
                job.cancelled = True
                self._picked.append(torch.zeros(job.n, dtype=torch.long, device=rows.device))
                continue
            if s.strategy == "sample":
                probs = scores.softmax(dim=-1)
                tokens = torch.multinomial(probs, 1, generator=job.generator).squeeze(1)  # (n,)
                picked = scores.gather(1, tokens[:, None]).squeeze(1)
            else:
                picked, tokens = scores.max(dim=-1)
            logp = (picked - norm).tolist()
            top = None
            if s.logprobs:
                values, ids = torch.topk(scores - norm[:, None], min(s.logprobs, scores.shape[-1]), dim=-1)
                top = [[(t, lp) for t, lp in zip(i, v) if lp != float("-inf")]  # removed tokens are no alternatives
                       for i, v in zip(ids.tolist(), values.tolist())]
            fill = min(s.stop_ids) if s.stop_ids else 0
            toks = tokens.tolist()
            for r, (row, tok) in enumerate(zip(job.rows, toks)):
                if row.finish_reason is not None:
                    toks[r] = fill
                    continue
                if tok in s.stop_ids:
                    row.finish_reason = "stop"
                    job.sink(("delta", r, row.text.finish(), []))
                    job.sink(("finish", r, "stop"))
                    continue
                row.tokens.append(tok)
                entry = [self._entry(row, tok, logp[r], None if top is None else top[r])] if s.logprobs is not None else []
                text = row.text.add(self.index.token_bytes[tok])
                if row.text.stopped:
                    row.finish_reason = "stop"
                elif len(row.tokens) >= s.max_new_tokens:
                    row.finish_reason = "length"
                    text += row.text.finish()
                job.sink(("delta", r, text, entry))
                if row.finish_reason is not None:
                    job.sink(("finish", r, row.finish_reason))
            tokens = torch.tensor(toks, dtype=torch.long, device=rows.device)
            job.history = torch.cat([job.history, tokens[:, None]], dim=1)
            if job.full is not None:
                job.full = torch.cat([job.full, tokens[:, None]], dim=1)
            self._picked.append(tokens)
            if job.finished():
                job.sink(("done", job.usage()))

    def _retire(self) -> None:
        """Rows of ended or cancelled jobs leave the batch."""
        keep, jobs, picked, start = [], [], [], 0
        for job, tokens in zip(self._jobs, self._picked):
            if not (job.cancelled or job.finished()):
                keep.extend(range(start, start + job.n))
                jobs.append(job)
                picked.append(tokens)
            start += job.n
        if not jobs:
            self._jobs, self._state, self._logits, self._picked = [], None, None, []
            _release_memory()
            return
        if len(keep) != start:
            index = torch.tensor(keep, dtype=torch.long, device=self.device)
            with torch.no_grad():
                self._state = self.model.select(self._state, index)
        self._jobs, self._picked = jobs, picked

    def _advance(self) -> None:
        if not self._jobs:
            return
        tokens = torch.cat(self._picked)  # (B,)
        with torch.no_grad():
            self._logits, self._state = self.model.step(tokens, self._state)
        self.steps += 1
        self.rows_stepped += tokens.numel()
