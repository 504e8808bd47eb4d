"""`genloom search`: text found by search (【搜出来的文本】) with no paired data.

    nice genloom search train-models --out models/search        # the Chinese models (once)
    genloom search keywords --keywords 北京,大学,科学 -n 5          # CGMH: a sentence with the words
    genloom search keywords --lang en --keywords library,function,value
    genloom search gibbs -n 10                                    # sample sentences from the masked LM
    genloom search correct --text "今天天汽很好，我们去公园玩。"     # fix typos
    genloom search correct --lang en --text "The functoin returns a value."

Chinese runs on the models of `train-models` (`--models DIR`, default models/search), English on
SmolLM2-135M (`--lm`, any local Hugging Face causal LM); backend.py and infer.py say how.
Outputs go to stdout, one per line (or JSON lines with --jsonl), or atomically to `--out FILE`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import types
from pathlib import Path
from typing import Any

import torch

from genloom.cliargs import (add_common, add_config_flags, at_most, check_outputs, config_from_args, nonneg_float,
                             nonneg_int, output_flag, positive_float, positive_int, probability, rows_int,
                             set_threads, temperature)
from genloom.data.readers import read_records
from genloom.decode.mcmc import SCHEDULES
from genloom.decode.mcmc_edits import WEIGHTINGS
from genloom.errors import UserError
from genloom.files import write_atomic
from genloom.tasks.lm.load import QUANTS
from genloom.tasks.search.backend import EN_ENGINES, LANGS, PROPOSALS, Backend, load_backend
from genloom.tasks.search.infer import (CorrectConfig, GibbsConfig, KeywordsConfig, correct_texts,
                                        default_keywords_config, gibbs_texts, keywords_search)
from genloom.tasks.search.models import SearchModelsConfig, train_search_models

_SPLIT = re.compile(r"[,，、\s]+")


def _write(args: argparse.Namespace, lines: list[str]) -> None:
    text = "".join(line + "\n" for line in lines)
    if args.out:
        write_atomic(args.out, text, what="--out")
    else:
        sys.stdout.write(text)


def _override(config: Any, args: argparse.Namespace) -> Any:
    """config with every field whose flag was given replaced."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(config)
             if getattr(args, f.name, None) is not None}
    return dataclasses.replace(config, **given)


def _read_lines(path: str) -> list[str]:
    """The non-blank lines of a text file, stripped."""
    if not Path(path).is_file():
        raise UserError(f"no input file {path}")
    return [r["text"].strip() for r in read_records(path, fields=("text",), fmt="txt")]


def _backend(args: argparse.Namespace, proposal: str) -> Backend:
    check_outputs(args)  # --out: before the models are read
    set_threads(args.threads)
    if args.quant is not None and args.engine != "llamacpp":
        raise UserError("--quant applies to --engine llamacpp only")
    if args.engine != "genloom" and args.lang != "en":
        raise UserError("--engine applies to --lang en only (the Chinese models are genloom's own)")
    return load_backend(args.lang, models=args.models, proposal=proposal, lm=args.lm, engine=args.engine,
                        quant=args.quant)


def _generator(args: argparse.Namespace) -> torch.Generator:
    return torch.Generator().manual_seed(args.seed)


