"""Process-safe data loading: length-bucketed batches, per-worker and per-batch seeding, DDP
sharding, and a sampler state that resumes mid-epoch (the "安全生成器" of 让Keras更酷一些).

The post's point: a Python generator is not safe to read from several processes (Keras could
deadlock or duplicate data); a map-style dataset (`__len__`, `__getitem__`) is, because the
*indices* are decided in one place and the workers only fetch. `Loader` builds on that:

- Batches are planned per epoch from (seed, epoch) alone: a permutation, cut into buckets of
  `bucket_batches` global batches that are sorted by length (so a batch holds similar lengths and
  little padding), cut into G = ceil(N / (batch_size * world_size)) near-equal global batches
  whose order is shuffled. Each global batch is split into `world_size` near-equal pieces; rank r
  takes piece r. So every example is seen exactly once per epoch, every rank gets the same number
  of batches (DDP needs that), and the union of the ranks' batches at a step is the very batch a
  single process with batch_size * world_size sees: the data of a step does not depend on how
  many processes share it.
- Workers (`num_workers > 0`) each fetch whole batches, assigned round-robin by the DataLoader, so
  sharding over workers comes for free and never duplicates.
- Seeding: torch seeds each worker with base_seed + worker_id, base_seed drawn from a generator
  seeded by (seed, epoch, rank); `_seed_worker` derives numpy's and random's seeds from it. On top,
  every batch is fetched (dataset items *and* collate) with torch, numpy and random seeded from
  (seed, epoch, batch number), the caller's RNG states saved and restored around it. So random
  augmentation is reproducible from one seed, differs per batch, worker and epoch, does not
  depend on the number of workers, and a resumed run draws exactly what the uninterrupted one did.
- `state_dict()` is (epoch, batches consumed); after `load_state_dict` iteration resumes on the
  very next batch.

Shape letters: none (indices only).
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from genloom.errors import UserError


class IndexBatch(list):
    """The dataset indices of one batch, tagged with its epoch and global batch number."""

    def __init__(self, indices: Sequence[int], *, epoch: int, number: int) -> None:
        super().__init__(int(i) for i in indices)
        self.epoch = epoch
        self.number = number

    def __reduce__(self):  # workers receive batches through a queue: keep the tags
        return (_rebuild_batch, (list(self), self.epoch, self.number))


def _rebuild_batch(indices: list[int], epoch: int, number: int) -> IndexBatch:
    return IndexBatch(indices, epoch=epoch, number=number)


def plan_epoch(
    n: int,
    batch_size: int,
    *,
    epoch: int,
    seed: int,
    world_size: int = 1,
    rank: int = 0,
    lengths: Sequence[int] | None = None,
    shuffle: bool = True,
    bucket_batches: int = 50,
) -> list[IndexBatch]:
    """This rank's batches for one epoch (module docstring); a pure function of its arguments."""
    if n <= 0:
        raise UserError("the dataset is empty")
    if lengths is not None and len(lengths) != n:
        raise UserError(f"got {len(lengths)} lengths for {n} examples")
    global_size = batch_size * world_size
    count = math.ceil(n / global_size)
    if n // count < world_size:
        raise UserError(f"{n} examples are too few to give each of {world_size} ranks a batch")
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n) if shuffle else np.arange(n)
    if lengths is not None:
        lens = np.asarray(lengths)
        bucket = global_size * bucket_batches
        order = np.concatenate([chunk[np.argsort(lens[chunk], kind="stable")]
                                for chunk in np.split(order, range(bucket, n, bucket))])
    global_batches = np.array_split(order, count)
    numbers = rng.permutation(count) if shuffle else np.arange(count)
    return [IndexBatch(np.array_split(global_batches[g], world_size)[rank], epoch=epoch, number=int(g))
            for g in numbers]


def _batch_seeds(seed: int, epoch: int, number: int) -> tuple[int, int, int]:
    """(torch, numpy, random) seeds of one batch, independent streams from one SeedSequence."""
    words = np.random.SeedSequence([seed, epoch, number]).generate_state(3, np.uint64)
    return int(words[0] >> np.uint64(1)), int(words[1] % np.uint64(2**32)), int(words[2])


def _seed_worker(worker_id: int) -> None:
    """worker_init_fn: seed numpy and random from the torch seed DataLoader gave this worker."""
    base = torch.initial_seed()  # base_seed + worker_id, set by DataLoader
    np.random.seed(np.random.SeedSequence(base).generate_state(4))
    random.seed(base)


def _passthrough(batch: Any) -> Any:
    return batch


class _SeededFetch(Dataset):
    """Fetches a whole batch (items and collate) under RNGs seeded from (seed, epoch, number)."""

    def __init__(self, dataset: Dataset, collate_fn: Callable[[list], Any], seed: int) -> None:
        self.dataset = dataset
        self.collate_fn = collate_fn
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    def __getitems__(self, batch: IndexBatch) -> Any:
        t_seed, np_seed, py_seed = _batch_seeds(self.seed, batch.epoch, batch.number)
        saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
        try:
            torch.manual_seed(t_seed)
            np.random.seed(np_seed)
            random.seed(py_seed)
            return self.collate_fn([self.dataset[i] for i in batch])
        finally:
            torch.set_rng_state(saved[0])
            np.random.set_state(saved[1])
            random.setstate(saved[2])


