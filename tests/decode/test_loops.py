"""Search loops against brute force on tiny Decodables written here: greedy equals the argmax of
full scoring, exhaustive beam search equals the best sequence under the same length penalty, beam
1 equals greedy, sampling is reproducible and draws from the processed distribution, and rows are
repeated / reordered through select correctly."""

from __future__ import annotations

import math
import zlib

import pytest
import torch
from scipy.stats import chisquare
from torch import nn

from genloom.decode import processors as P
from genloom.decode.loops import Generated, beam_search, greedy, sample, stream


class PrefixHashLM:
    """Logits are a fixed random function of the whole prefix (prompt + generated tokens), so any
    mistake in row bookkeeping (select) changes what the search sees. State: one tuple per row."""

    def __init__(self, vocab_size: int, *, seed: int = 0, scale: float = 2.0):
        self.vocab_size, self.seed, self.scale = vocab_size, seed, scale
        self._memo: dict[tuple, torch.Tensor] = {}
        self.steps = self.selects = 0
        self.started_with: int | None = None

    def logits_for(self, prefix: tuple) -> torch.Tensor:
        if prefix not in self._memo:
            g = torch.Generator().manual_seed(zlib.crc32(repr((self.seed, prefix)).encode()))
            self._memo[prefix] = torch.randn(self.vocab_size, generator=g) * self.scale  # (V,)
        return self._memo[prefix]

    def _logits(self, state: list[tuple]) -> torch.Tensor:
        return torch.stack([self.logits_for(p) for p in state])  # (B, V)

    def start(self, *, prompts: list[list[int]], max_new_tokens: int):
        self.started_with = max_new_tokens
        state = [tuple(p) for p in prompts]
        return (self._logits(state) if state else torch.zeros(0, self.vocab_size)), state

    def step(self, tokens: torch.Tensor, state: list[tuple]):
        self.steps += 1
        state = [p + (t,) for p, t in zip(state, tokens.tolist())]
        return self._logits(state), state

    def select(self, state: list[tuple], index: torch.Tensor) -> list[tuple]:
        self.selects += 1
        return [state[i] for i in index.tolist()]


class BigramLM:
    """A vectorised bigram table (fast for many rows). State: (B,) last token."""

    def __init__(self, vocab_size: int, *, seed: int = 0, scale: float = 1.5):
        g = torch.Generator().manual_seed(seed)
        self.vocab_size = vocab_size
        self.table = torch.randn(vocab_size, vocab_size, generator=g) * scale  # (V, V)

    def start(self, *, last: torch.Tensor, max_new_tokens: int):
        return self.table[last], last

    def step(self, tokens, state):
        return self.table[tokens], tokens

    def select(self, state, index):
        return state[index]


class TinyLSTM(nn.Module):
    """A tiny LSTM LM implementing the protocol; `forward` scores whole sequences."""

    def __init__(self, vocab_size: int = 11, dim: int = 16, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.vocab_size = vocab_size
        self.emb = nn.Embedding(vocab_size, dim)
        self.lstm = nn.LSTM(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, vocab_size)
        with torch.no_grad():
            self.head.weight.mul_(4)  # peaky distributions, few near-ties

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(self.emb(tokens))[0])  # (B, T, V)

    def start(self, *, prompts: list[list[int]], max_new_tokens: int):
        hs, cs, logits = [], [], []
        for p in prompts:  # ragged prompts: one row at a time
            out, (h, c) = self.lstm(self.emb(torch.tensor([p])))
            hs.append(h), cs.append(c), logits.append(self.head(out[0, -1]))
        return torch.stack(logits), (torch.cat(hs, 1), torch.cat(cs, 1))

    def step(self, tokens, state):
        out, state = self.lstm(self.emb(tokens[:, None]), state)
        return self.head(out[:, 0]), state

    def select(self, state, index):
        return state[0][:, index], state[1][:, index]


