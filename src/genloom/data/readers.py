"""Readers for user data files: JSONL, CSV / TSV (header row) and TXT, with named fields.

Records stream one at a time (a file is never read whole). Bytes are decoded line by line as
strict UTF-8 (a leading byte-order mark is dropped), so a bad byte is reported with its line.
Every problem a user can cause is a `UserError` of one line naming the file and, where there is
one, the line number: missing file, empty file, a file with no records, a JSONL line that is not
JSON or not an object, a missing field, a row with the wrong number of columns, invalid UTF-8.

Formats (taken from the extension unless `fmt` is given):

- `jsonl` (.jsonl, .ndjson): one JSON object per line; the named fields must be present and not
  null; values are returned as parsed (other keys are ignored);
- `csv` (.csv) and `tsv` (.tsv): the first row names the columns, which must include the fields;
  every later row must have as many columns as the header;
- `txt` (.txt): one record per line; with one field the whole line is its value, with k fields
  the line is split at its first k-1 tabs, mapped to the fields in order (so the last field may
  itself hold tabs).

Blank lines are skipped in every format (their line numbers still count).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from genloom.errors import UserError

FORMATS = ("jsonl", "csv", "tsv", "txt")
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".txt": "txt"}


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number from 1, decoded line with its ending) for each line of `path`."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{path}:{n}: invalid UTF-8 (byte 0x{raw[e.start]:02x} at byte "
                                f"{e.start + 1} of the line)") from None
            if n == 1 and line.startswith("\ufeff"):
                line = line[1:]
            yield n, line


def _jsonl(path: Path, fields: Sequence[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    for n, line in _lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise UserError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
        for field in fields:
            if obj.get(field) is None:
                what = "is null" if field in obj else "is missing"
                have = ", ".join(map(str, obj)) or "none"
                raise UserError(f"{path}:{n}: field {field!r} {what} (fields here: {have})")
        yield n, {field: obj[field] for field in fields}


def _delimited(path: Path, fields: Sequence[str], delimiter: str
               ) -> Iterator[tuple[int, dict[str, Any]]]:
    lines = _lines(path)
    reader = csv.reader((line for _, line in lines), delimiter=delimiter)
    try:
        header: list[str] | None = None
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if header is None:
                header = [h.strip() for h in row]
                missing = [f for f in fields if f not in header]
                if missing:
                    raise UserError(f"{path}:{reader.line_num}: header has no column "
                                    f"{missing[0]!r} (columns: {', '.join(header)})")
                index = [header.index(f) for f in fields]
                continue
            if len(row) != len(header):
                raise UserError(f"{path}:{reader.line_num}: row has {len(row)} column(s), but "
                                f"the header has {len(header)}")
            yield reader.line_num, {f: row[i] for f, i in zip(fields, index)}
    except csv.Error as e:
        raise UserError(f"{path}:{reader.line_num}: malformed {delimiter!r}-separated row "
                        f"({e})") from None


def _txt(path: Path, fields: Sequence[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    k = len(fields)
    for n, line in _lines(path):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        columns = line.split("\t", k - 1)
        if len(columns) != k:
            raise UserError(f"{path}:{n}: expected {k} tab-separated columns "
                            f"({', '.join(fields)}), found {len(columns)}")
        yield n, dict(zip(fields, columns))


def _format_of(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise UserError(f"unknown format {fmt!r} (formats: {', '.join(FORMATS)})")
        return fmt
    try:
        return _EXTENSIONS[path.suffix.lower()]
    except KeyError:
        raise UserError(f"{path}: cannot tell the format from the extension "
                        f"{path.suffix or '(none)'!r}; give one of {', '.join(FORMATS)}") from None


def _numbered(path: str | os.PathLike[str], fields: Sequence[str], fmt: str | None
              ) -> Iterator[tuple[int, dict[str, Any]]]:
    """Checks the file and options now; returns a stream of (line number, record)."""
    p = Path(path)
    if isinstance(fields, str) or not fields:
        raise ValueError("fields must be a non-empty sequence of field names")
    kind = _format_of(p, fmt)
    if not p.exists():
        raise UserError(f"{p}: no such file")
    if not p.is_file():
        raise UserError(f"{p}: not a regular file")
    try:
        size = p.stat().st_size
        with open(p, "rb"):
            pass
    except OSError as e:
        raise UserError(f"{p}: cannot read ({e.strerror})") from None
    if size == 0:
        raise UserError(f"{p}: file is empty")
    if kind == "jsonl":
        stream = _jsonl(p, fields)
    elif kind == "txt":
        stream = _txt(p, fields)
    else:
        stream = _delimited(p, fields, "," if kind == "csv" else "\t")
    return _nonempty(p, stream)


def _nonempty(path: Path, stream: Iterator[tuple[int, dict[str, Any]]]
              ) -> Iterator[tuple[int, dict[str, Any]]]:
    """Pass records through; UserError at the end if there were none."""
    count = 0
    for item in stream:
        count += 1
        yield item
    if count == 0:
        raise UserError(f"{path}: no records (only blank lines or a header)")


def read_records(path: str | os.PathLike[str], *, fields: Sequence[str],
                 fmt: str | None = None) -> Iterator[dict[str, Any]]:
    """Stream the records of a user file as dicts holding exactly `fields`.

    Args:
        path: a .jsonl/.ndjson, .csv, .tsv or .txt file (see the module docstring).
        fields: the field names every record must have (for TXT: the columns, in order).
        fmt: "jsonl", "csv", "tsv" or "txt" to override the extension.

    Raises:
        UserError: missing/empty/unreadable file, unknown format (at once); bad JSON, missing
            field, wrong column count, invalid UTF-8, no records (while iterating).
    """
    return (record for _, record in _numbered(path, fields, fmt))


def read_pairs(path: str | os.PathLike[str], *, source: str, target: str,
               fmt: str | None = None) -> list[tuple[str, str]]:
    """(source, target) string pairs from a user file, e.g. (content, title) for the title task.

    Values are stripped of surrounding whitespace; a value that is not a string or is empty
    after stripping is a UserError naming the line.
    """
    if source == target:
        raise UserError(f"source and target are the same field {source!r}")
    pairs = []
    for n, record in _numbered(path, (source, target), fmt):
        pair = []
        for field in (source, target):
            value = record[field]
            if not isinstance(value, str):
                raise UserError(f"{path}:{n}: field {field!r} is not a string "
                                f"({type(value).__name__})")
            if not value.strip():
                raise UserError(f"{path}:{n}: field {field!r} is empty")
            pair.append(value.strip())
        pairs.append((pair[0], pair[1]))
    return pairs


# ---- inputs to a command: one item per line, or JSONL objects -----------------------------------
INPUT_FORMATS = ("auto", "lines", "jsonl")


@contextlib.contextmanager
def open_input(path: str) -> Iterator[Any]:
    """A binary stream of `path` (closed on exit), or of stdin for "-" (left open); a missing
    file is a UserError."""
    import sys

    if path == "-":
        yield sys.stdin.buffer
        return
    p = Path(path)
    if not p.is_file():
        raise UserError(f"no such file: {path}")
    with open(p, "rb") as stream:
        yield stream


def _input_name(path: str) -> str:
    """How messages name a command's input."""
    return "stdin" if path == "-" else path