def run_keywords(args: argparse.Namespace) -> int:
    """`genloom search keywords`."""
    config = _override(default_keywords_config(args.lang), args)
    if config.min_len > config.max_len:
        raise UserError(f"need --min-len <= --max-len, got {config.min_len} and {config.max_len}")
    lines = _read_lines(args.input) if args.input else [args.keywords]
    sets = [[w for w in _SPLIT.split(line) if w] for line in lines]
    found = keywords_search(_backend(args, args.proposal), sets, config, generator=_generator(args),
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
    fixed = correct_texts(_backend(args, args.proposal), texts, config, generator=_generator(args),
                          progress=not args.quiet)
    _write(args, [json.dumps({"input": t, "output": f, "changed": t != f}, ensure_ascii=False) if args.jsonl else f
                  for t, f in zip(texts, fixed)])
    return 0


def run_gibbs(args: argparse.Namespace) -> int:
    """`genloom search gibbs`."""
    config = _override(GibbsConfig(), args)
    if args.init is None:  # the random lengths of all-[MASK] starts
        at_most(config, "min_len", "max_len")
    texts = gibbs_texts(_backend(args, "mlm"), config, init=args.init, generator=_generator(args),
                        progress=not args.quiet)
    _write(args, [json.dumps({"index": i, "text": t}, ensure_ascii=False) if args.jsonl else t
                  for i, t in enumerate(texts)])
    return 0


def run_train(args: argparse.Namespace) -> int:
    """`genloom search train-models`."""
    models = tuple(m for m in args.only.split(",") if m) if args.only else SearchModelsConfig().models
    config = config_from_args(SearchModelsConfig, args, models=models, progress=not args.quiet)
    set_threads(args.threads)
    for name, path in train_search_models(config).items():
        print(f"{name}: {path}")
    return 0


# ---- the parser ---------------------------------------------------------------------------------


def _config_flags(parser: argparse.ArgumentParser, zh: Any, en: Any, helps: dict[str, str],
                  types_: dict[str, Any], choices: dict[str, Any] | None = None) -> None:
    """Flags for config fields that default to None (the language picks the defaults, shown in the help)."""
    shown = {name: f"{text} (default {getattr(zh, name)}"
             + (f"; English {getattr(en, name)})" if getattr(en, name) != getattr(zh, name) else ")")
             for name, text in helps.items()}
    unset = types.SimpleNamespace(**{f.name: None for f in dataclasses.fields(zh)})
    add_config_flags(parser, type(zh), shown, types_=types_, choices=choices, defaults=unset)


def _common(p: argparse.ArgumentParser, *, proposal: bool = True) -> None:
    p.add_argument("--lang", choices=LANGS, default="zh", help="zh: the models of train-models; en: SmolLM2")
    p.add_argument("--models", default="models/search", metavar="DIR",
                   help="directory of the Chinese models, written by `genloom search train-models`")
    p.add_argument("--lm", default="smollm2-135m", help="English: a local Hugging Face causal LM (name, dir, .gguf)")
    p.add_argument("--engine", choices=EN_ENGINES, default="genloom",
                   help="English: run --lm converted to genloom's Transformer, or (a GGUF) on llama.cpp")
    p.add_argument("--quant", choices=QUANTS, help="--engine llamacpp: requantize the GGUF once (llama.cpp's quantizer) (default: none, the GGUF as it is)")
    if proposal:
        p.add_argument("--proposal", choices=PROPOSALS, default="mlm",
                       help="Chinese candidates: masked LM or fwd x bwd LM")
    p.add_argument("--jsonl", action="store_true", help="print JSON lines")
    output_flag(p, "--out", parents=False, help="write the results to this file (atomically) instead of stdout (default: stdout)")
    p.add_argument("--output", dest="out", help=argparse.SUPPRESS)  # the flag's earlier name
    add_common(p, seed=0, threads=True, quiet=True)


def add_parser(subparsers: Any, *, name: str, help: str) -> argparse.ArgumentParser:
    """Register `genloom search` and its sub-commands."""
    p = subparsers.add_parser(name, help=help, description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="search_command", metavar="ACTION", parser_class=type(p))
    sub.required = True

    k = sub.add_parser("keywords", help="make sentences that contain given keywords (CGMH)")
    src = k.add_mutually_exclusive_group(required=True)
    src.add_argument("--keywords", help="comma-separated keywords, e.g. 北京,大学,科学 (default: none; give --keywords or --input)")
    src.add_argument("--input", metavar="FILE", help="a file with one comma-separated keyword set per line (default: none)")
    k.add_argument("-n", dest="n", type=rows_int, help="sentences per keyword set (default 5)")
    _config_flags(k, KeywordsConfig(), default_keywords_config("en"), {
        "chains": "chains per keyword set", "steps": "Metropolis-Hastings steps per chain",
        "top_k": "candidates per edit", "weighting": "weigh candidates by the target or the proposal",
        "explore": "share of uniform tokens among the proposals", "min_len": "soft minimum length in tokens",
        "max_len": "hard maximum length in tokens", "short_penalty": "nats per token below --min-len",
        "schedule": "temperature schedule", "t_start": "first temperature", "t_end": "last temperature",
    }, types_={"chains": rows_int, "steps": positive_int, "top_k": positive_int, "explore": probability,
               "min_len": nonneg_int, "max_len": positive_int, "short_penalty": nonneg_float,
               "t_start": temperature, "t_end": temperature},
        choices={"weighting": WEIGHTINGS, "schedule": tuple(SCHEDULES)})
    _common(k)
    k.set_defaults(func=run_keywords)

    g = sub.add_parser("gibbs", help="sample sentences (Gibbs with the masked LM; English: MH under SmolLM2)")
    g.add_argument("-n", dest="n", type=rows_int, help="sentences (default 10)")
    g.add_argument("--init", help="start every chain from this sentence (default: all [MASK])")
    _config_flags(g, GibbsConfig(), GibbsConfig(), {
        "steps": "resampled positions per chain", "min_len": "shortest random length",
        "max_len": "longest random length", "temperature": "divides the conditional's logits",
        "top_k": "English: candidates per move", "explore": "English: share of uniform tokens among the proposals",
    }, types_={"steps": nonneg_int, "min_len": positive_int, "max_len": positive_int,
               "temperature": temperature, "top_k": positive_int, "explore": probability})
    _common(g, proposal=False)
    g.set_defaults(func=run_gibbs)

    c = sub.add_parser("correct", help="fix typos: replace moves under an LM target with an edit penalty")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="a sentence to correct (default: none; give --text or --input)")
    src.add_argument("--input", metavar="FILE", help="a file with one sentence per line (default: none)")
    _config_flags(c, CorrectConfig(), CorrectConfig(), {
        "penalty": "nats of fluency an edit must buy", "sweeps": "passes over the positions",
        "top_k": "candidates per position", "temperature": "search temperature",
        "explore": "share of uniform tokens among the proposals",
        "both": "Chinese: score fluency with the forward and the backward LM (mean log p)",
    }, types_={"penalty": nonneg_float, "sweeps": positive_int, "top_k": positive_int,
               "temperature": temperature, "explore": probability})
    _common(c)
    c.set_defaults(func=run_correct)

    t = sub.add_parser("train-models", help="train the Chinese masked / forward / backward LMs and the eval LMs")
    add_common(t, out="one sub-directory per model goes here", out_default="models/search", force=True,
               threads=True, quiet=True, seed=0)
    add_config_flags(t, SearchModelsConfig, {"steps": "optimizer steps per model (eval models: half)",
                                             "minutes": "wall-clock cap per model"},
                     types_={"steps": positive_int, "minutes": positive_float})
    t.add_argument("--only", help="comma-separated subset of mlm,forward,backward,eval-zh,eval-en (default: all of them)")
    t.add_argument("--resume", action="store_true", help="continue stopped runs under --out (models already saved are kept)")
    t.set_defaults(func=run_train)
    return p
