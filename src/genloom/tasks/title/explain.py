"""The attention picture of `genloom title generate --explain`.

Letters: T title positions (+ eos), S source characters.

The title is generated, then the model runs once more with teacher forcing on it while `Taps`
listens: the copy / attention distribution of each title position over the source characters
(the RNN's "attention:attn_probs", the UniLM pointer's "head.attention:attn_probs"; for a UniLM
without the pointer, the head-mean of the last block's attention from title rows to source
columns). A long article is shown as the window of `width` source characters that receives the
most attention.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genloom.train import Taps, plot_attention


def _window(attn: Tensor, width: int) -> int:
    """Start of the `width` source columns of attn (T, S) with the most attention mass."""
    mass = attn.sum(0)  # (S,)
    if mass.numel() <= width:
        return 0
    sums = mass.unfold(0, width, 1).sum(-1)  # (S - width + 1,)
    return int(sums.argmax())


@torch.no_grad()
def attention_map(tm: Any, article: str) -> tuple[Tensor, list[str], list[str]]:
    """(attention (T, S), source characters, title characters + "<eos>") of the model's own title
    for `article` (`tm` a `TitleModel`)."""
    title = tm.generate([article])[0]
    src_ids, _ = tm.sources([article])
    tok = tm.tokenizer
    src = torch.tensor([src_ids[0]])  # (1, S)
    tgt = torch.tensor([[tok.bos_id] + tok.encode(title)])  # (1, T)
    model = tm.model
    if not hasattr(model, "lm"):  # the RNN: its attention
        pointer = "attention:attn_probs"
    elif getattr(model.config, "pointer", False):  # the UniLM's pointer
        pointer = "head.attention:attn_probs"
    else:
        pointer = None
    if pointer is not None:
        with Taps(model, [pointer]) as taps:
            model(src, tgt)
        attn = taps[pointer][0, 0]  # (T, S)
    else:  # UniLM without the pointer: last block's attention, title rows over source columns
        last = f"lm.blocks.{len(model.lm.blocks) - 1}.mixer:attn_probs"
        with Taps(model, [last]) as taps:
            model(src, tgt)
        S = src.shape[1]
        attn = taps[last][0].mean(0)[S:, :S]  # (T, S)
        attn = attn / attn.sum(-1, keepdim=True).clamp_min(1e-12)
    src_chars = [tok.id_to_token(i) for i in src_ids[0]]
    tgt_chars = list(tok.decode(tgt[0, 1:].tolist(), skip_special=False)) + ["<eos>"]
    return attn.float(), src_chars, tgt_chars


def explain(tm: Any, article: str, path: str | Path, *, width: int = 60) -> Path:
    """Write the attention heat-map of the model's title for `article` to `path` (PNG)."""
    attn, src_chars, tgt_chars = attention_map(tm, article)
    start = _window(attn, width)
    cols = slice(start, start + width)
    return plot_attention(attn[:, cols], src_chars[cols], tgt_chars, path,
                          title=f"title attention over source characters {start}..{start + attn[:, cols].shape[1] - 1}")
