"""The tokenizer of a GGUF file, read by llama.cpp (through llama-cpp-python's low-level API).

`GGUFTokenizer` encodes with llama.cpp's own `llama_tokenize` (text that spells a special token
is encoded as text, as every genloom tokenizer does) and takes each token's exact bytes from
`llama_token_to_piece`, so token healing, the vocabulary trie and the decoding loops run on a
llama.cpp model without transformers. Specials (llama.cpp's control and unknown tokens)
contribute no bytes.

`open_gguf` is the one place that loads a GGUF through llama.cpp (quietly: llama.cpp's log goes
nowhere, so a failure stays one line); `models.llamacpp` builds on it. llama-cpp-python is the
optional `llamacpp` extra, imported only here and in `models.llamacpp`.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from genloom.errors import UserError
from genloom.tokenizers.base import MANIFEST, Tokenizer, as_id_list, make_directory, read_json, write_manifest

INSTALL_HINT = "pip install 'genloom[llamacpp]' (builds llama-cpp-python from source; see the README)"
GGUF_MAGIC = b"GGUF"

_quiet_log: Any = None  # the no-op log callback, kept alive for as long as llama.cpp holds it


def llama_cpp() -> Any:
    """The llama_cpp module (llama.cpp's ctypes bindings), its log silenced; a one-line error
    naming the fix when it is not installed."""
    global _quiet_log
    try:
        import llama_cpp as lc
    except ImportError:
        raise UserError(f"the llama.cpp engine needs llama-cpp-python: {INSTALL_HINT}") from None
    except OSError as e:  # the shared library is there but does not load on this machine
        raise UserError(f"llama-cpp-python is installed but its library does not load ({e}): "
                        f"reinstall it on this machine: {INSTALL_HINT}") from None
    if _quiet_log is None:
        _quiet_log = lc.llama_log_callback(lambda level, text, user_data: None)
        lc.llama_log_set(_quiet_log, ctypes.c_void_p(0))
        lc.llama_backend_init()
    return lc


def check_gguf(path: str | os.PathLike[str]) -> Path:
    """`path` as a Path when it is a readable file that starts with the GGUF magic, else a
    one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no GGUF file {path}")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    if magic != GGUF_MAGIC:
        raise UserError(f"{path} is not a GGUF file (it does not start with {GGUF_MAGIC!r})")
    return path


@dataclass
class GGUFHandle:
    """A llama.cpp model loaded from a GGUF file; the model is freed with the handle."""

    path: Path
    model: Any  # llama_model_p
    vocab: Any  # llama_vocab_p
    vocab_only: bool

    def __del__(self) -> None:
        model, self.model = getattr(self, "model", None), None
        if model is not None:
            try:
                llama_cpp().llama_model_free(model)
            except Exception:  # interpreter shutdown: the library may be gone
                pass


def open_gguf(path: str | os.PathLike[str], *, vocab_only: bool = False) -> GGUFHandle:
    """Load a GGUF with llama.cpp (weights memory-mapped, CPU only; or its vocabulary only)."""
    lc = llama_cpp()
    path = check_gguf(path)
    params = lc.llama_model_default_params()
    params.n_gpu_layers = 0
    params.vocab_only = vocab_only
    model = lc.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise UserError(f"llama.cpp cannot load {path}: a truncated or corrupt GGUF, or an architecture "
                        "this llama.cpp does not know; replace the file (a --quant file in the cache is "
                        "made again once deleted)")
    return GGUFHandle(path=path, model=model, vocab=lc.llama_model_get_vocab(model), vocab_only=vocab_only)


def _optional(token: int) -> int | None:
    return None if token < 0 else int(token)


class GGUFTokenizer(Tokenizer):
    """The tokenizer of a GGUF file (module docstring).

    Args:
        handle: a `GGUFHandle` (the model's own, or one opened with vocab_only), or a path to a
            .gguf file (its vocabulary is loaded alone).
    """

    kind = "gguf"

    def __init__(self, handle: GGUFHandle | str | os.PathLike[str]) -> None:
        self.handle = handle if isinstance(handle, GGUFHandle) else open_gguf(handle, vocab_only=True)
        lc, vocab = llama_cpp(), self.handle.vocab
        self._lc = lc
        self.vocab_size = int(lc.llama_vocab_n_tokens(vocab))
        self.bos_id = _optional(lc.llama_vocab_bos(vocab))
        self.eos_id = _optional(lc.llama_vocab_eos(vocab))
        self.pad_id = _optional(lc.llama_vocab_pad(vocab))
        unknown, control = lc.LLAMA_TOKEN_ATTR_UNKNOWN, lc.LLAMA_TOKEN_ATTR_CONTROL
        attrs = [int(lc.llama_vocab_get_attr(vocab, i)) for i in range(self.vocab_size)]
        self.unk_id = next((i for i, a in enumerate(attrs) if a & unknown), None)
        self.special_ids = frozenset(i for i, a in enumerate(attrs) if a & (unknown | control))
        self._texts: list[str] = [lc.llama_vocab_get_text(vocab, i).decode("utf-8", "replace")
                                  for i in range(self.vocab_size)]
        self._ids: dict[str, int] = {}
        for i, t in enumerate(self._texts):
            self._ids.setdefault(t, i)
        self._bytes: list[bytes] | None = None  # built on the first token_bytes call
        self._buffer = (lc.llama_token * 4096)()

    @property
    def path(self) -> Path:
        return self.handle.path

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        data = text.encode("utf-8")
        n = self._lc.llama_tokenize(self.handle.vocab, data, len(data), self._buffer, len(self._buffer), False, False)
        if n < 0:  # the buffer is too small: -n tokens are needed
            self._buffer = (self._lc.llama_token * (2 * -n))()
            n = self._lc.llama_tokenize(self.handle.vocab, data, len(data), self._buffer, len(self._buffer),
                                        False, False)
        return self._wrap(list(self._buffer[:n]), add_bos, add_eos)

    def decode(self, ids: Sequence[int] | Tensor, *, skip_special: bool = True) -> str:
        ids = as_id_list(ids)
        self.check_ids(ids)
        if skip_special:
            data = b"".join(self.token_bytes(i) for i in ids)
        else:
            data = b"".join(self._texts[i].encode() if i in self.special_ids else self.token_bytes(i) for i in ids)
        return data.decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        self.check_ids([token_id])
        if self._bytes is None:
            self._bytes = [self._piece(i) for i in range(self.vocab_size)]
        return self._bytes[token_id]

    def _piece(self, token_id: int) -> bytes:
        if token_id in self.special_ids:
            return b""
        buf = ctypes.create_string_buffer(256)
        n = self._lc.llama_token_to_piece(self.handle.vocab, token_id, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._lc.llama_token_to_piece(self.handle.vocab, token_id, buf, len(buf), 0, False)
        return buf.raw[:n]

    def id_to_token(self, token_id: int) -> str:
        self.check_ids([token_id])
        return self._texts[token_id]

    def token_to_id(self, token: str) -> int | None:
        return self._ids.get(token)

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write genloom_tokenizer.json pointing at the GGUF file (its vocabulary lives there,
        so the file is referenced by absolute path and size, not copied)."""
        path = make_directory(directory)
        gguf = self.path.resolve()
        write_manifest(path, self.kind, gguf=str(gguf), size=gguf.stat().st_size)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> GGUFTokenizer:
        """Rebuild from a directory written by `save`; the GGUF must still be where it was."""
        data = read_json(Path(directory) / MANIFEST)
        gguf = Path(str(data.get("gguf", "")))
        if not gguf.is_file() or gguf.stat().st_size != data.get("size"):
            raise UserError(f"{Path(directory) / MANIFEST} points at {gguf}, which is gone or has changed")
        return cls(gguf)
