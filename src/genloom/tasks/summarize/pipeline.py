"""Reading a document the SPACES way, and the trained `Summarizer`.

A document is cut into clauses (`convert.split_clauses`, the first `max_clauses`); the extractor
gives each a probability; `select_clauses` keeps the most probable ones that fit the window
(above `threshold`, and with `fill` topped up by the next ones), joined in document order
(`extracted_text`). Truncate mode reads the first `window` characters instead (`truncate_text`).
`Summarizer` holds the seq2seq, the extractor and its sentence encoder, and reads and writes the
summarizer directory (see `genloom.tasks.summarize`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from genloom.errors import UserError
from genloom.files import write_json_atomic
from genloom.models.unilm import UniLMSeq2Seq
from genloom.tasks.summarize.config import CONFIG_FILE, SummarizeConfig
from genloom.tasks.summarize.convert import split_clauses
from genloom.tasks.summarize.extract import Extractor, load_encoder
from genloom.tasks.summarize.seq2seq import generate_ids


def clauses_of(text: str, max_clauses: int) -> list[str]:
    """The first `max_clauses` clauses of a document; a UserError for a blank document."""
    clauses = split_clauses(text)[:max_clauses]
    if not clauses:
        raise UserError("a document is empty (nothing to summarize)")
    return clauses


def truncate_text(clauses: Sequence[str], window: int) -> str:
    """The document's first `window` characters (clauses joined as the pipeline joins them)."""
    return "".join(clauses)[:window]


def select_clauses(clauses: Sequence[str], probs: Sequence[float], *, window: int, threshold: float,
                   fill: bool, density: float = 0.0) -> list[int]:
    """Indices (document order) of the extracted clauses: most probable first while they fit the
    window, those above `threshold` (at least the best one), then with `fill` any that still fit.
    `density` > 0 ranks by probability / length ** density instead (the threshold still reads the
    probability): the window is a budget of characters, and a short clause costs less of it (the
    greedy order of a knapsack at density 1). Not in the post, which reads every extracted clause."""
    def key(i: int) -> tuple[float, int]:
        p = float(probs[i])
        return (-(p / max(len(clauses[i]), 1) ** density if density else p), i)

    order = sorted(range(len(clauses)), key=key)
    best = min(range(len(clauses)), key=lambda i: (-float(probs[i]), i), default=-1)
    chosen: list[int] = []
    used = 0
    for i in order:
        if not fill and float(probs[i]) <= threshold and i != best:
            continue
        if used + len(clauses[i]) <= window or not chosen:
            chosen.append(i)
            used += len(clauses[i])
        if used >= window:
            break
    return sorted(chosen)


def with_oracle(scores: Sequence[float], aligned: Sequence[int]) -> list[float]:
    """Clause scores that rank the `aligned` clauses first (2.0, above any probability), the
    others by `scores`: the oracle extraction (training sources, the benchmark's upper bound)."""
    out = [float(s) for s in scores]
    for i in aligned:
        out[i] = 2.0
    return out


def extracted_text(clauses: Sequence[str], chosen: Sequence[int], window: int) -> str:
    """The chosen clauses joined in document order, cut to the window."""
    return "".join(clauses[i] for i in sorted(chosen))[:window]


def best_clause_text(clauses: Sequence[str], probs: Sequence[float], length: int) -> str:
    """Extract-only baseline: the most probable clause and those after it, cut to `length` chars."""
    best = max(range(len(clauses)), key=lambda i: (float(probs[i]), -i))
    return "".join(clauses[best:])[:length]


def ranked_text(pieces: Sequence[str], scores: Sequence[float], length: int) -> str:
    """Extractive summary of about `length` characters: the pieces (clauses or sentences) from the
    highest score down (ties: the earlier piece), joined in that order until `length` characters
    are reached, cut to `length`. The extract-only rows of the long-document benchmark (extractor,
    TextRank) read this way, so every order of the document gives one rule."""
    if length < 1:
        raise ValueError(f"length must be at least 1, got {length}")
    if len(pieces) != len(scores):
        raise ValueError(f"{len(pieces)} pieces but {len(scores)} scores")
    out = ""
    for i in sorted(range(len(pieces)), key=lambda i: (-float(scores[i]), i)):
        if len(out) >= length:
            break
        out += pieces[i]
    return out[:length]


def extraction_recall(selected: Sequence[Sequence[int]], gold: Sequence[Sequence[int]]) -> dict[str, float]:
    """Micro-averaged recall / precision (percent) of selected clause indices against the aligned ones."""
    hit = sum(len(set(s) & set(g)) for s, g in zip(selected, gold))
    n_gold, n_sel = sum(len(g) for g in gold), sum(len(s) for s in selected)
    return {"recall": 100.0 * hit / max(n_gold, 1), "precision": 100.0 * hit / max(n_sel, 1),
            "aligned": n_gold, "selected": n_sel}


