"""Data for the title task: (article, title) pairs from a named corpus or a user file, the char
tokenizer, truncation with a count, and batches for both architectures.

Letters: B batch rows, S source length, T target length (title + bos/eos).

Articles are normalised the same way at training and generation time: every run of whitespace
becomes one space and the ends are stripped (contents are full of blank lines and indents, which
would waste the source window; char ROUGE ignores whitespace anyway). The source is then cut to
its first `max_source_len` characters (news puts the gist first); `truncate` reports how many were
cut so the CLI can warn.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor
from torch.utils.data import Dataset

from genloom.data import corpus_pairs, read_pairs
from genloom.errors import UserError
from genloom.tokenizers import CharTokenizer
from genloom.train.lm import pad_rows

Pair = tuple[str, str]  # (article, title)
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Collapse whitespace runs to one space and strip the ends."""
    return _SPACE.sub(" ", text).strip()


def task_pairs(corpus: str, split: str, data: str | None = None, *, source: str = "content",
               target: str = "title", fmt: str | None = None) -> tuple[list[Pair], str]:
    """(article, title) pairs and a line naming them: the user file `data` (JSONL / CSV / TSV /
    TXT with fields `source` and `target`) when given, else one split of a named corpus."""
    if data is not None:
        return read_pairs(data, source=source, target=target, fmt=fmt), f"{data} ({source} -> {target})"
    return corpus_pairs(corpus, split), f"{corpus} {split}"


def hold_out(pairs: Sequence[Pair], n: int, *, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Split off `n` pairs (chosen by `seed`) as a dev set: (train, dev). At least one pair is
    always left for training."""
    if len(pairs) < 2:
        raise UserError(f"need at least 2 pairs to hold out a dev set, got {len(pairs)}")
    n = max(1, min(n, len(pairs) // 10 if len(pairs) >= 20 else 1))
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    dev = set(order[:n])
    return [p for i, p in enumerate(pairs) if i not in dev], [pairs[i] for i in sorted(dev)]


def build_tokenizer(texts: Sequence[str], *, min_count: int) -> CharTokenizer:
    """A CharTokenizer over normalised `texts` (ids by frequency: 0-3 specials, then chars)."""
    return CharTokenizer.train((normalise(t) for t in texts), min_count=min_count)


@dataclass
class Truncation:
    """How many texts were cut, to warn about."""

    sources: int = 0  # sources longer than max_source_len
    targets: int = 0  # titles longer than max_title_len
    total: int = 0  # pairs seen

    def message(self, max_source_len: int, max_title_len: int) -> str | None:
        """A one-line warning, or None when nothing was cut."""
        parts = []
        if self.sources:
            parts.append(f"{self.sources} of {self.total} articles were cut to their first "
                         f"{max_source_len} characters")
        if self.targets:
            parts.append(f"{self.targets} of {self.total} titles to {max_title_len}")
        return "warning: " + "; ".join(parts) if parts else None


class PairDataset(Dataset):
    """Encoded pairs: item i is (source ids, title ids with bos ... eos)."""

    def __init__(self, pairs: Sequence[Pair], tokenizer: CharTokenizer, *, max_source_len: int,
                 max_title_len: int) -> None:
        self.items: list[tuple[list[int], list[int]]] = []
        self.cut = Truncation()
        for article, title in pairs:
            src, tgt = normalise(article), normalise(title)
            self.cut.total += 1
            self.cut.sources += len(src) > max_source_len
            self.cut.targets += len(tgt) > max_title_len
            ids = tokenizer.encode(src[:max_source_len])
            if not ids:
                continue
            self.items.append((ids, tokenizer.encode(tgt[:max_title_len], add_bos=True,
                                                     add_eos=True)))
        if not self.items:
            raise UserError("no usable (article, title) pairs: every article is empty")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[list[int], list[int]]:
        return self.items[i]

    def lengths(self) -> list[int]:
        """Source + title length of each item, for length bucketing."""
        return [len(s) + len(t) for s, t in self.items]


class Collate:
    """Batch of (source, title) items -> {"src" (B, S), "tgt_in" (B, T-1), "tgt_out" (B, T-1)};
    a class (not a closure) so DataLoader workers can pickle it."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: Sequence[tuple[list[int], list[int]]]) -> dict[str, Tensor]:
        src = pad_rows([s for s, _ in items], self.pad_id)  # (B, S)
        tgt = pad_rows([t for _, t in items], self.pad_id)  # (B, T)
        return {"src": src, "tgt_in": tgt[:, :-1], "tgt_out": tgt[:, 1:]}

