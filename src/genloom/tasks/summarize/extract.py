"""SPACES extractor: frozen sentence vectors from a genloom Transformer encoder, a DGCNN labeller,
k-fold cross-prediction.

Letters: N clauses of one document, T characters of a clause (+ BOS/EOS), C encoder width.

Sentence vectors. Any genloom Transformer directory with mask="bidirectional" serves as the
encoder: a clause is encoded as [BOS] clause [EOS] (cut to the encoder's context) and its final
hidden states are mean-pooled over the real positions (the post mean-pools RoBERTa the same way).
The encoder is frozen. `train_encoder` makes one when none is given: a small bidirectional char
Transformer trained as a masked LM on the training clauses (BERT's 80/10/10 corruption of 15% of
the characters, with the tokenizer's <unk> id serving as [MASK]: the char tokenizer has no spare
special id, and <unk> never needs predicting; `genloom.train.lm.MaskedLMCollate`).

Extractor. A `DGCNN` (genloom.nn.dgcnn) over a document's clause vectors gives each clause a
probability of being aligned to the summary (binary cross-entropy on the labels of
`convert.extraction_labels`). `cross_fit` trains k models on k folds (document i is in
fold i % k, as the post's `data_split`): fold f's model is trained on the other folds and labels
fold f. So every training document's predicted extraction, the seq2seq's training input, comes
from a model that never saw it (checked in `cross_fit` and by the tests). New documents get the
mean probability of the k models.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes
from torch import Tensor, nn
from torch.utils.data import Dataset

from genloom.errors import UserError
from genloom.files import write_atomic, write_json_atomic
from genloom.nn.dgcnn import DGCNN
from genloom.tasks.summarize.features import TFIDF_FILE, TfidfModel, check_features, extraction_features
from genloom.tasks.summarize.titlewords import TITLEWORDS_FILE, TitleWordModel
from genloom.train.lm import MaskedLMCollate, masked_lm_loss, pad_rows

EXTRACTOR_FILE = "extractor.json"


# ---- the sentence encoder ----------------------------------------------------------------------
@dataclass
class EncoderConfig:
    """The masked-LM sentence encoder `train_encoder` builds when none is given."""

    d_model: int = 128  # width C (also the sentence-vector width)
    n_layer: int = 2  # Transformer blocks
    n_head: int = 4  # attention heads
    max_len: int = 48  # longest input ([BOS] clause [EOS]); longer clauses are cut
    min_count: int = 2  # characters rarer than this in the training clauses become <unk>
    vocab_max: int = 6000  # the most vocabulary ids (specials included)
    mask_rate: float = 0.15  # fraction of characters corrupted and predicted
    batch_size: int = 64  # clauses per optimizer step
    lr: float = 2e-3  # peak AdamW learning rate
    minutes: float = 3.0  # wall-clock training budget
    max_steps: int | None = None  # or a step budget (whichever ends first)
    seed: int = 0  # initialisation, data order and masking


def _pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad rows: ids (B, T) long and valid (B, T) bool."""
    ids = pad_rows(rows, pad_id)  # (B, T)
    valid = torch.arange(ids.shape[1])[None] < torch.tensor([len(r) for r in rows])[:, None]
    return ids, valid


