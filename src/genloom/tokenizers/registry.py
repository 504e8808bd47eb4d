"""Rebuild any saved tokenizer from its directory: one explicit table from kind to loader."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from genloom.errors import UserError
from genloom.tokenizers.base import FORMAT_VERSION, MANIFEST, Tokenizer, read_json
from genloom.tokenizers.bpe import BPETokenizer
from genloom.tokenizers.char import CharTokenizer
from genloom.tokenizers.gguf import GGUFTokenizer
from genloom.tokenizers.hf import HFTokenizer

# kind (the "kind" field of genloom_tokenizer.json) -> loader of a directory
KINDS: dict[str, Callable[[str | os.PathLike[str]], Tokenizer]] = {
    CharTokenizer.kind: CharTokenizer.load,
    BPETokenizer.kind: BPETokenizer.load,
    HFTokenizer.kind: HFTokenizer.load,
    GGUFTokenizer.kind: GGUFTokenizer.load,
}


def load_tokenizer(directory: str | os.PathLike[str]) -> Tokenizer:
    """Rebuild the tokenizer saved in `directory` (by any kind's `save`), from JSON files only."""
    path = Path(directory)
    if not path.is_dir():
        raise UserError(f"no tokenizer directory {path}")
    data = read_json(path / MANIFEST)
    kind = data.get("kind")
    if kind not in KINDS:
        known = ", ".join(KINDS)
        raise UserError(f"{path / MANIFEST}: unknown tokenizer kind {kind!r} (known: {known})")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise UserError(
            f"{path / MANIFEST}: format version {version!r}; this genloom reads {FORMAT_VERSION}"
        )
    return KINDS[kind](path)
