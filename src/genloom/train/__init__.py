"""genloom.train: the training loop and the tools of 让Keras更酷一些 (taps, EMA, safe loaders).

- `trainer.fit(model, loss_fn, batches, config=TrainConfig(...), run_dir=...)`: the one loop.
- `ema.EMA`: weight moving average with bias correction / warm-up, `applied()` swap.
- `taps.Taps`: read module outputs and probe-recorded tensors by name; `plots.plot_attention`.
- `data.Loader`: length-bucketed, rank/worker-sharded, seeded, resumable batches.
- `checkpoint`: atomic safetensors + JSON checkpoints; `save_weights` for model directories.
- `distributed`: torchrun / DDP setup.
"""

from genloom.train.checkpoint import load_checkpoint, save_checkpoint, save_weights
from genloom.train.data import Loader
from genloom.train.ema import EMA
from genloom.train.plots import plot_attention, plot_curves
from genloom.train.taps import Taps
from genloom.train.trainer import FitResult, TrainConfig, fit

__all__ = ["EMA", "FitResult", "Loader", "Taps", "TrainConfig", "fit", "load_checkpoint",
           "plot_attention", "plot_curves", "save_checkpoint", "save_weights"]