def _json_object(line: str) -> dict | None:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


@dataclass(frozen=True)
class InputItem:
    """One line of a command's input: its number, its id (a JSONL record's "id" field when it
    has one, else the line number: what --json output carries), and its text or why it has none."""

    line: int
    id: Any
    text: str | None
    error: str | None


def read_items(stream: Any, *, fmt: str = "auto", field: str = "content", name: str = "input"
               ) -> Iterator[InputItem]:
    """An `InputItem` for each line of a binary `stream` (or any iterable of lines).

    One item per line ("lines") or one JSON object per line whose `field` is the text
    ("jsonl"); "auto" picks "jsonl" when the first non-blank line is a JSON object. A line that
    cannot be used (blank, invalid UTF-8, not an object, missing or empty field) yields an
    error naming its line instead of a text, so a caller can keep its output aligned with the
    input (`title generate`) or stop at the first one (`read_all_inputs`).
    """
    if fmt not in INPUT_FORMATS:
        raise UserError(f"unknown input format {fmt!r} (choose from {', '.join(INPUT_FORMATS)})")
    mode = None if fmt == "auto" else fmt
    for n, raw in enumerate(stream, start=1):
        if isinstance(raw, str):
            raw = raw.encode("utf-8")
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as e:
            yield InputItem(n, n, None, f"{name}:{n}: invalid UTF-8 (byte 0x{raw[e.start]:02x})")
            continue
        if n == 1:
            line = line.removeprefix("\ufeff")
        if mode is None and line.strip():
            mode = "jsonl" if _json_object(line) is not None else "lines"
        if not line.strip():
            yield InputItem(n, n, None, f"{name}:{n}: empty line")
        elif mode == "jsonl":
            obj = _json_object(line)
            if obj is None:
                yield InputItem(n, n, None, f"{name}:{n}: not a JSON object")
                continue
            id_ = obj.get("id", n)
            if not isinstance(obj.get(field), str):
                yield InputItem(n, id_, None, f"{name}:{n}: field {field!r} is missing or not a string")
            elif not obj[field].strip():
                yield InputItem(n, id_, None, f"{name}:{n}: field {field!r} is empty")
            else:
                yield InputItem(n, id_, obj[field], None)
        else:
            yield InputItem(n, n, line, None)


