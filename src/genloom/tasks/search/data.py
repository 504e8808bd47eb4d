"""The text the search models train on, and their shared Chinese vocabulary.

Chinese sentences are the split of `chinese_lm_texts` (People's Daily, reviews, inews titles and
contents) cut by `split_sentences`, kept when they are mostly Han characters. The Chinese models
share one character vocabulary (the most frequent characters of the train sentences) plus
`MASK_CHAR`, a private-use character that never occurs in text and serves as the masked LM's
[MASK] (the char tokenizer has no slot for extra specials, so the mask is a vocabulary entry).

English sentences come from the docstrings of the Python standard library (parsed with `ast`,
never imported); a BLAKE2b hash of each sentence puts one in ten in the "test" split, so the
English evaluation LM never sees the benchmark's sentences.
"""

from __future__ import annotations

import ast
import functools
import re
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from genloom.data.split import hash_bucket
from genloom.errors import UserError

MASK_CHAR = "\ue000"  # the masked LM's [MASK]: a private-use code point, never in real text
HAN = re.compile(r"[\u4e00-\u9fff]")  # one Han character
_EN_SENTENCE = re.compile(r"^[A-Z][A-Za-z ,'\-]+\.$")


def chinese_sentences(split: str, *, min_chars: int = 4, max_chars: int = 48) -> list[str]:
    """Sentences of `chinese_lm_texts(split)` with min..max characters, mostly Han characters."""
    from genloom.data import chinese_lm_texts, split_sentences

    out = []
    for text in chinese_lm_texts(split):
        for s in split_sentences(text):
            s = s.replace(MASK_CHAR, "")
            if min_chars <= len(s) <= max_chars and len(HAN.findall(s)) >= 0.6 * len(s):
                out.append(s)
    return out


def _docstrings(path: Path) -> list[str]:
    """Module, class and function docstrings of one source file ([] if it does not parse)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return []
    nodes = [tree, *(n for n in ast.walk(tree)
                     if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))]
    return [d for d in (ast.get_docstring(n) for n in nodes) if d]


def docstring_sentences(path: Path) -> list[str]:
    """Plain English sentences of 6-16 words from one file's docstrings (no code, no e.g./i.e.)."""
    out = []
    for doc in _docstrings(path):
        for para in doc.split("\n\n"):
            for s in re.split(r"(?<=\.)\s+", " ".join(para.split())):
                if 6 <= len(s.split()) <= 16 and _EN_SENTENCE.match(s) and "e.g" not in s and "i.e" not in s:
                    out.append(s)
    return out


@functools.lru_cache(maxsize=1)
def _all_stdlib_sentences() -> tuple[str, ...]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = ("test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "ensurepip")
    seen: dict[str, None] = {}
    for path in sorted(root.rglob("*.py")):
        if not any(part in skip for part in path.relative_to(root).parts):
            for s in docstring_sentences(path):
                seen.setdefault(s)
    if not seen:
        raise UserError(f"found no docstring sentences under {root}")
    return tuple(seen)


def hash_split(sentences: Sequence[str], split: str) -> list[str]:
    """"test": the one in ten sentences whose BLAKE2b hash is 0 mod 10; "train": the others."""
    if split not in ("train", "test"):
        raise UserError(f"no split {split!r} of the docstring sentences (train, test)")
    return [s for s in sentences if (hash_bucket(s, 10, digest_size=4) == 0) == (split == "test")]


def stdlib_sentences(split: str) -> list[str]:
    """English sentences of the standard library's docstrings, split by `hash_split` (module
    docstring); the whole library is parsed once per process (tens of seconds on a busy machine)."""
    return hash_split(_all_stdlib_sentences(), split)


def chinese_tokenizer(sentences: Sequence[str], vocab_size: int) -> Any:
    """Character tokenizer of the most frequent characters, plus MASK_CHAR as the last id."""
    from genloom.tokenizers import CharTokenizer

    base = CharTokenizer.train(sentences, max_size=vocab_size - 1)
    chars = [base.id_to_token(i) for i in range(4, base.vocab_size)]
    return CharTokenizer([*chars, MASK_CHAR])


def mask_id_of(tokenizer: Any) -> int:
    """The id of MASK_CHAR (a UserError if the tokenizer was not made by `chinese_tokenizer`)."""
    mid = tokenizer.token_to_id(MASK_CHAR)
    if mid is None:
        raise UserError("this tokenizer has no mask entry: the masked LM was not trained by "
                        "`genloom search train-models`")
    return mid
