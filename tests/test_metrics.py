"""Metrics against hand-computed values, a brute-force ROUGE and the reference libraries."""

import math
import random
from collections import Counter

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from genloom.metrics import (bits_per_dim, bleu, cail_score, char_tokens, distinct_n,
                             perplexity, repeated_ngram_rate, rouge, rouge_l, rouge_per_pair,
                             word_tokens)


def _lcs(a, b) -> int:
    """Textbook O(len(a) len(b)) dynamic programme."""
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = (table[i][j] + 1 if x == y
                                   else max(table[i][j + 1], table[i + 1][j]))
    return table[-1][-1]


def _f1(overlap: int, n_pred: int, n_ref: int) -> float:
    return 0.0 if overlap == 0 else 100 * 2 * overlap / (n_pred + n_ref)


def _brute_rouge(pred: str, ref: str) -> dict[str, float]:
    p, r = char_tokens(pred), char_tokens(ref)
    out = {}
    for n in (1, 2):
        gp = Counter(tuple(p[i:i + n]) for i in range(len(p) - n + 1))
        gr = Counter(tuple(r[i:i + n]) for i in range(len(r) - n + 1))
        out[f"rouge-{n}"] = _f1(sum((gp & gr).values()), sum(gp.values()), sum(gr.values()))
    out["rouge-l"] = _f1(_lcs(p, r), len(p), len(r))
    return out


def test_char_tokens_keep_chinese_and_punctuation():
    assert char_tokens("Ab，c 中文\t!") == ["a", "b", "，", "c", "中", "文", "!"]
    # rouge-score's own tokenizer would score Chinese as 0: the reason for ours
    assert rouge_scorer.RougeScorer(["rouge1"]).score("北京天安门", "北京天安门")["rouge1"].fmeasure == 0


def test_rouge_char_by_hand():
    r = rouge(["我爱北京天安门"], ["北京天安门很美"])
    # unigrams: 5 of 7 shared; bigrams: 北京 京天 天安 安门 = 4 of 6; LCS 北京天安门 = 5
    assert r == pytest.approx({"rouge-1": 500 / 7, "rouge-2": 400 / 6, "rouge-l": 500 / 7})
    assert rouge(["", "abc"], ["abc", "abc"])["rouge-l"] == pytest.approx(50.0)


def test_rouge_equals_brute_force_on_random_strings():
    rng = random.Random(0)
    alphabet = "的一是在不了有人这中，。"
    preds = ["".join(rng.choices(alphabet, k=rng.randint(0, 30))) for _ in range(60)]
    refs = ["".join(rng.choices(alphabet, k=rng.randint(1, 30))) for _ in range(60)]
    rows = rouge_per_pair(preds, refs)
    for pred, ref, row in zip(preds, refs, rows):
        assert row == pytest.approx(_brute_rouge(pred, ref))
        assert rouge_l(pred, ref) == pytest.approx(row["rouge-l"])
    mean = rouge(preds, refs)
    assert mean["rouge-2"] == pytest.approx(sum(r["rouge-2"] for r in rows) / 60)


def test_rouge_recall_and_precision_equal_brute_force():
    """measure="recall": the reference's n-grams (clipped counts) found in the prediction, over the
    reference's; "precision" the same over the prediction's."""
    rng = random.Random(1)
    alphabet = "的一是在不了有人这中"
    for _ in range(40):
        pred = "".join(rng.choices(alphabet, k=rng.randint(2, 25)))
        ref = "".join(rng.choices(alphabet, k=rng.randint(2, 25)))
        p, r = char_tokens(pred), char_tokens(ref)
        for n in (1, 2):
            gp = Counter(tuple(p[i:i + n]) for i in range(len(p) - n + 1))
            gr = Counter(tuple(r[i:i + n]) for i in range(len(r) - n + 1))
            hit = sum((gp & gr).values())
            rec = rouge_per_pair([pred], [ref], measure="recall")[0][f"rouge-{n}"]
            prec = rouge_per_pair([pred], [ref], measure="precision")[0][f"rouge-{n}"]
            assert rec == pytest.approx(100 * hit / sum(gr.values()))
            assert prec == pytest.approx(100 * hit / sum(gp.values()))
    with pytest.raises(ValueError, match="measure must be"):
        rouge_per_pair(["a"], ["a"], measure="f1")


def test_word_level_uses_jieba():
    assert word_tokens("我爱北京天安门") == ["我", "爱", "北京", "天安门"]
    r = rouge(["我爱北京天安门"], ["我爱北京"], level="word")
    # 3 of 4 words shared (P 3/4, R 3/3); bigrams 我爱 爱北京 = 2 of 3 and 2; LCS 3
    assert r == pytest.approx({"rouge-1": 600 / 7, "rouge-2": 400 / 5, "rouge-l": 600 / 7})
    assert cail_score(["我爱北京天安门"], ["我爱北京"]) == pytest.approx(
        0.2 * 600 / 7 + 0.4 * 80 + 0.4 * 600 / 7)


def test_bleu_by_hand_and_against_sacrebleu():
    # the prediction is a prefix of the reference: every n-gram precision is 1, only the brevity
    # penalty exp(1 - 9/7) remains
    assert bleu(["我爱北京天安门"], ["我爱北京天安门很美"]) == pytest.approx(100 * math.exp(1 - 9 / 7))
    preds, refs = ["今天天气很好", "他去了学校", "a cat sat"], ["今天天气不错", "他去学校了", "the cat sat"]
    assert bleu(preds, refs) == pytest.approx(
        sacrebleu.corpus_bleu(preds, [refs], tokenize="zh").score)
    assert bleu(["the cat sat on it"], ["the cat sat on it"], tokenize="13a") == pytest.approx(100)


def test_distinct_and_repetition_by_hand():
    assert distinct_n(["aab", "ab"], 1) == pytest.approx(2 / 5)
    assert distinct_n(["aab", "ab"], 2) == pytest.approx(2 / 3)  # aa ab ab
    assert distinct_n(["a"], 2) == 0.0
    assert repeated_ngram_rate(["abcabc", "abcd", "xyxyx"], n=2) == pytest.approx(2 / 3)
    assert repeated_ngram_rate(["abcabc"], n=4) == 0.0  # abca bcab cabc
    assert repeated_ngram_rate(["我们我们我们"], n=4) == 1.0
    assert repeated_ngram_rate([]) == 0.0


def test_likelihood_units():
    assert perplexity(math.log(50.0)) == pytest.approx(50.0)
    assert bits_per_dim(784 * math.log(2.0), dims=784) == pytest.approx(1.0)


def test_argument_errors():
    with pytest.raises(ValueError, match="1 predictions but 2 references"):
        rouge(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="level"):
        rouge(["a"], ["a"], level="byte")
    with pytest.raises(TypeError):
        bleu("abc", "abc")
    with pytest.raises(ValueError):
        distinct_n(["abc"], 0)
