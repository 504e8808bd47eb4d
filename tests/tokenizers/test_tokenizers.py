"""CharTokenizer and BPETokenizer on hand-made texts: ids, specials, unk, batches, bytes, files."""

from __future__ import annotations

import json
import random

import pytest
import torch
from tokenizers import pre_tokenizers

from genloom.errors import UserError
from genloom.tokenizers import BPETokenizer, CharTokenizer, load_tokenizer
from genloom.tokenizers.base import MANIFEST, bytelevel_to_bytes, bytes_to_unicode

TEXTS = [
    "广州的白云机场很大。",
    "  leading and trailing spaces  ",
    "multiple   spaces\tand\ttabs\n\nnewlines\r\nCRLF",
    "emoji 😀 and 𝔘 astral, combining e\u0301 vs \u00e9, NFKC ﬁ ①",
    "今天天气很好，我们去公园玩。<eos> is text here, so is <pad>",
    "",
    "\n",
    " ",
    "数字123和English混合 mixed",
]


def random_text(rng: random.Random, n: int) -> str:
    """Random text over ASCII, whitespace, CJK, astral and combining characters."""
    pools = [
        "abcdefghij ABC.,!?'\"<>/",
        " \t\n\r",
        "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动",
        "😀𝔘🀄\u0301\u200b\ufeff\x00\x7f",
    ]
    return "".join(rng.choice(rng.choice(pools)) for _ in range(n))


@pytest.fixture(scope="module")
def char_tok() -> CharTokenizer:
    return CharTokenizer.train(TEXTS)


@pytest.fixture(scope="module")
def bpe_tok() -> BPETokenizer:
    rng = random.Random(0)
    texts = TEXTS * 20 + [random_text(rng, 200) for _ in range(200)]
    return BPETokenizer.train(texts, vocab_size=600, min_frequency=2)


# ---- CharTokenizer ------------------------------------------------------------------------


def test_char_specials_are_separate_ids(char_tok: CharTokenizer) -> None:
    assert (char_tok.pad_id, char_tok.unk_id, char_tok.bos_id, char_tok.eos_id) == (0, 1, 2, 3)
    assert char_tok.special_ids == frozenset({0, 1, 2, 3})
    assert [char_tok.id_to_token(i) for i in range(4)] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    assert char_tok.token_to_id("<eos>") == 3 and char_tok.token_to_id("<") is not None
    ids = char_tok.encode("白云", add_bos=True, add_eos=True)
    assert ids[0] == 2 and ids[-1] == 3 and len(ids) == 4
    assert char_tok.decode(ids) == "白云"
    assert char_tok.decode(ids, skip_special=False) == "<bos>白云<eos>"
    # a text spelling a special token is encoded character by character
    assert char_tok.encode("<eos>") == [char_tok.token_to_id(c) for c in "<eos>"]


def test_asking_for_a_missing_bos_or_eos_is_a_user_error(char_tok: CharTokenizer) -> None:
    """The shared bos/eos wrapping names the missing token instead of inserting None."""
    import copy

    tok = copy.copy(char_tok)
    tok.bos_id = None
    assert tok.encode("白云", add_eos=True) == char_tok.encode("白云", add_eos=True)
    with pytest.raises(UserError, match="no bos token"):
        tok.encode("白云", add_bos=True)
    tok.eos_id = None
    with pytest.raises(UserError, match="no eos token"):
        tok.encode_many(["白云"], add_eos=True)


def test_char_order_is_frequency_then_codepoint() -> None:
    tok = CharTokenizer.train(["bbbaac", "ca", "d"])  # a:3 b:3 c:2 d:1
    assert [tok.id_to_token(i) for i in range(4, tok.vocab_size)] == ["a", "b", "c", "d"]
    assert CharTokenizer.train(["ca", "d", "bbbaac"]).encode("abcd") == tok.encode("abcd")


def test_char_round_trip_and_bytes(char_tok: CharTokenizer) -> None:
    for text in TEXTS:
        ids = char_tok.encode(text)
        assert char_tok.unk_id not in ids
        assert char_tok.decode(ids) == text
        assert b"".join(char_tok.token_bytes(i) for i in ids) == text.encode("utf-8")
    assert all(char_tok.token_bytes(i) == b"" for i in char_tok.special_ids)


