"""SPACES data conversion: clauses, extraction labels by recursive greedy alignment, copy labels.

- `split_clauses`: the post's fine-grained split (bojone/SPACES `extract_convert.text_split`,
  bert4keras `text_segmentate(text, 1, "\\n。；：，")`): a clause ends at every newline and after
  each run of the separators 。；：，, which stay attached to it; clauses are stripped of
  surrounding whitespace and blank ones dropped. One difference: a run of mixed separators such
  as "。，" stays with its clause, where bert4keras would make the "，" a clause of its own.
  Hand-written (a small regex) because bert4keras is a Keras library and the project's
  `split_sentences` splits at sentence ends only.
- `align`: the post's recursive greedy alignment of summary sentences to clauses: the longest
  summary sentence is matched to the clause with the highest char-level weighted ROUGE
  (0.2 R1 + 0.4 R2 + 0.4 RL, `char_score`; ties to the first), then the summary sentences before
  it are aligned within the clauses up to and including that clause, and those after it within
  the clauses from that clause on (so one clause can match several summary sentences). The
  matched clauses are the extractor's positive labels (`extraction_labels`).
- `lcs` / `copy_labels`: the copy labels of SPACES's BIO head from a longest common subsequence
  of source and target tokens: a matched token that continues the previous match on both sides
  is I (2), any other matched token B (1), unmatched tokens O (0), on both sides.
  `lcs` is hand-written dynamic programming (O(len(a) len(b))) with bert4keras's
  `longest_common_subsequence` tie-breaking, since no maintained library exposes an LCS
  alignment (difflib's matching blocks are not an LCS).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

from genloom.decode.copy import B, I, O
from genloom.metrics import rouge_per_pair, word_tokens

SEPARATORS = "\n。；：，"  # the post's clause ends


def split_clauses(text: str, *, separators: str = SEPARATORS) -> list[str]:
    """Clauses of `text`, each ending after a run of `separators` (module docstring); a newline,
    when it is a separator, always ends a clause (bert4keras splits at it first)."""
    if not separators:
        raise ValueError("separators must name at least one character")
    lines = text.split("\n") if "\n" in separators else [text]
    rest = separators.replace("\n", "")
    out: list[str] = []
    for line in lines:
        if not rest:
            pieces = [line]
        else:
            seps = re.escape(rest)
            pieces = re.findall(rf"[^{seps}]*[{seps}]+|[^{seps}]+$", line)
        out += [p.strip() for p in pieces if p.strip()]
    return out


@functools.lru_cache(maxsize=1 << 18)
def clause_words(clause: str) -> tuple[str, ...]:
    """The clause's jieba words (`genloom.metrics.word_tokens`), cached: the tf-idf and title-word
    features of the extractor read the same clauses many times, and jieba is their slow part."""
    return tuple(word_tokens(clause))


def char_score(candidate: str, reference: str) -> float:
    """0.2 ROUGE-1 + 0.4 ROUGE-2 + 0.4 ROUGE-L on characters (F1, percent)."""
    return char_scores([candidate], reference)[0]


def char_scores(candidates: Sequence[str], reference: str) -> list[float]:
    """`char_score` of each candidate against one reference."""
    if not candidates:
        return []
    rows = rouge_per_pair(list(candidates), [reference] * len(candidates), level="char")
    return [0.2 * r["rouge-1"] + 0.4 * r["rouge-2"] + 0.4 * r["rouge-l"] for r in rows]


def align(texts: Sequence[str], summaries: Sequence[str]) -> list[tuple[int, int]]:
    """The post's recursive greedy alignment: (summary index, clause index) pairs in summary
    order (module docstring). Empty when either side is empty."""
    out: list[tuple[int, int]] = []

    def recurse(t0: int, t1: int, s0: int, s1: int) -> None:  # clauses [t0, t1), summaries [s0, s1)
        if t0 >= t1 or s0 >= s1:
            return
        lengths = [len(summaries[k]) for k in range(s0, s1)]
        i = s0 + lengths.index(max(lengths))
        scores = char_scores(texts[t0:t1], summaries[i])
        j = t0 + scores.index(max(scores))
        recurse(t0, j + 1, s0, i)
        out.append((i, j))
        recurse(j, t1, i + 1, s1)

    recurse(0, len(texts), 0, len(summaries))
    return out


def extraction_labels(clauses: Sequence[str], summary: str) -> list[int]:
    """Sorted indices of the clauses aligned to the summary's clauses (the positive labels)."""
    return sorted({j for _, j in align(clauses, split_clauses(summary))})


