"""Title-word features of the SPACES extractor: how much of a clause the summary will reuse (issue 22).

Letters: N clauses of one document, W distinct words of a document, L a clause's length in
characters, T the mean training summary length in characters.

A summary copies words of its document, and which words it copies can be learnt from the training
pairs alone, with no sentence encoder: place and organisation names, numbers and the event's
verbs recur in titles, function words and boilerplate do not. This group gives the extractor that
signal in a form that survives any clause order (a shuffled document keeps its words). Not in the
post, whose extractor reads RoBERTa vectors only; measured on shuffled inews documents in
benchmarks/results/summarize_long.json.

`TitleWordModel.fit(documents, summaries)`:
- counts: for every jieba word (`genloom.metrics.word_tokens`) of the training documents, df (the
  documents containing it) and hits (those whose summary contains it too);
- word features, per word w of a document of n clauses (`word_features`):
  0 ln of the smoothed rate (hits + 0.025) / (df + 0.5) (a prior rate of 0.05 worth half a document),
  1 ln(1 + the clauses containing w), 2 that count over n, 3 idf ln((1 + D) / (1 + df)) over the D
  training documents, 4 min(len(w), 4) / 4, 5 whether w holds a digit, 6 whether df is 0;
- a two-layer MLP (7 -> 16 -> 1, tanh, the features standardised) maps them to P(w is in the
  summary), trained with Adam on full batches. Its rows use target encoding out of fold: they are
  the words of every `folds`-th document (documents i with i % folds == 0), with the counts of the
  other documents only, so no row's rate counts its own summary (a rate that did would make the
  rate the label itself).

Clause features (N, 12) (`clause_features`), with p_w from the MLP and a = the sum of p_w * len(w)
over the clause's distinct words (the expected characters the summary reuses):
  0 a / L (the expected share of the clause reused), 1 a / sqrt(L), 2 2a / (L + T) (the expected
  char F1 against a summary of length T), 3 the largest p_w, 4 the mean p_w, 5 ln L;
  6-11 each of those z-scored within the document ((x - mean) / population std, floored at 1e-3).
A clause with no word has a = 0 and p = 0.

`cross_features(documents, summaries, folds)`: the features of the training documents themselves,
document i (in fold i % folds, as `extract.cross_fit`) from a model fitted on the other folds, so
its own summary never reaches its features. What cross_fit's fold models read on the other folds'
documents was made with counts that include the held fold's summaries: a second-order path that
stays (the fold models see aggregated rates over thousands of documents, never a held document's
own words against its own summary).

Hand-written: scikit-learn has target encoders, but not over per-document word sets with a
leave-the-fold-out rate, and one 7-input MLP does not justify the dependency.
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
from torch import Tensor, nn

from genloom.errors import UserError
from genloom.files import write_atomic, write_json_atomic
from genloom.tasks.summarize.convert import clause_words

TITLEWORDS_DIM = 12
TITLEWORDS_FILE = "titlewords.json"
WORD_FEATURES = 7


def _words(text: str) -> frozenset[str]:
    """The distinct jieba words of a clause or summary (`convert.clause_words`, cached)."""
    return frozenset(clause_words(text))


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(WORD_FEATURES, 16), nn.Tanh(), nn.Linear(16, 1))


def _counts(documents: Sequence[Sequence[str]], summaries: Sequence[str],
            index: Sequence[int]) -> tuple[Counter, Counter]:
    """(df, hits) over the documents in `index`."""
    df: Counter = Counter()
    hits: Counter = Counter()
    for i in index:
        words = {w for c in documents[i] for w in _words(c)}
        reused = _words(summaries[i])
        df.update(words)
        hits.update(words & reused)
    return df, hits


def word_features(clauses: Sequence[str], df: Counter, hits: Counter, n_docs: int) -> tuple[list[str], Tensor]:
    """The document's distinct words (sorted) and their (W, 7) features (module docstring)."""
    per_clause = Counter(w for c in clauses for w in _words(c))
    words = sorted(per_clause)
    n = max(len(clauses), 1)
    rows = []
    for w in words:
        d, k = df.get(w, 0), per_clause[w]
        rows.append([math.log((hits.get(w, 0) + 0.025) / (d + 0.5)), math.log1p(k), k / n,
                     math.log((1 + n_docs) / (1 + d)), min(len(w), 4) / 4,
                     float(any(ch.isdigit() for ch in w)), float(d == 0)])
    return words, torch.tensor(rows, dtype=torch.float32).reshape(-1, WORD_FEATURES)


