"""Clause features of the SPACES extractor beyond the post's sentence vectors (issue 22).

Letters: N clauses of one document, C encoder width, V tf-idf vocabulary, D LSA width.

The post's DGCNN reads frozen RoBERTa vectors, pre-trained on far more text than a from-our-data
encoder sees. Four groups can be combined (`FEATURES`, `ExtractorConfig.features`):

- "encoder": the mean-pooled final states of the sentence encoder (`extract.clause_vectors`),
  (N, C): the post's features.
- "centroid": how central a clause is to its own document, (N, 7), which no position carries and
  which survives a shuffled clause order (a z-score is (x - mean) / population std over the
  document's clauses, the std floored at 1e-3; mean-pooled states are close in cosine, so the
  relative columns carry the signal):
    0 cos(v_i, mean of the document's encoder vectors), and 1 its z-score within the document;
    2 cos(t_i, sum of the document's tf-idf rows) (similarity to the document's tf-idf centroid), 3 its z-score;
    4 the mean cos(t_i, t_j) over the other clauses (TextRank's degree centrality), 5 its z-score;
    6 the clause's length over the document's mean clause length.
  v: encoder vectors, t: l2-normalised tf-idf rows (a clause with no known word has t = 0, so
  its similarities are 0).
- "tfidf": the clause's LSA vector, (N, D): its l2-normalised tf-idf row times the top D right
  singular vectors of the training clauses' tf-idf matrix (`TfidfModel.fit`).
- "titlewords": how much of the clause the summary is likely to reuse, (N, 12), from word rates
  learnt on the training pairs (`titlewords`; the training documents' own rows are cross-fitted).

`TfidfModel`: jieba words (`genloom.metrics.word_tokens`, the project's one word tokenizer);
document frequency over training documents; idf = ln((1 + n) / (1 + df)) + 1 (scikit-learn's
smooth idf); vocabulary = words in at least `min_df` documents, the `max_words` most frequent
(ties by word); tf = raw counts in the clause. Hand-written (no scikit-learn dependency for one
weighting); the LSA is `torch.svd_lowrank` on a sparse matrix of (at most `svd_rows`) training
clauses, seeded. Saved as tfidf.json (words, idf) + tfidf.safetensors (projection).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes
from torch import Tensor

from genloom.errors import UserError
from genloom.files import write_atomic, write_json_atomic
from genloom.tasks.summarize.config import FEATURES, check_features, parse_features  # noqa: F401 (re-exported)
from genloom.tasks.summarize.convert import clause_words as _words
from genloom.tasks.summarize.titlewords import TITLEWORDS_DIM, TitleWordModel

CENTROID_DIM = 7
TFIDF_FILE = "tfidf.json"


class TfidfModel:
    """Jieba-word tf-idf over a fixed vocabulary, with an optional LSA projection (module docstring)."""

    def __init__(self, words: Sequence[str], idf: Tensor, projection: Tensor | None = None) -> None:
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.idf = idf.float()  # (V,)
        self.projection = projection  # (V, D) or None

    @classmethod
    def fit(cls, documents: Sequence[Sequence[str]], *, dim: int = 0, min_df: int = 2, max_words: int = 30000,
            svd_rows: int = 60000, seed: int = 0) -> TfidfModel:
        """Fit on training documents (each a list of clauses); `dim` > 0 also fits the LSA projection."""
        df: Counter = Counter()
        for doc in documents:
            df.update({w for c in doc for w in _words(c)})
        n = len(documents)
        kept = sorted((w for w, c in df.items() if c >= min_df), key=lambda w: (-df[w], w))[:max_words]
        if not kept:
            raise UserError("no word occurs in enough training documents to build tf-idf features")
        idf = torch.tensor([math.log((1 + n) / (1 + df[w])) + 1.0 for w in kept])
        model = cls(kept, idf)
        if dim > 0:
            clauses = [c for doc in documents for c in doc]
            step = max(1, math.ceil(len(clauses) / svd_rows))
            a = model.matrix(clauses[::step])  # (M, V) sparse, rows l2-normalised
            q = min(dim, *a.shape)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                _, _, v = torch.svd_lowrank(a, q=q, niter=4)  # v: (V, q)
            model.projection = F.pad(v, (0, dim - q)).contiguous()  # (V, D)
        return model

    def _entries(self, clauses: Sequence[str]) -> tuple[list[int], list[int], list[float]]:
        """(row, word id, weight) of every nonzero: tf x idf, each row l2-normalised."""
        rows, cols, vals = [], [], []
        for r, c in enumerate(clauses):
            counts = Counter(self.index[w] for w in _words(c) if w in self.index)
            weights = {j: k * float(self.idf[j]) for j, k in counts.items()}
            norm = math.sqrt(sum(x * x for x in weights.values())) or 1.0
            for j, x in sorted(weights.items()):
                rows.append(r)
                cols.append(j)
                vals.append(x / norm)
        return rows, cols, vals

    def matrix(self, clauses: Sequence[str]) -> Tensor:
        """(N, V) sparse COO: each clause's tf x idf row, l2-normalised (all-zero for no known word)."""
        rows, cols, vals = self._entries(clauses)
        index = torch.tensor([rows, cols], dtype=torch.long).reshape(2, -1)
        return torch.sparse_coo_tensor(index, torch.tensor(vals, dtype=torch.float32),
                                       (len(clauses), len(self.words)), check_invariants=False).coalesce()

    def local(self, clauses: Sequence[str]) -> tuple[Tensor, Tensor]:
        """The same rows restricted to the U words the clauses use: (word ids (U,), dense (N, U))."""
        rows, cols, vals = self._entries(clauses)
        used = sorted(set(cols))
        where = {j: u for u, j in enumerate(used)}
        dense = torch.zeros(len(clauses), len(used))  # (N, U)
        for r, j, x in zip(rows, cols, vals):
            dense[r, where[j]] = x
        return torch.tensor(used, dtype=torch.long), dense

    def save(self, directory: str | Path) -> None:
        """tfidf.json (words, idf) and, with a projection, tfidf.safetensors, each written atomically."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        if self.projection is not None:
            write_atomic(path / "tfidf.safetensors", save_bytes({"projection": self.projection.contiguous()}))
        write_json_atomic(path / TFIDF_FILE, {"words": self.words, "idf": self.idf.tolist(),
                                              "projection": self.projection is not None})

    @classmethod
    def load(cls, directory: str | Path) -> TfidfModel:
        """What `save` wrote."""
        path = Path(directory)
        meta = json.loads((path / TFIDF_FILE).read_text(encoding="utf-8"))
        projection = load_file(str(path / "tfidf.safetensors"))["projection"] if meta["projection"] else None
        return cls(meta["words"], torch.tensor(meta["idf"]), projection)


def _cos_to(x: Tensor, centre: Tensor) -> Tensor:
    """cos(x_i, centre) per row of x (N, K) against centre (K,): (N,); 0 where either is zero."""
    return F.normalize(x, dim=-1) @ F.normalize(centre, dim=0)


def centroid_features(vectors: Tensor, tfidf_rows: Tensor, lengths: Sequence[int]) -> Tensor:
    """The "centroid" group of one document (module docstring): (N, 7) from encoder vectors
    (N, C), dense l2-normalised tf-idf rows (N, U) (any column subset holding every word the
    clauses use) and clause lengths."""
    n = len(lengths)
    enc = _cos_to(vectors, vectors.mean(0))  # (N,)
    doc = _cos_to(tfidf_rows, tfidf_rows.sum(0))  # (N,)
    sim = tfidf_rows @ tfidf_rows.T  # (N, N) cosines (rows are unit or zero)
    degree = (sim.sum(1) - sim.diagonal()) / max(n - 1, 1)  # (N,)
    length = torch.tensor(lengths, dtype=torch.float32)
    cols = []
    for x in (enc, doc, degree):
        spread = x.std(unbiased=False) if n > 1 else torch.tensor(0.0)
        cols += [x, (x - x.mean()) / spread.clamp(min=1e-3)]
    cols.append(length / length.mean().clamp(min=1.0))
    return torch.stack(cols, 1)  # (N, 7)


def feature_dim(features: Sequence[str], encoder_dim: int, tfidf_dim: int) -> int:
    """Width of the concatenated groups."""
    sizes = {"encoder": encoder_dim, "centroid": CENTROID_DIM, "tfidf": tfidf_dim, "titlewords": TITLEWORDS_DIM}
    return sum(sizes[f] for f in features)


def extraction_features(features: Sequence[str], documents: Sequence[Sequence[str]], vectors: Sequence[Tensor],
                        tfidf: TfidfModel | None, titlewords: TitleWordModel | None = None,
                        titleword_rows: Sequence[Tensor] | None = None) -> list[Tensor]:
    """Per document, its groups concatenated in `FEATURES` order: (N_i, width).

    Args:
        features: the groups (`check_features`).
        documents: each document's clauses.
        vectors: each document's encoder vectors (N_i, C) (`extract.document_vectors`).
        tfidf: the fitted tf-idf model ("centroid" and "tfidf" need it; "tfidf" its projection).
        titlewords: the fitted title-word model ("titlewords" needs it, or titleword_rows).
        titleword_rows: the training documents' out-of-fold title-word features
            (`titlewords.cross_features`), used instead of the model's.
    """
    groups = check_features(features)
    if len(documents) != len(vectors):
        raise ValueError(f"{len(documents)} documents but {len(vectors)} vector sets")
    if tfidf is None and ("centroid" in groups or "tfidf" in groups):
        raise ValueError("the centroid and tfidf features need a fitted TfidfModel")
    if "tfidf" in groups and tfidf.projection is None:
        raise ValueError("the tfidf features need a TfidfModel fitted with dim > 0")
    if "titlewords" in groups and titlewords is None and titleword_rows is None:
        raise ValueError("the titlewords features need a TitleWordModel or the cross-fitted rows")
    out = []
    for d, (clauses, v) in enumerate(zip(documents, vectors)):
        parts = []
        used, rows = tfidf.local(clauses) if tfidf is not None else (None, None)  # (U,), (N, U)
        if "encoder" in groups:
            parts.append(v)
        if "centroid" in groups:
            parts.append(centroid_features(v, rows, [len(c) for c in clauses]))
        if "tfidf" in groups:
            parts.append(rows @ tfidf.projection[used])  # (N, D)
        if "titlewords" in groups:
            parts.append(titleword_rows[d] if titleword_rows is not None else titlewords.clause_features(clauses))
        out.append(torch.cat(parts, 1).float())
    return out
