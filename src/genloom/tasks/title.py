"""Article -> title generation (玩转Keras之seq2seq自动生成标题 and its UniLM successor): training,
generation and evaluation, and the `genloom title train|generate|eval` command (title_cli.py).

Two architectures, one task:
- "rnn": `genloom.models.rnn_seq2seq.RNNSeq2Seq`, the post's BiLSTM seq2seq with its prior and a
  pointer-generator copy (the default);
- "unilm": `genloom.tasks.title_unilm.UniLMCopy`, the project Transformer under the prefix mask
  with the same copy over source positions, optionally pre-trained as a char LM first.

A trained title model is a directory: the model directory of `genloom.models.save` under
`model/` (config.json, model.safetensors, model_ema.safetensors, tokenizer), `title.json` (the
resolved `TitleConfig`), and the training run's own files beside them (metrics.jsonl,
curves.png, config.json, checkpoints/), plus the eval tables that `eval` writes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genloom import models
from genloom.errors import UserError
from genloom.metrics import repeated_ngram_rate, rouge
from genloom.models.rnn_seq2seq import RNNSeq2Seq, title_rnn_small
from genloom.tasks.baselines import baseline_table, score_row
from genloom.tasks.title_data import Collate, Pair, PairDataset, build_tokenizer, normalise
from genloom.tasks.title_decode import decode_sources
from genloom.tasks.title_unilm import UniLMCopy, pretrain_lm, title_unilm_small
from genloom.train import Loader, TrainConfig, fit
from genloom.train.checkpoint import write_json_atomic

MODEL_SUBDIR = "model"
TITLE_FILE = "title.json"



@dataclass
class TitleConfig:
    """Everything `genloom title train` resolves; saved as title.json beside the model."""

    arch: str = "rnn"  # "rnn" (BiLSTM seq2seq) or "unilm" (prefix-mask Transformer); see ARCHS
    prior: bool = True  # the post's source-character prior averaged with the logits
    copy: bool = True  # pointer-generator copy from the source
    max_source_len: int = 256  # articles are cut to their first this many characters
    max_title_len: int = 40  # titles longer than this are cut in training; decoding limit
    min_count: int = 2  # characters seen fewer times in the training pairs become <unk>
    gen_vocab: int | None = 2500  # rnn with copy: the generator's softmax covers the G most
    # frequent characters only (rarer ones come by copy; 2500 covers 98.7% of inews dev title
    # characters, and 99.7% counting copies); None: the whole vocabulary
    batch_size: int = 32  # pairs per optimizer step (32 beat 64 per epoch and per minute)
    lr: float | None = None  # peak AdamW learning rate; None: ARCH_LR[arch]
    warmup_steps: int = 30  # linear warm-up steps
    minutes: float = 15.0  # training time budget (evaluations included)
    max_epochs: int | None = None  # optional epoch limit besides the time budget
    pretrain_minutes: float = 0.0  # unilm only: char-LM pre-training on chinese_lm_texts first
    ema_decay: float | None = 0.99  # EMA of the weights (evaluated and saved); None: off
    dev_size: int = 200  # dev pairs decoded greedily at each evaluation (ROUGE-L selects)
    eval_every: int = 0  # optimizer steps between evaluations; 0: once per epoch
    patience: int | None = 4  # stop after this many evaluations without a better dev ROUGE-L
    num_beams: int = 3  # beam size for generate / eval (1: greedy)
    no_repeat_ngram: int = 3  # ban repeated char n-grams while decoding (0: off); without it
    # about 30% of titles repeat a 4-gram, with 3 (or 4) none do and dev ROUGE-L is ~1 higher
    length_penalty: float = 1.0  # beam score = sum log p / length ** this
    seed: int = 0  # seeds the data order, the dev hold-out and the initialisation
    model: dict[str, Any] | None = None  # overrides of the architecture preset's fields

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise UserError(f"--arch must be one of {', '.join(ARCHS)}, not {self.arch!r}")
        if self.lr is None:
            self.lr = ARCH_LR[self.arch]
        if self.lr <= 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        for name in ("max_source_len", "max_title_len", "min_count", "batch_size", "dev_size",
                     "num_beams"):
            if getattr(self, name) < 1:
                raise UserError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.minutes <= 0:
            raise UserError(f"--minutes must be positive, got {self.minutes}")
        if self.pretrain_minutes < 0:
            raise UserError(f"--pretrain-minutes must be >= 0, got {self.pretrain_minutes}")
        if self.pretrain_minutes > 0 and self.arch != "unilm":
            raise UserError("--pretrain-minutes needs --arch unilm (the RNN has no LM to pre-train)")
        if self.no_repeat_ngram < 0:
            raise UserError(f"--no-repeat-ngram must be >= 0, got {self.no_repeat_ngram}")


def _preset(build: Callable[..., Any], vocab_size: int, **kw: Any) -> Any:
    """A preset config with the user's overrides; an unknown field is a UserError."""
    try:
        return build(vocab_size, **kw)
    except (TypeError, ValueError) as e:
        raise UserError(f"bad model setting: {e}") from None