class Summarizer:
    """A trained pipeline (or truncate-mode model): `summarize` texts, `load` / `save` a directory."""

    def __init__(self, config: SummarizeConfig, model: nn.Module, tokenizer: Any, *, info: dict[str, Any],
                 extractor: Extractor | None = None, encoder: Any = None, encoder_tokenizer: Any = None) -> None:
        self.config, self.model, self.tokenizer, self.info = config, model.eval(), tokenizer, info
        self.extractor, self.encoder, self.encoder_tokenizer = extractor, encoder, encoder_tokenizer

    @property
    def summary_length(self) -> int:
        """Mean training-summary length (characters, rounded): the extract-only baseline's cut."""
        return int(self.info.get("mean_target_len", 24))

    def probabilities(self, clauses: Sequence[Sequence[str]]) -> list[Tensor]:
        """The extractor's clause probabilities (mean over its fold models) per document."""
        if self.extractor is None:
            raise UserError("this summarizer has no extractor (it was trained with --mode truncate)")
        return self.extractor.probabilities(self.extractor.featurize(self.encoder, self.encoder_tokenizer, clauses))

    def sources(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """Per text: its clauses, and the source the seq2seq reads (with the extraction, if any)."""
        c = self.config
        docs = [clauses_of(t, c.max_clauses) for t in texts]
        out = []
        probs = self.probabilities(docs) if c.mode == "pipeline" else [None] * len(docs)
        for clauses, p in zip(docs, probs):
            if p is None:
                out.append({"clauses": clauses, "source": truncate_text(clauses, c.window)})
                continue
            chosen = select_clauses(clauses, p.tolist(), window=c.window, threshold=c.threshold, fill=c.fill,
                                        density=c.extract_density)
            out.append({"clauses": clauses, "probs": p.tolist(), "chosen": chosen,
                        "source": extracted_text(clauses, chosen, c.window)})
        return out

    def summarize(self, texts: Sequence[str], *, num_beams: int | None = None, copy: bool | None = None,
                  explain: bool = False, batch_size: int = 32) -> list[dict[str, Any]]:
        """Summaries of `texts`: [{"summary": ...}] (plus, with `explain`, the source read and the
        extracted clauses with their probabilities)."""
        return self.generate(self.sources(texts), num_beams=num_beams, copy=copy, explain=explain,
                             batch_size=batch_size)

    def generate(self, prepared: Sequence[dict[str, Any]], *, num_beams: int | None = None,
                 copy: bool | None = None, explain: bool = False, batch_size: int = 32) -> list[dict[str, Any]]:
        """`summarize` from the output of `sources` (so an evaluation extracts once)."""
        beams = self.config.num_beams if num_beams is None else num_beams
        if beams < 1:
            raise UserError(f"the beam size must be at least 1, got {beams}")
        ids = [self.tokenizer.encode(p["source"]) for p in prepared]
        outs = generate_ids(self.model, ids, num_beams=beams, copy=copy, batch_size=batch_size,
                            no_repeat_ngram=self.config.no_repeat_ngram)
        results = []
        for p, o in zip(prepared, outs):
            row: dict[str, Any] = {"summary": self.tokenizer.decode(o)}
            if explain:
                row["source"] = p["source"]
                if "chosen" in p:
                    row["extracted"] = [{"clause": p["clauses"][i], "index": i, "p": round(p["probs"][i], 4),
                                         "above_threshold": p["probs"][i] > self.config.threshold}
                                        for i in p["chosen"]]
            results.append(row)
        return results

    def save(self, directory: str | Path, *, ema: Any = None) -> Path:
        """Write seq2seq/ (with `ema` weights as the default), extractor/, summarize.json."""
        from genloom.models import save

        path = Path(directory)
        save(self.model, self.tokenizer, path / "seq2seq", ema=ema)
        if self.extractor is not None:
            self.extractor.save(path / "extractor")
        write_json_atomic(path / CONFIG_FILE, {"config": asdict(self.config), "info": self.info})
        return path

    @classmethod
    def load(cls, directory: str | Path, *, ema: bool = True) -> Summarizer:
        """Rebuild a summarizer saved by `train` (EMA weights unless ema=False)."""
        from genloom.models import load

        path = Path(directory)
        meta_path = path / CONFIG_FILE
        if not meta_path.is_file():
            raise UserError(f"{path} is not a summarizer directory (no {CONFIG_FILE})")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            known = {f.name for f in fields(SummarizeConfig)}
            config = SummarizeConfig(**{k: v for k, v in meta["config"].items() if k in known})
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read {meta_path}: {e}") from None
        model, tokenizer = load(path / "seq2seq", ema=ema)
        if not isinstance(model, UniLMSeq2Seq):
            raise UserError(f"{path / 'seq2seq'} does not hold a summarization model")
        extractor = encoder = enc_tok = None
        if config.mode == "pipeline":
            extractor = Extractor.load(path / "extractor")
            encoder, enc_tok = load_encoder(path / "encoder")
        return cls(config, model, tokenizer, info=meta.get("info", {}), extractor=extractor, encoder=encoder,
                   encoder_tokenizer=enc_tok)
