"""Atomic output files and directories: the one way genloom writes anything a user keeps.

Every file goes to a temporary name beside its target, is fsynced, then renamed over the target
(and the parent directory fsynced), so a crash or an error never leaves a half-written file
under the final name. A directory is built under a temporary name and renamed into place
whole. Paths that cannot be written (a directory where a file should go, a parent that is a
regular file, no permission) raise a one-line `UserError` before any work is lost to them:
`check_output` lets a command test an output path before it starts a long job (it creates
nothing; `genloom.cliargs.output_file` / `output_dir` run it as the flag is parsed).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from genloom.errors import UserError

PathLike = str | os.PathLike[str]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some file systems do not open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _why(e: OSError) -> str:
    return e.strerror or str(e)


def check_writable(path: PathLike, *, what: str = "output") -> Path:
    """Raise a one-line `UserError` unless a file could be written at `path` (creating its
    parent directories); returns the path. Nothing is left behind."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory, not a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"cannot write {what} {path}: a parent is not a directory") from None
    except OSError as e:
        raise UserError(f"cannot write {what} {path}: {_why(e)}") from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {what} {path}: permission denied")
    return path


def _nearest_existing(path: Path) -> Path:
    """`path` or its closest ancestor that exists (or is a dangling link: it counts as taken)."""
    while not (path.exists() or path.is_symlink()) and path != path.parent:
        path = path.parent
    return path


def check_output(path: PathLike, *, what: str = "output", directory: bool = False, parents: bool = True) -> Path:
    """Raise a one-line `UserError` naming `what` and `path` unless the file `path` could be
    written now, so that a command can refuse a bad output path before its work starts. Nothing
    is created: the path must not be a directory, and the closest existing directory above it
    must take a new file (tried for real with a temporary file that is removed at once, so root,
    read-only mounts and full quotas count); missing directories between are made when the file
    is written (`atomic_path`), or, with `parents=False`, refused.

    With `directory=True`, `path` is a directory to write into: it must be one, or not exist yet
    with the closest existing ancestor a writable directory (it is created when written).
    Returns the path."""
    if not str(path).strip():
        raise UserError(f"{what or 'output'}: an empty path")
    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    if directory:
        if path.exists() and not path.is_dir():
            raise UserError(f"{label} is a file, not a directory")
        base = _nearest_existing(path)
    else:
        if path.is_dir():
            raise UserError(f"{label} is a directory, not a file")
        base = _nearest_existing(path.parent)
        if base != path.parent and base.is_dir() and not parents:
            raise UserError(f"no directory {path.parent} for {what or path.name}")
    if not base.is_dir():
        raise UserError(f"cannot write {label}: a parent is not a directory ({base} is a file)")
    try:
        fd, name = tempfile.mkstemp(prefix=".genloom-check.", dir=base)
    except OSError as e:
        raise UserError(f"cannot write {label}: {_why(e)}") from None
    os.close(fd)
    os.unlink(name)
    return path


@contextmanager
def atomic_path(path: PathLike, *, what: str = "output") -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without error, the file
    written there is fsynced and renamed to `path`. On error it is removed and `path` keeps
    its old content."""
    path = check_writable(path, what=what)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"cannot write {what} {path}: {_why(e)}") from None
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def write_atomic(path: PathLike, data: bytes | str, *, what: str = "output") -> Path:
    """Write bytes (or UTF-8 text) to `path` atomically; returns the path."""
    with atomic_path(path, what=what) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def write_json_atomic(path: PathLike, obj: Any, *, what: str = "output") -> Path:
    """`write_atomic` of pretty JSON (non-ASCII kept readable; paths and the like as strings)."""
    return write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n", what=what)


def write_with(path: PathLike, write: Callable[[Path], Any], *, what: str = "output") -> Path:
    """Call `write(tmp_path)` (a library's own save, e.g. safetensors or savefig) atomically."""
    with atomic_path(path, what=what) as tmp:
        write(tmp)
    return Path(path)


@contextmanager
def atomic_directory(path: PathLike, *, replace: bool = False, what: str = "output directory") -> Iterator[Path]:
    """Yield an empty temporary directory beside `path`; when the block ends without error it
    becomes `path`. An existing `path` is an error unless `replace`, and is then removed only
    after the new one is complete, so a failed run never destroys what was there."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file")
    if path.exists() and any(path.iterdir()) and not replace:
        raise UserError(f"{what} {path} already exists; pass --force to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"cannot write {what} {path}: a parent is not a directory") from None
    except OSError as e:
        raise UserError(f"cannot write {what} {path}: {_why(e)}") from None
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old.{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _fsync_dir(path.parent)
