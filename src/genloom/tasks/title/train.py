"""Training a title model: the training core's `fit` with EMA, dev ROUGE-L selection and early
stopping, after an optional char-LM pre-training of the UniLM (`genloom.train.lm`).

A run writes into its directory the model (`model/`, `title.json`, see `genloom.tasks.title`), the
run's own files (metrics.jsonl, curves.png, config.json, train.json: steps, best dev ROUGE-L and
the machine's load when training ended) and, after pre-training, `pretrain/`. Until the model is
saved the directory also holds `checkpoints/` (one per evaluation): a run that was stopped
continues with `resume=True` (`title train --resume`) and gives the losses of an uninterrupted
run. What the directory may already hold is `genloom.train.outdir`'s rule: another command's
model is never written over, and with `force` the old title model is replaced only by a complete
new one.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genloom.errors import UserError
from genloom.files import write_json_atomic
from genloom.machine import machine
from genloom.metrics import rouge
from genloom.tasks.title.config import ARCHS, TRAIN_RECORD, TitleConfig
from genloom.tasks.title.data import Collate, Pair, PairDataset, build_tokenizer, normalise
from genloom.tasks.title.infer import TitleModel, decode_sources, save_title_model
from genloom.train import Loader, TrainConfig, fit
from genloom.train.checkpoint import latest_checkpoint
from genloom.train.outdir import check_same_run, output_directory, read_json, untrained
from genloom.train.lm import init_from_causal_lm, pretrain_causal_lm


def pretrain_lm(model: nn.Module, tokenizer: Any, texts: list[str], *, minutes: float, run_dir: str | Path,
                batch_size: int, lr: float, seed: int, progress: bool = True, length: int = 128) -> Any:
    """Train a UniLM's Transformer (`model.lm`) as a causal char LM on `texts` (windows of `length`
    characters, at most the model's context; every position segment 1, where the prefix mask is
    causal: the title side's regime) for `minutes`."""
    cfg = TrainConfig(lr=lr, warmup_steps=50, schedule="constant", max_minutes=minutes, grad_clip=1.0,
                      log_every=10, seed=seed, device="cpu", progress=progress)
    return pretrain_causal_lm(model.lm, tokenizer, texts, config=cfg, run_dir=run_dir, segments=True,
                              length=min(length, model.lm.config.max_len), normalise=normalise,
                              batch_size=batch_size, task_config={"writer": "title", "phase": "pretrain"})


def _dev_eval(tm: TitleModel, dev: Sequence[Pair]) -> Callable[[nn.Module], dict[str, float]]:
    """eval_fn for `fit`: greedy titles of the dev pairs -> char ROUGE-1/2/L (percent)."""
    src, _ = tm.sources([a for a, _ in dev])
    refs = [t for _, t in dev]

    def evaluate(model: nn.Module) -> dict[str, float]:
        preds = decode_sources(model, tm.tokenizer, src, num_beams=1,
                               max_new_tokens=tm.config.max_title_len,
                               no_repeat_ngram=tm.config.no_repeat_ngram, batch_size=100)
        return rouge([p or "∅" for p in preds], refs)  # an empty title scores 0, not an error

    return evaluate


def _fingerprint(pairs: Sequence[Pair]) -> str:
    """BLAKE2b of the pairs, recorded in the run's config.json so --resume refuses other data."""
    h = hashlib.blake2b(digest_size=16)
    for article, title in pairs:
        h.update(article.encode("utf-8", "surrogatepass") + b"\x00" + title.encode("utf-8", "surrogatepass") + b"\x01")
    return h.hexdigest()


# limits a resumed run may change (--minutes 30 to go on longer): the lr schedule is constant, so
# the steps up to the old limit are the same either way
_LIMITS = ("minutes", "max_epochs", "patience")


def _check_same_run(run_dir: Path, task: dict[str, Any]) -> None:
    """--resume: the settings and data must be those the stopped run was started with, but for its
    limits (a run stopped in its pre-training has no fine-tuning settings yet: it starts over)."""
    if not (run_dir / "config.json").is_file():
        return
    old = (read_json(run_dir / "config.json") or {}).get("task", {})
    check_same_run(run_dir, old, task, may_differ=_LIMITS, what="settings and data")


def train(config: TitleConfig, *, train_pairs: Sequence[Pair], dev_pairs: Sequence[Pair],
          out_dir: str | Path, progress: bool = True, log: Callable[[str], None] = print,
          lm_texts: Callable[[], list[str]] | None = None, force: bool = False,
          resume: bool = False) -> tuple[TitleModel, Any]:
    """Train a title model and save it under `out_dir`.

    Args:
        config: resolved settings.
        train_pairs, dev_pairs: (article, title) pairs; dev selects the checkpoint by ROUGE-L.
        out_dir: the run and model directory (`genloom.train.outdir.output_directory` says what it
            may hold: new or empty; this command's model or run with `force`, replaced only once
            the new model is complete; this command's stopped run with `resume`).
        progress: tqdm bars.
        log: where one-line notes (truncation warnings, phases) go.
        lm_texts: the pre-training texts (unilm with pretrain_minutes > 0); called only then.
        force: replace the title model or run `out_dir` holds.
        resume: continue the stopped run in `out_dir` from its last checkpoint (same settings and
            data; checked), retracing the uninterrupted run's losses.

    Returns:
        (the trained TitleModel with the selected weights, the FitResult).
    """
    dev_pairs = list(dev_pairs)[:config.dev_size]
    task = {"writer": "title", **asdict(config), "train_data": _fingerprint(train_pairs),
            "dev_data": _fingerprint(dev_pairs)}
    with output_directory(out_dir, kind="title", force=force, resume=resume) as out:
        if resume:
            _check_same_run(out, task)
        tm, result = _train_in(config, task, train_pairs, dev_pairs, out, progress=progress, log=log,
                               lm_texts=lm_texts, resume=resume)
    best = "none" if result.best_value is None else f"{result.best_value:.2f}"
    log(f"title: stopped after {result.step} steps ({result.stop_reason}); best dev ROUGE-L "
        f"{best} at step {result.best_step}; saved to {out_dir}")
    return tm, result