class TitleWordModel:
    """Word counts of the training pairs and the MLP over `word_features` (module docstring)."""

    def __init__(self, df: Counter, hits: Counter, n_docs: int, summary_len: float, net: nn.Module,
                 mean: Tensor, std: Tensor) -> None:
        self.df, self.hits, self.n_docs, self.summary_len = df, hits, n_docs, summary_len
        self.net, self.mean, self.std = net.eval(), mean, std

    @classmethod
    def fit(cls, documents: Sequence[Sequence[str]], summaries: Sequence[str], *, folds: int = 5,
            epochs: int = 150, seed: int = 0) -> TitleWordModel:
        """Counts over every pair; the MLP on the words of documents i % folds == 0, with the
        counts of the others (target encoding out of fold)."""
        if len(documents) != len(summaries):
            raise ValueError(f"{len(documents)} documents but {len(summaries)} summaries")
        if len(documents) < max(folds, 2):
            raise UserError(f"title-word features need at least {max(folds, 2)} training documents, "
                            f"got {len(documents)}")
        held = [i for i in range(len(documents)) if i % folds == 0]
        rest = [i for i in range(len(documents)) if i % folds != 0]
        df, hits = _counts(documents, summaries, rest)
        xs, ys = [], []
        for i in held:
            words, x = word_features(documents[i], df, hits, len(rest))
            reused = _words(summaries[i])
            xs.append(x)
            ys.append(torch.tensor([float(w in reused) for w in words]))
        x, y = torch.cat(xs), torch.cat(ys)
        if not len(x):
            raise UserError("the training documents have no words to learn title-word features from")
        mean, std = x.mean(0), x.std(0, unbiased=False).clamp(min=1e-6)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = _net()
            opt = torch.optim.Adam(net.parameters(), lr=1e-2)
            xn = (x - mean) / std
            for _ in range(epochs):
                opt.zero_grad()
                F.binary_cross_entropy_with_logits(net(xn).squeeze(1), y).backward()
                opt.step()
        all_df, all_hits = _counts(documents, summaries, range(len(documents)))
        summary_len = sum(len(s) for s in summaries) / len(summaries)
        return cls(all_df, all_hits, len(documents), summary_len, net, mean, std)

    @torch.no_grad()
    def word_probabilities(self, clauses: Sequence[str]) -> dict[str, float]:
        """P(w is in the summary) for each distinct word of the document."""
        words, x = word_features(clauses, self.df, self.hits, self.n_docs)
        if not words:
            return {}
        p = torch.sigmoid(self.net((x - self.mean) / self.std).squeeze(1))
        return dict(zip(words, p.tolist()))

    def clause_features(self, clauses: Sequence[str]) -> Tensor:
        """(N, 12) features of one document's clauses (module docstring)."""
        p = self.word_probabilities(clauses)
        rows = []
        for c in clauses:
            words = _words(c)
            length = max(len(c), 1)
            a = sum(p[w] * len(w) for w in words)
            probs = [p[w] for w in words]
            rows.append([a / length, a / math.sqrt(length), 2 * a / (length + self.summary_len),
                         max(probs, default=0.0), sum(probs) / len(probs) if probs else 0.0, math.log(length)])
        x = torch.tensor(rows, dtype=torch.float32).reshape(-1, TITLEWORDS_DIM // 2)
        spread = x.std(0, unbiased=False) if len(x) > 1 else torch.zeros(x.shape[1])
        return torch.cat([x, (x - x.mean(0)) / spread.clamp(min=1e-3)], 1)

    def save(self, directory: str | Path) -> None:
        """titlewords.json (counts, sizes) and titlewords.safetensors (the MLP), each written atomically."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        state = {f"net.{k}": v.contiguous() for k, v in self.net.state_dict().items()}
        write_atomic(path / "titlewords.safetensors", save_bytes({**state, "mean": self.mean, "std": self.std}))
        words = sorted(self.df)
        write_json_atomic(path / TITLEWORDS_FILE, {
            "documents": self.n_docs, "summary_len": self.summary_len, "words": words,
            "df": [self.df[w] for w in words], "hits": [self.hits.get(w, 0) for w in words]})

    @classmethod
    def load(cls, directory: str | Path) -> TitleWordModel:
        """What `save` wrote."""
        path = Path(directory)
        meta = json.loads((path / TITLEWORDS_FILE).read_text(encoding="utf-8"))
        tensors = load_file(str(path / "titlewords.safetensors"))
        net = _net()
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        df = Counter(dict(zip(meta["words"], meta["df"])))
        hits = Counter({w: h for w, h in zip(meta["words"], meta["hits"]) if h})
        return cls(df, hits, meta["documents"], meta["summary_len"], net, tensors["mean"], tensors["std"])


def cross_features(documents: Sequence[Sequence[str]], summaries: Sequence[str], *, folds: int,
                   seed: int = 0) -> list[Tensor]:
    """Per training document i, its (N_i, 12) features from a model fitted on the documents outside
    fold i % folds (module docstring)."""
    out: list[Tensor | None] = [None] * len(documents)
    for f in range(folds):
        inside = [i for i in range(len(documents)) if i % folds != f]
        model = TitleWordModel.fit([documents[i] for i in inside], [summaries[i] for i in inside],
                                   folds=folds, seed=seed)
        for i in range(f, len(documents), folds):
            out[i] = model.clause_features(documents[i])
    return [x for x in out if x is not None]
