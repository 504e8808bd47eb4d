"""Training the generators ("cln", "prefix", "plain") and the judge, each with `train.fit`.

A generator row is <bos> (or, for "prefix", the label's token) + the text's characters + <eos>
when the text was not cut; rows are right-padded (`genloom.train.lm.pad_rows`) and trained on
the next-token loss over real targets (`genloom.train.lm.next_token_loss`), the condition (label
ids or vectors) passed beside them. Every run writes its loop files under OUT/run and then the
model, its tokenizer and condition.json under OUT (`output_directory` says what OUT may hold).

Letters: B rows, T positions, V vocabulary size, K labels, E condition width.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from genloom.errors import UserError
from genloom.files import write_json_atomic
from genloom.models import save
from genloom.models.judge import CharCNNJudge, JudgeConfig, classify
from genloom.tasks.condition.config import GENERATORS, META_FILE, LMSpec, build_lm
from genloom.tasks.condition.data import ConditionData, Split, class_means
from genloom.tokenizers import CharTokenizer
from genloom.train import Loader, TrainConfig, fit, outdir
from genloom.train.outdir import untrained
from genloom.train.lm import next_token_loss, pad_rows

PAD_ID = 0  # CharTokenizer's <pad>: what rows are padded with and the loss ignores
DEV_TEXTS = 500  # dev texts a generator is evaluated on


# ---- rows, batches, the loss --------------------------------------------------------------------
def sequence(kind: str, tokenizer: CharTokenizer, text: str, label: int, max_chars: int) -> list[int]:
    """Training ids: <bos> (or the label token for "prefix"), the text's characters, and <eos>
    when the text was not cut."""
    ids = tokenizer.encode(text)
    first = tokenizer.vocab_size + label if kind == "prefix" else tokenizer.bos_id
    return [first] + ids[:max_chars] + ([tokenizer.eos_id] if len(ids) <= max_chars else [])


def collate(items: list[tuple[list[int], Any]]) -> dict[str, Tensor]:
    """Right-padded ids (B, T), and the conditions: label ids (B,) or vectors (B, E), if any."""
    batch = {"ids": pad_rows([ids for ids, _ in items], PAD_ID)}  # (B, T)
    conds = [c for _, c in items]
    if conds[0] is not None:
        batch["condition"] = torch.stack(conds) if isinstance(conds[0], Tensor) else torch.tensor(conds)
    return batch


def lm_loss(model: torch.nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
    """Token-mean next-character cross-entropy over the non-padding targets, and their count."""
    ids = batch["ids"]  # (B, T)
    valid = ids != PAD_ID  # (B, T); right padding is never seen by a real position (causal)
    logits = model(ids, condition=batch.get("condition"))  # (B, T, V)
    return next_token_loss(logits, ids, valid), int(valid[:, 1:].sum())


@torch.no_grad()
def mean_loss(model: torch.nn.Module, items: list[tuple[list[int], Any]], *, batch_size: int = 64) -> float:
    """`lm_loss` averaged over every target of `items` (in batches)."""
    total = count = 0.0
    for s in range(0, len(items), batch_size):
        loss, n = lm_loss(model, collate(items[s : s + batch_size]))
        total, count = total + float(loss) * n, count + n
    if count == 0:
        raise UserError("no tokens to score")
    return total / count


# ---- the output directory -----------------------------------------------------------------------
def check_out(out: str | Path, *, force: bool = False, resume: bool = False) -> bool:
    """Raise a one-line `UserError` unless a run may write a model to `out`
    (`genloom.train.outdir.check_out`: new or empty, or with `resume` the stopped run, is written
    in place, so a killed run can be resumed; a condition model or run is replaced only with
    `force`; another kind of model or anything else is never written over). Returns True when
    `out` is to be replaced whole."""
    return outdir.check_out(out, kind="condition", force=force, resume=resume)


@contextmanager
def output_directory(out: str | Path, *, force: bool = False, resume: bool = False) -> Iterator[Path]:
    """The directory a run writes into (`check_out`): `out` itself, or, when it is replaced, a new
    directory beside it that takes its place only once the block ends without error."""
    with outdir.output_directory(out, kind="condition", force=force, resume=resume) as where:
        yield where


def _budget(steps: int | None, minutes: float | None, **kw: Any) -> TrainConfig:
    """Cosine decay over `steps` when given, else a constant lr after warm-up; stop at either."""
    if steps is None and minutes is None:
        raise UserError("give --steps or --minutes (or both): the run would never stop")
    if (steps is not None and steps < 1) or (minutes is not None and not minutes > 0):
        raise UserError(f"--steps must be >= 1 and --minutes > 0, got {steps} and {minutes}")
    return TrainConfig(max_steps=steps, max_minutes=minutes, schedule="cosine" if steps else "constant",
                       min_lr_ratio=0.1, **kw)


def _loop_seconds(metrics: Path) -> tuple[float, float]:
    """(training seconds, evaluation seconds) of a run from its metrics.jsonl, over every launch:
    the loop's clock at its end, less the evaluations it ran along the way."""
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    end = [r for r in records if r.get("event") == "end"][-1]
    evals = [r.get("eval_seconds", 0.0) for r in records if r.get("event") == "eval"]
    inside = [r.get("eval_seconds", 0.0) for r in records if r.get("event") == "eval" and r["step"] < end["step"]]
    return end["time"] - sum(inside), sum(evals)