def _full_greedy(lm: TinyLSTM, prompt, n, eos, procs=()):
    """Reference: re-score the whole sequence at every step, apply processors, argmax."""
    seq, new = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            logits = lm(torch.tensor([seq]))[:, -1]  # (1, V)
            logits = P.apply(procs, logits, torch.tensor([new], dtype=torch.long), torch.tensor([seq]))
            tok = int(logits.argmax())
            if tok == eos:
                break
            seq.append(tok), new.append(tok)
    return new


PROMPTS = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10], [2, 2], [7, 3, 1, 0]]


def test_greedy_equals_argmax_of_full_scoring():
    lm = TinyLSTM(seed=1)  # a seed where some rows end at EOS and some run to the limit
    out = greedy(lm, prompts=PROMPTS, max_new_tokens=12, eos_id=0)
    assert out.sequences == [_full_greedy(lm, p, 12, 0) for p in PROMPTS]
    assert any(len(s) < 12 for s in out.sequences) and any(len(s) == 12 for s in out.sequences)


def test_greedy_with_processors_that_see_the_prompt():
    lm = TinyLSTM(seed=3)
    procs = [P.RepetitionPenalty(1.8), P.NoRepeatNGram(2)]
    out = greedy(lm, prompts=PROMPTS, max_new_tokens=10, eos_id=0, processors=procs, prompt_ids=PROMPTS)
    assert out.sequences == [_full_greedy(lm, p, 10, 0, procs) for p in PROMPTS]
    # without prompt_ids the processors see only the generated tokens: different, and documented
    alone = greedy(lm, prompts=PROMPTS, max_new_tokens=10, eos_id=0, processors=procs)
    assert all(len(set(zip(s, s[1:]))) == len(s) - 1 for s in alone.sequences if len(s) > 1)


def test_greedy_scores_and_step_count():
    lm = PrefixHashLM(7)
    out = greedy(lm, prompts=[[1], [2, 3]], max_new_tokens=5)
    assert lm.started_with == 5 and lm.steps == 4  # the last token is never stepped
    for prompt, seq, score in zip([[1], [2, 3]], out.sequences, out.scores):
        ref = sum(float(lm.logits_for(tuple(prompt + seq[:i])).log_softmax(-1)[tok]) for i, tok in enumerate(seq))
        assert abs(score - ref) < 1e-5


def test_min_new_tokens_forbids_early_eos():
    lm = TinyLSTM()
    eos = int(lm(torch.tensor([[4]]))[0, -1].argmax())  # the token greedy would pick first
    assert greedy(lm, prompts=[[4]], max_new_tokens=6, eos_id=eos).sequences == [[]]
    out = greedy(lm, prompts=[[4]], max_new_tokens=6, eos_id=eos, min_new_tokens=3).sequences[0]
    assert len(out) >= 3 and eos not in out[:3]


def _brute_force(lm: PrefixHashLM, prompt, n, eos, lp, min_new=0):
    """Every sequence of <= n tokens that ends in EOS or has n tokens, scored as HF does."""
    results = []

    def walk(seq, total):
        logp = lm.logits_for(tuple(prompt + seq)).log_softmax(-1)
        if len(seq) < min_new:
            logp = logp.clone()
            logp[eos] = -math.inf
        for tok in range(lm.vocab_size):
            s = total + float(logp[tok])
            if s == -math.inf:
                continue
            if tok == eos:
                results.append((s / (len(seq) + 1) ** lp, seq))
            elif len(seq) + 1 == n:
                results.append((s / n**lp, seq + [tok]))
            else:
                walk(seq + [tok], s)

    walk([], 0.0)
    return sorted(results, key=lambda r: -r[0])


@pytest.mark.parametrize("lp,early", [(1.0, "never"), (0.0, "never"), (2.0, "never"), (-1.0, "never"),
                                      (0.0, False), (-0.5, False)])
def test_exhaustive_beam_equals_brute_force(lp, early):
    V, N, eos = 4, 3, 0
    lm = PrefixHashLM(V, seed=1, scale=1.0)
    prompts = [[1], [2, 3], [3, 3, 1]]
    out = beam_search(lm, prompts=prompts, num_beams=V**N, max_new_tokens=N, eos_id=eos,
                      length_penalty=lp, early_stopping=early, num_return_sequences=5)
    for i, prompt in enumerate(prompts):
        ref = _brute_force(lm, prompt, N, eos, lp)
        assert out.sequences[5 * i : 5 * i + 5] == [s for _, s in ref[:5]]
        assert out.scores[5 * i : 5 * i + 5] == pytest.approx([sc for sc, _ in ref[:5]], abs=1e-5)


