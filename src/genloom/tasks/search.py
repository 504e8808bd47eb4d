"""`genloom search`: text found by search (【搜出来的文本】, issue 11) with no paired data.

    nice genloom search train-models --out models/search        # the Chinese models (once)
    genloom search keywords --keywords 北京,大学,科学 -n 5          # CGMH: a sentence with the words
    genloom search keywords --lang en --keywords library,function,value
    genloom search gibbs -n 10                                    # sample sentences from the masked LM
    genloom search correct --text "今天天汽很好，我们去公园玩。"     # fix typos
    genloom search correct --lang en --text "The functoin returns a value."

Chinese runs on the models of `train-models` (`--models`, default models/search): the target is
the forward character LM, the proposals come from the masked LM (`--proposal mlm`) or the
forward x backward LMs (`--proposal lm`). English runs on SmolLM2-135M (`--lm`, any local
Hugging Face causal LM): it is the target and, read left to right, the proposal.

- keywords: chains start from the keywords (their order shuffled per chain) with every keyword
  pinned; CGMH's replace / insert / delete moves with candidates weighted by the target, under a
  falling temperature (simulated annealing), build a sentence around them. The target is
  log p(x) with a soft minimum length (`--min-len`, `--short-penalty` nats per missing token).
  The n best distinct sentences visited are printed, so every output contains every keyword.
- gibbs: Chinese: Su's sampler, all-[MASK] rows of random length (or `--init TEXT`) resampled one
  position at a time from the masked LM. English (no masked LM): replace moves under SmolLM2
  from `--init`, Metropolis-Hastings-corrected, so the length stays fixed too.
- correct: replace moves only, scanning the positions left to right, for the target
  log p(y) - penalty * (edits from the input): an edit is kept when it buys more than `--penalty`
  nats of fluency. Chinese edits only Han characters the models know (digits, Latin,
  punctuation and unknown characters stay).

Candidates are the top-k of the proposal model; a share `--explore` of the proposals is a
uniform token instead, which is what lets a chain leave a token that is not among the current
top-k (the reverse move must be possible for the Metropolis-Hastings ratio to be finite).

Outputs go to stdout, one per line (or JSON lines with --jsonl), or atomically to --output.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from genloom.errors import UserError

LANGS = ("zh", "en")
_HAN = re.compile(r"[\u4e00-\u9fff]")
_SPLIT = re.compile(r"[,，、\s]+")


@dataclass
class Backend:
    """A language's models, wired for the samplers."""

    lang: str  # "zh" or "en"
    tokenizer: Any  # genloom tokenizer of the models
    lm: Any  # CausalLMScorer: the fluency target log p(x)
    slots: Any  # SlotModel ranking candidates (MaskedSlots or LMSlots)
    vocab: list[int]  # ids a move may write (no specials, no [MASK])
    masked: Any | None  # MaskedLMScorer for Gibbs (None for English)
    mask_id: int | None  # the [MASK] id (None for English)
    pad_id: int  # id under padding
    lm_backward: Any | None = None  # CausalLMScorer of the right-to-left LM (Chinese), or None

    def encode(self, text: str) -> list[int]:
        """Token ids of a whole sentence."""
        return self.tokenizer.encode(text)

    def encode_keyword(self, word: str) -> list[int]:
        """Token ids of a keyword as it appears inside a sentence (English: after a space)."""
        ids = self.tokenizer.encode(word if self.lang == "zh" else " " + word)
        if self.lang == "zh" and self.tokenizer.unk_id in ids:
            bad = "".join(c for c, i in zip(word, ids) if i == self.tokenizer.unk_id)
            raise UserError(f"keyword {word!r} has characters the Chinese models do not know: {bad}")
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids)).strip()


