"""Cached beam search vs the post's no-cache decoder on the title model (issue 5, "Decoding").

The post (bojone/seq2seq `gen_title`) re-runs the whole model, encoder included, on the source
and the full title prefix at every step; genloom's `RNNSeq2Seq` keeps the LSTM state and the
encoder memory in its decoding state, so a step is O(1) in the title length and never touches
the encoder again. Both go through the same `beam_search` (beam 3, the title processors), the
reference as `genloom.models.nocache.NoCache`, on the first 50 inews test articles in one
batch, with titles of exactly 32 characters (EOS disabled, so both do the same number of steps).

Claims checked: identical titles (also with EOS on, the real decoding) and a speed-up >= 5x.
Timings alternate between the two decoders in the same process; median of --repeats with
min/max. Results: benchmarks/results/title_decode.json.

    python benchmarks/title_decode.py [--model runs/title-default] [--repeats 3]

Without --model (or if the directory has no model) a freshly initialised model of the default
shape is used, with the char vocabulary of inews train: speed and exactness do not depend on
training.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from genloom.decode.loops import beam_search
from genloom.data import corpus_pairs
from genloom.models.nocache import NoCache
from genloom.tasks.title.config import ARCHS, TITLE_FILE, TitleConfig
from genloom.tasks.title.data import build_tokenizer
from genloom.tasks.title.infer import TitleModel, load_title_model, title_processors
from genloom.train.lm import pad_rows

RESULTS = Path(__file__).resolve().parent / "results" / "title_decode.json"


def _model(path: str | None) -> tuple[TitleModel, str]:
    if path and (Path(path) / TITLE_FILE).is_file():
        return load_title_model(path), f"trained model {path}"
    torch.manual_seed(0)
    cfg = TitleConfig()
    pairs = corpus_pairs("inews", "train")
    tok = build_tokenizer([t for p in pairs for t in p], min_count=cfg.min_count)
    return TitleModel(ARCHS[cfg.arch](cfg, tok).eval(), tok, cfg), "untrained default-shape model"


def _decode(model, src, procs, eos_id, n):
    return beam_search(model, num_beams=3, max_new_tokens=n, eos_id=eos_id, processors=procs,
                       src=src)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/title-default", help="title model directory")
    ap.add_argument("--articles", type=int, default=50)
    ap.add_argument("--title-chars", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    tm, what = _model(args.model)
    tok, n = tm.tokenizer, args.title_chars
    articles = [a for a, _ in corpus_pairs("inews", "test")[: args.articles]]
    rows, _ = tm.sources(articles)
    src = pad_rows(rows, tok.pad_id)  # (B, S)
    procs = title_processors(tok, no_repeat_ngram=tm.config.no_repeat_ngram)
    slow = NoCache(tm.model, bos_id=tok.bos_id).eval()

    with torch.no_grad():
        same_eos = (_decode(tm.model, src, procs, tok.eos_id, n).sequences
                    == _decode(slow, src, procs, tok.eos_id, n).sequences)
        times: dict[str, list[float]] = {"cached": [], "no_cache": []}
        outputs: dict[str, list] = {}
        for _ in range(args.repeats):
            for name, model in (("cached", tm.model), ("no_cache", slow)):
                t0 = time.perf_counter()
                out = _decode(model, src, procs, None, n)
                times[name].append(time.perf_counter() - t0)
                outputs[name] = out.sequences
    identical = outputs["cached"] == outputs["no_cache"]
    lengths = {len(s) for s in outputs["cached"]}
    med = {k: statistics.median(v) for k, v in times.items()}
    speedup = med["no_cache"] / med["cached"]
    load_after = os.getloadavg()
    result = {
        "claim": "cached beam 3 gives the no-cache reference's titles and is >= 5x faster",
        "model": what, "articles": len(articles), "num_beams": 3, "title_chars": n,
        "source_chars_max": int(src.shape[1]),
        "identical_32_chars": identical, "identical_with_eos": same_eos,
        "title_lengths": sorted(lengths),
        "seconds": {k: {"min": min(v), "median": med[k], "max": max(v), "all": v}
                    for k, v in times.items()},
        "speedup_median": speedup,
        "chars_per_s": {k: len(articles) * n / med[k] for k in med},
        "passed": identical and same_eos and speedup >= 5.0,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                    "load_avg_before": load_before, "load_avg_after": load_after,
                    "loaded": max(load_before[0], load_after[0]) > (os.cpu_count() or 1)},
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__},
    }
    print(f"title decoding, {len(articles)} inews test articles, beam 3, {n} chars ({what})")
    print(f"{'decoder':<10} {'median s':>9} {'min':>7} {'max':>7} {'chars/s':>8}")
    for k in ("no_cache", "cached"):
        v = times[k]
        print(f"{k:<10} {med[k]:9.2f} {min(v):7.2f} {max(v):7.2f} {result['chars_per_s'][k]:8.0f}")
    print(f"speed-up {speedup:.1f}x (claim >= 5x); identical titles: {identical} "
          f"(32 chars), {same_eos} (with EOS)")
    if result["machine"]["loaded"]:
        print(f"note: machine loaded (load average {load_before[0]:.1f} -> {load_after[0]:.1f})")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, RESULTS)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
