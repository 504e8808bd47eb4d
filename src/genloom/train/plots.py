"""PNG plots of training: the loss / metric curves of a run and attention heat-maps.

Matplotlib (Agg backend, imported lazily so importing genloom.train stays fast). Chinese tick
labels need a CJK font: `cjk_font()` looks for one among the system fonts (WenQuanYi, Noto CJK,
Source Han, Droid Sans Fallback, ...) and checks that it really has the glyph for 中; without one
the plot is still written, with a warning naming the Debian packages that provide a font.
Every PNG is written to a temporary name and renamed, so a crash never leaves half an image.

Shape letters: T target positions, S source positions.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from genloom.errors import UserError
from genloom.files import write_with

_CJK_HINTS = ("cjk", "wqy", "wenquanyi", "droidsansfallback", "sourcehan", "notosanssc",
              "notoserifsc", "simhei", "simsun", "msyh", "ukai", "uming", "pingfang", "hiragino",
              "heiti", "songti", "arphic")
_NO_CJK = ("no CJK font found: Chinese labels will show as boxes "
           "(apt-get install fonts-wqy-microhei or fonts-noto-cjk)")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@functools.cache
def cjk_font() -> str | None:
    """Path of a font file that renders Chinese, or None when the machine has none."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    paths = [f.fname for f in font_manager.fontManager.ttflist]
    paths += font_manager.findSystemFonts()
    seen = set()
    for path in paths:
        base = os.path.basename(path).lower().replace("-", "").replace("_", "")
        if path in seen or not any(h in base for h in _CJK_HINTS):
            continue
        seen.add(path)
        try:
            if FT2Font(path).get_char_index(ord("中")):
                font_manager.fontManager.addfont(path)
                return path
        except (OSError, RuntimeError):
            continue
    return None


def _save(fig, path: Path) -> Path:
    try:
        return write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"), what="plot")
    finally:
        _pyplot().close(fig)


def plot_attention(
    probs: Tensor | np.ndarray,
    src_chars: Sequence[str],
    tgt_chars: Sequence[str],
    path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """Heat-map of one head's (or a head-mean) attention: target rows, source columns.

    Args:
        probs: (T, S) attention probabilities (rows sum to 1).
        src_chars: S labels for the columns (source characters / tokens).
        tgt_chars: T labels for the rows (generated characters / tokens).
        path: the PNG to write.
        title: optional title.

    Returns:
        The path written.
    """
    a = probs.detach().float().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
    if a.ndim != 2:
        raise UserError(f"plot_attention wants a (T, S) matrix, got shape {tuple(a.shape)}")
    if a.shape != (len(tgt_chars), len(src_chars)):
        raise UserError(f"attention is {a.shape[0]}x{a.shape[1]} but got {len(tgt_chars)} target"
                        f" and {len(src_chars)} source labels")
    plt = _pyplot()
    from matplotlib.font_manager import FontProperties

    font_path = cjk_font()
    font = FontProperties(fname=font_path) if font_path else None
    if font is None and any(ord(c) > 0x2E80 for c in "".join([*src_chars, *tgt_chars])):
        warnings.warn(_NO_CJK, stacklevel=2)
    t, s = a.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.32 * s + 1.5), max(3.0, 0.32 * t + 1.2)))
    im = ax.imshow(a, cmap="viridis", aspect="auto", vmin=0.0, vmax=max(float(a.max()), 1e-9))
    ax.set_xticks(range(s))
    ax.set_yticks(range(t))
    with warnings.catch_warnings():
        if font is None:  # already warned once above, not once per glyph
            warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        ax.set_xticklabels(list(src_chars), fontproperties=font, fontsize=9)
        ax.set_yticklabels(list(tgt_chars), fontproperties=font, fontsize=9)
        ax.set_xlabel("source")
        ax.set_ylabel("target")
        if title:
            ax.set_title(title, fontproperties=font)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        return _save(fig, Path(path))


def plot_curves(records: Sequence[dict], path: str | Path) -> Path:
    """Training curves from metrics.jsonl records: the train loss, then one panel per eval metric.

    Args:
        records: dicts with "event" ("train" or "eval") and "step", as the trainer logs them.
        path: the PNG to write.
    """
    train = [r for r in records if r.get("event") == "train" and "loss" in r]
    evals = [r for r in records if r.get("event") == "eval"]
    skip = {"event", "step", "epoch", "time", "tokens", "improved"}
    names = sorted({k for r in evals for k, v in r.items()
                    if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)})
    other = [n for n in names if n != "loss"]
    plt = _pyplot()
    panels = 1 + len(other)
    cols = min(panels, 3)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    ax = axes[0][0]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1.0, label="train loss")
    if "loss" in names:
        ax.plot([r["step"] for r in evals if "loss" in r], [r["loss"] for r in evals if "loss" in r],
                "o-", ms=3, label="dev loss")
    ax.set_xlabel("step")
    ax.set_title("loss")
    ax.legend(fontsize=8)
    for i, name in enumerate(other):
        ax = axes[(i + 1) // cols][(i + 1) % cols]
        pts = [(r["step"], r[name]) for r in evals if name in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3)
        ax.set_xlabel("step")
        ax.set_title(f"dev {name}")
    for j in range(panels, rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.tight_layout()
    return _save(fig, Path(path))
