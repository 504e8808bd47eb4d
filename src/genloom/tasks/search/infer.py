"""The three searches of `genloom search`, over a `Backend` (backend.py): keywords to sentences
(CGMH), typo correction, and sentence sampling (Gibbs).

- keywords: chains start from the keywords (their order shuffled per chain) with every keyword
  pinned; CGMH's replace / insert / delete moves with candidates weighted by the target, under a
  falling temperature (simulated annealing), build a sentence around them. The target is
  log p(x) with a soft minimum length (`min_len`, `short_penalty` nats per missing token).
  The n best distinct sentences visited are returned, so every output contains every keyword.
- correct: replace moves only, scanning the positions left to right, for the target
  log p(y) - penalty * (edits from the input): an edit is kept when it buys more than `penalty`
  nats of fluency. Chinese edits only Han characters the models know (digits, Latin,
  punctuation and unknown characters stay).
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

import torch

from genloom.decode.mcmc import SCHEDULES, Constant, gibbs, keyword_chains, make_chains, metropolis_hastings
from genloom.decode.mcmc_edits import EditConfig, EditProposal
from genloom.decode.targets import HammingPenalty, LengthRange
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


def keywords_search(backend: Backend, keyword_sets: Sequence[Sequence[str]], config: KeywordsConfig, *,
                    generator: torch.Generator, progress: bool = False) -> list[list[Found]]:
    """Sentences containing every keyword of each set: the n best distinct states visited."""
    if not keyword_sets or any(not ws for ws in keyword_sets):
        raise UserError("give at least one keyword per set")
    ids = [[backend.encode_keyword(w) for w in ws] for ws in keyword_sets]
    for ws, kw in zip(keyword_sets, ids):
        if sum(map(len, kw)) > config.max_len:
            raise UserError(f"the keywords {','.join(ws)} take more than --max-len {config.max_len} tokens")
    target = backend.lm + LengthRange(config.min_len, config.max_len, weight=config.short_penalty)
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


def correct_texts(backend: Backend, texts: Sequence[str], config: CorrectConfig, *, generator: torch.Generator,
                  progress: bool = False) -> list[str]:
    """Each text with the replacements that make it more fluent than `penalty` nats per edit."""
    if not texts or any(not t.strip() for t in texts):
        raise UserError("nothing to correct: a text is empty")
    rows = [backend.encode(t) for t in texts]
    width = max(len(r) for r in rows)
    vocab = backend.vocab
    spans = None
    if backend.lang == "zh":  # only known Han characters are edited, only into Han characters
        tok = backend.tokenizer
        vocab = [i for i in vocab if HAN.fullmatch(tok.id_to_token(i))]
        spans = [[0 if HAN.fullmatch(c) and t != tok.unk_id else i + 1 for i, (c, t) in enumerate(zip(text, row))]
                 for text, row in zip(texts, rows)]
    refs = make_chains(rows, width=width, pad_id=backend.pad_id)
    fluency = backend.lm
    if config.both:
        if backend.lm_backward is None:
            raise UserError("--both needs a backward LM (Chinese models only)")
        fluency = 0.5 * backend.lm + 0.5 * backend.lm_backward
    target = fluency + HammingPenalty(refs.tokens, refs.lengths, weight=config.penalty)
    init = make_chains(rows, width=width, target=target, spans=spans, cond=range(len(rows)), pad_id=backend.pad_id)
    cfg = EditConfig(replace=1.0, insert=0.0, delete=0.0, top_k=config.top_k, explore=config.explore, order="sweep",
                     min_len=1, max_len=width)
    result = metropolis_hastings(target, EditProposal(backend.slots, vocab, cfg), init, steps=config.sweeps * width,
                                 schedule=Constant(config.temperature), generator=generator, progress=progress)
    out = []
    for text, row, best in zip(texts, rows, result.best.rows()):
        if backend.lang == "zh":  # keep the input's own characters where nothing changed (<unk> ones too)
            out.append("".join(c if a == b else backend.tokenizer.id_to_token(b) for c, a, b in zip(text, row, best)))
        else:
            out.append(text if best == row else backend.decode(best))
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
