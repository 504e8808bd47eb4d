"""Scoring of conditional generators: controllability on a hand-counted example (never above
1), the 20-character copy check against brute force, the judge's padding invariance, its bag
branch by hand, and its accuracy on the synthetic test split."""

from __future__ import annotations

import json
import random

import pytest
import torch

from genloom.errors import UserError
from genloom.models.judge import CharCNNJudge, JudgeConfig, classify, encode_texts
from genloom.tasks.condition import CopyIndex, controllability
from genloom.tokenizers import CharTokenizer


def test_controllability_on_a_hand_counted_example():
    probs = torch.tensor([[0.9, 0.1, 0.0],   # argmax 0
                          [0.2, 0.7, 0.1],   # argmax 1
                          [0.3, 0.3, 0.4],   # argmax 2
                          [0.5, 0.4, 0.1],   # argmax 0
                          [0.1, 0.1, 0.8]])  # argmax 2
    # asked for 0, 1, 1, 0, 0: rows 0, 1 and 3 agree -> 3 of 5
    assert controllability(probs, [0, 1, 1, 0, 0]) == pytest.approx(3 / 5)
    assert controllability(probs, 2) == pytest.approx(2 / 5)  # one label for all: rows 2 and 4
    assert controllability(probs, [0, 1, 2, 0, 2]) == 1.0
    assert controllability(probs, [1, 0, 0, 2, 1]) == 0.0


def test_controllability_never_exceeds_one():
    g = torch.Generator().manual_seed(0)
    for n, k in ((1, 2), (7, 3), (250, 5)):
        probs = torch.rand(n, k, generator=g).softmax(-1)
        for requested in (torch.randint(0, k, (n,), generator=g).tolist(), probs.argmax(1).tolist(), 0):
            assert 0.0 <= controllability(probs, requested) <= 1.0
        assert controllability(probs, probs.argmax(1).tolist()) == 1.0
    with pytest.raises(UserError, match="N >= 1"):
        controllability(torch.zeros(0, 2), [])


def test_copy_index_equals_brute_force():
    rng = random.Random(1)
    corpus = ["".join(rng.choice("abc") for _ in range(rng.randint(0, 30))) for _ in range(40)]
    index = CopyIndex(corpus, span=6)
    for _ in range(300):
        text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 14)))
        windows = [text[i : i + 6] for i in range(len(text) - 5)]
        brute = next((w for w in windows if any(w in t for t in corpus)), None)
        assert index.copied_span(text) == brute
    # a span across two training texts is not a copy
    assert CopyIndex(["xxabc", "defyy"], span=6).copied_span("abcdef") is None


def test_judge_ignores_padding():
    torch.manual_seed(0)
    tok = CharTokenizer.train(["好坏差美棒一二三四五"])
    judge = CharCNNJudge(JudgeConfig(vocab_size=tok.vocab_size, d_emb=8, channels=5, kernel_sizes=(2, 5))).eval()
    texts = ["好坏差美棒一二三四五", "好", "坏差美", "三四五五五五"]
    batch = judge(encode_texts(tok, texts, 64))  # (4, K), rows padded to 10
    for i, t in enumerate(texts):
        alone = judge(encode_texts(tok, [t], 64))[0]  # no padding (a 1-char text is padded to 5)
        torch.testing.assert_close(batch[i], alone, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(classify(judge, tok, texts), batch.softmax(-1), atol=1e-6, rtol=1e-6)


def test_judge_bag_is_a_linear_model_over_chars_and_hashed_bigrams():
    torch.manual_seed(0)
    tok = CharTokenizer.train(["好坏差美棒一二三四五"])
    cfg = JudgeConfig(vocab_size=tok.vocab_size, d_emb=8, channels=5, kernel_sizes=(2,), bag_buckets=7, bag_scale=3.0)
    judge = CharCNNJudge(cfg)
    assert not judge.bag.weight.any()  # zero-initialised: the judge starts as the CNN alone
    with torch.no_grad():
        judge.bag.weight.normal_()
    texts = ["好坏差美棒", "一"]
    ids = encode_texts(tok, texts, 64)
    got = judge.bag_logits(ids, ids != 0)  # (2, K)
    v = tok.vocab_size
    for i, text in enumerate(texts):
        chars = tok.encode(text)
        rows = chars + [v + (a * v + b) % 7 for a, b in zip(chars, chars[1:])]
        want = 3.0 * judge.bag.weight[rows].sum(0) / len(rows) ** 0.5
        torch.testing.assert_close(got[i], want)
    judge.eval()
    torch.testing.assert_close(judge(ids), judge.out(judge.features(ids)) + got)


def test_judge_is_accurate_on_the_synthetic_test_split(trained):
    meta = json.loads((trained / "judge" / "condition.json").read_text())
    assert meta["test_size"] > 0 and meta["test_accuracy"] == 1.0
