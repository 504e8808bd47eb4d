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

import torch
from torch import Tensor
from torch.utils.data import Dataset

from genloom.data import corpus_info, load_corpus, read_pairs
from genloom.errors import UserError
from genloom.tokenizers import CharTokenizer

Pair = tuple[str, str]  # (article, title)
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Collapse whitespace runs to one space and strip the ends."""
    return _SPACE.sub(" ", text).strip()


def corpus_pairs(name: str, split: str) -> list[Pair]:
    """(content, title) pairs of one split of a named corpus with titles (inews)."""
    info = corpus_info(name)
    if not {"content", "title"} <= set(info.fields):
        raise UserError(f"corpus {name!r} has no (content, title) pairs; use inews or --data FILE")
    return [(r["content"], r["title"]) for r in load_corpus(name, split)]


def file_pairs(path: str, *, source: str, target: str, fmt: str | None = None) -> list[Pair]:
    """(source, target) pairs of a user file (JSONL / CSV / TSV / TXT with named fields)."""
    return read_pairs(path, source=source, target=target, fmt=fmt)


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


def pad(rows: Sequence[Sequence[int]], pad_id: int) -> Tensor:
    """Right-pad id lists into (B, max len) long."""
    out = torch.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=torch.long)
    for b, r in enumerate(rows):
        out[b, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


class Collate:
    """Batch of (source, title) items -> {"src" (B, S), "tgt_in" (B, T-1), "tgt_out" (B, T-1)};
    a class (not a closure) so DataLoader workers can pickle it."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: Sequence[tuple[list[int], list[int]]]) -> dict[str, Tensor]:
        src = pad([s for s, _ in items], self.pad_id)  # (B, S)
        tgt = pad([t for _, t in items], self.pad_id)  # (B, T)
        return {"src": src, "tgt_in": tgt[:, :-1], "tgt_out": tgt[:, 1:]}


def encode_sources(articles: Sequence[str], tokenizer: CharTokenizer, *, max_source_len: int
                   ) -> tuple[Tensor, int]:
    """Articles -> right-padded source ids (B, S) and the number that were cut. An article that is
    empty after normalisation is a UserError (callers check per line first)."""
    rows, cut = [], 0
    for a in articles:
        text = normalise(a)
        if not text:
            raise UserError("empty article")
        cut += len(text) > max_source_len
        rows.append(tokenizer.encode(text[:max_source_len]))
    return pad(rows, tokenizer.pad_id), cut