def test_char_min_count_and_max_size_make_unk() -> None:
    texts = ["aaab", "aab", "c"]  # a:5 b:2 c:1
    tok = CharTokenizer.train(texts, min_count=2)
    assert tok.vocab_size == 4 + 2
    assert tok.encode("abcz") == [4, 5, 1, 1]
    assert tok.decode(tok.encode("abcz")) == "ab"  # unk is special: skipped
    assert tok.decode(tok.encode("abcz"), skip_special=False) == "ab<unk><unk>"
    assert CharTokenizer.train(texts, max_size=5).encode("abc") == [4, 1, 1]


def test_char_bad_options() -> None:
    with pytest.raises(UserError, match="min_count"):
        CharTokenizer.train(["a"], min_count=0)
    with pytest.raises(UserError, match="max_size"):
        CharTokenizer.train(["a"], max_size=4)
    with pytest.raises(UserError, match="no text"):
        CharTokenizer.train(["", ""])
    with pytest.raises(UserError, match="outside the vocabulary"):
        CharTokenizer.train(["ab"]).decode([0, 6])
    with pytest.raises(UserError, match="outside the vocabulary"):
        CharTokenizer.train(["ab"]).decode([-1])


# ---- batches --------------------------------------------------------------------------------


def test_encode_batch_pads_right_and_cuts(char_tok: CharTokenizer) -> None:
    texts = ["白云机场", "", "广州"]
    ids, lengths = char_tok.encode_batch(texts, add_bos=True, add_eos=True)
    assert ids.dtype == torch.long and ids.shape == (3, 6)
    assert lengths.tolist() == [6, 2, 4]
    for row, n, text in zip(ids.tolist(), lengths.tolist(), texts):
        assert row[:n] == char_tok.encode(text, add_bos=True, add_eos=True)
        assert row[n:] == [char_tok.pad_id] * (6 - n)
    assert char_tok.decode_batch(ids, lengths) == texts
    cut, cut_len = char_tok.encode_batch(texts, max_len=4, add_bos=True, add_eos=True)
    assert cut_len.tolist() == [4, 2, 4]
    assert cut[0].tolist() == [2, *char_tok.encode("白云"), 3]  # eos kept after the cut
    plain, _ = char_tok.encode_batch(texts, max_len=3)
    assert plain[0].tolist() == char_tok.encode("白云机")
    empty, empty_len = char_tok.encode_batch([])
    assert empty.shape == (0, 0) and empty_len.shape == (0,)
    with pytest.raises(UserError, match="max_len"):
        char_tok.encode_batch(texts, max_len=1, add_bos=True, add_eos=True)


def test_encode_batch_same_for_bpe(bpe_tok: BPETokenizer) -> None:
    texts = TEXTS[:4]
    ids, lengths = bpe_tok.encode_batch(texts, add_eos=True)
    for row, n, text in zip(ids.tolist(), lengths.tolist(), texts):
        assert row[:n] == bpe_tok.encode(text, add_eos=True)
        assert set(row[n:]) <= {bpe_tok.pad_id}
    assert bpe_tok.decode_batch(ids, lengths) == texts


# ---- BPETokenizer ---------------------------------------------------------------------------


def test_byte_alphabet_matches_tokenizers() -> None:
    table = bytes_to_unicode()  # also checked against transformers' copy in test_tokenizers_hf
    assert sorted(table) == list(range(256))
    assert sorted(table.values()) == sorted(pre_tokenizers.ByteLevel.alphabet())
    assert all(table[b] == chr(b) for b in b"azAZ09!~")
    assert bytelevel_to_bytes("Ġhello") == b" hello" and bytelevel_to_bytes("白") is None
    glyph_to_byte = {c: b for b, c in table.items()}
    for c in map(chr, range(0x400)):  # every glyph, and the latin-1 characters that are none (" ")
        assert bytelevel_to_bytes(c) == (bytes([glyph_to_byte[c]]) if c in glyph_to_byte else None)
    assert bytelevel_to_bytes("Ġa b") is None


def test_bpe_specials_and_vocab(bpe_tok: BPETokenizer) -> None:
    assert [bpe_tok.id_to_token(i) for i in range(4)] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    assert bpe_tok.special_ids == frozenset({0, 1, 2, 3})
    assert 260 < bpe_tok.vocab_size <= 600
    # every one of the 256 bytes is a token, so nothing is ever unknown
    pieces = [bpe_tok.token_bytes(i) for i in range(bpe_tok.vocab_size)]
    singles = {b for b in pieces if len(b) == 1}
    assert len(singles) == 256
    ids = bpe_tok.encode("a <eos> b", add_bos=True, add_eos=True)
    assert ids[0] == bpe_tok.bos_id and ids[-1] == bpe_tok.eos_id
    assert bpe_tok.eos_id not in ids[1:-1]  # the literal text "<eos>" is text
    assert bpe_tok.decode(ids) == "a <eos> b"
    assert bpe_tok.decode(ids, skip_special=False) == "<bos>a <eos> b<eos>"


