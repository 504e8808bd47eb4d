"""The batcher: joined rows decode exactly as alone, jobs equal the library's loops, cancel works."""

from __future__ import annotations

import copy
import threading
import time

import pytest
import torch

from genloom.decode.heal import continue_prompt
from genloom.serve.engine import Engine, Job, QueueFull, Settings

PROMPTS = ["import num", "the quick bro", "广州的白", "hello wor", "def ma", "白云"]


class Collect:
    """A job's sink: its events, and an Event set at done / error."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.over = threading.Event()

    def __call__(self, event: tuple) -> None:
        self.events.append(event)
        if event[0] in ("done", "error"):
            self.over.set()

    def rows(self, n: int) -> list[list[int]]:
        """Token ids of each row, from the logprob entries."""
        out = [[] for _ in range(n)]
        for e in self.events:
            if e[0] == "delta":
                out[e[1]].extend(x["id"] for x in e[3])
        return out

    def texts(self, n: int) -> list[str]:
        out = [""] * n
        for e in self.events:
            if e[0] == "delta":
                out[e[1]] += e[2]
        return out


def run(engine: Engine, jobs: list[tuple[str, Settings]], *, gap: float = 0.0) -> list[Collect]:
    sinks = []
    for prompt, settings in jobs:
        sink = Collect()
        engine.submit(Job(prompt, settings, sink))
        sinks.append(sink)
        time.sleep(gap)
    for sink in sinks:
        assert sink.over.wait(60), "a job never finished"
        assert not any(e[0] == "error" for e in sink.events), sink.events
    return sinks


def greedy(max_new: int = 12, **kw) -> Settings:
    return Settings(max_new_tokens=max_new, logprobs=0, heal=kw.pop("heal", "exact"), bos_id=kw.pop("bos_id", 2), **kw)


@pytest.fixture
def engine(tiny):
    engine = Engine(*tiny)
    engine.start()
    yield engine
    engine.close()


@pytest.fixture
def engine64(tiny):
    model, tok = tiny
    engine = Engine(copy.deepcopy(model).double(), tok)
    engine.start()
    yield engine
    engine.close()


def test_join_equals_each_row_decoded_alone(tiny):
    """Rows started apart (different lengths, one already 5 steps in) and joined give the logits
    each gives alone, step after step, in float64; dropping a row keeps the others exact."""
    model, tok = tiny
    model = copy.deepcopy(model).double()
    prompts = [tok.encode(p) for p in ("import numpy as", "the quick brown fox jumps", "白")]

    def alone(ids, steps, feed):
        logits, state = model.start(input_ids=torch.tensor([ids]), max_new_tokens=16)
        out = [logits[0]]
        for t in range(steps):
            logits, state = model.step(torch.tensor([feed[t]]), state)
            out.append(logits[0])
        return out

    feed = [[5 + i + 3 * r for i in range(16)] for r in range(3)]
    want = [alone(p, 12, f) for p, f in zip(prompts, feed)]
    lg0, s0 = model.start(input_ids=torch.tensor([prompts[0]]), max_new_tokens=16)
    for t in range(5):  # row 0 runs ahead
        lg0, s0 = model.step(torch.tensor([feed[0][t]]), s0)
    lg1, s1 = model.start(input_ids=torch.tensor([prompts[1]]), max_new_tokens=16)
    lg2, s2 = model.start(input_ids=torch.tensor([prompts[2]]), max_new_tokens=16)
    state = model.join([s0, s1, s2])
    logits = torch.cat([lg0, lg1, lg2])
    done = [5, 0, 0]
    rows = [0, 1, 2]
    for k in range(7):
        for i, r in enumerate(rows):
            torch.testing.assert_close(logits[i], want[r][done[r]], rtol=0, atol=1e-9)
        if k == 3:  # row 1 leaves; the rest go on
            state = model.select(state, torch.tensor([0, 2]))
            logits, rows = logits[[0, 2]], [0, 2]
        tokens = torch.tensor([feed[r][done[r]] for r in rows])
        logits, state = model.step(tokens, state)
        for r in rows:
            done[r] += 1
    # a second join drops the columns every row has as padding: width = the longest history
    lg3, s3 = model.start(input_ids=torch.tensor([prompts[2]]), max_new_tokens=16)
    joined = model.join([state, s3])
    assert joined.length == max(len(prompts[0]) + done[0], len(prompts[2]) + done[2])


def test_greedy_jobs_equal_the_library(tiny, engine):
    """Every healing mode, alone: the engine's greedy tokens are continue_prompt's."""
    model, tok = tiny
    for heal in ("exact", "post", "none"):
        sinks = run(engine, [(p, greedy(heal=heal)) for p in PROMPTS], gap=0.05)
        for p, sink in zip(PROMPTS, sinks):
            want = continue_prompt(model, tok, p, mode=heal, max_new_tokens=12, eos_id=tok.eos_id, bos_id=2)[0]
            assert sink.rows(1)[0] == want.token_ids, (heal, p)
            assert sink.texts(1)[0] == want.text, (heal, p)


def test_seeded_samples_equal_the_library(tiny, engine):
    model, tok = tiny
    s = Settings(max_new_tokens=10, strategy="sample", n=3, seed=7, logprobs=0, heal="exact", bos_id=2)
    sink = run(engine, [("the quick bro", s), ("import num", copy.copy(s))])[0]
    want = continue_prompt(model, tok, "the quick bro", strategy="sample", num_samples=3, max_new_tokens=10,
                           eos_id=tok.eos_id, bos_id=2, generator=torch.Generator().manual_seed(7))
    assert sink.rows(3) == [c.token_ids for c in want]


def test_a_job_decodes_the_same_alone_and_in_a_crowd(engine64):
    """Each prompt alone, then all together, joining at different steps: the same tokens."""
    settings = [greedy(max_new=8 + 3 * i) for i in range(len(PROMPTS))]
    alone = [run(engine64, [(p, s)])[0].rows(1)[0] for p, s in zip(PROMPTS, settings)]
    for gap in (0.0, 0.01):
        crowd = run(engine64, list(zip(PROMPTS * 3, settings * 3)), gap=gap)
        assert [c.rows(1)[0] for c in crowd] == alone * 3
    assert engine64.steps > 0


def test_cancel_frees_the_rows_and_a_full_queue_refuses(tiny):
    model, tok = tiny
    engine = Engine(model, tok, max_batch=2, max_queue=2)
    engine.start()
    try:
        long = Collect()
        job = Job("hello wor", greedy(max_new=200), long)
        engine.submit(job)
        time.sleep(0.2)
        engine.cancel(job)
        deadline = time.monotonic() + 10
        while engine.load()["running"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.load() == {"waiting": 0, "running": 0, "rows": 0}
        assert engine._state is None  # the cache is freed with the last row
        engine.close()
        engine = Engine(model, tok, max_batch=2, max_queue=2)  # not started: nothing leaves the queue
        for _ in range(2):
            engine.submit(Job("x", greedy(), Collect()))
        with pytest.raises(QueueFull):
            engine.submit(Job("x", greedy(), Collect()))
    finally:
        engine.close()


def test_bad_prompt_fails_only_its_job(engine):
    bad, good = Collect(), Collect()
    engine.submit(Job("白", greedy(heal="exact", bos_id=None), bad))  # nothing left after backing off
    engine.submit(Job("hello wor", greedy(), good))
    assert bad.over.wait(30) and good.over.wait(30)
    assert bad.events[-1][0] == "error" and bad.events[-1][1] == 400
    assert good.events[-1][0] == "done"


class Counting:
    """The tiny model, counting prefills."""

    def __init__(self, model) -> None:
        self.model, self.vocab_size, self.config, self.starts = model, model.vocab_size, model.config, 0

    def start(self, **kw):
        self.starts += 1
        return self.model.start(**kw)

    def __getattr__(self, name):
        return getattr(self.model, name)


def test_exact_healing_prefills_the_prompt_once(tiny):
    model, tok = tiny
    counting = Counting(model)
    engine = Engine(counting, tok)
    engine.start()
    try:
        sink = run(engine, [("import num", greedy())])[0]
        want = continue_prompt(model, tok, "import num", max_new_tokens=12, eos_id=tok.eos_id, bos_id=2)[0]
        assert sink.rows(1)[0] == want.token_ids and want.healed.removed  # healed, and the same tokens
        assert counting.starts == 1
    finally:
        engine.close()


class NoJoin:
    """The tiny model without join / clone_state: the engine must batch it by waves."""

    def __init__(self, model) -> None:
        self.model, self.vocab_size, self.config = model, model.vocab_size, model.config

    def start(self, **kw):
        return self.model.start(**kw)

    def step(self, tokens, state):
        return self.model.step(tokens, state)

    def select(self, state, index):
        return self.model.select(state, index)


def test_a_model_without_join_runs_in_waves(tiny):
    model, tok = tiny
    engine = Engine(NoJoin(copy.deepcopy(model).double()), tok)
    assert not engine.continuous
    engine.start()
    try:
        alone = [run(engine, [(p, greedy(heal="none"))])[0].rows(1)[0] for p in PROMPTS]
        crowd = run(engine, [(p, greedy(heal="none")) for p in PROMPTS], gap=0.01)
        assert [c.rows(1)[0] for c in crowd] == alone
    finally:
        engine.close()


def test_penalties_on_the_prompt_equal_the_library(tiny, engine):
    """Processors that look at the prompt (repetition penalty, no-repeat n-grams) get prompt +
    generated tokens, as in decode.loops."""
    from genloom.decode.processors import NoRepeatNGram, RepetitionPenalty

    model, tok = tiny
    procs = [RepetitionPenalty(1.8), NoRepeatNGram(2)]
    sinks = run(engine, [(p, greedy(processors=procs)) for p in PROMPTS[:3]])
    changed = []
    for p, sink in zip(PROMPTS[:3], sinks):
        want = continue_prompt(model, tok, p, max_new_tokens=12, eos_id=tok.eos_id, bos_id=2, processors=procs)[0]
        plain = continue_prompt(model, tok, p, max_new_tokens=12, eos_id=tok.eos_id, bos_id=2)[0]
        assert sink.rows(1)[0] == want.token_ids
        changed.append(want.token_ids != plain.token_ids)
    assert any(changed)  # the penalties do change the text
