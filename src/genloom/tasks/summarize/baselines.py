"""Extractive baselines of the long-document benchmark: lead-k and jiagu's TextRank summariser.

- `lead_k`: the document's first k clauses (`convert.split_clauses`) joined: the baseline news
  summarization is measured against (the lead holds the news; shuffling the clauses removes that).
- `textrank_summary`: what a user would reach for first, `jiagu.summarize` (PyPI `jiagu`, the
  `[summarize]` extra): TextRank over jiagu's sentences (split after 。？！…, newlines removed),
  jiagu's own segmentation and stop words, similarity = shared words / log(|s1| + |s2|), damping
  0.85. jiagu returns its top n sentences; we ask for all of them (n = the number of sentences its
  splitter yields, the empty tail included so it never runs short), drop empty ones, and join them
  best first to the requested length (`pipeline.ranked_text`'s rule), so it is cut like every other
  extract-only row. jiagu is imported only here, when the row is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence

from genloom.errors import UserError
from genloom.tasks.summarize.pipeline import ranked_text

JIAGU_INSTALL = "pip install 'genloom[summarize]'  (or: pip install jiagu)"


def lead_k(clauses: Sequence[str], k: int) -> str:
    """Lead-k: the document's first k clauses joined (all of them when it has fewer)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return "".join(clauses[:k])


def _jiagu():
    try:
        import jiagu
        from jiagu import utils
    except ImportError:
        raise UserError(f"the TextRank row needs jiagu: {JIAGU_INSTALL}") from None
    return jiagu, utils


def textrank_sentences(text: str) -> list[str]:
    """jiagu's TextRank ranking of `text`'s sentences, best first (empty sentences dropped)."""
    jiagu, utils = _jiagu()
    flat = text.replace("\n", "").replace("\r", "")  # what jiagu.summarize does first
    n = len(list(utils.cut_sentences(flat)))
    if not flat.strip():
        return []
    return [s for s in jiagu.summarize(flat, n) if s.strip()]


def textrank_summary(text: str, length: int) -> str:
    """jiagu's TextRank extract of `text`, best sentences first, cut to `length` characters."""
    ranked = textrank_sentences(text)
    return ranked_text(ranked, [-i for i in range(len(ranked))], length) if ranked else ""
