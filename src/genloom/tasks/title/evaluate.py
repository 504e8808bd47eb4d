"""Scoring a title model on (article, title) pairs beside the extractive baselines, and the
tables `genloom title eval` writes."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from genloom.errors import UserError
from genloom.files import write_atomic, write_json_atomic
from genloom.metrics import repeated_ngram_rate
from genloom.tasks.title.baselines import baseline_table, score_row
from genloom.tasks.title.data import Pair
from genloom.tasks.title.infer import TitleModel


def evaluate(tm: TitleModel, pairs: Sequence[Pair], *, num_beams: int | None = None,
             baselines: bool = True, progress: bool = False) -> dict[str, Any]:
    """Score the model's titles on (article, title) pairs beside the extractive baselines.

    Returns:
        {"rows": {method: {"rouge-1", "rouge-2", "rouge-l", "bleu"}}, "pairs": n,
         "repeated_4gram": share of generated titles with a repeated char 4-gram,
         "decode_seconds", "chars_per_s", "num_beams", "truncated", "predictions": [...]}
    """
    if not pairs:
        raise UserError("no (article, title) pairs to evaluate")
    beams = num_beams or tm.config.num_beams
    articles = [a for a, _ in pairs]
    refs = [t for _, t in pairs]
    _, cut = tm.sources(articles)
    t0 = time.perf_counter()
    preds = tm.generate(articles, num_beams=beams, progress=progress)
    seconds = time.perf_counter() - t0
    name = f"{tm.config.arch} (beam {beams})"
    rows = {name: score_row([p or "∅" for p in preds], refs)}
    if baselines:
        rows.update(baseline_table(list(pairs)))
    return {"rows": rows, "pairs": len(pairs), "repeated_4gram": repeated_ngram_rate(preds, 4),
            "decode_seconds": seconds, "chars_per_s": sum(map(len, preds)) / max(seconds, 1e-9),
            "num_beams": beams, "truncated": cut, "predictions": preds}


def write_eval(result: dict[str, Any], directory: str | Path, name: str, table_text: str) -> Path:
    """Write the eval result as NAME.json and the printed table as NAME.txt (atomically)."""
    directory = Path(directory)
    write_json_atomic(directory / f"{name}.json", result)
    write_atomic(directory / f"{name}.txt", table_text + "\n")
    return directory / f"{name}.json"
