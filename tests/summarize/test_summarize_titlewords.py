"""The title-word feature group of the SPACES extractor (issue 22) and density-ordered window filling."""

import math

import pytest
import torch

from genloom.errors import UserError
from genloom.tasks.summarize.config import SummarizeConfig
from genloom.tasks.summarize.extract import ExtractorConfig, cross_fit
from genloom.tasks.summarize.features import extraction_features, feature_dim
from genloom.tasks.summarize.pipeline import select_clauses
from genloom.tasks.summarize.titlewords import TITLEWORDS_DIM, TitleWordModel, cross_features, word_features

TOPICS = ["足球", "音乐", "电影", "股票", "天气", "手机", "汽车", "医院", "学校", "银行", "火车", "咖啡"]
FILLERS = ["我们", "今天", "他们", "已经", "非常", "可以", "没有", "现在", "因为", "所以", "但是", "如果"]


def _pairs(n_docs=40, seed=0):
    """Documents whose summary is the one clause holding all three of the document's topic words;
    the other clauses hold one topic word and two fillers (never in a summary). Returns documents
    (clause lists), summaries and the summary clause's index."""
    g = torch.Generator().manual_seed(seed)

    def pick(pool, k):
        return [pool[int(i)] for i in torch.randperm(len(pool), generator=g)[:k]]

    docs, summaries, positive = [], [], []
    for _ in range(n_docs):
        topic = pick(TOPICS, 3)
        n = int(torch.randint(5, 9, (1,), generator=g))
        pos = int(torch.randint(0, n, (1,), generator=g))
        docs.append([" ".join(topic) if i == pos else " ".join([topic[i % 3], *pick(FILLERS, 2)]) for i in range(n)])
        summaries.append("".join(topic))
        positive.append(pos)
    return docs, summaries, positive


def test_word_features_by_hand():
    from collections import Counter

    clauses = ["苹果 香蕉", "苹果", "西瓜 3"]
    df, hits = Counter({"苹果": 4, "香蕉": 1}), Counter({"苹果": 3})
    words, x = word_features(clauses, df, hits, n_docs=9)
    assert words == ["3", "苹果", "西瓜", "香蕉"]
    apple = x[words.index("苹果")].tolist()
    want = [math.log((3 + 0.025) / (4 + 0.5)), math.log1p(2), 2 / 3, math.log(10 / 5) + 0.0, 2 / 4, 0.0, 0.0]
    assert apple == pytest.approx(want, abs=1e-6)
    three = x[words.index("3")].tolist()
    assert three == pytest.approx([math.log(0.025 / 0.5), math.log1p(1), 1 / 3, math.log(10), 1 / 4, 1.0, 1.0],
                                  abs=1e-6)


def test_the_model_learns_which_words_summaries_reuse():
    docs, summaries, positive = _pairs()
    model = TitleWordModel.fit(docs, summaries, folds=4)
    new_docs, _, new_pos = _pairs(n_docs=20, seed=1)
    hit = 0
    for doc, pos in zip(new_docs, new_pos):
        p = model.word_probabilities(doc)
        topic = set(doc[pos].split())
        assert min(p[w] for w in topic) > max(p[w] for w in p if w not in topic)
        feats = model.clause_features(doc)
        assert feats.shape == (len(doc), TITLEWORDS_DIM)
        hit += int(feats[:, 0].argmax()) == pos  # a / L: the share of the clause a summary reuses
    assert hit == len(new_docs)


def test_cross_features_never_read_a_documents_own_summary():
    docs, summaries, _ = _pairs()
    before = cross_features(docs, summaries, folds=4)
    changed = list(summaries)
    changed[6] = "我们今天已经"  # fillers only: document 6's own summary now rewards other words
    after = cross_features(docs, changed, folds=4)
    assert torch.equal(before[6], after[6])
    # the change does reach the documents of the other folds (their models count document 6)
    assert any(not torch.equal(before[i], after[i]) for i in range(len(docs)) if i % 4 != 6 % 4)
    # and the documents of fold 6 % 4 read the same models either way
    assert all(torch.equal(before[i], after[i]) for i in range(len(docs)) if i % 4 == 6 % 4)


def test_save_and_load_give_the_same_features(tmp_path):
    docs, summaries, _ = _pairs()
    model = TitleWordModel.fit(docs, summaries, folds=4)
    model.save(tmp_path)
    again = TitleWordModel.load(tmp_path)
    for doc in _pairs(n_docs=5, seed=2)[0]:
        assert torch.equal(model.clause_features(doc), again.clause_features(doc))


def test_an_extractor_on_title_words_finds_the_summary_clause(tmp_path):
    docs, summaries, positive = _pairs(n_docs=45)
    rows = cross_features(docs, summaries, folds=3)
    empty = [torch.zeros(len(d), 0) for d in docs]
    feats = extraction_features(("titlewords",), docs, empty, None, titleword_rows=rows)
    assert [f.shape[1] for f in feats] == [feature_dim(("titlewords",), 0, 0)] * len(docs)
    cfg = ExtractorConfig(hidden=16, folds=3, epochs=10, batch_size=8, lr=5e-3, features=("titlewords",))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fitted = cross_fit(feats, [[p] for p in positive], cfg, run_dir=tmp_path, progress=False)
    finally:
        torch.set_num_threads(threads)
    share = sum(int(p.argmax()) == y for p, y in zip(fitted.probabilities, positive)) / len(docs)
    assert share >= 0.9, share
    with pytest.raises(ValueError, match="TitleWordModel"):
        extraction_features(("titlewords",), docs, empty, None)


def test_fit_errors():
    docs, summaries, _ = _pairs(n_docs=6)
    with pytest.raises(ValueError, match="summaries"):
        TitleWordModel.fit(docs, summaries[:-1])
    with pytest.raises(UserError, match="at least 5 training documents"):
        TitleWordModel.fit(docs[:3], summaries[:3], folds=5)


def test_density_fills_the_window_by_probability_per_character():
    clauses = ["一" * 10, "二" * 2, "三" * 5]
    probs = [0.9, 0.5, 0.6]
    # by probability: the 10-character clause first, and it alone fills a 7-character window
    assert select_clauses(clauses, probs, window=7, threshold=0.0, fill=False) == [0]
    # per character (0.09, 0.25, 0.12): the two short clauses fit, 7 characters
    assert select_clauses(clauses, probs, window=7, threshold=0.0, fill=False, density=1.0) == [1, 2]
    # at 0.5: 0.28, 0.35, 0.27: clause 1, then clause 0 does not fit, then clause 2
    assert select_clauses(clauses, probs, window=7, threshold=0.0, fill=False, density=0.5) == [1, 2]
    # the threshold still reads the probability: clause 1 (0.5) is below 0.55, so only the best is taken
    assert select_clauses(clauses, probs, window=30, threshold=0.55, fill=False, density=1.0) == [0, 2]
    with pytest.raises(UserError, match="extract_density"):
        SummarizeConfig(extract_density=3.0)
