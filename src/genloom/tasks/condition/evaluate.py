"""Scoring conditional generators: `condition eval`'s table.

N texts are sampled per label with nucleus sampling; per model the table reports the share the
judge assigns the requested label (controllability, next to the judge's own held-out accuracy),
distinct-2, perplexity under the plain LM, the share of samples holding any 20-character span of
the training set verbatim, and the training time.

Letters: N samples, K labels.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genloom.errors import UserError
from genloom.metrics import distinct_n, perplexity
from genloom.models import Transformer
from genloom.models.judge import CharCNNJudge, classify
from genloom.tasks.condition.config import load_model
from genloom.tasks.condition.data import Split
from genloom.tasks.condition.sample import condition_for, generate, mean_nll, other_conditions
from genloom.tokenizers import CharTokenizer


def controllability(probs: Tensor, requested: Sequence[int] | int) -> float:
    """Share of samples whose most probable label under the judge is the one requested.

    Args:
        probs: (N, K) the judge's label probabilities of N samples.
        requested: the label each sample was asked for (N ids), or one id for all.
    """
    if probs.dim() != 2 or probs.shape[0] == 0:
        raise UserError(f"controllability needs (N, K) probabilities of N >= 1 samples, got {tuple(probs.shape)}")
    want = torch.as_tensor(requested, dtype=torch.long).expand(probs.shape[0])  # (N,)
    return float((probs.argmax(1) == want).sum()) / probs.shape[0]


class CopyIndex:
    """Finds samples that hold any `span`-character substring of a set of training texts.

    Every window of the training texts is hashed into a sorted int64 array (about 8 bytes a
    window, where a Python set of the strings would take some 150); a sample's windows are
    looked up with one `searchsorted`, and a hit is confirmed against the joined texts, so the
    answer is exact (a hash collision cannot make a false positive)."""

    def __init__(self, texts: list[str], *, span: int = 20) -> None:
        if span < 1:
            raise ValueError(f"span must be >= 1, got {span}")
        self.span = span
        self.corpus = "\x00".join(texts)
        n = sum(max(0, len(t) - span + 1) for t in texts)
        hashes = np.fromiter((hash(t[i : i + span]) for t in texts for i in range(len(t) - span + 1)),
                             dtype=np.int64, count=n)
        self.hashes = np.unique(hashes)

    def copied_span(self, text: str) -> str | None:
        """The first span of `text` found verbatim in the training texts, or None."""
        windows = [text[i : i + self.span] for i in range(len(text) - self.span + 1)]
        if not windows or not len(self.hashes):
            return None
        h = np.fromiter((hash(w) for w in windows), dtype=np.int64, count=len(windows))
        pos = np.minimum(np.searchsorted(self.hashes, h), len(self.hashes) - 1)
        for i in np.flatnonzero(self.hashes[pos] == h):
            if "\x00" not in windows[i] and windows[i] in self.corpus:
                return windows[i]
        return None


@dataclass
class Scorers:
    """What scores samples: the judge, the unconditioned LM and the training set's spans."""

    judge: CharCNNJudge
    judge_tokenizer: CharTokenizer
    judge_meta: dict[str, Any]
    lm: Transformer
    lm_tokenizer: CharTokenizer
    copies: CopyIndex


def make_scorers(judge_dir: str | Path, lm_dir: str | Path, train_texts: list[str]) -> Scorers:
    """Load the judge and the plain LM and index the training texts' 20-character spans."""
    judge, judge_tok, judge_meta = load_model(judge_dir, kind="judge")
    lm, lm_tok, _ = load_model(lm_dir, kind="plain")
    return Scorers(judge, judge_tok, judge_meta, lm, lm_tok, CopyIndex(train_texts))


