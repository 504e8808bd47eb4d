"""Scoring a summarizer: char ROUGE-1/2/L F1 and the CAIL word score of its summaries and of
extract-only, and the extractor's recall of the aligned clauses."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from genloom.errors import UserError
from genloom.metrics import cail_score, rouge
from genloom.tasks.summarize.convert import extraction_labels
from genloom.tasks.summarize.pipeline import Summarizer, best_clause_text, extraction_recall, select_clauses


def cail_weighting(rouges: dict[str, float]) -> float:
    """The CAIL 2020 summarization track's weighting 0.2 R1 + 0.4 R2 + 0.4 RL of ROUGE F1 figures."""
    return 0.2 * rouges["rouge-1"] + 0.4 * rouges["rouge-2"] + 0.4 * rouges["rouge-l"]


def score(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Char ROUGE-1/2/L F1, their CAIL weighting ("cail-char") and the CAIL weighting on jieba
    words ("cail", the track's own tokens), all percent. Not comparable with CAIL2020 scores:
    other data (news titles, not judgment summaries), and "cail-char" other tokens."""
    chars = rouge(predictions, references, level="char")
    return {**chars, "cail-char": cail_weighting(chars), "cail": cail_score(predictions, references)}


def evaluate(summarizer: Summarizer, pairs: Sequence[tuple[str, str]], *, num_beams: int | None = None,
             copy: bool | None = None, batch_size: int = 32,
             prepared: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Score a summarizer on (document, reference) pairs; `prepared`, when given, is
    `summarizer.sources` of the pairs' documents (so several evaluations extract once).

    Returns:
        {"rows": {name: score}, "predictions", "extraction": recall/precision of the extractor
        against the aligned clauses (pipeline mode), "decode_seconds"}. Rows: "summarizer" and,
        in pipeline mode, "extract only" (`best_clause_text` cut to the mean training-summary length).
    """
    if not pairs:
        raise UserError("no pairs to evaluate")
    refs = [r for _, r in pairs]
    if prepared is None:
        prepared = summarizer.sources([d for d, _ in pairs])
    elif len(prepared) != len(pairs):
        raise UserError(f"{len(prepared)} prepared sources for {len(pairs)} pairs")
    t0 = time.perf_counter()
    preds = [r["summary"] for r in summarizer.generate(prepared, num_beams=num_beams, copy=copy,
                                                      batch_size=batch_size)]
    seconds = time.perf_counter() - t0
    rows = {"summarizer": score(preds, refs)}
    result: dict[str, Any] = {"rows": rows, "predictions": preds, "decode_seconds": round(seconds, 1),
                              "pairs": len(pairs)}
    if summarizer.config.mode == "pipeline":
        c = summarizer.config
        rows["extract only"] = score([best_clause_text(p["clauses"], p["probs"], summarizer.summary_length)
                                      for p in prepared], refs)
        gold = [extraction_labels(p["clauses"], r) for p, r in zip(prepared, refs)]
        above = [select_clauses(p["clauses"], p["probs"], window=10**9, threshold=c.threshold, fill=False)
                 for p in prepared]
        result["extraction"] = {"threshold": extraction_recall(above, gold),
                                "window": extraction_recall([p["chosen"] for p in prepared], gold)}
    return result


def format_rows(rows: dict[str, dict[str, float]]) -> str:
    """A plain table of score rows: ROUGE-1/2/L (char) and CAIL (words)."""
    lines = [f"{'':28s} {'R-1':>6s} {'R-2':>6s} {'R-L':>6s} {'CAIL':>6s}"]
    for name, r in rows.items():
        lines.append(f"{name:28s} {r['rouge-1']:6.2f} {r['rouge-2']:6.2f} {r['rouge-l']:6.2f} {r['cail']:6.2f}")
    return "\n".join(lines)
