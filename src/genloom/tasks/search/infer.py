"""The three searches of `genloom search`, over a `Backend` (backend.py): keywords to sentences
(CGMH), typo correction, and sentence sampling (Gibbs).

- keywords: chains start from the keywords (their order shuffled per chain) with every keyword
  pinned; CGMH's replace / insert / delete moves with candidates weighted by the target, under a
  falling temperature (simulated annealing), build a sentence around them. The target is
  log p(x) with a soft minimum length (`min_len`, `short_penalty` nats per missing token).
  The n best distinct sentences visited are returned, so every output contains every keyword.
- correct: for the target log p(y) - penalty * (edits from the input): an edit is kept when it
  buys more than `penalty` nats of fluency. Two searches: "sweep", replace moves scanning the
  positions left to right (Metropolis-Hastings at a low temperature), or "best", steepest
  ascent: every replacement of every editable position by one of its top-k candidates is
  scored in one batch and the best one is taken while it buys more than `penalty` (at most
  `max_edits`, a position edited once stays). Chinese edits only Han characters the models know
  (digits, Latin, punctuation and unknown characters stay).
- gibbs: Chinese: Su's sampler, all-[MASK] rows of random length (or an initial text) resampled
  one position at a time from the masked LM. English (no masked LM): replace moves under the LM
  from the initial text, Metropolis-Hastings-corrected, so the length stays fixed too.

Candidates are the top-k of the proposal model; a share `explore` of the proposals is a
uniform token instead, which is what lets a chain leave a token that is not among the current
top-k (the reverse move must be possible for the Metropolis-Hastings ratio to be finite).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from genloom.decode.mcmc import SCHEDULES, Constant, gibbs, keyword_chains, make_chains, metropolis_hastings
from genloom.decode.mcmc_edits import EditConfig, EditProposal
from genloom.decode.targets import (HammingPenalty, LengthPrior, LengthRange, MaxRun, NoRepeatNgram,
                                    entropy_rate)
from genloom.errors import UserError
from genloom.tasks.search.backend import Backend
from genloom.tasks.search.data import HAN


# ---- keywords to sentences ----------------------------------------------------------------------


@dataclass
class KeywordsConfig:
    """Settings of keyword-to-sentence search."""

    n: int = 5  # sentences returned per keyword set
    chains: int = 8  # chains per keyword set (raised to n when smaller)
    steps: int = 200  # Metropolis-Hastings steps per chain
    top_k: int = 20  # candidates per hole
    weighting: str = "target"  # candidates weighted by the "target" (CGMH) or the proposal "model"
    explore: float = 0.05  # share of uniform tokens: lets a chain replace a token outside its top-k
    min_len: int = 8  # tokens below this pay short_penalty each (soft)
    max_len: int = 32  # the most tokens a sentence may have (hard)
    short_penalty: float = 3.0  # nats per token short of min_len
    schedule: str = "geometric"  # temperature schedule: constant, linear, geometric
    t_start: float = 1.0  # temperature at the first step
    t_end: float = 0.05  # temperature at the last step
    natural_len: float = 0.0  # length model: mean length (tokens) of the sentences wanted; 0: none
    natural_len_sd: float = 6.0  # length model: standard deviation of that length
    length_temperature: float = 0.8  # length model: nats per token = the LM's NLL of its samples at this temperature
    no_repeat: int = 0  # ban every sentence that repeats an n-gram of this size (0: none)
    max_run: int = 0  # ban every sentence with a token more than this many times in a row (0: no limit)


def default_keywords_config(lang: str) -> KeywordsConfig:
    """Chinese: the defaults; English (SmolLM2 is ~70x the Chinese LM): fewer, cheaper steps."""
    if lang == "en":
        return KeywordsConfig(chains=4, steps=40, weighting="model", min_len=6, max_len=24)
    return KeywordsConfig()


@dataclass
class Found:
    """One output sentence."""

    text: str  # decoded sentence
    tokens: list[int]  # its token ids
    score: float  # the target's log-density (log p plus the length term)


def length_model(backend: Backend, config: KeywordsConfig, *, generator: torch.Generator) -> LengthPrior:
    """log N(L; natural_len, natural_len_sd) + h * L (`targets.LengthPrior`), h the target LM's NLL
    per token of its own samples at `length_temperature` over the vocabulary a move may write
    (`targets.entropy_rate`). At temperature 1 that is the LM's entropy rate, right for sampling;
    an annealed search settles on likelier text, whose tokens cost less (genloom-zh-base after 3,750
    steps: 4.42 nats at temperature 1, 3.24 at 0.8, 2.54 at 0.7). With the temperature-1 figure
    every token the search adds pays for itself and the sentences run to --max-len (after 2,750
    steps, 10 keyword sets, mean 24 asked: 32.0 characters of 32); at 0.7 they came out at 21.7,
    at 0.8 at 27.4."""
    rate = entropy_rate(backend.lm.model, bos_id=backend.lm.bos_id, eos_id=backend.lm.eos_id, allowed=backend.vocab,
                        max_new_tokens=config.max_len, generator=generator, temperature=config.length_temperature)
    return LengthPrior(LengthPrior.gaussian(config.natural_len, config.natural_len_sd, config.max_len), per_token=rate)


def keywords_search(backend: Backend, keyword_sets: Sequence[Sequence[str]], config: KeywordsConfig, *,
                    generator: torch.Generator, progress: bool = False) -> list[list[Found]]:
    """Sentences containing every keyword of each set: the n best distinct states visited."""
    if not keyword_sets or any(not ws for ws in keyword_sets):
        raise UserError("give at least one keyword per set")
    ids = [[backend.encode_keyword(w) for w in ws] for ws in keyword_sets]
    stutter = MaxRun(config.max_run) if config.max_run > 0 else None
    for ws, kw in zip(keyword_sets, ids):
        if sum(map(len, kw)) > config.max_len:
            raise UserError(f"the keywords {','.join(ws)} take more than --max-len {config.max_len} tokens")
        for w, k in zip(ws, kw):
            if stutter is not None and stutter(torch.tensor([k]), torch.ones(1, len(k), dtype=torch.bool)).item() < 0:
                raise UserError(f"the keyword {w} repeats a token more than --max-run {config.max_run} times in a row")
    target = backend.lm + LengthRange(config.min_len, config.max_len, weight=config.short_penalty)
    if config.natural_len > 0:
        target = target + length_model(backend, config, generator=generator)
    if config.no_repeat > 0:
        target = target + NoRepeatNgram(config.no_repeat)
    if stutter is not None:
        target = target + stutter
    per_set = max(config.chains, config.n)
    chains = keyword_chains(ids, chains_per_set=per_set, width=config.max_len, target=target, generator=generator,
                            pad_id=backend.pad_id)
    proposal = EditProposal(backend.slots, backend.vocab, EditConfig(
        top_k=config.top_k, weighting=config.weighting, explore=config.explore, min_len=1, max_len=config.max_len))
    schedule = SCHEDULES[config.schedule](config.t_start, config.t_end, config.steps)
    result = metropolis_hastings(target, proposal, chains, steps=config.steps, schedule=schedule,
                                 generator=generator, progress=progress)
    out: list[list[Found]] = []
    for s in range(len(keyword_sets)):
        rows = (result.best.cond == s).nonzero().squeeze(1).tolist()
        found: dict[str, Found] = {}
        for r in sorted(rows, key=lambda r: -float(result.best.log_target[r])):
            toks = result.best.tokens[r, : int(result.best.lengths[r])].tolist()
            text = backend.decode(toks)
            found.setdefault(text, Found(text=text, tokens=toks, score=float(result.best.log_target[r])))
        out.append(list(found.values())[: config.n])
    return out


# ---- correction ---------------------------------------------------------------------------------


@dataclass
class CorrectConfig:
    """Settings of error correction."""

    sweeps: int = 1  # passes over every editable position
    top_k: int = 8  # candidates per position
    explore: float = 0.05  # share of uniform tokens: lets the search replace a token outside its top-k
    penalty: float = 12.0  # nats of fluency an edit must buy (chosen on inews dev: no clean sentence changed)
    temperature: float = 0.1  # constant temperature of the search (low: nearly greedy)
    both: bool = False  # fluency = mean of the forward and backward LMs' log p (Chinese; twice the work)
    search: str = "sweep"  # "sweep" (MH replace moves, left to right) or "best" (steepest ascent)
    max_edits: int = 3  # search "best": the most edits per sentence
    positions: int = 0  # search "best": edit only the N most surprising positions of a row (0: every one)
    shortlist: int = 0  # search "best": of the top-k, score only the S best by p(w | left) p(next | left, w) (0: all)


SEARCHES = ("sweep", "best")


SHORTLIST_ROWS = 2048  # BestEdits' look-ahead: candidate rows stepped at once


class BestEdits:
    """The best single replacement of each row (search "best"): candidates are the slot model's
    top-k allowed tokens at every editable position, all scored by `fluency` in one batch.
    With `positions` = N > 0 only the N editable positions whose token and next token are the
    most surprising to the target LM (-log p(x_i | x_<i) - log p(x_i+1 | x_<=i)) are tried: a
    wrong token shows there, so a larger top-k fits the same work.
    With `shortlist` = S > 0 (an LM with the decoding protocol), the top-k candidates of a position
    are first ranked by log p(w | x_<i) + log p(x_i+1 | x_<i, w), one cached decoding step for all
    of them, and only the S best are scored whole: a large k for the work of a small one.
    Results are memoised by row, so a penalty sweep over the same rows scores them once."""

    def __init__(self, backend: Backend, fluency: Any, vocab: Sequence[int], top_k: int, positions: int = 0,
                 shortlist: int = 0) -> None:
        self.backend, self.fluency, self.top_k, self.positions = backend, fluency, top_k, positions
        from genloom.models import Transformer

        self.shortlist = shortlist if isinstance(backend.lm.model, Transformer) else 0  # the cached step
        self.allowed = torch.full((backend.tokenizer.vocab_size,), float("-inf"))
        self.allowed[list(vocab)] = 0.0
        self.memo: dict[tuple[tuple[int, ...], tuple[bool, ...]], tuple[float, int, int]] = {}  # (row, editable)

    @torch.inference_mode()
    def __call__(self, rows: Sequence[Sequence[int]],
                 editable: Sequence[Sequence[bool]]) -> list[tuple[float, int, int]]:
        """(gain in nats, position, token) of each row's best replacement ((-inf, -1, -1): none)."""
        todo = sorted({(tuple(r), tuple(map(bool, e))) for r, e in zip(rows, editable)} - self.memo.keys(),
                      key=lambda item: len(item[0]))
        for key, editable_here in todo:
            pos = [i for i, e in enumerate(editable_here) if e]
            if not pos:
                self.memo[key, editable_here] = (float("-inf"), -1, -1)
                continue
            base = torch.tensor([key])
            pos = self.tried_positions(key, pos)
            cand = self.candidates(key, pos)[-1]  # (P, k)
            k = cand.shape[1]
            ys = base.repeat(len(pos) * k + 1, 1)
            p_idx = torch.tensor(pos).repeat_interleave(k)
            ys[torch.arange(1, len(ys)), p_idx] = cand.flatten()
            scores = self.fluency(ys, torch.ones_like(ys, dtype=torch.bool), torch.zeros(len(ys), dtype=torch.long))
            gains = (scores[1:] - scores[0]).masked_fill(cand.flatten() == base[0, p_idx], float("-inf"))
            j = int(gains.argmax())
            self.memo[key, editable_here] = (float(gains[j]), int(p_idx[j]), int(cand.flatten()[j]))
        return [self.memo[tuple(r), tuple(map(bool, e))] for r, e in zip(rows, editable)]

    def tried_positions(self, key: Sequence[int], pos: list[int]) -> list[int]:
        """The editable positions `pos` of row `key` that are tried: all, or the `positions` most
        surprising ones (class docstring), in order."""
        if not 0 < self.positions < len(pos):
            return pos
        n = len(key)
        lp = self.backend.lm.token_log_probs(torch.tensor([key]), torch.ones(1, n, dtype=torch.bool))[0]  # x, EOS
        surprise = -(lp[:n] + lp[1: n + 1])
        return sorted(sorted(pos, key=lambda i: -float(surprise[i]))[: self.positions])

    def candidates(self, key: Sequence[int], pos: list[int]) -> tuple[Tensor, Tensor]:
        """(the slot model's top-k allowed tokens at each of `pos`, the candidates scored whole:
        those, or their look-ahead shortlist), each (P, k')."""
        n = len(key)
        base, full = torch.tensor([key]), torch.ones(1, n, dtype=torch.bool)
        slots = self.backend.slots.slot_scores(base.expand(len(pos), n), full.expand(len(pos), n),
                                               torch.tensor(pos))  # (P, V)
        k = min(self.top_k, int(torch.isfinite(self.allowed).sum()))
        ranked = (slots.float() + self.allowed).topk(k, dim=-1)
        if 0 < self.shortlist < k:
            return ranked.indices, self._shortlist(tuple(key), pos, ranked.values, ranked.indices)
        return ranked.indices, ranked.indices

    def _shortlist(self, key: tuple[int, ...], pos: list[int], scores: Tensor, cand: Tensor) -> Tensor:
        """The `shortlist` best of each position's candidates (P, k) by slot score + log p(next
        token | x_<i, w): every candidate stepped once on its prefilled prefix, SHORTLIST_ROWS rows at a
        time (each chunk prefills the P prefixes afresh: cheap beside the chunk's step)."""
        lm, n = self.backend.lm, len(key)
        prefixes = torch.tensor([[lm.bos_id, *key]])[:, : max(pos) + 1].expand(len(pos), -1).contiguous()
        k = cand.shape[1]
        owner, flat = torch.arange(len(pos)).repeat_interleave(k), cand.flatten()
        following = torch.tensor([key[i + 1] if i + 1 < n else lm.eos_id for i in pos]).repeat_interleave(k)
        nxt = torch.empty(len(flat))
        for lo in range(0, len(flat), SHORTLIST_ROWS):  # bounded cache memory for a large k
            hi = min(lo + SHORTLIST_ROWS, len(flat))
            # a fresh prefill per chunk: select() may reorder the prefilled rows in place
            _, state = lm.model.start(input_ids=prefixes, lengths=torch.tensor(pos) + 1, max_new_tokens=1)
            logits, _ = lm.model.step(flat[lo:hi], lm.model.select(state, owner[lo:hi]))  # (rows, V)
            nxt[lo:hi] = logits.float().log_softmax(-1).gather(1, following[lo:hi, None])[:, 0]
        order = (scores + nxt.view(len(pos), k)).topk(self.shortlist, dim=-1).indices
        return cand.gather(1, order)


