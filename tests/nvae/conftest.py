"""Shared tiny NVAE settings and one tiny training run, built here so any test can use it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from genloom.tasks.nvae.config import NVAETrainConfig, make_model
from genloom.tasks.nvae.train import TrainResult, eval_nelbo, eval_set, train


def _tiny_config(**overrides) -> NVAETrainConfig:
    """The tiny preset on the built-in shapes, 5 steps, no progress bar."""
    base = dict(preset="tiny", data="shapes", train_limit=64, eval_images=16, batch_size=16,
                max_steps=5, eval_every=0, ckpt_every=0, progress=False)
    return NVAETrainConfig(**{**base, **overrides})


@pytest.fixture
def tiny_config() -> Callable[..., NVAETrainConfig]:
    """`tiny_config(**overrides)`: the tiny preset on the built-in shapes, 5 steps."""
    return _tiny_config


@dataclass
class TinyRun:
    run_dir: Path  # the run directory (model/ inside)
    config: NVAETrainConfig
    result: TrainResult
    before: float  # -ELBO of the eval images under the untrained model


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    """60 steps of the tiny NVAE on shapes, checkpoints every 30."""
    run = tmp_path_factory.mktemp("nvae") / "run"
    cfg = _tiny_config(train_limit=480, eval_images=64, max_steps=60, ckpt_every=30, lr=1e-2)
    torch.manual_seed(cfg.seed)
    before = eval_nelbo(make_model(cfg, (1, 16, 16)), eval_set(cfg, "cpu"))
    return TinyRun(run, cfg, train(cfg, run), before)