def test_exhaustive_beam_with_min_length_and_processors():
    V, N, eos = 3, 4, 2
    lm = PrefixHashLM(V, seed=5, scale=1.5)
    out = beam_search(lm, prompts=[[0, 1]], num_beams=V**N, max_new_tokens=N, eos_id=eos,
                      early_stopping="never", min_new_tokens=2)
    ref = _brute_force(lm, [0, 1], N, eos, 1.0, min_new=2)
    assert out.sequences[0] == ref[0][1] and len(out.sequences[0]) >= 2
    assert out.scores[0] == pytest.approx(ref[0][0], abs=1e-5)


def test_beam_one_equals_greedy():
    lm = TinyLSTM(seed=1)
    g = greedy(lm, prompts=PROMPTS, max_new_tokens=10, eos_id=0)
    b = beam_search(lm, prompts=PROMPTS, num_beams=1, max_new_tokens=10, eos_id=0, early_stopping=True)
    assert b.sequences == g.sequences
    b = beam_search(lm, prompts=PROMPTS, num_beams=1, max_new_tokens=10, length_penalty=0.0)
    assert b.sequences == greedy(lm, prompts=PROMPTS, max_new_tokens=10).sequences


def test_beam_rows_are_independent_and_reordered_through_select():
    lm = PrefixHashLM(9, seed=2)
    prompts = [[1, 2], [3], [4, 5, 6], [7]]
    batch = beam_search(lm, prompts=prompts, num_beams=3, max_new_tokens=6, eos_id=0, num_return_sequences=2)
    assert lm.selects > 1  # beams were reordered, not just repeated once
    for i, p in enumerate(prompts):
        one = beam_search(PrefixHashLM(9, seed=2), prompts=[p], num_beams=3, max_new_tokens=6, eos_id=0,
                          num_return_sequences=2)
        assert batch.sequences[2 * i : 2 * i + 2] == one.sequences
        assert batch.scores[2 * i : 2 * i + 2] == pytest.approx(one.scores)
    assert all(a >= b for a, b in zip(batch.scores[::2], batch.scores[1::2]))  # best first


def test_sampling_is_reproducible_and_grouped_by_prompt():
    lm = PrefixHashLM(6, seed=4)
    kw = dict(prompts=[[1], [2]], max_new_tokens=5, num_samples=4, eos_id=0)
    a = sample(lm, generator=torch.Generator().manual_seed(7), **kw)
    b = sample(lm, generator=torch.Generator().manual_seed(7), **kw)
    c = sample(lm, generator=torch.Generator().manual_seed(8), **kw)
    assert a == b and a != c and len(a.sequences) == 8
    # prompts that force different first tokens: rows 0-3 come from prompt 0, rows 4-7 from prompt 1
    lm2 = BigramLM(5)
    lm2.table[:] = -20.0
    lm2.table[1, 3] = lm2.table[2, 4] = lm2.table[3, 0] = lm2.table[4, 0] = 0.0
    out = sample(lm2, last=torch.tensor([1, 2]), max_new_tokens=3, num_samples=4, eos_id=0)
    assert out.sequences == [[3]] * 4 + [[4]] * 4