def correct_best(edits: BestEdits, rows: Sequence[Sequence[int]], editable: Sequence[Sequence[bool]], *,
                 penalty: float, max_edits: int) -> list[list[int]]:
    """Steepest ascent from each row: take the best replacement while it buys more than `penalty`
    nats, at most `max_edits` times, never editing a position twice."""
    rows = [list(r) for r in rows]
    editable = [list(e) for e in editable]
    active = list(range(len(rows)))
    for _ in range(max_edits):
        if not active:
            break
        found = edits([rows[i] for i in active], [editable[i] for i in active])
        still = []
        for i, (gain, pos, tok) in zip(active, found):
            if gain > penalty:
                rows[i][pos] = tok
                editable[i][pos] = False
                still.append(i)
        active = still
    return rows


def han_vocab(backend: Backend) -> list[int]:
    """The Han characters of the moves' vocabulary: what Chinese correction may write."""
    return [i for i in backend.vocab if HAN.fullmatch(backend.tokenizer.id_to_token(i))]


def correction_fluency(backend: Backend, both: bool = False) -> Any:
    """The score correction maximises: the forward LM's log p, or with `both` the mean of the
    forward and the backward LM's."""
    if not both:
        return backend.lm
    if backend.lm_backward is None:
        raise UserError("--both needs a backward LM: the Chinese models of --models, or --lm with --lm-backward")
    return 0.5 * backend.lm + 0.5 * backend.lm_backward


