"""Character tokenizer: one id per Unicode character, with separate pad/unk/bos/eos ids.

The title post (玩转Keras之seq2seq自动生成标题) insists that padding, unknown, start and end get
ids of their own: 0 <pad>, 1 <unk>, 2 <bos>, 3 <eos>, then the characters, most frequent first
(ties broken by code point, so training is deterministic). A character seen fewer than
`min_count` times, or beyond `max_size`, encodes as <unk>.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from torch import Tensor

from genloom.errors import UserError
from genloom.tokenizers.base import (
    MANIFEST,
    Tokenizer,
    as_id_list,
    make_directory,
    read_json,
    write_manifest,
)

SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")  # ids 0, 1, 2, 3


class CharTokenizer(Tokenizer):
    """One id per character; ids 0-3 are <pad> <unk> <bos> <eos>."""

    kind = "char"

    def __init__(self, chars: Sequence[str]) -> None:
        """chars: the characters for ids 4, 5, ... (each a single code point, no repeats)."""
        for c in chars:
            if len(c) != 1:
                raise UserError(f"a CharTokenizer entry must be one character, got {c!r}")
        if len(set(chars)) != len(chars):
            raise UserError("a CharTokenizer vocabulary has a repeated character")
        self._tokens: list[str] = [*SPECIALS, *chars]
        self._index: dict[str, int] = {c: i for i, c in enumerate(chars, start=len(SPECIALS))}
        self._bytes: list[bytes] = [b""] * len(SPECIALS) + [
            c.encode("utf-8", "surrogatepass") for c in chars
        ]
        self.vocab_size = len(self._tokens)
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = 0, 1, 2, 3
        self.special_ids = frozenset(range(len(SPECIALS)))

    @classmethod
    def train(
        cls, texts: Iterable[str], *, min_count: int = 1, max_size: int | None = None
    ) -> CharTokenizer:
        """Count characters over `texts` and keep those seen at least `min_count` times.

        Args:
            texts: training texts.
            min_count: rarer characters become <unk>.
            max_size: the most ids in all (the 4 specials included); the most frequent win.
        """
        if min_count < 1:
            raise UserError(f"min_count must be at least 1, got {min_count}")
        if max_size is not None and max_size <= len(SPECIALS):
            raise UserError(f"max_size must exceed the {len(SPECIALS)} special ids, got {max_size}")
        counts: Counter[str] = Counter()
        for t in texts:
            counts.update(t)
        if not counts:
            raise UserError("cannot train a CharTokenizer on no text")
        kept = sorted(
            (c for c, n in counts.items() if n >= min_count), key=lambda c: (-counts[c], ord(c))
        )
        if max_size is not None:
            kept = kept[: max_size - len(SPECIALS)]
        return cls(kept)

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        get, unk = self._index.get, self.unk_id
        return self._wrap([get(c, unk) for c in text], add_bos, add_eos)

    def decode(self, ids: Sequence[int] | Tensor, *, skip_special: bool = True) -> str:
        ids = as_id_list(ids)
        self.check_ids(ids)
        tok, n = self._tokens, len(SPECIALS)
        if skip_special:
            return "".join([tok[i] for i in ids if i >= n])
        return "".join([tok[i] for i in ids])

    def token_bytes(self, token_id: int) -> bytes:
        self.check_ids([token_id])
        return self._bytes[token_id]

    def id_to_token(self, token_id: int) -> str:
        self.check_ids([token_id])
        return self._tokens[token_id]

    def token_to_id(self, token: str) -> int | None:
        if token in SPECIALS:
            return SPECIALS.index(token)
        return self._index.get(token)

    def save(self, directory: str | os.PathLike[str]) -> None:
        path = make_directory(directory)
        chars = self._tokens[len(SPECIALS) :]
        write_manifest(path, self.kind, specials=list(SPECIALS), chars=chars)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> CharTokenizer:
        """Rebuild from a directory written by `save`."""
        path = Path(directory) / MANIFEST
        data = read_json(path)
        chars = data.get("chars")
        if data.get("specials") != list(SPECIALS) or not isinstance(chars, list):
            raise UserError(f"{path} is not a char tokenizer file")
        return cls(chars)
