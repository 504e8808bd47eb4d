"""Byte-level BPE trained with Hugging Face `tokenizers`; round-trips any text exactly.

Set-up (all from `tokenizers`, nothing hand-written but the byte table in base.py):
- no normalizer (NFC/NFKC would change the text, so decode(encode(x)) != x);
- `ByteLevel(add_prefix_space=False)` pre-tokenizer: GPT-2's split regex, then every byte mapped
  to a printable glyph, so spaces, newlines, tabs and any script survive;
- all 256 byte glyphs are in the initial alphabet, so no byte is ever unknown (a byte never seen
  in training would otherwise be dropped silently);
- `ByteLevel` decoder; ids 0-3 are <pad> <unk> <bos> <eos> (<unk> is never produced);
- `encode_special_tokens = True`: text that spells "<eos>" is encoded as text, not as the id.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizersModel
from tokenizers import decoders, models, pre_tokenizers, trainers
from torch import Tensor

from genloom.errors import UserError
from genloom.tokenizers.base import (
    MANIFEST,
    Tokenizer,
    as_id_list,
    bytelevel_to_bytes,
    make_directory,
    read_json,
    write_manifest,
    write_text_atomic,
)

SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")  # ids 0, 1, 2, 3
TOKENIZER_FILE = "tokenizer.json"  # the `tokenizers` file beside genloom_tokenizer.json
MIN_VOCAB = 256 + len(SPECIALS)  # the byte alphabet plus the specials


class BPETokenizer(Tokenizer):
    """Byte-level BPE over a `tokenizers.Tokenizer` built by `train` (or loaded by `load`)."""

    kind = "bpe"

    def __init__(self, tokenizer: HFTokenizersModel) -> None:
        """Wrap a trained byte-level `tokenizers.Tokenizer` whose ids 0-3 are the specials."""
        if not (
            isinstance(tokenizer.pre_tokenizer, pre_tokenizers.ByteLevel)
            and isinstance(tokenizer.decoder, decoders.ByteLevel)
            and tokenizer.normalizer is None
        ):
            raise UserError(
                "BPETokenizer needs a byte-level tokenizer: ByteLevel pre-tokenizer and decoder, "
                "no normalizer"
            )
        ids = [tokenizer.token_to_id(s) for s in SPECIALS]
        if ids != list(range(len(SPECIALS))):
            raise UserError(f"BPETokenizer needs {', '.join(SPECIALS)} at ids 0-3, found {ids}")
        tokenizer.encode_special_tokens = True
        self._tok = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = 0, 1, 2, 3
        added = tokenizer.get_added_tokens_decoder()  # id -> AddedToken
        self.special_ids = frozenset(i for i, t in added.items() if t.special)
        self._bytes = [self._bytes_of(i, added) for i in range(self.vocab_size)]

    def _bytes_of(self, token_id: int, added: dict) -> bytes:
        if token_id in self.special_ids:
            return b""
        if token_id in added:  # a non-special added token is stored as plain text
            return added[token_id].content.encode("utf-8")
        token = self._tok.id_to_token(token_id)
        data = bytelevel_to_bytes(token)
        if data is None:
            raise UserError(f"token {token_id} ({token!r}) is not spelled in the byte alphabet")
        return data

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        *,
        vocab_size: int,
        min_frequency: int = 2,
        max_token_length: int | None = None,
        progress: bool = False,
    ) -> BPETokenizer:
        """Learn a byte-level BPE vocabulary from `texts`.

        Args:
            texts: training texts (any iterable; consumed once).
            vocab_size: the most ids in all (specials and the 256 bytes included); fewer when
                the texts offer no more pairs seen `min_frequency` times.
            min_frequency: a pair must occur this often to be merged.
            max_token_length: cap on a token's length in characters of the byte alphabet.
            progress: show `tokenizers`' progress bar.
        """
        if vocab_size < MIN_VOCAB:
            raise UserError(f"vocab_size must be at least {MIN_VOCAB} (bytes + specials)")
        if min_frequency < 1:
            raise UserError(f"min_frequency must be at least 1, got {min_frequency}")
        tok = HFTokenizersModel(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIALS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            max_token_length=max_token_length,
            show_progress=progress,
        )
        seen = False

        def counted(items: Iterable[str]) -> Iterable[str]:
            nonlocal seen
            for t in items:
                seen = seen or bool(t)
                yield t

        tok.train_from_iterator(counted(texts), trainer)
        if not seen:
            raise UserError("cannot train a BPETokenizer on no text")
        return cls(tok)

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return self._wrap(ids, add_bos, add_eos)

    def encode_many(
        self, texts: Iterable[str], *, add_bos: bool = False, add_eos: bool = False
    ) -> list[list[int]]:
        encs = self._tok.encode_batch_fast(list(texts), add_special_tokens=False)
        return [self._wrap(e.ids, add_bos, add_eos) for e in encs]

    def decode(self, ids: Sequence[int] | Tensor, *, skip_special: bool = True) -> str:
        ids = as_id_list(ids)
        self.check_ids(ids)
        return self._tok.decode(ids, skip_special_tokens=skip_special)

    def token_bytes(self, token_id: int) -> bytes:
        self.check_ids([token_id])
        return self._bytes[token_id]

    def id_to_token(self, token_id: int) -> str:
        self.check_ids([token_id])
        return self._tok.id_to_token(token_id)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    @property
    def backend(self) -> HFTokenizersModel:
        """The wrapped `tokenizers.Tokenizer` (read it; changing it breaks the guarantees)."""
        return self._tok

    def save(self, directory: str | os.PathLike[str]) -> None:
        path = make_directory(directory)
        write_text_atomic(path / TOKENIZER_FILE, self._tok.to_str(pretty=True))
        write_manifest(path, self.kind, file=TOKENIZER_FILE, specials=list(SPECIALS))

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> BPETokenizer:
        """Rebuild from a directory written by `save`."""
        path = Path(directory)
        data = read_json(path / MANIFEST)
        if data.get("specials") != list(SPECIALS) or data.get("file") != TOKENIZER_FILE:
            raise UserError(f"{path / MANIFEST} is not a BPE tokenizer file")
        try:
            tok = HFTokenizersModel.from_file(str(path / TOKENIZER_FILE))
        except Exception as e:  # tokenizers raises a bare Exception on bad files
            raise UserError(f"cannot read {path / TOKENIZER_FILE}: {e}") from None
        return cls(tok)
