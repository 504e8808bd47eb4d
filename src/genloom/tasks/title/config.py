"""`TitleConfig`, everything `genloom title train` resolves (saved as title.json), and the
architectures it builds (`ARCHS`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from genloom.errors import UserError

if TYPE_CHECKING:  # torch is imported when a model is built, not when the CLI parses
    from torch import nn

MODEL_SUBDIR = "model"
TITLE_FILE = "title.json"
TRAIN_RECORD = "train.json"  # what the training run did (steps, best dev, load)


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
    init: str | None = None  # unilm only: a pre-trained causal LM directory (genloom-zh-base) whose
    # blocks, embeddings and characters the model starts from (its shape and tokenizer are taken)
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
        if not 0 < self.lr < math.inf:
            raise UserError(f"--lr must be positive, got {self.lr}")
        for name in ("max_source_len", "max_title_len", "min_count", "batch_size", "dev_size",
                     "num_beams"):
            if getattr(self, name) < 1:
                raise UserError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.minutes < math.inf:  # NaN fails too: a run that would never stop
            raise UserError(f"--minutes must be positive, got {self.minutes}")
        if not 0 <= self.pretrain_minutes < math.inf:
            raise UserError(f"--pretrain-minutes must be >= 0, got {self.pretrain_minutes}")
        for name in ("max_epochs", "patience"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.eval_every < 0:
            raise UserError(f"--warmup-steps and --eval-every must be >= 0, got {self.warmup_steps} and "
                            f"{self.eval_every}")
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            raise UserError(f"the EMA decay must be in [0, 1), got {self.ema_decay}")
        if self.init is not None and self.arch != "unilm":
            raise UserError("--init needs --arch unilm (the RNN has no Transformer to start from a pre-trained LM)")
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
    from genloom.models.rnn_seq2seq import RNNSeq2Seq, title_rnn_small

    return RNNSeq2Seq(_preset(
        title_rnn_small, tokenizer.vocab_size, pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id,
        prior=cfg.prior, copy=cfg.copy, max_source_len=cfg.max_source_len,
        gen_vocab=min(cfg.gen_vocab, tokenizer.vocab_size) if cfg.copy and cfg.gen_vocab else None,
        **(cfg.model or {})))


def _unilm(cfg: TitleConfig, tokenizer: Any) -> nn.Module:
    from genloom.models.unilm import UniLMSeq2Seq, title_unilm_small

    return UniLMSeq2Seq(_preset(
        title_unilm_small, tokenizer.vocab_size, pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id,
        eos_id=tokenizer.eos_id, prior=cfg.prior, pointer=cfg.copy, max_source_len=cfg.max_source_len,
        max_target_len=cfg.max_title_len + 1, **(cfg.model or {})))


# --arch name -> model builder (config, tokenizer) -> module
ARCHS: dict[str, Callable[[TitleConfig, Any], nn.Module]] = {"rnn": _rnn, "unilm": _unilm}
# --arch name -> default peak learning rate (LSTMs take 2e-3; the Transformer is unstable there)
ARCH_LR: dict[str, float] = {"rnn": 2e-3, "unilm": 1e-3}