def test_sampling_matches_the_processed_distribution():
    """Two-step joint frequencies over 20,000 draws against the product of the processed
    conditionals (chi-square), with temperature, top-k and top-p all active."""
    V, n = 6, 20_000
    lm = BigramLM(V, seed=9)
    procs = [P.Temperature(0.8), P.TopK(4), P.TopP(0.9)]
    out = sample(lm, last=torch.tensor([2]), max_new_tokens=2, num_samples=n, processors=procs,
                 generator=torch.Generator().manual_seed(0))
    first = torch.softmax(P.apply(procs, lm.table[2:3], torch.zeros(1, 0, dtype=torch.long)), -1)[0]
    joint = torch.zeros(V, V)
    for a in range(V):
        second = torch.softmax(P.apply(procs, lm.table[a : a + 1], torch.tensor([[a]])), -1)[0]
        joint[a] = first[a] * second
    counts = torch.zeros(V, V)
    for a, b in out.sequences:
        counts[a, b] += 1
    support = joint > 0
    assert counts[~support].sum() == 0  # never a filtered token
    stat = chisquare(counts[support].numpy(), (joint[support] * n).double().numpy())
    assert stat.pvalue > 1e-3
    tv = 0.5 * (counts / n - joint).abs().sum()
    assert tv < 0.03


def test_stream_yields_what_greedy_and_sample_return():
    lm = TinyLSTM(seed=2)
    chunks = list(stream(lm, prompts=PROMPTS, max_new_tokens=9, eos_id=0))
    rows = [[c[i] for c in chunks if c[i] is not None] for i in range(len(PROMPTS))]
    assert rows == greedy(lm, prompts=PROMPTS, max_new_tokens=9, eos_id=0).sequences
    # a finished row stays None
    for i in range(len(PROMPTS)):
        col = [c[i] for c in chunks]
        assert all(x is None for x in col[col.index(None):]) if None in col else True
    kw = dict(prompts=PROMPTS[:2], max_new_tokens=6, eos_id=0, num_samples=3)
    chunks = list(stream(lm, do_sample=True, generator=torch.Generator().manual_seed(3), **kw))
    rows = [[c[i] for c in chunks if c[i] is not None] for i in range(6)]
    assert rows == sample(lm, generator=torch.Generator().manual_seed(3), **kw).sequences


def test_stream_is_lazy():
    lm = PrefixHashLM(5)
    it = stream(lm, prompts=[[1]], max_new_tokens=10)
    next(it), next(it)
    assert lm.steps == 1


@pytest.mark.parametrize("call,message", [
    (lambda lm: beam_search(lm, prompts=[[1]], num_beams=0, max_new_tokens=3),
     "num_beams must be an integer >= 1, got 0"),
    (lambda lm: greedy(lm, prompts=[[1]], max_new_tokens=0), "max_new_tokens must be an integer >= 1, got 0"),
    (lambda lm: beam_search(lm, prompts=[[1]], num_beams=2, max_new_tokens=0),
     "max_new_tokens must be an integer >= 1"),
    (lambda lm: greedy(lm, prompts=[], max_new_tokens=3), "no prompts to decode"),
    (lambda lm: beam_search(lm, prompts=[], num_beams=2, max_new_tokens=3), "no prompts to decode"),
    (lambda lm: sample(lm, prompts=[[1]], max_new_tokens=3, num_samples=0), "num_samples must be an integer >= 1"),
    (lambda lm: beam_search(lm, prompts=[[1]], num_beams=2, max_new_tokens=3, num_return_sequences=3),
     "num_return_sequences (3) must be <= num_beams (2)"),
    (lambda lm: beam_search(lm, prompts=[[1]], num_beams=2, max_new_tokens=3, early_stopping="sometimes"),
     'early_stopping must be True, False or "never"'),
    (lambda lm: beam_search(lm, prompts=[[1]], num_beams=2, max_new_tokens=3, early_stopping=1),
     'early_stopping must be True, False or "never", got 1'),
    (lambda lm: greedy(lm, prompts=[[1]], max_new_tokens=3, eos_id=-1), "eos_id must be a non-negative token id"),
    (lambda lm: greedy(lm, prompts=[[1]], max_new_tokens=3, prompt_ids=[[1], [2]]), "prompt_ids has 2 rows"),
    (lambda lm: greedy(lm, prompts=[[1]], max_new_tokens=3, processors=[P.BannedTokens(range(5))]),
     "removed every token"),
])
def test_bad_input_is_a_one_line_value_error(call, message):
    with pytest.raises(ValueError) as e:
        call(PrefixHashLM(5))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_generated_is_a_plain_dataclass():
    out = greedy(PrefixHashLM(5), prompts=[[1]], max_new_tokens=2)
    assert isinstance(out, Generated) and isinstance(out.sequences[0][0], int)
    assert isinstance(out.scores[0], float)


