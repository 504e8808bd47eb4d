"""`SummarizeConfig`: everything `genloom summarize train` sets (saved in summarize.json)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from genloom.errors import UserError

if TYPE_CHECKING:  # torch is imported when a model is built, not when the CLI parses
    from genloom.models.unilm import UniLMSeq2SeqConfig

CONFIG_FILE = "summarize.json"
MODES = ("pipeline", "truncate")
FEATURES = ("encoder", "centroid", "tfidf", "titlewords")  # the extractor's clause feature groups (see `features`)


def check_features(features: Any) -> tuple[str, ...]:
    """Feature groups as a tuple in `FEATURES` order; a UserError for an unknown or empty list."""
    unknown = [f for f in features if f not in FEATURES]
    if unknown or not features:
        raise UserError(f"extractor features are a comma list of {', '.join(FEATURES)}; got {','.join(features)!r}")
    return tuple(f for f in FEATURES if f in features)


def parse_features(text: str) -> tuple[str, ...]:
    """"encoder,centroid" -> ("encoder", "centroid") (checked)."""
    return check_features([f.strip() for f in text.split(",") if f.strip()])


@dataclass
class SummarizeConfig:
    """Everything `genloom summarize train` sets (the CLI maps its flags onto these fields)."""

    mode: str = "pipeline"  # "pipeline" (extract, then generate) or "truncate" (first window chars, then generate)
    window: int = 256  # characters of source the seq2seq reads (its context minus the target)
    max_target_len: int = 40  # longest summary in characters (longer training targets are cut)
    max_clauses: int = 128  # clauses of a document considered (the first ones; the post kept the last 256)
    threshold: float = 0.2  # extractor probability above which a clause is extracted (the post's)
    fill: bool = True  # top the extraction up to the window with the next most probable clauses
    oracle_rate: float = 0.5  # chance a training source is the oracle extraction instead of the predicted one
    encoder: str | None = None  # sentence encoder directory (bidirectional Transformer); None = train one
    encoder_minutes: float = 3.0  # training budget of that encoder (minutes)
    encoder_steps: int | None = None  # or a step budget for it (whichever ends first)
    folds: int = 5  # k of the extractor's cross-prediction (the post: 15)
    extract_epochs: int = 8  # epochs of each fold model
    extract_hidden: int = 128  # DGCNN width
    extract_position: int = 0  # clause-position features of the extractor (first k positions one-hot); 0: none (the post)
    extract_features: str = "encoder"  # extractor clause features, a comma list of FEATURES (the post: encoder)
    tfidf_dim: int = 64  # LSA width of the "tfidf" feature group
    extract_density: float = 0.0  # rank clauses by probability / length ** this when filling the window (0: the post)
    init: str | None = None  # start the seq2seq from this `pretrain` directory (same shape; its vocabulary)
    pretrain_minutes: float = 0.0  # without init: pre-train the seq2seq as a char LM this long first
    pretrain_steps: int | None = None  # or for this many steps (whichever ends first)
    d_model: int = 256  # seq2seq width
    n_layer: int = 4  # seq2seq blocks
    n_head: int = 4  # seq2seq heads
    d_ff: int = 1024  # seq2seq feed-forward width
    dropout: float = 0.1  # seq2seq dropout
    copy: bool = True  # B/I/O copy head and constrained decoding
    pointer: bool = True  # the title task's pointer-generator copy in the seq2seq's output (not in the post)
    prior: bool = True  # the title task's source-character prior in the seq2seq's output (not in the post)
    copy_weight: float = 2.0  # loss = token loss + copy_weight * copy loss
    sparse_k: int | None = 10  # Sparse Softmax top-k (training and decoding); None = off
    sparse_p: float | None = None  # Sparse Softmax top-p instead (when sparse_k is None)
    source_noise: float = 0.15  # share of source tokens replaced by random source tokens in training
    min_count: int = 2  # characters rarer than this in the training texts become <unk>
    vocab_max: int = 6000  # the most vocabulary ids
    batch_size: int = 32  # seq2seq examples per optimizer step
    lr: float = 1e-3  # seq2seq peak learning rate (AdamW, warm-up then cosine)
    warmup_steps: int = 100  # seq2seq warm-up steps
    steps: int | None = None  # seq2seq optimizer steps (None: bounded by minutes only)
    minutes: float | None = 10.0  # seq2seq wall-clock budget (None: bounded by steps only)
    ema_decay: float = 0.995  # EMA of the seq2seq weights (saved as its default weights)
    num_beams: int = 3  # beam width when summarizing
    no_repeat_ngram: int = 3  # ban repeated character n-grams of this size when summarizing (0: off)
    seed: int = 0  # every random choice of the run

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.no_repeat_ngram < 0:
            raise UserError(f"no_repeat_ngram must be >= 0, got {self.no_repeat_ngram}")
        for name in ("window", "max_target_len", "max_clauses", "batch_size", "num_beams", "folds"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.extract_density <= 2.0:
            raise UserError(f"extract_density must be in [0, 2], got {self.extract_density}")
        if not 0.0 <= self.threshold < 1.0:
            raise UserError(f"threshold must be in [0, 1), got {self.threshold}")
        if self.steps is None and self.minutes is None:
            raise UserError("give a step or a minute budget for the seq2seq")
        self.extract_features = ",".join(parse_features(self.extract_features))
        if self.tfidf_dim < 1:
            raise UserError(f"tfidf_dim must be at least 1, got {self.tfidf_dim}")
        if self.sparse_k is not None and self.sparse_k < 1:
            raise UserError(f"sparse_k must be at least 1 (or off), got {self.sparse_k}")

    def seq2seq(self, tokenizer: Any) -> UniLMSeq2SeqConfig:
        """The UniLMSeq2Seq config these settings describe (context: the window, bos, the target
        and its eos)."""
        from genloom.models.unilm import UniLMSeq2SeqConfig

        return UniLMSeq2SeqConfig(
            vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id,
            eos_id=tokenizer.eos_id, d_model=self.d_model, n_layer=self.n_layer, n_head=self.n_head,
            d_ff=self.d_ff, dropout=self.dropout, max_source_len=self.window,
            max_target_len=self.max_target_len + 1, prior=self.prior, pointer=self.pointer, successor=True,
            copy_labels=self.copy, sparse_k=self.sparse_k, sparse_p=self.sparse_p if self.sparse_k is None else None)
