"""Readers for user files: the same records from every format, streaming, and one-line errors
naming file and line."""

import csv
import json

import pytest

from genloom.data import read_pairs, read_records
from genloom.errors import UserError

ROWS = [{"content": "今天下午，两车相撞。\t司机受伤", "title": "大巴车与汽车相撞"},
        {"content": 'He said "hi", then left', "title": "标题, 带逗号"},
        {"content": "第三篇", "title": "三"}]


def _write(tmp_path, name: str, data: bytes | str):
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def _error(path, fields=("content", "title"), fmt=None) -> str:
    with pytest.raises(UserError) as e:
        list(read_records(path, fields=fields, fmt=fmt))
    message = str(e.value)
    assert "\n" not in message
    return message


def test_every_format_gives_the_same_records(tmp_path):
    jsonl = _write(tmp_path, "a.jsonl", "".join(json.dumps({**r, "extra": 1}, ensure_ascii=False)
                                               + "\n" for r in ROWS))
    with open(tmp_path / "a.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "title", "content"])
        w.writeheader()
        w.writerows({"id": i, **r} for i, r in enumerate(ROWS))
    tsv_rows = [r for r in ROWS if "\t" not in r["content"]]
    tsv = _write(tmp_path, "a.tsv", "content\ttitle\n" + "".join(
        f"{r['content']}\t{r['title']}\n" for r in tsv_rows))
    # TXT: columns in `fields` order; the last field may hold tabs
    txt = _write(tmp_path, "a.txt", "\n".join(f"{r['title']}\t{r['content']}" for r in ROWS))
    assert list(read_records(jsonl, fields=["content", "title"])) == ROWS
    assert list(read_records(tmp_path / "a.csv", fields=["content", "title"])) == ROWS
    assert list(read_records(tsv, fields=["content", "title"])) == tsv_rows
    assert list(read_records(txt, fields=["title", "content"])) == ROWS
    one = _write(tmp_path, "one.txt", "第一行\t有制表符\n\n第二行\r\n")
    assert list(read_records(one, fields=["text"])) == [{"text": "第一行\t有制表符"},
                                                        {"text": "第二行"}]


def test_csv_quoted_newline_bom_and_format_override(tmp_path):
    path = _write(tmp_path, "data.dat", '\ufefftitle,content\n"t1","line one\nline two"\n')
    assert list(read_records(path, fields=["title", "content"], fmt="csv")) == [
        {"title": "t1", "content": "line one\nline two"}]
    assert "cannot tell the format" in _error(path)
    assert "unknown format 'xml'" in _error(path, fmt="xml")


def test_reading_streams(tmp_path):
    path = _write(tmp_path, "s.jsonl", '{"content": "a", "title": "b"}\nnot json\n')
    stream = read_records(path, fields=["content", "title"])
    assert next(stream) == {"content": "a", "title": "b"}  # the bad line is not read yet
    with pytest.raises(UserError, match=r"s\.jsonl:2: not valid JSON"):
        next(stream)


def test_missing_and_empty_files(tmp_path):
    assert _error(tmp_path / "absent.jsonl") == f"{tmp_path / 'absent.jsonl'}: no such file"
    assert _error(_write(tmp_path, "e.jsonl", b"")) == f"{tmp_path / 'e.jsonl'}: file is empty"
    assert "no records" in _error(_write(tmp_path, "blank.txt", "\n  \n"))
    assert "no records" in _error(_write(tmp_path, "header.csv", "content,title\n"))
    assert "not a regular file" in _error(tmp_path, fmt="txt")


def test_jsonl_errors_name_the_line(tmp_path):
    good = '{"content": "a", "title": "b"}\n'
    path = _write(tmp_path, "x.jsonl", good + "\n" + '{"content": "a", "title": \n')
    assert _error(path).startswith(f"{path}:3: not valid JSON (")
    path = _write(tmp_path, "y.jsonl", good + '["a", "b"]\n')
    assert _error(path) == f"{path}:2: expected a JSON object, got list"
    path = _write(tmp_path, "z.jsonl", good + '{"content": "a", "headline": "b"}\n')
    assert _error(path) == f"{path}:2: field 'title' is missing (fields here: content, headline)"
    path = _write(tmp_path, "n.jsonl", '{"content": "a", "title": null}\n')
    assert _error(path) == f"{path}:1: field 'title' is null (fields here: content, title)"


def test_invalid_utf8_names_the_line(tmp_path):
    for name in ("u.jsonl", "u.csv", "u.txt"):
        head = "content,title\n" if name.endswith(".csv") else ""
        line = '{"content": "a", "title": "b"}\n' if name.endswith(".jsonl") else "a\tb\n"
        line = line.replace("\t", ",") if name.endswith(".csv") else line
        path = _write(tmp_path, name, (head + line).encode() + b"ok\xe4\xb8 broken\n")
        assert _error(path) == (f"{path}:{2 + bool(head)}: invalid UTF-8 (byte 0xe4 at byte 3 "
                                f"of the line)")


def test_column_errors(tmp_path):
    path = _write(tmp_path, "h.csv", "text,title\nx,y\n")
    assert _error(path) == f"{path}:1: header has no column 'content' (columns: text, title)"
    path = _write(tmp_path, "r.csv", "content,title\nx,y\nonly-one\n")
    assert _error(path) == f"{path}:3: row has 1 column(s), but the header has 2"
    path = _write(tmp_path, "t.txt", "a\tb\n\nno tab here\n")
    assert _error(path) == f"{path}:3: expected 2 tab-separated columns (content, title), found 1"


def test_read_pairs(tmp_path):
    path = _write(tmp_path, "p.jsonl", '{"content": " 正文 ", "title": "标题\\n"}\n'
                                       '{"content": "二", "title": "2"}\n')
    assert read_pairs(path, source="content", target="title") == [("正文", "标题"), ("二", "2")]
    path = _write(tmp_path, "q.jsonl", '{"content": "a", "title": 3}\n')
    with pytest.raises(UserError, match=r"q\.jsonl:1: field 'title' is not a string \(int\)"):
        read_pairs(path, source="content", target="title")
    path = _write(tmp_path, "r.jsonl",
                  '{"content": "a", "title": "b"}\n{"content": " ", "title": "b"}\n')
    with pytest.raises(UserError, match=r"r\.jsonl:2: field 'content' is empty"):
        read_pairs(path, source="content", target="title")
    with pytest.raises(UserError, match="same field"):
        read_pairs(path, source="title", target="title")


# ---- command inputs from a pipe: ids, and batches that do not wait -------------------------------
def test_items_carry_the_record_id_or_the_line_number():
    from genloom.data.readers import read_items

    lines = [b'{"id": "a7", "content": "x"}\n', b'{"content": "y"}\n', b'{"id": 3, "content": ""}\n']
    items = list(read_items(lines))
    assert [(i.line, i.id, i.text) for i in items] == [(1, "a7", "x"), (2, 2, "y"), (3, 3, None)]
    assert items[2].error == "input:3: field 'content' is empty"
    assert [i.id for i in read_items([b"p\n", b"q\n"])] == [1, 2]


def test_ready_batches_answer_what_a_pipe_has_sent_without_waiting_for_more():
    import os
    import threading

    from genloom.data.readers import LineSource, ready_batches

    r, w = os.pipe()
    os.write(w, b"one\ntwo\nthree\n")
    source = LineSource(os.fdopen(r, "rb"))
    batches = ready_batches(iter(source), 32, source.ready)
    assert next(batches) == [b"one\n", b"two\n", b"three\n"]  # not held until 32 lines came
    timer = threading.Timer(0.2, lambda: (os.write(w, b"four\nfive"), os.close(w)))
    timer.start()
    rest = list(batches)  # however the late lines were split, all come, the last with no newline
    assert [line for batch in rest for line in batch] == [b"four\n", b"five"]
    timer.join()


def test_ready_batches_of_a_regular_file_are_full(tmp_path):
    from genloom.data.readers import LineSource, ready_batches

    path = tmp_path / "in.txt"
    path.write_bytes(b"".join(b"%d\n" % i for i in range(70)))
    with open(path, "rb") as f:
        source = LineSource(f)
        assert [len(b) for b in ready_batches(iter(source), 32, source.ready)] == [32, 32, 6]
