"""What `trainer.fit` reads and writes besides the model: the batch stream across epochs (with
its position, for exact resume) and the run's metrics.jsonl / curves.png."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genloom.errors import UserError
from genloom.files import write_atomic
from genloom.train.data import Loader
from genloom.train.plots import plot_curves


class BatchStream:
    """Batches across epochs, counting where it is (delegated to a Loader when it is one)."""

    def __init__(self, batches: Iterable, *, epoch: int, consumed: int) -> None:
        self.batches = batches
        self.is_loader = isinstance(batches, Loader)
        self.length = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
        if self.is_loader:  # the Loader knows where it stands (it may have been used before)
            self.epoch, self.consumed = batches.epoch, batches.batches_consumed  # type: ignore[union-attr]
        else:
            self.epoch, self.consumed = epoch, consumed
        self._it = None

    def next(self) -> Any:
        """The next batch, or None when an epoch just ended (counters move to the next one)."""
        if self._it is None:
            for sampler in (getattr(self.batches, "sampler", None),
                            getattr(self.batches, "batch_sampler", None)):
                if hasattr(sampler, "set_epoch"):  # DistributedSampler: a new order per epoch
                    sampler.set_epoch(self.epoch)
            self._it = iter(self.batches)
            if not self.is_loader:  # fast-forward a plain iterable to where the run stopped
                for _ in range(self.consumed):
                    next(self._it)
        try:
            batch = next(self._it)
        except StopIteration:
            self._it = None
            if self.consumed == 0:
                raise UserError("the training data yielded no batch in an epoch") from None
            self.epoch, self.consumed = self.epoch + 1, 0
            return None
        self.consumed += 1
        return batch

    def completed_epochs(self) -> int:
        ended = self.length is not None and self.consumed >= self.length
        return self.epoch + int(ended)

    def state(self) -> dict[str, Any]:
        if self.is_loader:
            return self.batches.state_dict()  # type: ignore[union-attr]
        return {"epoch": self.epoch, "batches_consumed": self.consumed}

    def load(self, state: dict[str, Any]) -> None:
        if self.is_loader:
            self.batches.load_state_dict(state)  # type: ignore[union-attr]
        self.epoch, self.consumed = int(state["epoch"]), int(state["batches_consumed"])


class MetricsLog:
    """metrics.jsonl (one JSON object per line, flushed) and the records for curves.png."""

    def __init__(self, run_dir: Path, *, enabled: bool, keep_until: int | None) -> None:
        self.path, self.png, self.enabled = run_dir / "metrics.jsonl", run_dir / "curves.png", enabled
        self.records: list[dict] = []
        self._plotted = -math.inf
        if not enabled:
            return
        if keep_until is not None and self.path.exists():  # resume: drop what the lost run logged
            old = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            self.records = [r for r in old if r.get("step", 0) <= keep_until]
            write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in self.records))
        elif keep_until is None:
            write_atomic(self.path, "")
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        if self.enabled:
            self.records.append(record)
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def plot(self, *, every_s: float = 0.0) -> None:
        """Redraw curves.png, at most once per `every_s` seconds (evaluations can be frequent)."""
        if self.enabled and time.perf_counter() - self._plotted >= every_s:
            plot_curves(self.records, self.png)
            self._plotted = time.perf_counter()

    def close(self) -> None:
        if self.enabled:
            self._file.close()


def to_device(batch: Any, device: torch.device) -> Any:
    """A batch (tensor, or dict / list / tuple of them, or anything with .to) on `device`."""
    if isinstance(batch, Tensor) or (hasattr(batch, "to") and not isinstance(batch, type)):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