def train_encoder(clauses: Sequence[str], out_dir: str | Path, config: EncoderConfig, *,
                  progress: bool = True) -> Path:
    """Train the masked-LM sentence encoder on `clauses` and save it (EMA weights) to `out_dir`."""
    from genloom.models import Transformer, TransformerConfig, save
    from genloom.tokenizers import CharTokenizer
    from genloom.train import Loader, TrainConfig, fit

    texts = [c for c in clauses if c]
    if not texts:
        raise UserError("no clauses to train the sentence encoder on")
    tokenizer = CharTokenizer.train(texts, min_count=config.min_count, max_size=config.vocab_max)
    ids = [tokenizer.encode(c[: config.max_len - 2], add_bos=True, add_eos=True) for c in texts]
    torch.manual_seed(config.seed)
    model = Transformer(TransformerConfig(
        vocab_size=tokenizer.vocab_size, n_layer=config.n_layer, n_head=config.n_head,
        d_model=config.d_model, d_ff=4 * config.d_model, max_len=config.max_len, mask="bidirectional",
        pos="rope", norm="rms", mlp="swiglu", bias=False))
    collate = MaskedLMCollate(pad_id=tokenizer.pad_id, mask_id=tokenizer.unk_id, first_id=4,
                              vocab_size=tokenizer.vocab_size, rate=config.mask_rate)
    loader = Loader(ids, batch_size=config.batch_size, collate_fn=collate,
                    lengths=[len(x) for x in ids], seed=config.seed)
    out = Path(out_dir)
    run_dir = out.parent / f"{out.name}-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = TrainConfig(lr=config.lr, warmup_steps=50, schedule="constant", max_minutes=config.minutes,
                      max_steps=config.max_steps, ema_decay=0.99, ema_warmup=True, seed=config.seed,
                      device="cpu", progress=progress, log_every=20)
    result = fit(model, masked_lm_loss, loader, config=cfg, run_dir=run_dir, task_config=asdict(config))
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return save(model, tokenizer, out, ema=result.ema.averaged() if result.ema else None)


def load_encoder(directory: str | Path) -> tuple[nn.Module, Any]:
    """(encoder, tokenizer) from a genloom model directory holding a Transformer: a masked LM, or a
    causal LM such as genloom-zh-base, mean-pooled the same way (each position then sees its left
    context only)."""
    from genloom.models import Transformer, load

    model, tokenizer = load(directory)
    if not isinstance(model, Transformer) or model.config.mask not in ("bidirectional", "causal"):
        raise UserError(f"{directory} does not hold a Transformer LM (masked or causal) to encode sentences")
    if tokenizer is None:
        raise UserError(f"{directory} has no tokenizer files")
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), tokenizer


@torch.inference_mode()
def clause_vectors(encoder: nn.Module, tokenizer: Any, clauses: Sequence[str], *,
                   batch_size: int = 256) -> Tensor:
    """Mean-pooled final hidden states of [BOS] clause [EOS], one row per clause: (N, C)."""
    limit = encoder.config.max_len - 2
    ids = [tokenizer.encode(c[:limit], add_bos=True, add_eos=True) for c in clauses]
    out = torch.zeros(len(ids), encoder.config.d_model)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        x, valid = _pad([ids[i] for i in rows], tokenizer.pad_id)  # (B, T)
        h = encoder.hidden_states(x, attention_mask=valid)  # (B, T, C)
        w = valid[:, :, None].to(h.dtype)  # (B, T, 1)
        out[rows] = ((h * w).sum(1) / w.sum(1)).float()  # (B, C)
    return out


def document_vectors(encoder: nn.Module, tokenizer: Any, documents: Sequence[Sequence[str]], *,
                     batch_size: int = 256) -> list[Tensor]:
    """`clause_vectors` of every document's clauses, encoded in one pass: a list of (N_i, C)."""
    flat = [c for doc in documents for c in doc]
    vecs = clause_vectors(encoder, tokenizer, flat, batch_size=batch_size) if flat else torch.zeros(0, 1)
    return list(torch.split(vecs, [len(doc) for doc in documents]))


def save_vectors(vectors: Sequence[Tensor], path: str | Path) -> None:
    """Write per-document vectors as one safetensors file (concatenated rows + counts)."""
    blob = {"rows": torch.cat(list(vectors)).contiguous(),
            "counts": torch.tensor([len(v) for v in vectors], dtype=torch.long)}
    write_atomic(path, save_bytes(blob))


def load_vectors(path: str | Path) -> list[Tensor]:
    """Read what `save_vectors` wrote."""
    blob = load_file(str(path))
    return list(torch.split(blob["rows"], blob["counts"].tolist()))


