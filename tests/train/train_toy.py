"""A toy next-token task for the trainer tests, importable and runnable as a script.

Run as a script (the kill / resume and DDP tests launch it with subprocess or torchrun):

    python tests/train/train_toy.py RUN_DIR --max-steps 30 --ckpt-every 10 [--resume] [--workers 1]

It trains `ToyLM` on `toy_dataset()` through `genloom.train.trainer.fit` with a `Loader`, then
rank 0 writes the final weights to RUN_DIR/final/ (model.safetensors, model_ema.safetensors).
Sequences have different lengths, so batches carry different token counts (the trainer's token
weighting matters) and the model has dropout (the RNG restore matters).
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn
from torch.utils.data import Dataset

from genloom.train import distributed
from genloom.train.checkpoint import save_weights
from genloom.train.data import Loader
from genloom.train.trainer import TrainConfig, fit

VOCAB = 13


class ToyData(Dataset):
    """n sequences of 3..12 tokens from a fixed seed (items are 1-D long tensors)."""

    def __init__(self, n: int = 96, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(3, 13, (n,), generator=g)
        self.items = [torch.randint(1, VOCAB, (int(k),), generator=g) for k in lengths]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.items[i]


def collate(items: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Right-pad with 0; inputs are tokens[:-1], targets tokens[1:], mask marks real targets."""
    t = max(len(x) for x in items)
    tokens = torch.zeros(len(items), t, dtype=torch.long)
    for row, x in enumerate(items):
        tokens[row, : len(x)] = x
    return {"x": tokens[:, :-1], "y": tokens[:, 1:], "mask": tokens[:, 1:] > 0}


class ToyLM(nn.Module):
    def __init__(self, dim: int = 16, dropout: float = 0.1) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, dim)
        self.hidden = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(dim, VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(torch.tanh(self.hidden(self.emb(x)))))  # (B, T, V)


def toy_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    logits = model(batch["x"])
    mask = batch["mask"]
    loss = nn.functional.cross_entropy(logits[mask], batch["y"][mask])
    return loss, int(mask.sum())


def make_model(seed: int = 0, dropout: float = 0.1) -> ToyLM:
    torch.manual_seed(seed)
    return ToyLM(dropout=dropout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--max-steps", type=int, default=30)
    ap.add_argument("--ckpt-every", type=int, default=10)
    ap.add_argument("--log-every", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8, help="per rank")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--ema", type=float, default=0.9)
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(argv)
    data = ToyData()
    loader = Loader(data, batch_size=args.batch, collate_fn=collate, seed=1,
                    lengths=[len(x) for x in data.items], bucket_batches=2,
                    num_workers=args.workers)
    model = make_model(dropout=args.dropout)
    cfg = TrainConfig(lr=1e-2, warmup_steps=3, max_steps=args.max_steps, ckpt_every=args.ckpt_every,
                      log_every=args.log_every, ema_decay=args.ema, keep_last=3, progress=False,
                      device="cpu")
    result = fit(model, toy_loss, loader, config=cfg, run_dir=args.run_dir, resume=args.resume,
                 task_config={"task": "toy", "batch_per_rank": args.batch})
    if distributed.is_main():
        save_weights(model, f"{args.run_dir}/final", ema=result.ema)
    distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
