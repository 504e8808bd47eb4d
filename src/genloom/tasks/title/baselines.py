"""Extractive baselines for title generation (`genloom baseline`, baseline_cli.py).

- `lead_n`: the first sentence of the content, cut to n characters (lead-24 by default: 24 is
  the median title length of inews). Sentences are split by `genloom.data.split_sentences`: at
  newlines and after 。！？!?… plus any closing quotes/brackets, never at "." or commas.
- `best_sentence`: an oracle, the content sentence with the highest char-level ROUGE-L F1
  against the reference title (ties go to the earliest sentence). It needs the answer, so it is
  an upper bound for pure sentence extraction, not a method.

`baseline_table(pairs)` scores both on (content, title) pairs with `score_row` (char-level
ROUGE-1/2/L F1 and sacrebleu BLEU with tokenize="zh"); the title task adds its own rows to the
same table and prints it with `format_table`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from genloom.data import split_sentences
from genloom.errors import UserError
from genloom.metrics import bleu, char_tokens, rouge, rouge_l

_COLUMNS = (("rouge-1", "ROUGE-1"), ("rouge-2", "ROUGE-2"), ("rouge-l", "ROUGE-L"),
            ("bleu", "BLEU"))


def lead_n(content: str, n: int = 24) -> str:
    """The first sentence of `content`, cut to its first `n` characters ("" for blank text)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, not {n}")
    sentences = split_sentences(content)
    return sentences[0][:n] if sentences else ""


def best_sentence(content: str, title: str) -> str:
    """The sentence of `content` with the best char-level ROUGE-L F1 against `title`.

    Exact, but fast on long contents: a sentence's F1 is at most 2*overlap/(|s|+|t|), with
    overlap the clipped count of shared characters (an LCS never exceeds it), so sentences are
    scored by rouge-score's LCS in order of that bound and the search stops once the bound
    falls below the best F1 found. Ties go to the earliest sentence; "" for blank content.
    """
    sentences = split_sentences(content)
    if not sentences:
        return ""
    ref = Counter(char_tokens(title))
    ref_len = sum(ref.values())
    bounds = []
    for i, sentence in enumerate(sentences):
        toks = Counter(char_tokens(sentence))
        overlap = sum((toks & ref).values())
        length = sum(toks.values())
        bounds.append((200.0 * overlap / (length + ref_len) if length + ref_len else 0.0, i))
    bounds.sort(key=lambda b: (-b[0], b[1]))
    best_f, best_i = -1.0, len(sentences)
    for bound, i in bounds:
        if bound < best_f - 1e-9:
            break
        f = rouge_l(sentences[i], title)
        if f > best_f + 1e-9 or (abs(f - best_f) <= 1e-9 and i < best_i):
            best_f, best_i = f, i
    return sentences[best_i]


def score_row(preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Char-level ROUGE-1/2/L F1 (percent) and corpus BLEU (sacrebleu, tokenize="zh")."""
    row = rouge(preds, refs, level="char")
    row["bleu"] = bleu(preds, refs, tokenize="zh")
    return row


def baseline_table(pairs: Sequence[tuple[str, str]], *, lead_chars: int = 24
                   ) -> dict[str, dict[str, float]]:
    """Scores of the extractive baselines on (content, title) pairs.

    Returns:
        {"lead-<lead_chars>": row, "best-sentence": row}, each row as `score_row` gives it.
    """
    if not pairs:
        raise UserError("no (content, title) pairs to score")
    contents = [c for c, _ in pairs]
    titles = [t for _, t in pairs]
    return {
        f"lead-{lead_chars}": score_row([lead_n(c, lead_chars) for c in contents], titles),
        "best-sentence": score_row([best_sentence(c, t) for c, t in pairs], titles),
    }


def format_table(table: dict[str, dict[str, float]], *, n: int) -> str:
    """A plain-text table: one row per method, columns ROUGE-1/2/L and BLEU, `n` pairs."""
    width = max(len("method"), *(len(m) for m in table))
    head = f"{'method':<{width}}  {'pairs':>6}" + "".join(f"  {h:>7}" for _, h in _COLUMNS)
    lines = [head, "-" * len(head)]
    for method, row in table.items():
        cells = "".join(f"  {row[k]:7.2f}" for k, _ in _COLUMNS)
        lines.append(f"{method:<{width}}  {n:>6}{cells}")
    return "\n".join(lines)