def _rnn(cfg: TitleConfig, tokenizer: Any) -> nn.Module:
    return RNNSeq2Seq(_preset(
        title_rnn_small, tokenizer.vocab_size, pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id,
        prior=cfg.prior, copy=cfg.copy, max_source_len=cfg.max_source_len,
        gen_vocab=min(cfg.gen_vocab, tokenizer.vocab_size) if cfg.copy and cfg.gen_vocab else None,
        **(cfg.model or {})))


def _unilm(cfg: TitleConfig, tokenizer: Any) -> nn.Module:
    return UniLMCopy(_preset(
        title_unilm_small, tokenizer.vocab_size, pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id,
        prior=cfg.prior, copy=cfg.copy, max_source_len=cfg.max_source_len,
        max_title_len=cfg.max_title_len + 1,
        **(cfg.model or {})))


# --arch name -> model builder (config, tokenizer) -> module
ARCHS: dict[str, Callable[[TitleConfig, Any], nn.Module]] = {"rnn": _rnn, "unilm": _unilm}
# --arch name -> default peak learning rate (LSTMs take 2e-3; the Transformer is unstable there)
ARCH_LR: dict[str, float] = {"rnn": 2e-3, "unilm": 1e-3}


@dataclass
class TitleModel:
    """A trained title model with what it needs to decode."""

    model: nn.Module  # RNNSeq2Seq or UniLMCopy (eval mode)
    tokenizer: Any  # its CharTokenizer
    config: TitleConfig  # the settings it was trained with

    def sources(self, articles: Sequence[str]) -> tuple[list[list[int]], int]:
        """Articles -> source ids cut to max_source_len, and how many were cut. Every article
        must be non-empty after whitespace normalisation."""
        rows, cut = [], 0
        n = self.config.max_source_len
        for a in articles:
            text = normalise(a)
            if not text:
                raise UserError("empty article")
            cut += len(text) > n
            rows.append(self.tokenizer.encode(text[:n]))
        return rows, cut

    def generate(self, articles: Sequence[str], *, num_beams: int | None = None,
                 max_new_tokens: int | None = None, no_repeat_ngram: int | None = None,
                 batch_size: int = 32, progress: bool = False) -> list[str]:
        """One title per article (settings default to the training config's)."""
        c = self.config
        src, _ = self.sources(articles)
        return decode_sources(
            self.model, self.tokenizer, src, num_beams=num_beams or c.num_beams,
            max_new_tokens=max_new_tokens or c.max_title_len,
            no_repeat_ngram=c.no_repeat_ngram if no_repeat_ngram is None else no_repeat_ngram,
            length_penalty=c.length_penalty, batch_size=batch_size, progress=progress)


def save_title_model(tm: TitleModel, directory: str | Path, *, ema: Any = None) -> Path:
    """Write the model directory (model/ and title.json) under `directory`."""
    directory = Path(directory)
    models.save(tm.model, tm.tokenizer, directory / MODEL_SUBDIR,
                ema=ema.averaged() if ema is not None else None)
    write_json_atomic(directory / TITLE_FILE, asdict(tm.config))
    return directory