def correct_texts(backend: Backend, texts: Sequence[str], config: CorrectConfig, *, generator: torch.Generator,
                  progress: bool = False, edits: BestEdits | None = None) -> list[str]:
    """Each text with the replacements that make it more fluent than `penalty` nats per edit.
    `edits`: search "best" reuses this scorer's memo (a penalty sweep over the same texts)."""
    if not texts or any(not t.strip() for t in texts):
        raise UserError("nothing to correct: a text is empty")
    rows = [backend.encode(t) for t in texts]
    width = max(len(r) for r in rows)
    vocab = backend.vocab
    spans = None
    if backend.lang == "zh":  # only known Han characters are edited, only into Han characters
        tok = backend.tokenizer
        vocab = han_vocab(backend)
        spans = [[0 if HAN.fullmatch(c) and t != tok.unk_id else i + 1 for i, (c, t) in enumerate(zip(text, row))]
                 for text, row in zip(texts, rows)]
    fluency = correction_fluency(backend, config.both)
    if config.search not in SEARCHES:
        raise UserError(f"--search must be one of {', '.join(SEARCHES)}, got {config.search!r}")
    if config.search == "best":
        editable = [[not sp for sp in row_spans] for row_spans in spans] if spans is not None \
            else [[True] * len(r) for r in rows]
        if edits is None:
            edits = BestEdits(backend, fluency, vocab, config.top_k, config.positions, config.shortlist)
        best = correct_best(edits, rows, editable, penalty=config.penalty, max_edits=config.max_edits)
        return _restore(backend, texts, rows, best)
    refs = make_chains(rows, width=width, pad_id=backend.pad_id)
    target = fluency + HammingPenalty(refs.tokens, refs.lengths, weight=config.penalty)
    init = make_chains(rows, width=width, target=target, spans=spans, cond=range(len(rows)), pad_id=backend.pad_id)
    cfg = EditConfig(replace=1.0, insert=0.0, delete=0.0, top_k=config.top_k, explore=config.explore, order="sweep",
                     min_len=1, max_len=width)
    result = metropolis_hastings(target, EditProposal(backend.slots, vocab, cfg), init, steps=config.sweeps * width,
                                 schedule=Constant(config.temperature), generator=generator, progress=progress)
    return _restore(backend, texts, rows, result.best.rows())


