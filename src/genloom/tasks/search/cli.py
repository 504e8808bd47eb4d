"""`genloom search`: text found by search (【搜出来的文本】) with no paired data.

    nice genloom search train-models --out models/search        # the Chinese models (once)
    genloom search keywords --keywords 北京,大学,科学 --num-samples 5   # CGMH: a sentence with the words
    genloom search keywords --lang en --keywords library,function,value
    genloom search keywords --input sets.jsonl --json              # {"id": ..., "keywords": "北京,大学"} a line
    genloom search gibbs --num-samples 10                         # sample sentences from the masked LM
    genloom search correct --text "今天天汽很好，我们去公园玩。"     # fix typos
    genloom search correct --lang en --text "The functoin returns a value."
    cat typos.txt | genloom search correct --input - --json

Chinese runs on the models of `train-models` (`--models DIR`, default models/search), or with
`--lm DIR` on a genloom causal LM such as genloom-zh-base (`genloom lm pretrain`), which is then the
target and the proposal; English on SmolLM2-135M (`--lm`, any local Hugging Face causal LM);
backend.py and infer.py say how.

    genloom search correct --lm models/genloom-zh-base-char/model --text "今天天汽很好。"

`keywords` and `correct` read `--keywords` / `--text`, or `--input FILE` ("-" reads stdin): one
keyword set (comma-separated) or sentence per line, or JSONL records whose `--field` holds it
(`keywords` / `text`) and whose "id" field, if any, is carried to the output (else the line
number is the id; blank lines are skipped; `--format` picks lines or jsonl, by default JSONL
when the first line is a JSON object). `--num-samples` (old spelling `-n`) is how many
sentences per keyword set or how many samples. Outputs go to stdout, one per line, or with
`--json` (old spelling `--jsonl`) one JSON line per result, `{"id", "input", "output", ...}`:
keywords: input the keyword list, output the sentence, plus `rank` (0 best) and `score`;
correct: input the sentence, output the correction, plus `changed`; gibbs: id the sample number
from 1, input null. A text given on the command line has id 1. `--out FILE` (old spelling
`--output`) writes them atomically to a file instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import types
from typing import Any

import torch

from genloom.cliargs import (add_common, add_config_flags, add_input, add_json, at_most, check_outputs,
                             config_from_args, json_record, nonneg_float, nonneg_int, output_flag, positive_float,
                             positive_int, probability, rows_int, set_threads, temperature)
from genloom.data.readers import INPUT_FORMATS, read_input_file
from genloom.decode.mcmc import SCHEDULES
from genloom.decode.mcmc_edits import WEIGHTINGS
from genloom.errors import UserError
from genloom.files import write_atomic
from genloom.tasks.lm.load import QUANTS
from genloom.tasks.search.backend import EN_ENGINES, LANGS, PROPOSALS, Backend, load_backend
from genloom.tasks.search.infer import (SEARCHES, CorrectConfig, GibbsConfig, KeywordsConfig, correct_texts,
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


def _read_items(args: argparse.Namespace, given: str | None) -> list[tuple[Any, str]]:
    """(id, text) of the text `given` on the command line (id 1), or of each non-blank line of
    --input ("-": stdin) or of its JSONL records' --field (their "id" field carried, else the
    line number): `read_input_file`. A line that cannot be used is a one-line UserError."""
    check_outputs(args)  # --out: before the input is read
    if not args.input:
        return [(1, given)]
    return [(id_, text.strip()) for id_, text in read_input_file(args.input, fmt=args.format, field=args.field)]


def _backend(args: argparse.Namespace, proposal: str) -> Backend:
    set_threads(args.threads)
    if args.quant is not None and args.engine != "llamacpp":
        raise UserError("--quant applies to --engine llamacpp only")
    if args.engine != "genloom" and args.lang != "en":
        raise UserError("--engine applies to --lang en only (the Chinese models are genloom's own)")
    if args.lang == "zh" and args.lm is not None:
        if proposal == "mlm" and getattr(args, "proposal", None) is not None:
            raise UserError("--proposal mlm needs the masked LM of --models; with --lm the proposals come from the LM")
        if proposal == "mlm" and getattr(args, "search_command", None) == "gibbs":
            raise UserError("Chinese Gibbs sampling needs the masked LM of --models; drop --lm")
        proposal = "lm"
    proposal = proposal or "mlm"
    return load_backend(args.lang, models=args.models, proposal=proposal, lm=args.lm, engine=args.engine,
                        quant=args.quant, lm_backward=args.lm_backward)


def _generator(args: argparse.Namespace) -> torch.Generator:
    return torch.Generator().manual_seed(args.seed)


def run_keywords(args: argparse.Namespace) -> int:
    """`genloom search keywords`."""
    config = _override(default_keywords_config(args.lang), args)
    if config.min_len > config.max_len:
        raise UserError(f"need --min-len <= --max-len, got {config.min_len} and {config.max_len}")
    items = _read_items(args, args.keywords)
    sets = [[w for w in _SPLIT.split(line) if w] for _, line in items]
    found = keywords_search(_backend(args, args.proposal), sets, config, generator=_generator(args),
                            progress=not args.quiet)
    out = []
    for (id_, _), words, results in zip(items, sets, found):
        for rank, f in enumerate(results):
            out.append(json_record(id_, words, f.text, rank=rank, score=round(f.score, 4)) if args.json else f.text)
    _write(args, out)
    return 0


def run_correct(args: argparse.Namespace) -> int:
    """`genloom search correct`."""
    config = _override(CorrectConfig(), args)
    items = _read_items(args, args.text)
    texts = [text for _, text in items]
    fixed = correct_texts(_backend(args, args.proposal), texts, config, generator=_generator(args),
                          progress=not args.quiet)
    _write(args, [json_record(id_, t, f, changed=t != f) if args.json else f
                  for (id_, t), f in zip(items, fixed)])
    return 0


def run_gibbs(args: argparse.Namespace) -> int:
    """`genloom search gibbs`."""
    check_outputs(args)  # --out: before the models are read
    config = _override(GibbsConfig(), args)
    if args.init is None:  # the random lengths of all-[MASK] starts
        at_most(config, "min_len", "max_len")
    texts = gibbs_texts(_backend(args, "mlm"), config, init=args.init, generator=_generator(args),
                        progress=not args.quiet)
    _write(args, [json_record(i, None, t) if args.json else t for i, t in enumerate(texts, start=1)])
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
    p.add_argument("--lm", help="English: a local Hugging Face causal LM (name, dir, .gguf) (default smollm2-135m); "
                   "Chinese: a genloom causal LM directory, e.g. models/genloom-zh-base-char/model, used instead of --models "
                   "as target and proposal (default: none, --models)")
    p.add_argument("--lm-backward", metavar="DIR",
                   help="Chinese, with --lm: the backward LM of the same base (genloom lm pretrain --reverse), for "
                   "forward x backward proposals and --both (default: none, the forward LM alone)")
    p.add_argument("--engine", choices=EN_ENGINES, default="genloom",
                   help="English: run --lm converted to genloom's Transformer, or (a GGUF) on llama.cpp")
    p.add_argument("--quant", choices=QUANTS, help="--engine llamacpp: requantize the GGUF once (llama.cpp's quantizer) (default: none, the GGUF as it is)")
    if proposal:
        p.add_argument("--proposal", choices=PROPOSALS,
                       help="Chinese candidates: masked LM or fwd x bwd LM of --models (default mlm; with --lm: the LM)")
    add_json(p, "each result")
    output_flag(p, "--out", "--output", dest="out",
                help="write the results to this file (atomically) instead of stdout (default: stdout)")
    add_common(p, seed=0, threads=True, quiet=True)


def _input_flags(p: argparse.ArgumentParser, src: Any, what: str, *, field: str) -> None:
    """`--input FILE` (in the group `src`, beside --keywords / --text), `--format`, `--field`."""
    add_input(src, what)
    p.add_argument("--format", choices=INPUT_FORMATS, default="auto",
                   help="--input: lines, jsonl, or auto (JSONL if the first line is a JSON object)")
    p.add_argument("--field", default=field, help="--input JSONL: the field holding the text")


def add_parser(subparsers: Any, *, name: str, help: str) -> argparse.ArgumentParser:
    """Register `genloom search` and its sub-commands."""
    p = subparsers.add_parser(name, help=help, description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="search_command", metavar="ACTION", parser_class=type(p))
    sub.required = True

    k = sub.add_parser("keywords", help="make sentences that contain given keywords (CGMH)")
    src = k.add_mutually_exclusive_group(required=True)
    src.add_argument("--keywords", help="comma-separated keywords, e.g. 北京,大学,科学 (default: none; give --keywords or --input)")
    _input_flags(k, src, "one comma-separated keyword set per line, or JSONL records", field="keywords")
    k.add_argument("--num-samples", "-n", dest="n", type=rows_int, help="sentences per keyword set (default 5)")
    _config_flags(k, KeywordsConfig(), default_keywords_config("en"), {
        "chains": "chains per keyword set", "steps": "Metropolis-Hastings steps per chain",
        "top_k": "candidates per edit", "weighting": "weigh candidates by the target or the proposal",
        "explore": "share of uniform tokens among the proposals", "min_len": "soft minimum length in tokens",
        "max_len": "hard maximum length in tokens", "short_penalty": "nats per token below --min-len",
        "schedule": "temperature schedule", "t_start": "first temperature", "t_end": "last temperature",
        "natural_len": "length model: mean length in tokens of the sentences wanted (0: none)",
        "natural_len_sd": "length model: standard deviation of that length",
        "length_temperature": "length model: nats per token = the LM's NLL of its samples at this temperature",
        "no_repeat": "refuse sentences that repeat an n-gram of this size (0: none)",
        "max_run": "refuse sentences with a token more than this many times in a row (2: no 雷雷雷) (0: no limit)",
    }, types_={"natural_len": nonneg_float, "natural_len_sd": positive_float, "length_temperature": temperature,
               "no_repeat": nonneg_int, "max_run": nonneg_int,
               "chains": rows_int, "steps": positive_int, "top_k": positive_int, "explore": probability,
               "min_len": nonneg_int, "max_len": positive_int, "short_penalty": nonneg_float,
               "t_start": temperature, "t_end": temperature},
        choices={"weighting": WEIGHTINGS, "schedule": tuple(SCHEDULES)})
    _common(k)
    k.set_defaults(func=run_keywords)

    g = sub.add_parser("gibbs", help="sample sentences (Gibbs with the masked LM; English: MH under SmolLM2)")
    g.add_argument("--num-samples", "-n", dest="n", type=rows_int, help="sentences (default 10)")
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
    _input_flags(c, src, "one sentence per line, or JSONL records", field="text")
    _config_flags(c, CorrectConfig(), CorrectConfig(), {
        "penalty": "nats of fluency an edit must buy", "sweeps": "passes over the positions",
        "top_k": "candidates per position", "temperature": "search temperature",
        "explore": "share of uniform tokens among the proposals",
        "both": "Chinese: score fluency with the forward and the backward LM (mean log p)",
        "search": "sweep: MH replace moves left to right; best: steepest ascent over every replacement",
        "max_edits": "--search best: the most edits per sentence",
        "positions": "--search best: try only the N most surprising positions (0: all)",
        "shortlist": "--search best: of the top-k, score whole only the S best by a one-token look-ahead (0: all)",
    }, types_={"positions": nonneg_int, "shortlist": nonneg_int, "penalty": nonneg_float, "sweeps": positive_int, "top_k": positive_int,
               "temperature": temperature, "explore": probability, "max_edits": positive_int},
        choices={"search": SEARCHES})
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