def load_backend(lang: str, *, models: str = "models/search", proposal: str = "mlm", lm: str = "smollm2-135m") -> Backend:
    """Load the models of `lang` (module docstring) and wire targets and slot models."""
    from genloom.decode.mcmc_edits import LMSlots, MaskedSlots
    from genloom.decode.targets import CausalLMScorer, MaskedLMScorer

    if lang not in LANGS:
        raise UserError(f"unknown language {lang!r} (choose from {', '.join(LANGS)})")
    if lang == "zh":
        from genloom.tasks.search_models import load_chinese_models

        if proposal not in ("mlm", "lm"):
            raise UserError(f"--proposal must be 'mlm' or 'lm', got {proposal!r}")
        m = load_chinese_models(models)
        tok = m.tokenizer
        masked = MaskedLMScorer(m.mlm, mask_id=m.mask_id, bos_id=tok.bos_id, eos_id=tok.eos_id)
        slots = MaskedSlots(masked) if proposal == "mlm" else LMSlots(m.forward, m.backward, bos_id=tok.bos_id)
        vocab = [i for i in range(tok.vocab_size) if i not in tok.special_ids and i != m.mask_id]
        return Backend(lang="zh", tokenizer=tok, lm=CausalLMScorer(m.forward, bos_id=tok.bos_id, eos_id=tok.eos_id),
                       slots=slots, vocab=vocab, masked=masked, mask_id=m.mask_id, pad_id=tok.pad_id,
                       lm_backward=CausalLMScorer(m.backward, bos_id=tok.bos_id, eos_id=tok.eos_id, reverse=True))
    from transformers.utils import logging as hf_logging

    from genloom.models.hf import from_hf

    hf_logging.disable_progress_bar()
    model, tok = from_hf(lm)
    if tok is None:
        raise UserError(f"{lm} has no tokenizer files")
    boundary = tok.token_to_id("<|endoftext|>")
    boundary = boundary if boundary is not None else (tok.eos_id if tok.eos_id is not None else tok.bos_id)
    if boundary is None:
        raise UserError(f"{lm}'s tokenizer has no <|endoftext|>, EOS or BOS token to frame sentences with")
    vocab = [i for i in range(tok.vocab_size) if i not in tok.special_ids]
    return Backend(lang="en", tokenizer=tok, lm=CausalLMScorer(model, bos_id=boundary, eos_id=boundary),
                   slots=LMSlots(model, None, bos_id=boundary), vocab=vocab, masked=None, mask_id=None,
                   pad_id=boundary)


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
    from genloom.decode.mcmc import SCHEDULES, keyword_chains, metropolis_hastings
    from genloom.decode.mcmc_edits import EditConfig, EditProposal
    from genloom.decode.targets import LengthRange

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
    from genloom.decode.mcmc import Constant, make_chains, metropolis_hastings
    from genloom.decode.mcmc_edits import EditConfig, EditProposal
    from genloom.decode.targets import HammingPenalty

    if not texts or any(not t.strip() for t in texts):
        raise UserError("nothing to correct: a text is empty")
    rows = [backend.encode(t) for t in texts]
    width = max(len(r) for r in rows)
    vocab = backend.vocab
    spans = None
    if backend.lang == "zh":  # only known Han characters are edited, only into Han characters
        tok = backend.tokenizer
        vocab = [i for i in vocab if _HAN.fullmatch(tok.id_to_token(i))]
        spans = [[0 if _HAN.fullmatch(c) and t != tok.unk_id else i + 1 for i, (c, t) in enumerate(zip(text, row))]
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
    from genloom.decode.mcmc import Constant, gibbs, make_chains, metropolis_hastings
    from genloom.decode.mcmc_edits import EditConfig, EditProposal

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


# ---- the command --------------------------------------------------------------------------------


def _write(args: argparse.Namespace, lines: list[str]) -> None:
    text = "".join(line + "\n" for line in lines)
    if args.output:
        from genloom.tasks.generate import write_atomic

        write_atomic(args.output, text)
    else:
        sys.stdout.write(text)


def _check_output(args: argparse.Namespace) -> None:
    if getattr(args, "output", None) and not Path(args.output).parent.is_dir():
        raise UserError(f"no directory {Path(args.output).parent} for --output")


def _override(config: Any, args: argparse.Namespace) -> Any:
    """config with every field whose flag was given replaced."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(config)
             if getattr(args, f.name, None) is not None}
    return dataclasses.replace(config, **given)


def _read_lines(path: str) -> list[str]:
    try:
        lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    except FileNotFoundError:
        raise UserError(f"no input file {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}".splitlines()[0]) from None
    lines = [line for line in lines if line]
    if not lines:
        raise UserError(f"{path} holds no lines")
    return lines


def run_keywords(args: argparse.Namespace) -> int:
    """`genloom search keywords`."""
    config = _override(default_keywords_config(args.lang), args)
    if config.n < 1 or config.steps < 0 or config.min_len > config.max_len:
        raise UserError("need -n >= 1, --steps >= 0 and --min-len <= --max-len")
    if config.schedule not in ("constant", "linear", "geometric"):
        raise UserError(f"unknown schedule {config.schedule!r}")
    lines = _read_lines(args.input) if args.input else [args.keywords]
    sets = [[w for w in _SPLIT.split(line) if w] for line in lines]
    _check_output(args)
    backend = load_backend(args.lang, models=args.models, proposal=args.proposal, lm=args.lm)
    found = keywords_search(backend, sets, config, generator=torch.Generator().manual_seed(args.seed),
                            progress=not args.quiet)
    out = []
    for words, results in zip(sets, found):
        for rank, f in enumerate(results):
            out.append(json.dumps({"keywords": words, "rank": rank, "text": f.text, "score": round(f.score, 4)},
                                  ensure_ascii=False) if args.jsonl else f.text)
    _write(args, out)
    return 0


def run_correct(args: argparse.Namespace) -> int:
    """`genloom search correct`."""
    config = _override(CorrectConfig(), args)
    texts = _read_lines(args.input) if args.input else [args.text]
    _check_output(args)
    backend = load_backend(args.lang, models=args.models, proposal=args.proposal, lm=args.lm)
    fixed = correct_texts(backend, texts, config, generator=torch.Generator().manual_seed(args.seed),
                          progress=not args.quiet)
    _write(args, [json.dumps({"input": t, "output": f, "changed": t != f}, ensure_ascii=False) if args.jsonl else f
                  for t, f in zip(texts, fixed)])
    return 0


def run_gibbs(args: argparse.Namespace) -> int:
    """`genloom search gibbs`."""
    config = _override(GibbsConfig(), args)
    if config.n < 1 or config.steps < 0 or config.temperature <= 0:
        raise UserError("need -n >= 1, --steps >= 0 and --temperature > 0")
    _check_output(args)
    backend = load_backend(args.lang, models=args.models, proposal="mlm", lm=args.lm)
    texts = gibbs_texts(backend, config, init=args.init, generator=torch.Generator().manual_seed(args.seed),
                        progress=not args.quiet)
    _write(args, [json.dumps({"index": i, "text": t}, ensure_ascii=False) if args.jsonl else t
                  for i, t in enumerate(texts)])
    return 0


def run_train(args: argparse.Namespace) -> int:
    """`genloom search train-models`."""
    from genloom.tasks.search_models import SearchModelsConfig, train_search_models

    models = tuple(m for m in args.only.split(",") if m) if args.only else SearchModelsConfig().models
    config = SearchModelsConfig(out=args.out, steps=args.steps, minutes=args.minutes, models=models, seed=args.seed,
                                progress=not args.quiet)
    if args.threads:
        torch.set_num_threads(args.threads)
    for name, path in train_search_models(config).items():
        print(f"{name}: {path}")
    return 0


def _common(p: argparse.ArgumentParser, *, output: bool = True) -> None:
    p.add_argument("--lang", choices=LANGS, default="zh", help="zh: the models of train-models; en: SmolLM2")
    p.add_argument("--models", default="models/search", help="directory written by `genloom search train-models`")
    p.add_argument("--lm", default="smollm2-135m", help="English: a local Hugging Face causal LM (name, dir, .gguf)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    if output:
        p.add_argument("--jsonl", action="store_true", help="print JSON lines")
        p.add_argument("--output", help="write the results to this file (atomically) instead of stdout")


def add_parser(subparsers: Any, *, name: str, help: str) -> argparse.ArgumentParser:
    """Register `genloom search` and its sub-commands."""
    p = subparsers.add_parser(name, help=help, description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="search_command", metavar="ACTION", parser_class=type(p))
    sub.required = True

    k = sub.add_parser("keywords", help="make sentences that contain given keywords (CGMH)")
    src = k.add_mutually_exclusive_group(required=True)
    src.add_argument("--keywords", help="comma-separated keywords, e.g. 北京,大学,科学")
    src.add_argument("--input", help="a file with one comma-separated keyword set per line")
    k.add_argument("-n", dest="n", type=int, help="sentences per keyword set (default 5)")
    k.add_argument("--chains", type=int, help="chains per keyword set")
    k.add_argument("--steps", type=int, help="Metropolis-Hastings steps per chain")
    k.add_argument("--top-k", dest="top_k", type=int, help="candidates per edit")
    k.add_argument("--weighting", choices=("target", "model"), help="weigh candidates by the target or the proposal")
    k.add_argument("--explore", type=float, help="share of uniform tokens among the proposals (default 0.05)")
    k.add_argument("--proposal", choices=("mlm", "lm"), default="mlm", help="Chinese candidates: masked LM or fwd x bwd LM")
    k.add_argument("--min-len", dest="min_len", type=int, help="soft minimum length in tokens")
    k.add_argument("--max-len", dest="max_len", type=int, help="hard maximum length in tokens")
    k.add_argument("--short-penalty", dest="short_penalty", type=float, help="nats per token below --min-len")
    k.add_argument("--schedule", choices=("constant", "linear", "geometric"), help="temperature schedule")
    k.add_argument("--t-start", dest="t_start", type=float, help="first temperature")
    k.add_argument("--t-end", dest="t_end", type=float, help="last temperature")
    _common(k)
    k.set_defaults(func=run_keywords)

    g = sub.add_parser("gibbs", help="sample sentences (Gibbs with the masked LM; English: MH under SmolLM2)")
    g.add_argument("-n", dest="n", type=int, help="sentences (default 10)")
    g.add_argument("--steps", type=int, help="resampled positions per chain (default 300)")
    g.add_argument("--init", help="start every chain from this sentence (default: all [MASK])")
    g.add_argument("--min-len", dest="min_len", type=int, help="shortest random length (default 8)")
    g.add_argument("--max-len", dest="max_len", type=int, help="longest random length (default 32)")
    g.add_argument("--temperature", type=float, help="divides the conditional's logits (default 1)")
    g.add_argument("--top-k", dest="top_k", type=int, help="English: candidates per move")
    g.add_argument("--explore", type=float, help="English: share of uniform tokens among the proposals")
    _common(g)
    g.set_defaults(func=run_gibbs)

    c = sub.add_parser("correct", help="fix typos: replace moves under an LM target with an edit penalty")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="a sentence to correct")
    src.add_argument("--input", help="a file with one sentence per line")
    c.add_argument("--penalty", type=float, help="nats of fluency an edit must buy (default 12)")
    c.add_argument("--sweeps", type=int, help="passes over the positions (default 1)")
    c.add_argument("--top-k", dest="top_k", type=int, help="candidates per position")
    c.add_argument("--temperature", type=float, help="search temperature (default 0.1)")
    c.add_argument("--explore", type=float, help="share of uniform tokens among the proposals (default 0.05)")
    c.add_argument("--both", action="store_true", default=None,
                   help="Chinese: score fluency with the forward and the backward LM (mean log p)")
    c.add_argument("--proposal", choices=("mlm", "lm"), default="mlm", help="Chinese candidates: masked LM or fwd x bwd LM")
    _common(c)
    c.set_defaults(func=run_correct)

    t = sub.add_parser("train-models", help="train the Chinese masked / forward / backward LMs and the eval LMs")
    t.add_argument("--out", default="models/search", help="one sub-directory per model goes here")
    t.add_argument("--steps", type=int, default=2000, help="optimizer steps per model (eval models: half)")
    t.add_argument("--minutes", type=float, default=45.0, help="wall-clock cap per model")
    t.add_argument("--only", help="comma-separated subset of mlm,forward,backward,eval-zh,eval-en")
    t.add_argument("--threads", type=int, help="torch CPU threads")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=run_train)
    return p