# ---- the DGCNN extractor -----------------------------------------------------------------------
@dataclass
class ExtractorConfig:
    """DGCNN extractor and its k-fold training."""

    hidden: int = 128  # DGCNN width (the post: 384 over 768-wide RoBERTa vectors)
    dilations: tuple[int, ...] = (1, 2, 4, 8, 1, 1)  # one gated residual block per dilation (the post's)
    dropout: float = 0.1  # dropout around every block (the post's)
    folds: int = 5  # k of the cross-prediction (the post: 15)
    epochs: int = 10  # passes over each fold's training documents (the post: 20)
    batch_size: int = 16  # documents per optimizer step
    lr: float = 1e-3  # AdamW learning rate
    threshold: float = 0.2  # a clause is extracted when its probability exceeds this (the post's 0.2)
    seed: int = 0  # initialisation and data order (fold f adds f)
    position: int = 0  # clause-position features (`position_features`, k = this); 0: vectors only (the post)
    features: tuple[str, ...] = ("encoder",)  # clause feature groups (`features.FEATURES`); the post: encoder only
    tfidf_dim: int = 64  # LSA width of the "tfidf" group


def position_features(n: int, k: int) -> Tensor:
    """(n, k + 2) features of a document's n clauses: one-hot of the clause index capped at k (the
    first k positions, then "later") and the relative position i / (n - 1). Not in the post: news
    titles sit in the lead. Measured on inews (benchmarks/results/summarize_position.json), k = 8
    left the extractor's recall unchanged: the DGCNN's padded convolutions already see the edges."""
    i = torch.arange(n)
    onehot = F.one_hot(i.clamp(max=k), k + 1).float()  # (n, k + 1)
    return torch.cat([onehot, (i / max(n - 1, 1)).float()[:, None]], 1)


def _features(vectors: Tensor, k: int) -> Tensor:
    """(N, C) clause vectors -> (N, C + k + 2) with position features (unchanged when k = 0)."""
    return torch.cat([vectors, position_features(len(vectors), k)], 1) if k else vectors


def featurize(features: Sequence[str], tfidf: TfidfModel | None, encoder: nn.Module, tokenizer: Any,
              documents: Sequence[Sequence[str]], *, titlewords: TitleWordModel | None = None,
              titleword_rows: Sequence[Tensor] | None = None) -> list[Tensor]:
    """Per document (N_i, width): the encoder's clause vectors and the other groups of `features`
    (`features.extraction_features`; `tfidf` is what the centroid / tfidf groups need, `titlewords`
    or the training documents' cross-fitted `titleword_rows` what the titlewords group needs). The
    encoder runs only when the encoder or centroid group reads it."""
    if "encoder" in features or "centroid" in features:
        vectors = document_vectors(encoder, tokenizer, documents)
    else:
        vectors = [torch.zeros(len(d), 0) for d in documents]
    if tuple(features) == ("encoder",):
        return vectors
    return extraction_features(features, documents, vectors, tfidf, titlewords, titleword_rows)


class _Docs(Dataset):
    def __init__(self, vectors: Sequence[Tensor], labels: Sequence[Sequence[int]], index: Sequence[int]) -> None:
        self.vectors, self.labels, self.index = vectors, labels, list(index)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        d = self.index[i]
        y = torch.zeros(len(self.vectors[d]))
        y[list(self.labels[d])] = 1.0
        return self.vectors[d], y