def test_exhaustive_search_space_is_small():
    # guard for the brute-force tests above: the enumeration really covers every sequence
    lm = PrefixHashLM(4, seed=1, scale=1.0)
    n_paths = len(_brute_force(lm, [1], 3, 0, 0.0))
    assert n_paths == 1 + 3 + 9 + 27  # EOS as token 1, 2 or 3, or three non-EOS tokens


# ---- parity with transformers' generate() on the same weights (a tiny random GPT-2) ----------

class _HFRecompute:
    """A cache-free Decodable over a Hugging Face causal LM for one unpadded prompt at a time:
    every step re-runs the whole sequence (the reference the cached adapters must match)."""

    def __init__(self, model):
        self.model, self.vocab_size = model, model.config.vocab_size

    def _last(self, ids):
        with torch.no_grad():
            return self.model(input_ids=ids).logits[:, -1].float()  # (B, V)

    def start(self, *, input_ids, max_new_tokens):
        return self._last(input_ids), input_ids

    def step(self, tokens, state):
        state = torch.cat([state, tokens[:, None]], 1)
        return self._last(state), state

    def select(self, state, index):
        return state[index]


@pytest.fixture(scope="module")
def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=32, n_positions=64, n_embd=32, n_layer=2, n_head=2, initializer_range=0.3,
                     bos_token_id=1, eos_token_id=1)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # make EOS (tied embedding row 1) likely, so beams finish at many lengths
        model.transformer.wte.weight[1] *= 2.0
    return model


def _hf_prompts(n=20, vocab=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 9, (n,), generator=g).tolist()
    return [torch.randint(2, vocab, (k,), generator=g).tolist() for k in lengths]


def _hf_new_tokens(seq: torch.Tensor, prompt_len: int, eos: int) -> list[int]:
    new = seq[prompt_len:].tolist()
    return new[: new.index(eos)] if eos in new else new


EOS = 1


def _adapters(hf_model):
    """HFCausalLM on HF's own cache, and genloom's Transformer with the weights converted."""
    from genloom.models.hf import HFCausalLM, convert

    yield "HFCausalLM", HFCausalLM(hf_model)
    yield "Transformer", convert(hf_model)


def _padded(prompts):
    """Right-padded (B, T) ids and lengths, the prompt format of Transformer and HFCausalLM."""
    lengths = torch.tensor([len(p) for p in prompts])
    ids = torch.zeros(len(prompts), int(lengths.max()), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = torch.tensor(p)
    return ids, lengths


@pytest.mark.parametrize("procs,hf_kw", [
    ((), {}),
    ((P.RepetitionPenalty(1.5), P.NoRepeatNGram(3)), dict(repetition_penalty=1.5, no_repeat_ngram_size=3)),
])
def test_greedy_equals_hf_generate(tiny_gpt2, procs, hf_kw):
    """20 prompts x 24 tokens, one HF generate() per prompt; ours decodes all 20 ragged prompts
    in one batch (left-packed by the adapters) and must agree on every one."""
    prompts = _hf_prompts()
    refs = []
    for p in prompts:
        ids = torch.tensor([p])
        out = tiny_gpt2.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24,
                                 eos_token_id=EOS, pad_token_id=EOS, **hf_kw)
        refs.append(_hf_new_tokens(out[0], len(p), EOS))
    assert any(len(r) < 24 for r in refs)  # some rows finish early
    ids, lengths = _padded(prompts)
    for name, model in _adapters(tiny_gpt2):
        ours = greedy(model, input_ids=ids, lengths=lengths, max_new_tokens=24, eos_id=EOS, processors=procs,
                      prompt_ids=prompts)
        agree = sum(a == b for a, b in zip(ours.sequences, refs))
        assert agree == 20, (name, agree)


