"""Text metrics through well-kept libraries: ROUGE (rouge-score), BLEU (sacrebleu), jieba words.

Tokens, the same for every metric here:

- char level: every character that is not whitespace, lower-cased (`str.lower`, which leaves
  Chinese unchanged). Punctuation counts as a token. rouge-score's default tokenizer would
  lower-case, replace everything outside [a-z0-9] by spaces and split on spaces, which scores
  Chinese as 0; we pass it this tokenizer instead, so Chinese characters, digits, Latin letters
  and punctuation are all kept, one character per token.
- word level: jieba's default segmentation (`jieba.lcut`, accurate mode with HMM) of the
  lower-cased text, whitespace tokens dropped.

ROUGE figures are F1 in percent, the mean over pairs (each pair scored by rouge-score); BLEU is
sacrebleu's corpus BLEU (0-100). distinct-n and the repeated-n-gram rate are ratios in [0, 1].
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from typing import Any, Sequence

ROUGE_KEYS = ("rouge-1", "rouge-2", "rouge-l")
_RS_TYPES = ("rouge1", "rouge2", "rougeL")
LEVELS = ("char", "word")


def char_tokens(text: str) -> list[str]:
    """Char-level tokens: each non-whitespace character, lower-cased."""
    return [ch for ch in text.lower() if not ch.isspace()]


@functools.cache
def _jieba() -> Any:
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)  # silence "Building prefix dict..." on stderr
    jieba.initialize()
    return jieba


def word_tokens(text: str) -> list[str]:
    """Word-level tokens: jieba's segmentation of the lower-cased text, no whitespace tokens."""
    return [w for w in _jieba().lcut(text.lower()) if w.strip()]


class _Tokenizer:
    """The object rouge-score's `tokenizer=` wants: `.tokenize(text) -> list[str]`."""

    def __init__(self, level: str):
        self.tokenize = char_tokens if level == "char" else word_tokens


@functools.cache
def _scorer(level: str, types: tuple[str, ...] = _RS_TYPES) -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(types), tokenizer=_Tokenizer(level))


def _check(preds: Sequence[str], refs: Sequence[str], level: str | None = None) -> None:
    if isinstance(preds, str) or isinstance(refs, str):
        raise TypeError("preds and refs are sequences of strings, not strings")
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
    if not preds:
        raise ValueError("no predictions to score")
    if level is not None and level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, not {level!r}")


def rouge_per_pair(preds: Sequence[str], refs: Sequence[str], *, level: str = "char",
                   measure: str = "fmeasure") -> list[dict[str, float]]:
    """ROUGE-1/2/L (percent) of each (prediction, reference) pair, keys `ROUGE_KEYS`: F1, or with
    `measure` "recall" / "precision" that side alone (recall: how much of the reference the
    prediction holds)."""
    _check(preds, refs, level)
    if measure not in ("fmeasure", "recall", "precision"):
        raise ValueError(f"measure must be fmeasure, recall or precision, not {measure!r}")
    scorer = _scorer(level)
    out = []
    for pred, ref in zip(preds, refs):
        s = scorer.score(ref, pred)  # rouge-score's order: (target, prediction)
        out.append({k: 100.0 * getattr(s[t], measure) for k, t in zip(ROUGE_KEYS, _RS_TYPES)})
    return out


def rouge(preds: Sequence[str], refs: Sequence[str], *, level: str = "char") -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 in percent over the pairs.

    Args:
        preds: generated texts.
        refs: one reference per prediction.
        level: "char" (Chinese characters) or "word" (jieba words); see the module docstring.
    Returns:
        {"rouge-1": ..., "rouge-2": ..., "rouge-l": ...}
    """
    rows = rouge_per_pair(preds, refs, level=level)
    return {k: sum(r[k] for r in rows) / len(rows) for k in ROUGE_KEYS}


def rouge_l(pred: str, ref: str, *, level: str = "char") -> float:
    """ROUGE-L F1 (percent) of one pair (rouge-score's LCS)."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, not {level!r}")
    return 100.0 * _scorer(level, ("rougeL",)).score(ref, pred)["rougeL"].fmeasure


def bleu(preds: Sequence[str], refs: Sequence[str], *, tokenize: str = "zh") -> float:
    """Corpus BLEU (0-100) by sacrebleu, one reference per prediction; `tokenize` is
    sacrebleu's tokenizer name ("zh" splits Chinese into characters, "13a" for English)."""
    _check(preds, refs)
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(preds), [list(refs)], tokenize=tokenize).score)


def _char_ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    chars = char_tokens(text)
    return [tuple(chars[i:i + n]) for i in range(len(chars) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """distinct-n (Li et al. 2016): distinct char n-grams / all char n-grams over all texts,
    in [0, 1]; 0.0 when no text is n characters long."""
    if n < 1:
        raise ValueError(f"n must be >= 1, not {n}")
    grams = [g for t in texts for g in _char_ngrams(t, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repeated_ngram_rate(texts: Sequence[str], n: int = 4) -> float:
    """Share of texts (in [0, 1]) in which some char n-gram occurs more than once: the
    signature of a decoder stuck in a loop. 0.0 for no texts."""
    if n < 1:
        raise ValueError(f"n must be >= 1, not {n}")
    if not texts:
        return 0.0
    stuck = sum(any(c > 1 for c in Counter(_char_ngrams(t, n)).values()) for t in texts)
    return stuck / len(texts)


def cail_score(preds: Sequence[str], refs: Sequence[str]) -> float:
    """0.2 ROUGE-1 + 0.4 ROUGE-2 + 0.4 ROUGE-L (word-level F1, percent), the weighting of the
    CAIL 2020 summarization track."""
    r = rouge(preds, refs, level="word")
    return 0.2 * r["rouge-1"] + 0.4 * r["rouge-2"] + 0.4 * r["rouge-l"]


def perplexity(mean_nll_nats: float) -> float:
    """exp(mean negative log-likelihood per token, in nats)."""
    return math.exp(mean_nll_nats)


def bits_per_dim(nll_nats: float, *, dims: int) -> float:
    """Negative log-likelihood of one sample (nats) expressed in bits per dimension."""
    if dims < 1:
        raise ValueError(f"dims must be >= 1, not {dims}")
    return nll_nats / (dims * math.log(2.0))
