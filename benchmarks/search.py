"""Search-based generation (【搜出来的文本】): keywords to sentences, error correction, throughput.

1. Keywords to sentences on 100 keyword sets per language against two baselines a user would
   try, every output scored for keyword coverage and fluency:
   - Chinese sets: 2-3 nouns (jieba POS n*) of inews test titles; the search runs on the
     `train-models` models (target: the forward LM; proposals: the masked LM);
   - English sets: 2-3 content words of docstring sentences of the standard library (the "test"
     tenth, which `eval-en` never saw); the search runs on SmolLM2-135M;
   - "sample": the LM's nucleus sample (top-p 0.9) after the keywords as prompt; the output is
     prompt + continuation, so the keywords are in it, at its start;
   - "beam": grid beam search (Hokamp & Liu 2017) forcing the keywords in the given order: beams
     banked by how many keyword tokens they hold, EOS only once all are in, best finished
     hypothesis by log-probability per token. Hand-written over the decoding protocol because
     transformers 5 moved its constrained beam search to a Hub repository (not available offline)
     and it would not drive genloom's Chinese models anyway; "beam-norep3" is the same with
     repeated 3-grams banned (what a user does once beam search loops);
   - "cgmh": `genloom search keywords` (replace / insert / delete, keywords pinned, annealed).
   Fluency is the NLL per token under a separate LM, `eval-zh` / `eval-en` (character LMs of
   another shape and seed, trained by `train-models`), and, for reference, under the target LM
   the search optimises.
2. Error correction: 200 sentences of inews test contents (10-30 characters, all known to the
   models), one Han character of each replaced by a random other known Han character;
   `genloom search correct` runs on the 200 corrupted and the 200 clean sentences: the fraction
   fully restored and the fraction of clean sentences changed (false edits). The part
   "correct-oracle" says where search "best" loses the restoring edits: the wrong character's
   position tried or not, the right one among the candidates or not, and the nats restoring it
   buys against each penalty of --penalties. With --both, correction's fluency is the mean of
   the forward and the backward LM (--zh-lm-backward) in every correction part.
3. Throughput: candidate rows scored per second by the target LM, all in one call (batched,
   as the samplers do) vs one row per call, on the same rows, timed round-robin in one run.

    .venv/bin/python benchmarks/search.py                     # everything (slow on a busy machine)
    .venv/bin/python benchmarks/search.py --sets 5 --correct 20 --skip-en    # a quick look

--reuse-baselines KEY takes the sample and beam outputs (and their timings) of an earlier run's KEY
in --out instead of rerunning them, once it has checked that KEY ran on the same keyword sets,
--beam and max length (the beams are deterministic; the sample is seeded); every output is
scored again. It saves the English beams' 45 minutes when only the search's settings change.

Prints the tables and writes benchmarks/results/search.json (machine, versions, load average
before and after, settings, every figure with min/median/max). Timings taken while the machine
is busy are noisy; the script says so in the JSON ("busy").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from genloom.decode.processors import BannedTokens, TopP
from genloom.metrics import distinct_n, repeated_ngram_rate
from genloom.decode.loops import sample
from genloom.decode.targets import CausalLMScorer
from genloom.errors import UserError
from genloom.tasks import search as task
from genloom.tasks.search.data import HAN, stdlib_sentences

RESULTS = Path(__file__).resolve().parent / "results" / "search.json"
EN_STOP = set("""a an the and or but if then else of to in on at by for with from into onto over under is are
was were be been being it its this that these those as not no can may will shall must should would could
return returns returned true false none which when where what who whose how than also all any each every
other such only same some more most many much very same given used using use uses""".split())


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "")
    import transformers

    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__}


def stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "median": statistics.median(values), "min": min(values),
            "max": max(values), "n": len(values)} if values else {"n": 0}


# ---- keyword sets -------------------------------------------------------------------------------


def chinese_sets(tokenizer: Any, n: int, seed: int, also: Any = None, split: str = "test") -> list[dict]:
    """Up to 3 distinct nouns (2+ characters, all known to `tokenizer` and to `also`, the evaluation
    LM's) of inews `split` titles (test; dev for tuning), 2 at least."""
    import jieba
    import jieba.posseg as pseg

    from genloom.data import load_corpus

    jieba.setLogLevel(60)
    rng = random.Random(seed)
    out = []
    for r in load_corpus("inews", split):
        words = []
        for w in pseg.cut(r["title"]):
            if (w.flag.startswith("n") and len(w.word) >= 2 and all(HAN.fullmatch(c) for c in w.word)
                    and tokenizer.unk_id not in tokenizer.encode(w.word) and w.word not in words
                    and (also is None or also.unk_id not in also.encode(w.word))):
                words.append(w.word)
        if len(words) >= 2:
            out.append({"source": r["title"], "keywords": sorted(rng.sample(words, min(3, len(words))),
                                                                  key=words.index)})
        if len(out) == n:
            break
    return out


def english_sets(n: int, seed: int, split: str = "test") -> list[dict]:
    """2-3 content words (4+ letters, not stop words) of `split` docstring sentences, in order
    (test; train for tuning a length setting: `eval-en` was trained on those sentences, so their
    evaluation NLL is no fair figure)."""
    rng = random.Random(seed)
    sentences = stdlib_sentences(split)
    rng.shuffle(sentences)
    out = []
    for s in sentences:
        words = []
        for w in re.findall(r"[A-Za-z]+", s):
            if len(w) >= 4 and w.lower() not in EN_STOP and w.islower() and w not in words:
                words.append(w)
        if len(words) >= 2:
            k = rng.choice((2, 3)) if len(words) >= 3 else 2
            out.append({"source": s, "keywords": sorted(rng.sample(words, k), key=words.index)})
        if len(out) == n:
            break
    return out


# ---- baselines ----------------------------------------------------------------------------------


def prompt_ids(backend: task.Backend, keywords: list[str]) -> list[int]:
    if backend.lang == "zh":
        return backend.encode("".join(keywords))
    return backend.encode(" ".join(keywords))


def sampled(backend: task.Backend, sets: list[dict], *, max_len: int, seed: int) -> list[str]:
    """Nucleus samples (top-p 0.9) after BOS + the keywords; the output includes the prompt."""
    model, bos, eos = backend.lm.model, backend.lm.bos_id, backend.lm.eos_id
    banned = sorted(set(range(model.vocab_size)) - set(backend.vocab) - {eos})
    prompts = [[bos, *prompt_ids(backend, s["keywords"])] for s in sets]
    width = max(map(len, prompts))
    ids = torch.tensor([p + [bos] * (width - len(p)) for p in prompts])
    out = sample(model, max_new_tokens=max(1, max_len - width + 1), generator=torch.Generator().manual_seed(seed),
                 eos_id=eos, processors=[BannedTokens(banned), TopP(0.9)], input_ids=ids,
                 lengths=torch.tensor([len(p) for p in prompts]))
    return [backend.decode(p[1:] + s) for p, s in zip(prompts, out.sequences)]


@torch.inference_mode()
def grid_beam(backend: task.Backend, keywords: list[list[int]], *, beam: int, max_len: int,
              no_repeat: int = 0) -> list[int]:
    """Grid beam search over the forward LM forcing `keywords` in order (module docstring); with
    `no_repeat` = n, a free token may not complete an n-gram the hypothesis already holds (the
    usual cure for beam loops, as `no_repeat_ngram_size`)."""
    model, bos, eos = backend.lm.model, backend.lm.bos_id, backend.lm.eos_id
    cons = [t for k in keywords for t in k]
    bounds, acc = {0}, 0
    for k in keywords:
        acc += len(k)
        bounds.add(acc)
    allowed = torch.full((model.vocab_size,), float("-inf"))
    allowed[backend.vocab] = 0.0
    logits, state = model.start(input_ids=torch.tensor([[bos]]), max_new_tokens=max_len + 1)
    hyps = [([], 0, 0.0)]  # (tokens, keyword tokens placed, log-probability)
    finished: list[tuple[float, list[int]]] = []
    for t in range(max_len + 1):
        logp = logits.float().log_softmax(-1)  # (R, V)
        cands: dict[int, list[tuple[float, int, int]]] = {}
        for r, (toks, c, score) in enumerate(hyps):
            if c == len(cons):
                finished.append(((score + float(logp[r, eos])) / (len(toks) + 1), toks))
            if c < len(cons):
                cands.setdefault(c + 1, []).append((score + float(logp[r, cons[c]]), r, cons[c]))
            if c in bounds and t < max_len:
                scores = logp[r] + allowed
                if no_repeat and len(toks) >= no_repeat - 1:
                    tail = tuple(toks[len(toks) - no_repeat + 1:])
                    seen = [toks[i + no_repeat - 1] for i in range(len(toks) - no_repeat + 1)
                            if tuple(toks[i: i + no_repeat - 1]) == tail]
                    scores[seen] = float("-inf")
                top = scores.topk(beam)
                for s, tok in zip(top.values.tolist(), top.indices.tolist()):
                    cands.setdefault(c, []).append((score + s, r, tok))
        if t == max_len or not cands:
            break
        rows = [(c, *x) for c, xs in cands.items() for x in sorted(xs, reverse=True)[:beam]]
        parents = torch.tensor([r for _, _, r, _ in rows])
        tokens = torch.tensor([tok for *_, tok in rows])
        hyps = [(hyps[r][0] + [tok], c, s) for c, s, r, tok in rows]
        state = model.select(state, parents)
        logits, state = model.step(tokens, state)
    if finished:
        return max(finished)[1]
    complete = [h for h in hyps if h[1] == len(cons)]
    return max(complete or hyps, key=lambda h: h[2] / max(1, len(h[0])))[0]


# ---- scoring ------------------------------------------------------------------------------------


def text_room(scorer: CausalLMScorer) -> int | None:
    """How many text tokens fit the scorer's context beside [BOS] and [EOS] (None: no limit known)."""
    limit = getattr(getattr(scorer.model, "config", None), "max_len", None)
    return limit - 2 if isinstance(limit, int) else None


def nll_per_token(scorer: CausalLMScorer, tokenizer: Any, texts: list[str]) -> list[float]:
    """NLL per token of [BOS] text [EOS] (EOS counted) under `scorer`. A text of more than
    `text_room` tokens is scored on its first `text_room` tokens, without the EOS it does not
    reach there: the NLL per token of its first part."""
    room = text_room(scorer)
    rows = [tokenizer.encode(t) for t in texts]
    cut = [room is not None and len(r) > room for r in rows]
    out = [0.0] * len(rows)
    for is_cut in (False, True):
        index = [i for i, c in enumerate(cut) if c == is_cut]
        if not index:
            continue
        part = [rows[i][:room] if is_cut else rows[i] for i in index]
        width = max(1, max(map(len, part)))
        tokens = torch.tensor([r + [0] * (width - len(r)) for r in part])
        mask = torch.arange(width)[None] < torch.tensor([len(r) for r in part])[:, None]
        use = CausalLMScorer(scorer.model, bos_id=scorer.bos_id, eos_id=None, reverse=scorer.reverse) if is_cut else scorer
        lp = use.log_prob(tokens, mask)
        for i, v, r in zip(index, lp, part):
            out[i] = -float(v) / (len(r) + (not is_cut))
    return out


def covered(text: str, keywords: list[str], lang: str) -> bool:
    hay = text if lang == "zh" else text.lower()
    return all((k if lang == "zh" else k.lower()) in hay for k in keywords)


def keywords_bench(lang: str, backend: task.Backend, eval_lm: tuple[CausalLMScorer, Any], sets: list[dict],
                   args: argparse.Namespace) -> dict:
    if lang == "zh":
        config = task.KeywordsConfig(n=1, chains=args.zh_chains, steps=args.zh_steps, weighting=args.zh_weighting,
                                     top_k=args.top_k, min_len=args.zh_min_len, max_len=32, short_penalty=5.0,
                                     natural_len=args.zh_natural_len, natural_len_sd=args.zh_natural_len_sd,
                                     no_repeat=args.zh_no_repeat, max_run=args.zh_max_run,
                                     length_temperature=args.zh_length_temperature)
    else:
        config = task.KeywordsConfig(n=1, chains=args.en_chains, steps=args.en_steps, weighting="model",
                                     top_k=args.top_k, min_len=args.en_min_len, max_len=24, short_penalty=5.0,
                                     natural_len=args.en_natural_len, natural_len_sd=args.en_natural_len_sd,
                                     no_repeat=args.en_no_repeat, length_temperature=args.en_length_temperature)
    outputs, seconds = {}, {}
    reused = reused_baselines(args, sets, config.max_len) if args.reuse_baselines else None
    if reused is not None:  # the same sets, LM and settings: the deterministic baselines' outputs, not rerun
        outputs, seconds = reused
    else:
        t0 = time.perf_counter()
        outputs["sample"] = sampled(backend, sets, max_len=config.max_len, seed=args.seed)
        seconds["sample"] = time.perf_counter() - t0
        for name, no_repeat in (("beam", 0), ("beam-norep3", 3)):
            t0 = time.perf_counter()
            outputs[name] = [backend.decode(grid_beam(backend, [backend.encode_keyword(w) for w in s["keywords"]],
                                                      beam=args.beam, max_len=config.max_len, no_repeat=no_repeat))
                             for s in sets]
            seconds[name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    found = task.keywords_search(backend, [s["keywords"] for s in sets], config,
                                 generator=torch.Generator().manual_seed(args.seed), progress=args.progress)
    outputs["cgmh"] = [f[0].text for f in found]
    seconds["cgmh"] = time.perf_counter() - t0
    eval_scorer, eval_tok = eval_lm
    table = {}
    for method, texts in outputs.items():
        table[method] = {
            "coverage": sum(covered(t, s["keywords"], lang) for t, s in zip(texts, sets)) / len(sets),
            "nll_eval_lm": stats(nll_per_token(eval_scorer, eval_tok, texts)),
            # outputs longer than the evaluation LM's context, scored on their first part
            "eval_lm_cut": sum(len(eval_tok.encode(t)) > (text_room(eval_scorer) or math.inf) for t in texts),
            "nll_target_lm": stats(nll_per_token(backend.lm, backend.tokenizer, texts)),
            "length_chars": stats([float(len(t)) for t in texts]),
            # a decoder stuck in a loop: share of outputs repeating a char 4-gram (zh) / 8-gram (en)
            "repeated_ngram_rate": repeated_ngram_rate(texts, 4 if lang == "zh" else 8),
            "distinct_2": distinct_n(texts, 2),
            "seconds_per_set": seconds[method] / len(sets),
            "outputs": texts,
        }
    return {"sets": len(sets), "split": args.zh_split if lang == "zh" else args.en_split,
            "config": vars(config) | {"beam": args.beam}, "methods": table,
            "baselines_from": args.reuse_baselines if reused is not None else None,
            "keyword_sets": [s["keywords"] for s in sets]}


def reused_baselines(args: argparse.Namespace, sets: list[dict],
                     max_len: int) -> tuple[dict[str, list[str]], dict[str, float]] | None:
    """The sample / beam / beam-norep3 outputs and seconds of --reuse-baselines (a key of --out),
    when it ran on exactly these keyword sets with the same max_len, beam width and seed; the
    outputs are re-scored like the new ones. A mismatch is a one-line error, never a silent rerun."""
    old = json.loads(Path(args.out).read_text(encoding="utf-8")).get(args.reuse_baselines) \
        if Path(args.out).is_file() else None
    if old is None:
        raise UserError(f"--reuse-baselines: {args.out} has no {args.reuse_baselines!r}")
    same = (old["keyword_sets"] == [s["keywords"] for s in sets] and old["config"]["max_len"] == max_len
            and old["config"]["beam"] == args.beam)
    if not same:
        raise UserError(f"--reuse-baselines: {args.reuse_baselines!r} ran on other keyword sets or settings")
    methods = ("sample", "beam", "beam-norep3")
    return ({m: old["methods"][m]["outputs"] for m in methods},
            {m: old["methods"][m]["seconds_per_set"] * len(sets) for m in methods})


# ---- error correction ---------------------------------------------------------------------------


def correction_sentences(tokenizer: Any, n: int, seed: int, split: str = "test") -> list[str]:
    from genloom.data import load_corpus, split_sentences

    pool = []
    for r in load_corpus("inews", split):
        for s in split_sentences(r["content"]):
            if (10 <= len(s) <= 30 and len(HAN.findall(s)) >= 0.8 * len(s)
                    and tokenizer.unk_id not in tokenizer.encode(s) and s not in pool):
                pool.append(s)
    random.Random(seed).shuffle(pool)
    return pool[:n]


def corruptions(backend: task.Backend, args: argparse.Namespace) -> tuple[list[str], list[str], list[int]]:
    """(clean sentences, each with one Han character replaced by a random other known one, where)."""
    tok = backend.tokenizer
    clean = correction_sentences(tok, args.correct, args.seed, args.correct_split)
    han = task.han_vocab(backend)
    rng = random.Random(args.seed + 1)
    corrupted, where = [], []
    for s in clean:
        pos = rng.choice([i for i, c in enumerate(s) if HAN.fullmatch(c)])
        new = s[pos]
        while new == s[pos]:
            new = tok.id_to_token(rng.choice(han))
        corrupted.append(s[:pos] + new + s[pos + 1:])
        where.append(pos)
    return clean, corrupted, where


@torch.inference_mode()
def correction_oracle(backend: task.Backend, args: argparse.Namespace) -> dict:
    """Where search "best" loses the restoring edit, per corrupted sentence of `correction_bench`:
    is the wrong character among the positions tried, the right one among the top-k candidates
    and in the look-ahead shortlist, and how many nats does restoring it buy under correction's
    fluency (the target LM, or with --both its mean with the backward LM: its gain, which must
    beat the penalty). "reachable" at a penalty: all four hold, so the
    restoring edit is one the search finds and takes when it is the best edit there is."""
    tok = backend.tokenizer
    clean, corrupted, where = corruptions(backend, args)
    fluency = task.correction_fluency(backend, args.both)
    edits = task.BestEdits(backend, fluency, task.han_vocab(backend), args.correct_top_k, args.positions, args.shortlist)
    rows = []
    for good, bad, at in zip(clean, corrupted, where):
        a, b = tok.encode(good), tok.encode(bad)
        editable = [i for i, c in enumerate(bad) if HAN.fullmatch(c)]
        scores = fluency(torch.tensor([a, b]), torch.ones(2, len(a), dtype=torch.bool))
        top, short = edits.candidates(b, [at])
        rows.append({"gain": float(scores[0] - scores[1]), "position_tried": at in edits.tried_positions(b, editable),
                     "in_top_k": a[at] in top[0].tolist(), "in_shortlist": a[at] in short[0].tolist()})
    n = len(rows)
    gains = sorted(r["gain"] for r in rows)
    found = [r["position_tried"] and r["in_shortlist"] for r in rows]
    return {"sentences": n, "split": args.correct_split,
            "config": {"top_k": args.correct_top_k, "positions": args.positions, "shortlist": args.shortlist},
            "position_tried": sum(r["position_tried"] for r in rows) / n,
            "in_top_k": sum(r["in_top_k"] for r in rows) / n, "in_shortlist": sum(r["in_shortlist"] for r in rows) / n,
            "gain_quantiles": {f"{q:.2f}": gains[round(q * (n - 1))] for q in (0.1, 0.25, 0.5, 0.75, 0.9)},
            "by_penalty": [{"penalty": pen, "gain_above": sum(r["gain"] > pen for r in rows) / n,
                            "reachable": sum(f and r["gain"] > pen for f, r in zip(found, rows)) / n}
                           for pen in (float(x) for x in args.penalties.split(","))]}


def correction_bench(backend: task.Backend, args: argparse.Namespace, edits: task.BestEdits | None = None) -> dict:
    clean, corrupted, where = corruptions(backend, args)
    t0 = time.perf_counter()
    config = task.CorrectConfig(penalty=args.penalty, top_k=args.correct_top_k, sweeps=args.sweeps,
                                both=args.both, search=args.correct_search, max_edits=args.max_edits,
                                positions=args.positions, shortlist=args.shortlist)
    fixed = task.correct_texts(backend, corrupted + clean, config, edits=edits,
                               generator=torch.Generator().manual_seed(args.seed), progress=args.progress)
    seconds = time.perf_counter() - t0
    fixed_bad, fixed_clean = fixed[: len(clean)], fixed[len(clean):]
    restored = sum(f == c for f, c in zip(fixed_bad, clean)) / len(clean)
    touched = sum(f[p] != b[p] for f, b, p in zip(fixed_bad, corrupted, where)) / len(clean)
    false_edits = sum(f != c for f, c in zip(fixed_clean, clean)) / len(clean)
    return {"sentences": len(clean), "split": args.correct_split, "config": vars(config), "restored": restored,
            "error_position_changed": touched, "clean_changed": false_edits, "seconds": seconds,
            "examples": [{"clean": c, "corrupted": b, "output": f}
                         for c, b, f in list(zip(clean, corrupted, fixed_bad))[:10]],
            "false_edit_examples": [{"clean": c, "output": f} for c, f in zip(clean, fixed_clean) if c != f][:10]}


# ---- throughput ---------------------------------------------------------------------------------


def throughput(backend: task.Backend, *, rows: int, repeats: int, seed: int) -> dict:
    """Rows per second scored in one call vs one per call (round-robin repeats)."""
    g = torch.Generator().manual_seed(seed)
    vocab = torch.tensor(backend.vocab)
    lengths = torch.randint(12, 25, (rows,), generator=g)
    tokens = vocab[torch.randint(0, len(vocab), (rows, 24), generator=g)]
    mask = torch.arange(24)[None] < lengths[:, None]
    batched, single = [], []
    reference = backend.lm(tokens, mask)
    for _ in range(repeats):
        t0 = time.perf_counter()
        backend.lm(tokens, mask)
        batched.append(rows / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        one = torch.cat([backend.lm(tokens[i: i + 1], mask[i: i + 1]) for i in range(rows)])
        single.append(rows / (time.perf_counter() - t0))
    assert torch.allclose(one, reference, atol=1e-3), "batched and single scores differ"
    ratios = [b / s for b, s in zip(batched, single)]
    return {"rows": rows, "batched_rows_per_s": stats(batched), "single_rows_per_s": stats(single),
            "speedup": stats(ratios)}


# ---- main ---------------------------------------------------------------------------------------


def print_keywords(lang: str, res: dict) -> None:
    print(f"\nkeywords -> sentence ({lang}, {res['sets']} sets)")
    print(f"{'method':<11} {'coverage':>9} {'NLL/tok eval LM':>16} {'NLL/tok target':>15} {'chars':>6} {'repeats':>8}"
          f" {'s/set':>7}")
    for m, r in res["methods"].items():
        print(f"{m:<11} {r['coverage']:>8.0%} {r['nll_eval_lm']['median']:>9.3f} (med) {r['nll_target_lm']['median']:>8.3f}"
              f" (med) {r['length_chars']['mean']:>6.1f} {r['repeated_ngram_rate']:>8.0%} {r['seconds_per_set']:>7.2f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="models/search")
    p.add_argument("--zh-lm", help="a genloom causal LM directory (genloom-zh-base) as the Chinese target and "
                   "proposal instead of --models' forward / masked LMs; eval-zh of --models still scores fluency")
    p.add_argument("--zh-lm-backward", help="the right-to-left genloom LM paired with --zh-lm (genloom lm pretrain "
                   "--reverse): CGMH's backward proposal, and correction's with --both")
    p.add_argument("--tag", default="", help="suffix of this run's result keys (e.g. 'base': keywords_zh_base)")
    p.add_argument("--sets", type=int, default=100, help="keyword sets per language")
    p.add_argument("--correct", type=int, default=200, help="sentences for error correction")
    p.add_argument("--zh-steps", type=int, default=100)
    p.add_argument("--zh-chains", type=int, default=2)
    p.add_argument("--zh-weighting", default="target", choices=("target", "model"))
    p.add_argument("--zh-min-len", type=int, default=12, help="CGMH: soft minimum length (characters)")
    p.add_argument("--zh-natural-len", type=float, default=0.0, help="CGMH: length model mean (characters; 0: none)")
    p.add_argument("--zh-natural-len-sd", type=float, default=6.0, help="CGMH: length model standard deviation")
    p.add_argument("--zh-length-temperature", type=float, default=0.8, help="CGMH: length model's sample temperature")
    p.add_argument("--zh-no-repeat", type=int, default=0, help="CGMH: ban repeated n-grams of this size (0: none)")
    p.add_argument("--zh-max-run", type=int, default=0, help="CGMH: ban a character more than this many times in "
                   "a row (0: no limit)")
    p.add_argument("--zh-split", default="test", help="inews split of the Chinese keyword sets (dev: tuning)")
    p.add_argument("--en-split", default="test", choices=("test", "train"),
                   help="docstring split of the English keyword sets (train: tuning a length setting only; "
                   "eval-en saw those sentences)")
    p.add_argument("--en-steps", type=int, default=20)
    p.add_argument("--en-min-len", type=int, default=10, help="CGMH: soft minimum length (SmolLM2 tokens)")
    p.add_argument("--en-chains", type=int, default=1)
    p.add_argument("--en-natural-len", type=float, default=0.0, help="CGMH: length model mean (tokens; 0: none)")
    p.add_argument("--en-natural-len-sd", type=float, default=4.0, help="CGMH: length model standard deviation")
    p.add_argument("--en-length-temperature", type=float, default=0.8, help="CGMH: length model's sample temperature")
    p.add_argument("--en-no-repeat", type=int, default=0, help="CGMH: ban repeated n-grams of this size (0: none)")
    p.add_argument("--reuse-baselines", metavar="KEY", help="take the sample / beam outputs of KEY in --out (same "
                   "keyword sets and settings, checked) instead of rerunning them (default: none, rerun)")
    p.add_argument("--top-k", type=int, default=5, help="keywords: candidates per edit")
    p.add_argument("--beam", type=int, default=3, help="grid beam search: beams per bank")
    p.add_argument("--penalty", type=float, default=12.0, help="correction: nats an edit must buy")
    p.add_argument("--correct-top-k", type=int, default=8, help="correction: candidates per position")
    p.add_argument("--sweeps", type=int, default=1, help="correction: passes over the positions")
    p.add_argument("--both", action="store_true", help="correction: forward and backward LM as the fluency")
    p.add_argument("--correct-search", default="sweep", choices=("sweep", "best"), help="correction: the search")
    p.add_argument("--max-edits", type=int, default=3, help="correction, search best: edits per sentence")
    p.add_argument("--positions", type=int, default=0, help="correction, search best: most surprising positions tried")
    p.add_argument("--shortlist", type=int, default=0, help="correction, search best: candidates scored whole")
    p.add_argument("--correct-split", default="test", help="inews split of the correction sentences (dev: tuning)")
    p.add_argument("--throughput-rows", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-en", action="store_true")
    p.add_argument("--parts", default="throughput,zh,correct,en",
                   help="comma-separated parts: throughput, zh, correct, correct-sweep, correct-oracle, en")
    p.add_argument("--penalties", default="4,8,12,16", help="correct-sweep, correct-oracle: edit penalties to try")
    p.add_argument("--merge", action="store_true", help="add the parts run to the results already in --out")
    p.add_argument("--en-lm", default="smollm2-135m", help="the English LM (a local Hugging Face model)")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # tables reach a log file as they are printed
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    started = time.perf_counter()
    from genloom.models import load

    result: dict[str, Any] = {}
    if args.merge and Path(args.out).is_file():  # add these parts to an earlier run's results
        result = json.loads(Path(args.out).read_text(encoding="utf-8"))
        result.setdefault("merged_runs", []).append({"settings": vars(args), "load_average_before": load_before})
    else:
        result = {"machine": machine(), "load_average_before": load_before, "settings": vars(args)}
    parts = set(args.parts.split(","))
    # the Chinese models: only a Chinese part needs them
    if parts & {"throughput", "zh", "correct", "correct-sweep", "correct-oracle"}:
        zh = task.load_backend("zh", models=args.models, proposal="mlm", lm=args.zh_lm, lm_backward=args.zh_lm_backward)
        eval_zh, eval_zh_tok = load(Path(args.models) / "eval-zh")
        zh_eval = (CausalLMScorer(eval_zh, bos_id=eval_zh_tok.bos_id, eos_id=eval_zh_tok.eos_id), eval_zh_tok)
    tag = f"_{args.tag}" if args.tag else ""
    if args.zh_lm:  # which weights: a snapshot of a pre-training run names its step
        info = Path(args.zh_lm) / "snapshot.json"
        result[f"zh_lm{tag}"] = {"path": args.zh_lm, **(json.loads(info.read_text()) if info.is_file() else {})}
        if args.zh_lm_backward:
            back = Path(args.zh_lm_backward) / "snapshot.json"
            result[f"zh_lm{tag}"]["backward"] = {"path": args.zh_lm_backward,
                                                 **(json.loads(back.read_text()) if back.is_file() else {})}
    if "throughput" in parts:
        result[f"throughput_zh{tag}"] = throughput(zh, rows=args.throughput_rows, repeats=args.repeats, seed=args.seed)
        t = result[f"throughput_zh{tag}"]
        print(f"throughput (zh target LM, {args.throughput_rows} rows): batched {t['batched_rows_per_s']['median']:.0f}"
              f" rows/s, one at a time {t['single_rows_per_s']['median']:.0f} rows/s, x{t['speedup']['median']:.1f}")
    if "zh" in parts:
        result[f"keywords_zh{tag}"] = keywords_bench("zh", zh, zh_eval, chinese_sets(zh.tokenizer, args.sets, args.seed,
                                                                                  eval_zh_tok, args.zh_split), args)
        print_keywords("zh", result[f"keywords_zh{tag}"])
    if "correct" in parts:
        result[f"correction_zh{tag}"] = correction_bench(zh, args)
        c = result[f"correction_zh{tag}"]
        print(f"\ncorrection ({c['sentences']} sentences, 1 substitution each): restored {c['restored']:.1%}, error "
              f"position changed {c['error_position_changed']:.1%}, clean sentences changed {c['clean_changed']:.1%}")
    if "correct-sweep" in parts:  # the trade-off of the edit penalty (the headline uses --penalty, chosen on dev)
        sweep = []
        edits = None  # search best: every penalty reads the same memo of best edits
        if args.correct_search == "best":
            edits = task.BestEdits(zh, task.correction_fluency(zh, args.both), task.han_vocab(zh), args.correct_top_k,
                                   args.positions, args.shortlist)
        for pen in (float(x) for x in args.penalties.split(",")):
            r = correction_bench(zh, argparse.Namespace(**{**vars(args), "penalty": pen}), edits)
            sweep.append({k: r[k] for k in ("restored", "error_position_changed", "clean_changed", "seconds")}
                         | {"penalty": pen})
            print(f"penalty {pen:5.1f}: restored {r['restored']:.1%}, error position changed "
                  f"{r['error_position_changed']:.1%}, clean sentences changed {r['clean_changed']:.1%}", flush=True)
        result[f"correction_zh_penalty_sweep{tag}"] = sweep
    if "correct-oracle" in parts:  # where the restoring edits are lost (search best's steps, the penalty)
        result[f"correction_zh_oracle{tag}"] = o = correction_oracle(zh, args)
        print(f"\ncorrection oracle ({o['sentences']} {o['split']} sentences): wrong position tried "
              f"{o['position_tried']:.1%}, right character in the top {args.correct_top_k} {o['in_top_k']:.1%}, "
              f"in the shortlist {o['in_shortlist']:.1%}; restoring gain quantiles (nats) "
              + " / ".join(f"{v:.1f}" for v in o["gain_quantiles"].values()))
        for b in o["by_penalty"]:
            print(f"penalty {b['penalty']:5.1f}: restoring gain above it {b['gain_above']:.1%}, "
                  f"reachable {b['reachable']:.1%}")
    if "en" in parts and not args.skip_en:
        en = task.load_backend("en", lm=args.en_lm)
        eval_en, eval_en_tok = load(Path(args.models) / "eval-en")
        en_eval = (CausalLMScorer(eval_en, bos_id=eval_en_tok.bos_id, eos_id=eval_en_tok.eos_id), eval_en_tok)
        if "throughput" in parts:
            result["throughput_en"] = throughput(en, rows=max(8, args.throughput_rows // 16),
                                                 repeats=max(2, args.repeats // 2), seed=args.seed)
            t = result["throughput_en"]
            print(f"throughput (SmolLM2, {t['rows']} rows): batched {t['batched_rows_per_s']['median']:.1f} rows/s, "
                  f"one at a time {t['single_rows_per_s']['median']:.1f} rows/s, x{t['speedup']['median']:.1f}")
        result[f"keywords_en{tag}"] = keywords_bench("en", en, en_eval, english_sets(args.sets, args.seed, args.en_split), args)
        print_keywords("en", result[f"keywords_en{tag}"])
    if args.merge and "merged_runs" in result:
        result["merged_runs"][-1] |= {"load_average_after": os.getloadavg(), "seconds": time.perf_counter() - started}
    else:
        result["load_average_after"] = os.getloadavg()
        result["busy"] = max(load_before[0], result["load_average_after"][0]) > (os.cpu_count() or 1)
        result["total_seconds"] = time.perf_counter() - started
    out = Path(args.out)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, out)
    print(f"\nwrote {out} ({time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:  # e.g. the models are not trained yet
        print(f"benchmarks/search.py: {e}", file=sys.stderr)
        sys.exit(2)