@pytest.mark.parametrize("lp,early", [(1.0, False), (1.0, True), (2.0, "never"), (-0.5, False), (0.8, "never")])
def test_beam4_equals_hf_generate(tiny_gpt2, lp, early):
    """Beam 4 on 20 prompts, one prompt at a time on both sides: the best sequence must agree on
    >= 19 (all 20 agree here, and the whole 4-best list with its scores too)."""
    refs = []
    prompts = _hf_prompts(seed=1)
    for p in prompts:
        ids = torch.tensor([p])
        out = tiny_gpt2.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, num_beams=4,
                                 max_new_tokens=16, eos_token_id=EOS, pad_token_id=EOS, length_penalty=lp,
                                 early_stopping=early, num_return_sequences=4, output_scores=True,
                                 return_dict_in_generate=True)
        refs.append(([_hf_new_tokens(s, len(p), EOS) for s in out.sequences], out.sequences_scores.tolist()))
    for name, model in _adapters(tiny_gpt2):
        best = nbest = 0
        for p, (hf_seqs, hf_scores) in zip(prompts, refs):
            ours = beam_search(model, input_ids=torch.tensor([p]), num_beams=4, max_new_tokens=16, eos_id=EOS,
                               length_penalty=lp, early_stopping=early, num_return_sequences=4)
            best += ours.sequences[0] == hf_seqs[0]
            nbest += ours.sequences == hf_seqs and ours.scores == pytest.approx(hf_scores, abs=1e-4)
        assert best >= 19 and nbest >= 19, (name, best, nbest)


class _Counting:
    """Wraps a Decodable and counts step calls."""

    def __init__(self, inner):
        self.inner, self.vocab_size, self.steps = inner, inner.vocab_size, 0

    def start(self, **kw):
        return self.inner.start(**kw)

    def step(self, tokens, state):
        self.steps += 1
        return self.inner.step(tokens, state)

    def select(self, state, index):
        return self.inner.select(state, index)


@pytest.mark.parametrize("lp,early", [(1.0, False), (1.0, True), (-0.5, False)])
def test_batched_beam_equals_hf_batched_and_per_row(tiny_gpt2, lp, early):
    """Equal-length prompts (no padding): rows that finish early are frozen, as in HF's batch."""
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(2, 32, (8, 5), generator=g)
    kw = dict(num_beams=4, max_new_tokens=16, length_penalty=lp, early_stopping=early)
    ref = tiny_gpt2.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, eos_token_id=EOS,
                             pad_token_id=EOS, num_return_sequences=2, **kw)
    model = _HFRecompute(tiny_gpt2)  # cache-free: every step re-runs the whole sequence
    for name, adapter in [("recompute", model), *_adapters(tiny_gpt2)]:
        ours = beam_search(adapter, input_ids=ids, eos_id=EOS, num_return_sequences=2, **kw)
        assert ours.sequences == [_hf_new_tokens(s, 5, EOS) for s in ref], name
    for i in range(8):
        one = _Counting(model)
        alone = beam_search(one, input_ids=ids[i : i + 1], eos_id=EOS, num_return_sequences=4, **kw)
        assert alone.sequences[:2] == ours.sequences[2 * i : 2 * i + 2]
        if early is True:  # stops at the step that finishes the 4th hypothesis (or at the limit)
            assert one.steps == max(min(len(s), 15) for s in alone.sequences)


def test_output_scores_off_gives_the_same_sequences():
    lm = PrefixHashLM(7)
    for run in (lambda **kw: greedy(lm, prompts=[[1], [2, 3]], max_new_tokens=6, eos_id=0, **kw),
                lambda **kw: sample(lm, prompts=[[1], [2, 3]], max_new_tokens=6, eos_id=0, num_samples=3,
                                    generator=torch.Generator().manual_seed(0), **kw)):
        full, bare = run(), run(output_scores=False)
        assert bare.sequences == full.sequences and bare.scores is None and len(full.scores) == len(full.sequences)
    with pytest.raises(ValueError, match="removed every token"):
        sample(lm, prompts=[[1]], max_new_tokens=2, processors=[P.BannedTokens(range(7))], output_scores=False)