def _restore(backend: Backend, texts: Sequence[str], rows: Sequence[list[int]],
             fixed: Sequence[list[int]]) -> list[str]:
    """The corrected texts: Chinese keeps the input's own characters where nothing changed (<unk>
    ones too); English decodes a changed row."""
    out = []
    for text, row, best in zip(texts, rows, fixed):
        if backend.lang == "zh":
            out.append("".join(c if a == b else backend.tokenizer.id_to_token(b) for c, a, b in zip(text, row, best)))
        else:
            out.append(text if list(best) == list(row) else backend.decode(best))
    return out


# ---- Gibbs sampling -----------------------------------------------------------------------------


@dataclass
class GibbsConfig:
    """Settings of sentence sampling."""

    n: int = 10  # sentences (chains)
    steps: int = 300  # resampled positions per chain
    min_len: int = 8  # random length from min_len ...
    max_len: int = 32  # ... to max_len (all-[MASK] starts)
    temperature: float = 1.0  # divides the conditional's logits
    top_k: int = 20  # English: candidates per replace move
    explore: float = 0.05  # English: share of uniform tokens in the replace moves


def gibbs_texts(backend: Backend, config: GibbsConfig, *, init: str | None, generator: torch.Generator,
                progress: bool = False) -> list[str]:
    """n sentences: Gibbs from the masked LM (Chinese) or replace-only MH under the LM (English)."""
    if init is not None and not init.strip():
        raise UserError("--init is empty")
    if backend.lang == "zh":
        if init is not None:
            rows = [backend.encode(init)] * config.n
        else:
            if not 1 <= config.min_len <= config.max_len:
                raise UserError(f"need 1 <= --min-len <= --max-len, got {config.min_len} and {config.max_len}")
            lengths = torch.randint(config.min_len, config.max_len + 1, (config.n,), generator=generator).tolist()
            rows = [[backend.mask_id] * n for n in lengths]
        chains = make_chains(rows, width=max(len(r) for r in rows), pad_id=backend.pad_id)
        result = gibbs(backend.masked, chains, steps=config.steps, vocab=backend.vocab, generator=generator,
                       schedule=Constant(config.temperature), progress=progress)
    else:
        text = init if init is not None else "The quick brown fox jumps over the lazy dog."
        rows = [backend.encode(text)] * config.n
        chains = make_chains(rows, width=len(rows[0]), target=backend.lm, pad_id=backend.pad_id)
        cfg = EditConfig(replace=1.0, insert=0.0, delete=0.0, top_k=config.top_k, explore=config.explore, min_len=1)
        result = metropolis_hastings(backend.lm, EditProposal(backend.slots, backend.vocab, cfg), chains,
                                     steps=config.steps, schedule=Constant(config.temperature), generator=generator,
                                     progress=progress)
    return [backend.decode(r) for r in result.last.rows()]