def read_inputs(stream: Any, *, fmt: str = "auto", field: str = "content", name: str = "input"
                ) -> Iterator[tuple[int, str | None, str | None]]:
    """(line number, text or None, error or None) of each `read_items` item."""
    for item in read_items(stream, fmt=fmt, field=field, name=name):
        yield item.line, item.text, item.error


class LineSource:
    """The lines of a binary stream, and whether another one can be had without waiting:
    `ready()` is True while a whole line is buffered, the stream is a regular file, or the
    descriptor has bytes to read now. `ready_batches` uses it so a command reading a pipe
    answers each line as it arrives, yet batches lines that are already there."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.buffer = b""
        self.eof = False
        try:
            self.fd = stream.fileno()
            import stat

            self.regular = stat.S_ISREG(os.fstat(self.fd).st_mode)
        except (AttributeError, OSError, ValueError):  # not a real file (a test's BytesIO)
            self.fd, self.regular = None, True

    def ready(self) -> bool:
        if self.regular or self.eof or b"\n" in self.buffer:
            return True
        import select

        return bool(select.select([self.fd], [], [], 0)[0])

    def __iter__(self) -> Iterator[bytes]:
        if self.regular:
            yield from self.stream
            return
        while True:
            cut = self.buffer.find(b"\n")
            if cut >= 0:
                line, self.buffer = self.buffer[: cut + 1], self.buffer[cut + 1 :]
                yield line
                continue
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                self.eof = True
                if self.buffer:
                    line, self.buffer = self.buffer, b""
                    yield line
                return
            self.buffer += chunk


def ready_batches(items: Iterator[Any], size: int, ready: Any) -> Iterator[list[Any]]:
    """Lists of up to `size` items, each cut short when `ready()` says the next item would mean
    waiting for input (so nothing already read waits for lines that have not come yet)."""
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size or not ready():
            yield batch
            batch = []
    if batch:
        yield batch


def read_all_inputs(stream: Any, *, fmt: str = "auto", field: str = "content", name: str = "input") -> list[str]:
    """Every text of `read_inputs`; the first bad line (or no text at all) is a UserError."""
    texts = []
    for _, text, error in read_inputs(stream, fmt=fmt, field=field, name=name):
        if error is not None:
            raise UserError(error)
        texts.append(text)
    if not texts:
        raise UserError(f"no input in {name}")
    return texts


def read_input_file(path: str, *, fmt: str = "auto", field: str = "content") -> list[tuple[Any, str]]:
    """(id, text) of each non-blank line of a command's --input FILE ("-": stdin), through
    `read_items`: one text per line, or JSONL records' `field` (their "id" carried, else the
    line number). Blank lines are skipped; any other line that cannot be used, or no text at
    all, is a one-line UserError."""
    name = _input_name(path)
    with open_input(path) as stream:
        lines = stream.readlines()
    items = []
    for item, raw in zip(read_items(lines, fmt=fmt, field=field, name=name), lines):
        if item.error is not None and raw.strip():
            raise UserError(item.error)
        if item.text is not None:
            items.append((item.id, item.text))
    if not items:
        raise UserError(f"{name} holds no input (one per non-blank line)")
    return items


@contextlib.contextmanager
def item_batches(path: str, size: int, *, fmt: str = "auto", field: str = "content"
                 ) -> Iterator[Iterator[list[InputItem]]]:
    """The `InputItem`s of `path` (stdin for "-") in lists of up to `size`, each cut short when
    another item would mean waiting for a pipe, so every item is answered as soon as it arrives.
    The file is opened on entry (a missing one is a UserError before any model loads) and closed
    on exit."""
    with open_input(path) as stream:
        source = LineSource(stream)
        yield ready_batches(read_items(source, fmt=fmt, field=field, name=_input_name(path)), size, source.ready)