def load_title_model(directory: str | Path, *, ema: bool = True) -> TitleModel:
    """Rebuild a title model written by `train` / `save_title_model` (JSON + safetensors only)."""
    directory = Path(directory)
    path = directory / TITLE_FILE
    if not path.is_file():
        raise UserError(f"{directory} is not a title model directory (no {TITLE_FILE}); "
                        f"train one with `genloom title train --out {directory}`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    known = {f.name for f in fields(TitleConfig)}
    if not isinstance(data, dict) or set(data) - known:
        raise UserError(f"{path}: not a title config (unknown fields "
                        f"{sorted(set(data) - known) if isinstance(data, dict) else data!r})")
    config = TitleConfig(**data)
    model, tokenizer = models.load(directory / MODEL_SUBDIR, ema=ema)
    if tokenizer is None:
        raise UserError(f"{directory / MODEL_SUBDIR} holds no tokenizer")
    model.eval()
    return TitleModel(model, tokenizer, config)


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


def train(config: TitleConfig, *, train_pairs: Sequence[Pair], dev_pairs: Sequence[Pair],
          out_dir: str | Path, progress: bool = True, log: Callable[[str], None] = print,
          lm_texts: Callable[[], list[str]] | None = None) -> tuple[TitleModel, Any]:
    """Train a title model and save it under `out_dir`.

    Args:
        config: resolved settings.
        train_pairs, dev_pairs: (article, title) pairs; dev selects the checkpoint by ROUGE-L.
        out_dir: new or empty-of-checkpoints directory for the run and the model.
        progress: tqdm bars.
        log: where one-line notes (truncation warnings, phases) go.
        lm_texts: the pre-training texts (unilm with pretrain_minutes > 0); called only then.

    Returns:
        (the trained TitleModel with the selected weights, the FitResult).
    """
    out = Path(out_dir)
    torch.manual_seed(config.seed)
    pretrain = config.arch == "unilm" and config.pretrain_minutes > 0
    texts = lm_texts() if pretrain and lm_texts is not None else []
    if pretrain and not texts:
        raise UserError("pre-training needs texts (chinese_lm_texts)")
    tokenizer = build_tokenizer([t for p in train_pairs for t in p] + texts,
                                min_count=config.min_count)
    model = ARCHS[config.arch](config, tokenizer)
    dev_pairs = list(dev_pairs)[:config.dev_size]
    tm = TitleModel(model, tokenizer, config)
    data = PairDataset(train_pairs, tokenizer, max_source_len=config.max_source_len,
                       max_title_len=config.max_title_len)
    warning = data.cut.message(config.max_source_len, config.max_title_len)
    if warning:
        log(warning)
    log(f"title: {config.arch} model, {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{tokenizer.vocab_size} characters, {len(data)} training pairs, {len(dev_pairs)} dev pairs")
    if pretrain:
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
                 task_config=asdict(config))
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # the model directory keeps the weights
    save_title_model(tm, out, ema=result.ema)
    if result.ema is not None:
        result.ema.copy_to(model)
    model.eval()
    best = "none" if result.best_value is None else f"{result.best_value:.2f}"
    log(f"title: stopped after {result.step} steps ({result.stop_reason}); best dev ROUGE-L "
        f"{best} at step {result.best_step}; saved to {out}")
    return tm, result


def evaluate(tm: TitleModel, pairs: Sequence[Pair], *, num_beams: int | None = None,
             baselines: bool = True, progress: bool = False) -> dict[str, Any]:
    """Score the model's titles on (article, title) pairs beside the extractive baselines.

    Returns:
        {"rows": {method: {"rouge-1", "rouge-2", "rouge-l", "bleu"}}, "pairs": n,
         "repeated_4gram": share of generated titles with a repeated char 4-gram,
         "decode_seconds", "chars_per_s", "num_beams", "truncated", "predictions": [...]}
    """
    if not pairs:
        raise UserError("no (article, title) pairs to evaluate")
    beams = num_beams or tm.config.num_beams
    articles = [a for a, _ in pairs]
    refs = [t for _, t in pairs]
    _, cut = tm.sources(articles)
    t0 = time.perf_counter()
    preds = tm.generate(articles, num_beams=beams, progress=progress)
    seconds = time.perf_counter() - t0
    name = f"{tm.config.arch} (beam {beams})"
    rows = {name: score_row([p or "∅" for p in preds], refs)}
    if baselines:
        rows.update(baseline_table(list(pairs)))
    return {"rows": rows, "pairs": len(pairs), "repeated_4gram": repeated_ngram_rate(preds, 4),
            "decode_seconds": seconds, "chars_per_s": sum(map(len, preds)) / max(seconds, 1e-9),
            "num_beams": beams, "truncated": cut, "predictions": preds}


def write_eval(result: dict[str, Any], directory: str | Path, name: str, table_text: str) -> Path:
    """Write the eval result as NAME.json and the printed table as NAME.txt (atomically)."""
    directory = Path(directory)
    write_json_atomic(directory / f"{name}.json", result)
    tmp = directory / f".{name}.txt.{os.getpid()}.tmp"
    tmp.write_text(table_text + "\n", encoding="utf-8")
    os.replace(tmp, directory / f"{name}.txt")
    return directory / f"{name}.json"