# ---- the generators -----------------------------------------------------------------------------
def train_generator(kind: str, data: ConditionData, out: str | Path, *, spec: LMSpec = LMSpec(),
                    steps: int | None = None, minutes: float | None = None, batch_size: int = 32,
                    lr: float = 1e-3, seed: int = 0, bf16: bool = False, progress: bool = True,
                    resume: bool = False, force: bool = False) -> dict[str, Any]:
    """Train a "cln", "prefix" or "plain" LM on `data` and save it with its tokenizer and
    condition.json under `out` (the loop's files under out/run; `resume` continues a run that
    stopped, from its last checkpoint, with the same arguments; `force` replaces what `out`
    holds). Returns condition.json's dict."""
    if kind not in GENERATORS:
        raise UserError(f"unknown generator kind {kind!r} ({', '.join(GENERATORS)})")
    if batch_size < 1 or not lr > 0:
        raise UserError(f"batch size must be >= 1 and lr > 0, got {batch_size} and {lr}")
    train = data.splits["train"]
    tokenizer = CharTokenizer.train(train.texts, min_count=spec.min_count)
    vectors = train.vectors if kind == "cln" else None
    model = build_lm(kind, spec, tokenizer.vocab_size, len(data.label_names),
                     vector_dim=None if vectors is None else vectors.shape[1])

    def rows(split: Split) -> list[tuple[list[int], Any]]:
        ids = [sequence(kind, tokenizer, t, lab, spec.max_chars) for t, lab in zip(split.texts, split.labels)]
        conds: list[Any] = [None] * len(ids)
        if kind == "cln":
            conds = list(split.vectors) if vectors is not None else list(split.labels)
        return list(zip(ids, conds))

    train_rows, dev_rows = rows(train), rows(data.splits["dev"].head(DEV_TEXTS))
    loader = Loader(train_rows, batch_size=batch_size, collate_fn=collate, seed=seed,
                    lengths=[len(ids) for ids, _ in train_rows])

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        t0 = time.perf_counter()
        loss = mean_loss(m, dev_rows)
        return {"loss": loss, "ppl": math.exp(loss), "eval_seconds": time.perf_counter() - t0}

    config = _budget(steps, minutes, lr=lr, warmup_steps=min(200, (steps or 2000) // 10), seed=seed,
                     bf16=bf16, eval_every=max(50, (steps or 1000) // 10), keep_last=1, device="cpu",
                     progress=progress)
    with output_directory(out, force=force, resume=resume) as where:
        result = fit(model, lm_loss, loader, config=config, run_dir=where / "run", resume=resume,
                     eval_fn=evaluate if dev_rows else None, task_config={"kind": kind, **asdict(spec)})
        untrained(result)
        seconds, eval_seconds = _loop_seconds(where / "run" / "metrics.jsonl")
        meta = {"kind": kind, "labels": list(data.label_names), "source": data.source, "spec": asdict(spec),
                "label_base": tokenizer.vocab_size if kind == "prefix" else None,
                "class_means": class_means(train, data.label_names) if vectors is not None else None,
                "train_seconds": seconds, "eval_seconds": eval_seconds, "steps": result.step,
                "batch_size": batch_size,
                "parameters": sum(p.numel() for p in model.parameters()), "dev": result.last_metrics}
        save(model.eval(), tokenizer, where)
        write_json_atomic(where / META_FILE, meta)
    return meta


# ---- the judge ----------------------------------------------------------------------------------
def judge_accuracy(model: CharCNNJudge, tokenizer: CharTokenizer, split: Split) -> float:
    """Share of the split's texts whose most probable label under the judge is their own."""
    probs = classify(model, tokenizer, split.texts)  # (N, K)
    return float((probs.argmax(1) == torch.tensor(split.labels)).float().mean())


def _judge_loss(model: torch.nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
    return F.cross_entropy(model(batch["ids"]).float(), batch["label"]), batch["label"].numel()


def _judge_collate(items: list[tuple[list[int], int]]) -> dict[str, Tensor]:
    """Right-padded ids (B, T) and labels (B,); the judge pads rows narrower than its widest kernel."""
    return {"ids": pad_rows([ids for ids, _ in items], PAD_ID), "label": torch.tensor([lab for _, lab in items])}


def train_judge(data: ConditionData, out: str | Path, *, steps: int | None = None, minutes: float | None = None,
                epochs: int | None = None, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                judge: JudgeConfig | None = None, progress: bool = True, force: bool = False) -> dict[str, Any]:
    """Train the character-CNN judge on the training split (own tokenizer, best dev accuracy
    kept), save it under `out` and return condition.json's dict with its test accuracy."""
    if any(v is not None and not v > 0 for v in (steps, minutes, epochs)) or batch_size < 1 or not lr > 0:
        raise UserError(f"steps, minutes, epochs, batch size and lr must be positive, "
                        f"got {steps}, {minutes}, {epochs}, {batch_size}, {lr}")
    train, dev, test = (data.splits[s] for s in ("train", "dev", "test"))
    tokenizer = CharTokenizer.train(train.texts, min_count=2)
    config = JudgeConfig(**{**asdict(judge or JudgeConfig()), "vocab_size": tokenizer.vocab_size,
                            "n_labels": len(data.label_names), "labels": data.label_names})
    model = CharCNNJudge(config)
    items = [(tokenizer.encode(t)[: config.max_len] or [tokenizer.unk_id], lab)
             for t, lab in zip(train.texts, train.labels)]
    loader = Loader(items, batch_size=batch_size, collate_fn=_judge_collate, seed=seed,
                    lengths=[len(r) for r, _ in items])
    if steps is None and minutes is None and epochs is None:
        epochs = 3
    cfg = TrainConfig(lr=lr, max_steps=steps, max_minutes=minutes, max_epochs=epochs, seed=seed,
                      warmup_steps=100, schedule="cosine" if steps or epochs else "constant", min_lr_ratio=0.05,
                      eval_every=max(100, len(loader) // 2), metric="accuracy", mode="max", keep_last=1,
                      device="cpu", progress=progress)
    with output_directory(out, force=force) as where:
        started = time.perf_counter()
        result = fit(model, _judge_loss, loader, config=cfg, run_dir=where / "run",
                     eval_fn=(lambda m: {"accuracy": judge_accuracy(m, tokenizer, dev)}) if dev.texts else None,
                     task_config={"kind": "judge", **asdict(config)})
        untrained(result)
        seconds = time.perf_counter() - started
        model.eval()
        meta = {"kind": "judge", "labels": list(data.label_names), "source": data.source, "train_seconds": seconds,
                "steps": result.step, "dev_accuracy": judge_accuracy(model, tokenizer, dev) if dev.texts else None,
                "test_accuracy": judge_accuracy(model, tokenizer, test) if test.texts else None,
                "test_size": len(test.texts), "parameters": sum(p.numel() for p in model.parameters())}
        save(model, tokenizer, where)
        write_json_atomic(where / META_FILE, meta)
    return meta
