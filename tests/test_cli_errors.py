"""Bad input through the real `genloom` executable: exit code 2, exactly one line on stderr
naming the problem, nothing on stdout, no output file."""

import subprocess
import sys
from pathlib import Path

import pytest

GENLOOM = Path(sys.executable).parent / "genloom"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(GENLOOM), *args], capture_output=True, text=True, timeout=120)


CASES = {
    # name: (file name, bytes, extra args, text the one line must contain)
    "missing file": ("absent.jsonl", None, [], "absent.jsonl: no such file"),
    "empty file": ("empty.jsonl", b"", [], "empty.jsonl: file is empty"),
    "non-JSON line": ("bad.jsonl", b'{"content": "a", "title": "b"}\n{oops\n', [],
                      "bad.jsonl:2: not valid JSON"),
    "missing field": ("nofield.jsonl", b'{"content": "a", "headline": "b"}\n', [],
                      "nofield.jsonl:1: field 'title' is missing"),
    "invalid UTF-8": ("latin1.txt", "正文\t标题\n".encode() + "caf\xe9\tx\n".encode("latin-1"),
                      [], "latin1.txt:2: invalid UTF-8 (byte 0xe9"),
    "missing CSV column": ("cols.csv", b"body,title\nx,y\n", [],
                           "cols.csv:1: header has no column 'content'"),
}


@pytest.mark.skipif(not GENLOOM.exists(), reason="genloom executable not installed")
@pytest.mark.parametrize("case", list(CASES))
def test_bad_user_file(tmp_path, case):
    name, data, extra, expected = CASES[case]
    path = tmp_path / name
    if data is not None:
        path.write_bytes(data)
    out = tmp_path / "table.json"
    proc = _run("baseline", "--data", str(path), "--output", str(out), *extra)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("genloom: error: ")
    assert expected in lines[0]
    assert not out.exists()


@pytest.mark.skipif(not GENLOOM.exists(), reason="genloom executable not installed")
@pytest.mark.parametrize("args", [("baseline", "--corpus", "nosuch"),
                                  ("corpora", "--stats", "nosuch")])
def test_unknown_corpus(args):
    proc = _run(*args)
    assert proc.returncode == 2 and proc.stdout == ""
    from genloom.data.registry import CORPORA

    assert proc.stderr.splitlines() == [f"genloom: error: unknown corpus 'nosuch' (known: {', '.join(CORPORA)})"]


@pytest.mark.skipif(not GENLOOM.exists(), reason="genloom executable not installed")
def test_bad_split_and_option():
    proc = _run("baseline", "--corpus", "inews", "--split", "valid")
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert "no split 'valid'" in proc.stderr
    proc = _run("baseline", "--lead-chars", "zero")
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1


# ---- output paths that fail after the work: nothing half-written, the line says where ----------
def _pairs_file(tmp_path: Path) -> Path:
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"content": "北京今天开放。游客很多。", "title": "北京开放"}\n', encoding="utf-8")
    return data


def _main(argv, capsys):
    from genloom.cli import main

    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    return rc, *capsys.readouterr()


def test_output_directory_lost_during_the_work(tmp_path, capsys, monkeypatch):
    """The output's directory becomes a regular file while the table is computed: exit 2, one
    line naming --output and the path, no file written anywhere."""
    import genloom.tasks.title.baseline_cli as baseline_cli

    data, target = _pairs_file(tmp_path), tmp_path / "out" / "table.json"
    target.parent.mkdir()
    real = baseline_cli.baseline_table

    def work_then_break(*a, **k):
        result = real(*a, **k)
        target.parent.rmdir()
        target.parent.write_text("now a file")
        return result

    monkeypatch.setattr(baseline_cli, "baseline_table", work_then_break)
    rc, out, err = _main(["baseline", "--data", str(data), "--output", str(target)], capsys)
    assert rc == 2 and "Traceback" not in err
    assert err.splitlines() == [f"genloom: error: cannot write --out {target}: a parent is not a directory"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "pairs.jsonl"]
    assert target.parent.read_text() == "now a file"


def test_write_failing_half_way_keeps_the_old_file(tmp_path, capsys, monkeypatch):
    """The disk fills up while the result is written: the old output is intact, no temporary
    file is left, and the one line names the path and the reason."""
    import errno

    data, target = _pairs_file(tmp_path), tmp_path / "table.json"
    target.write_text("old result\n")
    real_write = Path.write_bytes

    def half_then_full(self, payload):
        real_write(self, payload[: len(payload) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", half_then_full)
    rc, out, err = _main(["baseline", "--data", str(data), "--output", str(target)], capsys)
    monkeypatch.undo()
    assert rc == 2 and "Traceback" not in err
    assert err.splitlines() == [f"genloom: error: cannot write --out {target}: No space left on device"]
    assert target.read_text() == "old result\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl", "table.json"]


def test_refused_allocations_are_one_line(capsys, monkeypatch):
    """An allocation the machine refuses (sizes in every flag's range, far beyond its memory) is
    one line and exit 2; any other RuntimeError keeps its traceback (a bug)."""
    import genloom.tasks.corpora.cli as corpora_cli
    from genloom.cli import main

    def refuse(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 12000000000000 bytes. Error code 12")

    monkeypatch.setattr(corpora_cli, "run", refuse)
    assert main(["corpora"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "genloom: error: out of memory (an allocation of 11175.9 GiB): ask for less (a smaller model, batch, "
        "beam width, length or sample count)"]
    monkeypatch.setattr(corpora_cli, "run", lambda args: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        main(["corpora"])
