"""Load pickles that hold only plain data, refusing every global.

A pickle can name any importable callable (`os.system`, `subprocess.Popen`, ...) and the stock
unpickler calls it while loading. `safe_load` uses an `Unpickler` whose `find_class` refuses
every global, so only what the pickle opcodes build by themselves can come out: None, bool,
int, float, str, bytes, bytearray, list, tuple, dict, set and frozenset.
Anything else raises `UserError` before any object is built from it: a class instance, a
function, and also what older protocols write through a global (bytes and sets pickled with
protocol <= 2 name `_codecs.encode` and `__builtin__.set`). Persistent ids are refused as well (the
base class raises for them when no `persistent_load` is defined).
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any

from genloom.errors import UserError


class _NoGlobalsUnpickler(pickle.Unpickler):
    """An unpickler that admits no globals at all."""

    def __init__(self, file: io.BufferedIOBase, *, source: str):
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        raise UserError(f"{self._source}: pickle refers to {module}.{name}; refusing to load it "
                        f"(only plain lists, dicts, strings and numbers are allowed)")


def safe_loads(data: bytes, *, source: str = "<bytes>") -> Any:
    """Unpickle `data`, admitting no globals; `source` names it in error messages."""
    try:
        return _NoGlobalsUnpickler(io.BytesIO(data), source=source).load()
    except UserError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError,
            AttributeError, KeyError, UnicodeDecodeError, MemoryError) as e:
        raise UserError(f"{source}: not a readable pickle ({type(e).__name__}: {e})") from None


def safe_load(path: str | os.PathLike[str]) -> Any:
    """Unpickle the file at `path`, admitting no globals.

    Raises:
        UserError: the file is missing, not a pickle, or names any global.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    return safe_loads(data, source=str(path))