def _collate_docs(items: list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    width = max(len(x) for x, _ in items)
    dim = items[0][0].shape[1]
    x = torch.zeros(len(items), width, dim)  # (B, N, C)
    y = torch.zeros(len(items), width)  # (B, N)
    mask = torch.zeros(len(items), width, dtype=torch.bool)  # (B, N)
    for i, (v, t) in enumerate(items):
        x[i, : len(v)], y[i, : len(t)], mask[i, : len(v)] = v, t, True
    return {"x": x, "y": y, "mask": mask}


def _bce(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    logits = model(batch["x"], batch["mask"])  # (B, N)
    loss = F.binary_cross_entropy_with_logits(logits, batch["y"], reduction="none")
    n = batch["mask"].sum()
    return (loss * batch["mask"]).sum() / n.clamp(min=1), n


class Extractor:
    """k DGCNN fold models over a document's clause features; `probabilities` averages them.
    `tfidf` is the tf-idf model the "centroid" / "tfidf" feature groups need (`featurize`)."""

    def __init__(self, config: ExtractorConfig, input_dim: int, models: Sequence[DGCNN], *,
                 tfidf: TfidfModel | None = None, titlewords: TitleWordModel | None = None) -> None:
        self.config, self.input_dim, self.models, self.tfidf = config, input_dim, list(models), tfidf
        self.titlewords = titlewords

    def featurize(self, encoder: nn.Module, tokenizer: Any, documents: Sequence[Sequence[str]]) -> list[Tensor]:
        """The features these fold models read, per document (`featurize`)."""
        return featurize(self.config.features, self.tfidf, encoder, tokenizer, documents, titlewords=self.titlewords)

    @staticmethod
    def build(config: ExtractorConfig, input_dim: int) -> DGCNN:
        """One untrained fold model over input_dim-wide vectors (plus the position features)."""
        extra = position_features(1, config.position).shape[1] if config.position else 0
        return DGCNN(input_dim + extra, config.hidden, dilations=config.dilations, dropout=config.dropout)

    @torch.no_grad()
    def probabilities(self, vectors: Sequence[Tensor], *, models: Sequence[int] | None = None,
                      batch_size: int = 32) -> list[Tensor]:
        """Per document (N_i, C) vectors -> (N_i,) probabilities, averaged over the fold models
        (or over the fold indices in `models`)."""
        chosen = [self.models[i] for i in (range(len(self.models)) if models is None else models)]
        out: list[Tensor] = []
        for start in range(0, len(vectors), batch_size):
            docs = [_features(v, self.config.position) for v in vectors[start:start + batch_size]]
            batch = _collate_docs([(v, torch.zeros(len(v))) for v in docs])
            probs = torch.stack([m.eval()(batch["x"], batch["mask"]).sigmoid() for m in chosen]).mean(0)  # (B, N)
            out += [probs[i, : len(v)].clone() for i, v in enumerate(docs)]
        return out

    def save(self, directory: str | Path) -> Path:
        """extractor.json + one safetensors file per fold model, each written atomically."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        for f, m in enumerate(self.models):
            write_atomic(path / f"dgcnn-{f}.safetensors",
                         save_bytes({k: v.contiguous() for k, v in m.state_dict().items()}))
        if self.tfidf is not None:
            self.tfidf.save(path)
        if self.titlewords is not None:
            self.titlewords.save(path)
        write_json_atomic(path / EXTRACTOR_FILE, {"config": asdict(self.config), "input_dim": self.input_dim,
                                                  "folds": len(self.models)})
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Extractor:
        """Rebuild what `save` wrote."""
        path = Path(directory)
        try:
            meta = json.loads((path / EXTRACTOR_FILE).read_text(encoding="utf-8"))
            # extractors saved before `position` / `features` existed read encoder vectors only
            config = ExtractorConfig(**{"position": 0, "features": ("encoder",), **meta["config"],
                                        "dilations": tuple(meta["config"]["dilations"])})
            config.features = check_features(config.features)
            tfidf = TfidfModel.load(path) if (path / TFIDF_FILE).is_file() else None
            titlewords = TitleWordModel.load(path) if (path / TITLEWORDS_FILE).is_file() else None
            models = []
            for f in range(meta["folds"]):
                m = cls.build(config, meta["input_dim"])
                m.load_state_dict(load_file(str(path / f"dgcnn-{f}.safetensors")))
                models.append(m.eval())
        except (OSError, KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read the extractor in {path}: {str(e).splitlines()[0]}") from None
        return cls(config, meta["input_dim"], models, tfidf=tfidf, titlewords=titlewords)


@dataclass
class CrossFit:
    """What `cross_fit` returns."""

    extractor: Extractor  # the k fold models (for new documents: their mean)
    probabilities: list[Tensor]  # per training document, from the one fold model that did not see it
    fold_of: list[int]  # fold of each training document (the model that labelled it)
    trained_on: list[frozenset[int]] = field(default_factory=list)  # per fold, the documents it trained on


def cross_fit(vectors: Sequence[Tensor], labels: Sequence[Sequence[int]], config: ExtractorConfig, *,
              run_dir: str | Path, progress: bool = True, tfidf: TfidfModel | None = None,
              titlewords: TitleWordModel | None = None) -> CrossFit:
    """Train `config.folds` DGCNNs with k-fold cross-prediction (module docstring).

    Args:
        vectors: per training document, its clause features (N_i, C) (`Extractor.featurize`).
        labels: per document, the indices of its positive clauses.
        run_dir: each fold's training run goes to run_dir/fold-f (metrics, curves).
        tfidf: the tf-idf model those features were made with (kept in the extractor).
        titlewords: the title-word model new documents' features are made with (kept in the extractor).

    Returns:
        A CrossFit whose `probabilities[i]` come from fold `fold_of[i]`'s model, which was not
        trained on document i.
    """
    from genloom.train import Loader, TrainConfig, fit

    k = config.folds
    if k < 2:
        raise UserError(f"k-fold cross-prediction needs at least 2 folds, got {k}")
    if len(vectors) < k:
        raise UserError(f"{len(vectors)} documents cannot be split into {k} folds")
    if len(vectors) != len(labels):
        raise ValueError(f"{len(vectors)} documents but {len(labels)} label lists")
    dim = vectors[0].shape[1]
    feats = [_features(v, config.position) for v in vectors]  # what the fold models read
    fold_of = [i % k for i in range(len(vectors))]
    models, trained_on = [], []
    probabilities: list[Tensor | None] = [None] * len(vectors)
    for f in range(k):
        train_idx = [i for i in range(len(vectors)) if fold_of[i] != f]
        held_idx = [i for i in range(len(vectors)) if fold_of[i] == f]
        torch.manual_seed(config.seed + f)
        model = Extractor.build(config, dim)
        data = _Docs(feats, labels, train_idx)
        loader = Loader(data, batch_size=config.batch_size, collate_fn=_collate_docs,
                        lengths=[len(vectors[i]) for i in train_idx], seed=config.seed + f)
        fold_dir = Path(run_dir) / f"fold-{f}"
        shutil.rmtree(fold_dir, ignore_errors=True)
        cfg = TrainConfig(lr=config.lr, max_epochs=config.epochs, warmup_steps=10, schedule="cosine",
                          weight_decay=0.0, seed=config.seed + f, device="cpu", progress=progress,
                          log_every=10)
        fit(model, _bce, loader, config=cfg, run_dir=fold_dir, task_config={"fold": f, **asdict(config)})
        shutil.rmtree(fold_dir / "checkpoints", ignore_errors=True)
        model.eval()
        seen = frozenset(train_idx)
        if seen & set(held_idx):  # the guarantee the seq2seq relies on
            raise RuntimeError(f"fold {f} would label documents it was trained on")
        fold_probs = Extractor(config, dim, [model]).probabilities([vectors[i] for i in held_idx])
        for i, p in zip(held_idx, fold_probs):
            probabilities[i] = p
        models.append(model)
        trained_on.append(seen)
    return CrossFit(Extractor(config, dim, models, tfidf=tfidf, titlewords=titlewords), [p for p in probabilities if p is not None],
                    fold_of, trained_on)