def evaluate_generator(directory: str | Path, scorers: Scorers, *, n: int = 500, top_p: float = 0.95,
                       seed: int = 0, max_new_tokens: int | None = None, examples: int = 5,
                       guidance: float = 0.0, temperature: float = 1.0) -> dict[str, Any]:
    """Sample n texts per label from the model in `directory` (guided against the other labels
    when `guidance` > 0) and score them (module docstring)."""
    model, tokenizer, meta = load_model(directory)
    names = meta["labels"]
    if list(scorers.judge_meta["labels"]) != list(names):
        raise UserError(f"the judge's labels {scorers.judge_meta['labels']} differ from the model's {names}")
    started = time.perf_counter()
    per_label, all_texts, all_ended, all_probs = {}, [], [], []
    for k, name in enumerate(names):
        texts, ended = generate(model, tokenizer, meta, condition=condition_for(meta, label=name), n=n,
                                top_p=top_p, max_new_tokens=max_new_tokens, seed=seed + k, guidance=guidance,
                                temperature=temperature,
                                contrast=other_conditions(meta, name) if guidance > 0 else None)
        probs = classify(scorers.judge, scorers.judge_tokenizer, texts)  # (n, K)
        per_label[name] = {"controllability": controllability(probs, k), "mean_prob": float(probs[:, k].mean()),
                           "distinct_2": distinct_n(texts, 2), "mean_chars": float(np.mean([len(t) for t in texts])),
                           "examples": texts[:examples]}
        all_texts += texts
        all_ended += ended
        all_probs.append((probs, k))
    sample_seconds = time.perf_counter() - started
    copied = [t for t in all_texts if scorers.copies.copied_span(t) is not None]
    requested = [k for probs, k in all_probs for _ in range(len(probs))]
    return {
        "model": str(directory), "kind": meta["kind"], "parameters": meta["parameters"],
        "train_seconds": meta["train_seconds"], "train_steps": meta["steps"],
        "samples_per_label": n, "top_p": top_p, "guidance": guidance, "temperature": temperature,
        "controllability": controllability(torch.cat([p for p, _ in all_probs]), requested),
        "distinct_2": distinct_n(all_texts, 2),
        "distinct_2_per_label": float(np.mean([v["distinct_2"] for v in per_label.values()])),
        "perplexity": perplexity(mean_nll(scorers.lm, scorers.lm_tokenizer, all_texts, all_ended)),
        "copied_20": len(copied) / len(all_texts), "copied_examples": copied[:3],
        "ended_with_eos": sum(all_ended) / len(all_ended),
        "sample_seconds": sample_seconds, "per_label": per_label,
    }


def reference_figures(scorers: Scorers, test: Split, label_names: tuple[str, ...], *, n_texts: int) -> dict[str, Any]:
    """The judge's held-out accuracy on the test split, and real test texts scored as the samples
    are (cut to the LM's length; distinct-2 over `n_texts` of them, as many as the samples of one
    model, since distinct-n falls as a collection grows), for comparison."""
    probs = classify(scorers.judge, scorers.judge_tokenizer, test.texts)
    cap = scorers.lm.config.max_len - 2
    texts = [t[:cap] for t in test.texts]
    ended = [len(t) <= cap for t in test.texts]
    return {"judge_test_accuracy": controllability(probs, test.labels),
            "judge_test_size": len(test.texts), "labels": list(label_names),
            "test_distinct_2": distinct_n(texts[:n_texts], 2), "test_distinct_2_texts": min(n_texts, len(texts)),
            "test_perplexity": perplexity(mean_nll(scorers.lm, scorers.lm_tokenizer, texts, ended))}


def format_table(rows: list[dict[str, Any]], reference: dict[str, Any]) -> str:
    """The controllability table as text."""
    head = f"{'model':<18}{'control':>9}{'distinct-2':>12}{'ppl':>8}{'copied':>8}{'train s':>9}{'params':>10}"
    lines = [f"judge held-out accuracy {reference['judge_test_accuracy']:.3f} "
             f"(n={reference['judge_test_size']}); {reference['test_distinct_2_texts']} test texts: distinct-2 "
             f"{reference['test_distinct_2']:.3f}, ppl {reference['test_perplexity']:.2f}", head]
    for r in rows:
        model = r["kind"] + (f" w={r['guidance']:g}" if r.get("guidance") else "") + (
            f" T={r['temperature']:g}" if r.get("temperature", 1) != 1 else "")
        lines.append(f"{model:<18}{r['controllability']:>9.3f}{r['distinct_2']:>12.3f}{r['perplexity']:>8.2f}"
                     f"{r['copied_20']:>8.3f}{r['train_seconds']:>9.0f}{r['parameters']:>10,}")
        lines += [f"  {label:<16}{v['controllability']:>9.3f}{v['distinct_2']:>12.3f}"
                  for label, v in r["per_label"].items()]
    return "\n".join(lines)
