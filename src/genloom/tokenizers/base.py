"""The tokenizer protocol shared by every tokenizer, batch helpers, and small file helpers.

Letters: B texts in a batch, T the longest encoded length in the batch.

Every tokenizer (`CharTokenizer`, `BPETokenizer`, `HFTokenizer`) subclasses `Tokenizer` and so
offers the same surface: `encode`/`decode`, the special ids, `token_bytes(id)` (the exact bytes a
token contributes to the decoded text, which token healing and the vocabulary trie need),
`save(directory)`, and the batch helpers `encode_many`/`encode_batch`/`decode_batch`.
A directory written by `save` holds `genloom_tokenizer.json` (`{"kind": ..., ...}`) plus any files
of the kind; `genloom.tokenizers.load_tokenizer(directory)` rebuilds it. JSON only, no pickle.

The GPT-2 byte alphabet (`bytes_to_unicode`) is written out here (twelve lines, the published
GPT-2 table) rather than imported from transformers, so that the byte-level BPE does not need the
optional `hf` extra; a test checks it against `tokenizers`' own `ByteLevel.alphabet()` and
against transformers' copy.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genloom.errors import UserError
from genloom.files import write_atomic

MANIFEST = "genloom_tokenizer.json"  # the file naming the kind of tokenizer in a directory
FORMAT_VERSION = 1  # bumped when a kind's JSON layout changes incompatibly


class Tokenizer(ABC):
    """What every genloom tokenizer offers. Subclasses set the five attributes in __init__."""

    vocab_size: int  # number of ids, specials included: ids are 0 .. vocab_size - 1
    pad_id: int | None  # padding id (None when the vocabulary has none)
    unk_id: int | None  # id of unknown input (None for byte-level vocabularies that never need it)
    bos_id: int | None  # begin-of-sequence id added by encode(add_bos=True)
    eos_id: int | None  # end-of-sequence id added by encode(add_eos=True)
    special_ids: frozenset[int]  # ids that contribute no text (skipped by decode(skip_special))

    kind: str = ""  # the "kind" written to genloom_tokenizer.json

    @abstractmethod
    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Text -> ids. Text that spells a special token (e.g. "<eos>") is encoded as text."""

    def _wrap(self, ids: list[int], add_bos: bool, add_eos: bool) -> list[int]:
        """`ids` with the bos id in front and/or the eos id behind (in place); a one-line error
        when the vocabulary has no such token."""
        for flag, tid, name in ((add_bos, self.bos_id, "bos"), (add_eos, self.eos_id, "eos")):
            if flag and tid is None:
                raise UserError(f"this tokenizer has no {name} token")
        if add_bos:
            ids.insert(0, self.bos_id)
        if add_eos:
            ids.append(self.eos_id)
        return ids

    @abstractmethod
    def decode(self, ids: Sequence[int] | Tensor, *, skip_special: bool = True) -> str:
        """Ids -> text; with skip_special, special ids contribute nothing."""

    @abstractmethod
    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes token `token_id` contributes to decoded text; b"" for specials."""

    def all_token_bytes(self) -> list[bytes]:
        """`token_bytes` of ids 0 .. vocab_size - 1 (a tokenizer with a table returns it whole)."""
        return [self.token_bytes(i) for i in range(self.vocab_size)]

    @abstractmethod
    def id_to_token(self, token_id: int) -> str:
        """The vocabulary's own spelling of a token (byte-level glyphs for byte-level BPE)."""

    @abstractmethod
    def token_to_id(self, token: str) -> int | None:
        """Inverse of id_to_token; None when `token` is not in the vocabulary."""

    @abstractmethod
    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the tokenizer into `directory` (created if needed) as JSON files."""

    # ---- shared helpers -------------------------------------------------------------------

    def encode_many(
        self, texts: Iterable[str], *, add_bos: bool = False, add_eos: bool = False
    ) -> list[list[int]]:
        """encode() over many texts (subclasses may do it in one native call)."""
        return [self.encode(t, add_bos=add_bos, add_eos=add_eos) for t in texts]

    def encode_batch(
        self,
        texts: Sequence[str],
        *,
        max_len: int | None = None,
        add_bos: bool = False,
        add_eos: bool = False,
        pad_id: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Encode texts into one right-padded tensor.

        Args:
            texts: B strings.
            max_len: keep at most this many ids per row; the text is cut, while the bos/eos
                requested are kept (so a cut row still ends in eos).
            pad_id: overrides the tokenizer's pad id (needed when it has none).
        Returns:
            ids (B, T) long, padded with the pad id, and lengths (B,) long; T is the longest row.
        """
        return encode_batch(
            self, texts, max_len=max_len, add_bos=add_bos, add_eos=add_eos, pad_id=pad_id
        )

    def decode_batch(
        self, ids: Tensor, lengths: Tensor | None = None, *, skip_special: bool = True
    ) -> list[str]:
        """ids (B, T) and optional lengths (B,) -> B strings (ids past a row's length ignored)."""
        rows = ids.tolist()
        if lengths is not None:
            rows = [r[:n] for r, n in zip(rows, lengths.tolist())]
        return [self.decode(r, skip_special=skip_special) for r in rows]

    def check_ids(self, ids: Sequence[int]) -> None:
        """Raise UserError when an id lies outside 0 .. vocab_size - 1."""
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            bad = next(i for i in ids if i < 0 or i >= self.vocab_size)
            raise UserError(
                f"token id {bad} is outside the vocabulary (size {self.vocab_size}): "
                "is this the tokenizer the model was trained with?"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


def as_id_list(ids: Sequence[int] | Tensor) -> list[int]:
    """A 1-D tensor or sequence of ints -> list[int]."""
    if isinstance(ids, Tensor):
        if ids.dim() != 1:
            raise ValueError(f"decode takes a 1-D tensor of ids, got shape {tuple(ids.shape)}")
        return ids.tolist()
    return [int(i) for i in ids]


def encode_batch(
    tokenizer: Tokenizer,
    texts: Sequence[str],
    *,
    max_len: int | None = None,
    add_bos: bool = False,
    add_eos: bool = False,
    pad_id: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Encode and right-pad (see `Tokenizer.encode_batch`); works for any `Tokenizer`."""
    pad = tokenizer.pad_id if pad_id is None else pad_id
    if pad is None:
        raise UserError(f"{type(tokenizer).__name__} has no pad token: pass pad_id= to pad batches")
    n_special = int(add_bos) + int(add_eos)
    if max_len is not None and max_len < max(n_special, 1):
        raise UserError(f"max_len must be at least {max(n_special, 1)}, got {max_len}")
    rows = tokenizer.encode_many(texts, add_bos=add_bos, add_eos=add_eos)
    if max_len is not None:
        rows = [_cut(r, max_len, add_eos) for r in rows]
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)  # (B,)
    width = int(lengths.max()) if rows else 0
    out = torch.full((len(rows), width), pad, dtype=torch.long)  # (B, T)
    for b, r in enumerate(rows):
        out[b, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out, lengths


def _cut(row: list[int], max_len: int, keep_last: bool) -> list[int]:
    """Cut a row to max_len ids, keeping its final (eos) id when asked."""
    if len(row) <= max_len:
        return row
    return row[: max_len - 1] + row[-1:] if keep_last else row[:max_len]


# ---- byte alphabets -------------------------------------------------------------------------


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by every byte-level BPE."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += list(range(ord("®"), ord("ÿ") + 1))
    chars = list(keep)
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(keep, chars)}


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    """Inverse of bytes_to_unicode: byte-level glyph -> byte value."""
    return {c: b for b, c in bytes_to_unicode().items()}


@lru_cache(maxsize=1)
def _glyphs_to_latin1() -> dict[int, str]:
    """str.translate table: byte-level glyph -> the latin-1 character of its byte; a latin-1
    character that is not a glyph (the space, controls) -> U+FFFF, which latin-1 cannot encode."""
    table = {c: "\uffff" for c in range(256)}
    table.update({ord(c): chr(b) for c, b in unicode_to_bytes().items()})
    return table


def bytelevel_to_bytes(token: str) -> bytes | None:
    """A byte-level token spelling ("Ġhello") -> its bytes (b" hello"); None if not byte-level.
    (One `str.translate` to latin-1 characters and one encode: SmolLM2's 49k tokens in 25 ms,
    where a generator over the glyphs took 47 ms.)"""
    try:
        return token.translate(_glyphs_to_latin1()).encode("latin-1")
    except UnicodeEncodeError:  # a character outside the alphabet
        return None


# ---- files ----------------------------------------------------------------------------------


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 text to `path` atomically (genloom.files)."""
    write_atomic(path, text)


def write_manifest(directory: str | os.PathLike[str], kind: str, **fields: Any) -> None:
    """Write genloom_tokenizer.json (last, so a directory with it is complete)."""
    data = {"kind": kind, "format_version": FORMAT_VERSION, **fields}
    write_text_atomic(Path(directory) / MANIFEST, json.dumps(data, ensure_ascii=False, indent=1))


def make_directory(directory: str | os.PathLike[str]) -> Path:
    """Create `directory` (and parents); a UserError when it cannot be a directory."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"cannot save a tokenizer to {path}: not a directory") from None
    except PermissionError:
        raise UserError(f"cannot save a tokenizer to {path}: permission denied") from None
    return path


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON object; missing or malformed files end in a one-line UserError."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"no tokenizer file {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not valid UTF-8 JSON: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object")
    return data