def _base_lm(directory: str) -> tuple[Any, Any]:
    """The pre-trained causal LM of --init and its tokenizer; anything else is a UserError."""
    from genloom.models import io as model_io
    from genloom.models.transformer import Transformer

    base, tokenizer = model_io.load(directory)
    if not isinstance(base, Transformer) or base.config.mask != "causal" or base.config.n_segment:
        raise UserError(f"--init {directory} is not a causal Transformer LM (e.g. genloom-zh-base's model/)")
    if tokenizer is None or tokenizer.pad_id is None or tokenizer.bos_id is None or tokenizer.eos_id is None:
        raise UserError(f"--init {directory} has no tokenizer with padding, start and end ids")
    return base, tokenizer


def _train_in(config: TitleConfig, task: dict[str, Any], train_pairs: Sequence[Pair], dev_pairs: list[Pair],
              out: Path, *, progress: bool, log: Callable[[str], None],
              lm_texts: Callable[[], list[str]] | None, resume: bool) -> tuple[TitleModel, Any]:
    """`train` in the directory `out` that `output_directory` gave it."""
    torch.manual_seed(config.seed)
    pretrain = config.arch == "unilm" and config.pretrain_minutes > 0
    resume_fit = resume and latest_checkpoint(out / "checkpoints") is not None
    texts = lm_texts() if pretrain and lm_texts is not None else []
    if pretrain and not texts:
        raise UserError("pre-training needs texts (chinese_lm_texts)")
    if config.init is not None:
        base, tokenizer = _base_lm(config.init)
        shape = {k: getattr(base.config, k) for k in ("d_model", "n_layer", "n_head", "d_ff")}
        model = ARCHS[config.arch](replace(config, model={**(config.model or {}), **shape}), tokenizer)
        report = init_from_causal_lm(model.lm, base)
        log(f"title: the Transformer starts from {config.init} ({len(report['copied'])} weights copied, "
            f"{', '.join(report['partial']) or 'none'} in part, {', '.join(report['fresh']) or 'none'} new; "
            f"its {tokenizer.vocab_size} characters)")
    else:
        tokenizer = build_tokenizer([t for p in train_pairs for t in p] + texts,
                                    min_count=config.min_count)
        model = ARCHS[config.arch](config, tokenizer)
    tm = TitleModel(model, tokenizer, config)
    data = PairDataset(train_pairs, tokenizer, max_source_len=config.max_source_len,
                       max_title_len=config.max_title_len)
    warning = data.cut.message(config.max_source_len, config.max_title_len)
    if warning:
        log(warning)
    log(f"title: {config.arch} model, {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{tokenizer.vocab_size} characters, {len(data)} training pairs, {len(dev_pairs)} dev pairs")
    if resume:
        log(f"title: resuming from {latest_checkpoint(out / 'checkpoints') or 'the start (no checkpoint yet)'}")
    if pretrain and not resume_fit:  # a resumed fine-tuning starts from its checkpoint's weights
        shutil.rmtree(out / "pretrain", ignore_errors=True)  # a stopped pre-training starts over
        log(f"title: pre-training the char LM for {config.pretrain_minutes:g} minutes "
            f"on {len(texts):,} texts")
        pretrain_lm(model, tokenizer, texts, minutes=config.pretrain_minutes, run_dir=out / "pretrain",
                    batch_size=config.batch_size, lr=config.lr, seed=config.seed, progress=progress)
    loader = Loader(data, batch_size=config.batch_size, collate_fn=Collate(tokenizer.pad_id),
                    lengths=data.lengths(), seed=config.seed)
    tcfg = TrainConfig(
        lr=config.lr, warmup_steps=config.warmup_steps, schedule="constant",
        max_minutes=config.minutes, max_epochs=config.max_epochs, grad_clip=1.0,
        ema_decay=config.ema_decay, ema_bias_correction=config.ema_decay is not None,
        eval_every=config.eval_every, metric="rouge-l", mode="max", patience=config.patience,
        log_every=10, keep_last=1, seed=config.seed, device="cpu", progress=progress)

    def loss_fn(net: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        n = int((batch["tgt_out"] != tokenizer.pad_id).sum())
        return net(batch["src"], batch["tgt_in"], batch["tgt_out"]), n

    result = fit(model, loss_fn, loader, config=tcfg, run_dir=out, eval_fn=_dev_eval(tm, dev_pairs),
                 task_config=task, resume=resume_fit)
    untrained(result)
    save_title_model(tm, out, ema=result.ema)
    write_json_atomic(out / TRAIN_RECORD, {
        "steps": result.step, "epochs": result.epochs, "stop_reason": result.stop_reason,
        "best_step": result.best_step, "best_dev_rouge_l": result.best_value,
        "train_seconds": round(result.elapsed_s, 1), "skipped_steps": result.skipped_steps,
        "machine_at_end": machine()})  # the 15-minute load average covers a 15-minute run
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # the model directory keeps the weights
    if result.ema is not None:
        result.ema.copy_to(model)
    model.eval()
    return tm, result