def test_bpe_round_trip_and_token_bytes_on_random_texts(bpe_tok: BPETokenizer) -> None:
    rng = random.Random(1)
    texts = TEXTS + [random_text(rng, rng.randint(0, 300)) for _ in range(300)]
    for text, ids in zip(texts, bpe_tok.encode_many(texts)):
        assert ids == bpe_tok.encode(text)
        assert bpe_tok.unk_id not in ids
        assert bpe_tok.decode(ids) == text
        assert b"".join(bpe_tok.token_bytes(i) for i in ids) == text.encode("utf-8")
    # decoding through token bytes equals the library's decoder, for any id sequence
    for _ in range(200):
        ids = [rng.randrange(4, bpe_tok.vocab_size) for _ in range(rng.randint(1, 12))]
        data = b"".join(bpe_tok.token_bytes(i) for i in ids)
        assert bpe_tok.decode(ids) == data.decode("utf-8", errors="replace")


def test_bpe_learns_merges() -> None:
    tok = BPETokenizer.train(["白云机场 白云山 白云"] * 50, vocab_size=300)
    assert all(tok.token_to_id(tok.id_to_token(i)) == i for i in range(tok.vocab_size))
    assert tok.token_to_id("not a token") is None
    assert len(tok.encode("白云机场")) < len("白云机场".encode())
    assert any(tok.token_bytes(i) == "白云".encode() for i in range(tok.vocab_size))


def test_bpe_training_is_deterministic() -> None:
    texts = TEXTS * 10
    first = BPETokenizer.train(texts, vocab_size=400).backend.to_str()
    assert BPETokenizer.train(texts, vocab_size=400).backend.to_str() == first


def test_bpe_bad_options() -> None:
    with pytest.raises(UserError, match="vocab_size"):
        BPETokenizer.train(["abc"], vocab_size=100)
    with pytest.raises(UserError, match="no text"):
        BPETokenizer.train([], vocab_size=300)


# ---- files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["char", "bpe"])
def test_save_load_equal(which: str, tmp_path, char_tok, bpe_tok) -> None:
    tok = char_tok if which == "char" else bpe_tok
    tok.save(tmp_path / "m")
    again = load_tokenizer(tmp_path / "m")
    assert type(again) is type(tok)
    assert again.vocab_size == tok.vocab_size and again.special_ids == tok.special_ids
    assert [again.id_to_token(i) for i in range(tok.vocab_size)] == [
        tok.id_to_token(i) for i in range(tok.vocab_size)
    ]
    assert [again.token_bytes(i) for i in range(tok.vocab_size)] == [
        tok.token_bytes(i) for i in range(tok.vocab_size)
    ]
    for text in TEXTS:
        assert again.encode(text, add_bos=True) == tok.encode(text, add_bos=True)
    assert json.loads((tmp_path / "m" / MANIFEST).read_text())["kind"] == which
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.endswith(".tmp")]


def test_failed_save_leaves_old_files_whole(tmp_path, char_tok, monkeypatch) -> None:
    char_tok.save(tmp_path)
    before = (tmp_path / MANIFEST).read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("genloom.files.os.replace", broken_replace)
    with pytest.raises(UserError, match="disk full"):
        CharTokenizer.train(["other text"]).save(tmp_path)
    assert (tmp_path / MANIFEST).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST]  # the temporary file is gone


def test_load_errors(tmp_path, char_tok) -> None:
    with pytest.raises(UserError, match="no tokenizer directory"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no tokenizer file"):
        load_tokenizer(tmp_path / "empty")
    (tmp_path / "empty" / MANIFEST).write_text("{not json")
    with pytest.raises(UserError, match="not valid UTF-8 JSON"):
        load_tokenizer(tmp_path / "empty")
    (tmp_path / "empty" / MANIFEST).write_text('{"kind": "wordpiece", "format_version": 1}')
    with pytest.raises(UserError, match="unknown tokenizer kind 'wordpiece'"):
        load_tokenizer(tmp_path / "empty")
    char_tok.save(tmp_path / "c")
    (tmp_path / "c" / MANIFEST).write_text('{"kind": "bpe", "format_version": 1}')
    with pytest.raises(UserError, match="not a BPE tokenizer file"):
        load_tokenizer(tmp_path / "c")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        char_tok.save(tmp_path / "file")
