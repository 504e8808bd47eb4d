"""Decoding titles: a trained `TitleModel` (its save / load), batched beam search / greedy through
`genloom.decode.loops`. The post's decoder (the whole model re-run at every step) is
`genloom.models.nocache.NoCache`.

Letters: B rows, S source length, T title positions, t tokens generated so far, V vocabulary.

Both title models (`RNNSeq2Seq`, `UniLMSeq2Seq` with its prior / pointer head) return
log-probabilities from `start` / `step` (their copy mixture is a distribution, not logits); the
search loops' log_softmax leaves them unchanged, so they run as they are.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from genloom import models
from genloom.decode.loops import beam_search, greedy
from genloom.decode.processors import BannedTokens, NoRepeatNGram
from genloom.decode.protocol import LogitsProcessor
from genloom.errors import UserError
from genloom.files import write_json_atomic
from genloom.tasks.title.config import MODEL_SUBDIR, TITLE_FILE, TitleConfig
from genloom.tasks.title.data import normalise
from genloom.train.lm import pad_rows


def title_processors(tokenizer: Any, *, no_repeat_ngram: int) -> list[LogitsProcessor]:
    """Ban pad / unk / bos (as the post drops ids 0-2) and, if n > 0, repeated char n-grams."""
    procs: list[LogitsProcessor] = [
        BannedTokens([tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id])]
    if no_repeat_ngram > 0:
        procs.append(NoRepeatNGram(no_repeat_ngram))
    return procs


def decode_batch(model: nn.Module, src: Tensor, *, eos_id: int, num_beams: int,
                 max_new_tokens: int, processors: Sequence[LogitsProcessor],
                 length_penalty: float = 1.0) -> list[list[int]]:
    """Title ids (eos stripped) for each row of src (B, S): greedy for one beam, else beam search."""
    if num_beams == 1:
        out = greedy(model, max_new_tokens=max_new_tokens, eos_id=eos_id, processors=processors,
                     src=src)
    else:
        out = beam_search(model, num_beams=num_beams, max_new_tokens=max_new_tokens,
                          eos_id=eos_id, length_penalty=length_penalty, processors=processors,
                          src=src)
    return out.sequences


@torch.no_grad()
def decode_sources(model: nn.Module, tokenizer: Any, sources: Sequence[Sequence[int]], *,
                   num_beams: int, max_new_tokens: int, no_repeat_ngram: int,
                   length_penalty: float = 1.0, batch_size: int = 32, progress: bool = False,
                   desc: str = "decode") -> list[str]:
    """Titles for encoded sources, in order; rows are batched by length to save padding."""
    was_training = model.training
    model.eval()
    procs = title_processors(tokenizer, no_repeat_ngram=no_repeat_ngram)
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    out: list[str] = [""] * len(sources)
    bar = tqdm(total=len(sources), desc=desc, unit="title", disable=not progress, leave=False)
    try:
        for i in range(0, len(order), batch_size):
            rows = order[i:i + batch_size]
            src = pad_rows([sources[r] for r in rows], tokenizer.pad_id)  # (B, S)
            seqs = decode_batch(model, src, eos_id=tokenizer.eos_id, num_beams=num_beams,
                                max_new_tokens=max_new_tokens, processors=procs,
                                length_penalty=length_penalty)
            for r, seq in zip(rows, seqs):
                out[r] = tokenizer.decode(seq)
            bar.update(len(rows))
    finally:
        bar.close()
        model.train(was_training)
    return out


@dataclass
class TitleModel:
    """A trained title model with what it needs to decode."""

    model: nn.Module  # RNNSeq2Seq or UniLMSeq2Seq (eval mode)
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