def lcs(a: Sequence, b: Sequence) -> list[tuple[int, int]]:
    """A longest common subsequence of a and b as matched index pairs (i, j), increasing in both.
    Ties are broken as bert4keras's `longest_common_subsequence` does."""
    n, m = len(a), len(b)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        row, up, ai = table[i], table[i - 1], a[i - 1]
        for j in range(1, m + 1):
            if ai == b[j - 1]:
                row[j] = up[j - 1] + 1
            elif row[j - 1] > up[j]:
                row[j] = row[j - 1]
            else:
                row[j] = up[j]
    pairs: list[tuple[int, int]] = []
    i, j = n - 1, m - 1
    while len(pairs) < table[n][m]:
        if a[i] == b[j]:
            pairs.append((i, j))
            i, j = i - 1, j - 1
        elif table[i + 1][j] > table[i][j + 1]:
            j -= 1
        else:
            i -= 1
    return pairs[::-1]


def copy_labels(source: Sequence, target: Sequence) -> tuple[list[int], list[int]]:
    """BIO copy labels of source and target tokens from their LCS (module docstring)."""
    src, tgt = [O] * len(source), [O] * len(target)
    i0 = j0 = -2
    for i, j in lcs(source, target):
        label = I if (i == i0 + 1 and j == j0 + 1) else B
        src[i] = tgt[j] = label
        i0, j0 = i, j
    return src, tgt


# ---- lead-bias-free documents ---------------------------------------------------------------------
def clause_permutation(clauses: Sequence[str], seed: int) -> list[int]:
    """A permutation of range(len(clauses)) fixed by `seed` and the clauses' text: index i goes to
    the rank of BLAKE2b(seed, document digest, i) among the document's keys. Hash-keyed rather
    than drawn from `random`, so it depends on nothing but (seed, clauses): not on the order the
    documents are read in, the process, or the Python version. Distinct keys make it a
    permutation; every order is equally likely as far as the hash is uniform."""
    import hashlib

    doc = hashlib.blake2b(digest_size=16)
    for c in clauses:
        doc.update(c.encode("utf-8", "surrogatepass") + b"\x00")
    digest = doc.digest()

    def key(i: int) -> bytes:
        return hashlib.blake2b(f"{seed}\x00{i}".encode() + digest, digest_size=16).digest()

    return sorted(range(len(clauses)), key=lambda i: (key(i), i))


def shuffle_clauses(clauses: Sequence[str], seed: int) -> list[str]:
    """The clauses in the order `clause_permutation(clauses, seed)` gives."""
    return [clauses[i] for i in clause_permutation(clauses, seed)]


def shuffled_document(text: str, seed: int, *, max_clauses: int) -> str:
    """`text` with its clause order shuffled: the first `max_clauses` clauses of `split_clauses`
    (the post's set \\n。；：，, the separators staying with their clause; what the pipeline
    reads), permuted by `shuffle_clauses` and joined by newlines. A newline always ends a clause,
    so `split_clauses` of the result gives back exactly the permuted clauses (no two merge, even
    where a clause ended a line without punctuation), and the pipeline and truncation read the
    same characters as in the natural order, only in another order."""
    return "\n".join(shuffle_clauses(split_clauses(text)[:max_clauses], seed))
