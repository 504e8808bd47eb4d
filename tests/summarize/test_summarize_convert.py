"""SPACES conversion (tasks/summarize/convert.py): clauses, greedy alignment, LCS copy labels."""

import itertools
import random

import pytest

from genloom.decode.copy import B, I, O
from genloom.metrics import rouge_per_pair
from genloom.tasks.summarize.convert import (SEPARATORS, align, char_score, copy_labels, extraction_labels, lcs,
                                             split_clauses)


def _bert4keras_segmentate(text, maxlen, seps="\n", strips=None):
    """bert4keras.snippets.text_segmentate, the post's splitter (reference for the tests)."""
    text = text.strip().strip(strips)
    if seps and len(text) > maxlen:
        pieces = text.split(seps[0])
        text, texts = "", []
        for i, p in enumerate(pieces):
            if text and p and len(text) + len(p) > maxlen - 1:
                texts.extend(_bert4keras_segmentate(text, maxlen, seps[1:], strips))
                text = ""
            text = text + p if i + 1 == len(pieces) else text + p + seps[0]
        if text:
            texts.extend(_bert4keras_segmentate(text, maxlen, seps[1:], strips))
        return texts
    return [text]


def test_split_clauses_hand_made():
    assert split_clauses("今天天气很好，我们去公园。公园里：人很多；\n花也多") == [
        "今天天气很好，", "我们去公园。", "公园里：", "人很多；", "花也多"]
    assert split_clauses("好，，坏。\n\n  \n") == ["好，，", "坏。"]  # a run of separators stays together
    assert split_clauses(" 甲 \n 乙 ") == ["甲", "乙"]
    assert split_clauses("") == [] and split_clauses(" \n ") == []
    assert split_clauses("没有标点的一句话") == ["没有标点的一句话"]
    # only the post's set splits
    assert split_clauses("12.5万元，涨3.2%！好") == ["12.5万元，", "涨3.2%！好"]


def test_split_clauses_equals_the_posts_splitter_when_separators_are_not_adjacent():
    rng = random.Random(0)
    alphabet = "甲乙丙丁 ab" + SEPARATORS
    checked = 0
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 25)))
        if any(a in SEPARATORS and b in SEPARATORS + " " for a, b in zip(text, text[1:])):
            continue  # runs like "。，" are one clause here, split in two by bert4keras (module docstring)
        want = [t for t in _bert4keras_segmentate(text, 1, SEPARATORS) if t]
        assert split_clauses(text) == want, text
        checked += 1
    assert checked > 300


def test_split_clauses_properties():
    rng = random.Random(1)
    for _ in range(500):
        text = "".join(rng.choice("甲乙 \n，。；：") for _ in range(rng.randrange(0, 30)))
        clauses = split_clauses(text)
        assert "".join("".join(clauses).split()) == "".join(text.split())  # nothing but whitespace is lost
        assert all("\n" not in c for c in clauses)
        for c in clauses:
            body = c.rstrip(SEPARATORS)
            assert c == c.strip() and not any(ch in SEPARATORS for ch in body)


def test_char_score_by_hand():
    # 我们去公园 vs 去公园看花: unigram F 3/5, bigram F 2/4, LCS F 3/5
    assert char_score("我们去公园", "去公园看花") == pytest.approx(0.2 * 60 + 0.4 * 50 + 0.4 * 60)
    assert char_score("", "去公园") == 0.0
    # reversed: unigram F 100, no bigram, LCS 1 of 4 (F 25): the three weights are told apart
    assert char_score("甲乙丙丁", "丁丙乙甲") == pytest.approx(0.2 * 100 + 0.4 * 0 + 0.4 * 25)
    r = rouge_per_pair(["甲乙丙"], ["乙丙丁"], level="char")[0]
    want = 0.2 * r["rouge-1"] + 0.4 * r["rouge-2"] + 0.4 * r["rouge-l"]
    assert char_score("甲乙丙", "乙丙丁") == pytest.approx(want)


def test_align_hand_made():
    texts = ["今天天气很好，", "我们去公园散步，", "看到很多花。"]
    assert align(texts, ["去公园看花"]) == [(0, 1)]
    # longest summary sentence first (ties: the first), then the rest within the clauses after it
    assert align(texts, ["天气很好，", "看到很多花"]) == [(0, 0), (1, 2)]
    # the sentence before the longest one may only use the clauses up to its match
    assert align(texts, ["看到很多花，", "今天天气很好啊"]) == [(0, 0), (1, 0)]
    assert align([], ["甲"]) == [] and align(["甲"], []) == []
    assert extraction_labels(texts, "天气很好，看到很多花") == [0, 2]


def test_align_recursion_matches_the_definition_on_random_cases():
    """A brute re-statement of the recursion: each pair's clause is the best within the range
    that the pairs to its left and right leave, and the longest summary is placed first."""
    rng = random.Random(2)
    for _ in range(30):
        def word():
            return "".join(rng.choice("甲乙丙丁戊") for _ in range(rng.randrange(1, 5)))

        texts = [word() for _ in range(rng.randrange(1, 6))]
        summaries = [word() for _ in range(rng.randrange(1, 4))]
        pairs = align(texts, summaries)
        assert [i for i, _ in pairs] == list(range(len(summaries)))  # every summary sentence, in order
        js = [j for _, j in pairs]
        assert js == sorted(js)  # monotone in the document
        i = max(range(len(summaries)), key=lambda k: (len(summaries[k]), -k))
        scores = [char_score(t, summaries[i]) for t in texts]
        assert js[i] == scores.index(max(scores))


def _lcs_length(a, b):
    best = 0
    for r in range(len(a) + 1):
        for idx in itertools.combinations(range(len(a)), r):
            sub = [a[k] for k in idx]
            it = iter(b)
            if all(any(x == y for y in it) for x in sub):
                best = max(best, r)
    return best


def test_lcs_against_brute_force():
    rng = random.Random(3)
    for _ in range(150):
        a = [rng.randrange(3) for _ in range(rng.randrange(0, 8))]
        b = [rng.randrange(3) for _ in range(rng.randrange(0, 8))]
        pairs = lcs(a, b)
        assert len(pairs) == _lcs_length(a, b)
        assert all(a[i] == b[j] for i, j in pairs)
        assert all(i1 < i2 and j1 < j2 for (i1, j1), (i2, j2) in zip(pairs, pairs[1:]))


def test_copy_labels_hand_made():
    src, tgt = copy_labels("abcxde", "bcde")
    assert src == [O, B, I, O, B, I] and tgt == [B, I, B, I]
    src, tgt = copy_labels("abc", "xyz")
    assert src == [O, O, O] and tgt == [O, O, O]
    src, tgt = copy_labels("马兰屯镇政府", "马兰屯政府")
    assert tgt == [B, I, I, B, I] and src == [B, I, I, O, B, I]
