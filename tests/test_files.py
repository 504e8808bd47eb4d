"""genloom.files: atomic writes leave the old file whole on failure and give one-line errors."""

from __future__ import annotations

import json
import os

import pytest

from genloom.errors import UserError
from genloom.files import atomic_directory, check_writable, write_atomic, write_json_atomic, write_with


def test_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    write_atomic(path, "一")
    write_atomic(path, b"two")
    assert path.read_bytes() == b"two"
    write_json_atomic(tmp_path / "x.json", {"a": "中", "p": tmp_path})
    assert json.loads((tmp_path / "x.json").read_text(encoding="utf-8")) == {"a": "中", "p": str(tmp_path)}
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out.txt", "sub", "x.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def broken(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("library failed")

    with pytest.raises(RuntimeError, match="library failed"):
        write_with(path, broken)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_unwritable_paths_are_one_line_errors(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a directory"):
        write_atomic(tmp_path, "x")
    with pytest.raises(UserError, match="parent is not a directory"):
        write_atomic(tmp_path / "file" / "below.txt", "x")
    with pytest.raises(UserError, match="parent is not a directory"):
        check_writable(tmp_path / "file" / "a" / "b.txt")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(UserError, match="permission denied"):
            write_atomic(ro / "x.txt", "x")


def test_atomic_directory_replaces_only_after_success(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("1")
    assert (target / "a").read_text() == "1"
    with pytest.raises(UserError, match="already exists"):
        with atomic_directory(target):
            pass
    with pytest.raises(RuntimeError):
        with atomic_directory(target, replace=True) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("training failed")
    assert [p.name for p in target.iterdir()] == ["a"]  # the old model is intact
    with atomic_directory(target, replace=True) as tmp:
        (tmp / "b").write_text("2")
    assert [p.name for p in target.iterdir()] == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