class _EpochSampler:
    """The batch sampler the DataLoader iterates: the owning Loader's remaining batches."""

    def __init__(self, loader: Loader) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[IndexBatch]:
        return iter(self.loader.plan()[self.loader.batches_consumed:])

    def __len__(self) -> int:
        return len(self.loader) - self.loader.batches_consumed


class Loader:
    """A resumable, sharded, length-bucketed loader over a map-style dataset.

    Iterating yields the rest of the current epoch, then moves to the next epoch; iterate again
    for the next. `state_dict()` / `load_state_dict()` carry (epoch, batches consumed).

    Args:
        dataset: any map-style dataset (`__len__`, `__getitem__`).
        batch_size: examples per batch per rank (the last batches of an epoch may hold one less:
            batches are near-equal rather than one short tail).
        collate_fn: list of items -> batch (default: torch's default_collate).
        lengths: one length per example, for bucketing; None shuffles without bucketing.
        seed: the one seed the order and every RNG in the fetch derive from.
        shuffle: False keeps dataset order (no bucketing shuffle either).
        bucket_batches: global batches per length-sorted bucket.
        num_workers: DataLoader worker processes (0 fetches in this process).
        rank, world_size: this process's DDP rank and the number of ranks (default: the torchrun
            environment variables RANK and WORLD_SIZE, else 0 and 1).
        pin_memory, prefetch_factor, multiprocessing_context: passed to DataLoader.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        collate_fn: Callable[[list], Any] | None = None,
        lengths: Sequence[int] | None = None,
        seed: int = 0,
        shuffle: bool = True,
        bucket_batches: int = 50,
        num_workers: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        pin_memory: bool = False,
        prefetch_factor: int | None = None,
        multiprocessing_context: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.lengths = list(lengths) if lengths is not None else None
        self.seed = seed
        self.shuffle = shuffle
        self.bucket_batches = bucket_batches
        self.num_workers = num_workers
        self.world_size = world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", 1))
        self.rank = rank if rank is not None else int(os.environ.get("RANK", 0))
        if not 0 <= self.rank < self.world_size:
            raise UserError(f"rank {self.rank} is outside world size {self.world_size}")
        self.epoch = 0
        self.batches_consumed = 0
        self._plan: tuple[int, list[IndexBatch]] | None = None
        self._generator = torch.Generator()
        self._loader = DataLoader(
            _SeededFetch(dataset, collate_fn or default_collate, seed),
            batch_sampler=_EpochSampler(self),
            collate_fn=_passthrough,
            num_workers=num_workers,
            worker_init_fn=_seed_worker if num_workers > 0 else None,
            generator=self._generator,
            pin_memory=pin_memory,
            prefetch_factor=prefetch_factor if num_workers > 0 else None,
            multiprocessing_context=multiprocessing_context if num_workers > 0 else None,
        )

    def plan(self) -> list[IndexBatch]:
        """This rank's batches of the current epoch, in order (cached per epoch)."""
        if self._plan is None or self._plan[0] != self.epoch:
            batches = plan_epoch(len(self.dataset), self.batch_size, epoch=self.epoch,  # type: ignore[arg-type]
                                 seed=self.seed, world_size=self.world_size, rank=self.rank,
                                 lengths=self.lengths, shuffle=self.shuffle,
                                 bucket_batches=self.bucket_batches)
            self._plan = (self.epoch, batches)
        return self._plan[1]

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return math.ceil(len(self.dataset) / (self.batch_size * self.world_size))  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        self._generator.manual_seed(int(np.random.SeedSequence(
            [self.seed, self.epoch, self.rank]).generate_state(1, np.uint64)[0] >> np.uint64(1)))
        for batch in self._loader:
            self.batches_consumed += 1  # counted when handed over: a checkpoint taken after
            yield batch                  # training on it resumes with the next one
        self.epoch += 1
        self.batches_consumed = 0

    def state_dict(self) -> dict[str, int]:
        """Where the loader stands: resume with `load_state_dict` on the very next batch."""
        return {"epoch": self.epoch, "batches_consumed": self.batches_consumed, "seed": self.seed,
                "global_batch_size": self.batch_size * self.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from `state` (same seed and global batch size, any world size)."""
        if state["seed"] != self.seed or state["global_batch_size"] != self.batch_size * self.world_size:
            raise UserError(
                f"the saved data order used seed {state['seed']} and global batch size "
                f"{state['global_batch_size']}; this loader has {self.seed} and "
                f"{self.batch_size * self.world_size}: resume with the same settings")
        self.epoch = int(state["epoch"])
        self.batches_consumed = int(state["batches_consumed"])
