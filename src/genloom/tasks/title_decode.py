"""Decoding titles: batched beam search / greedy through `genloom.decode.loops`, the no-cache
reference decoder of the post (the whole model re-run at every step), and the attention picture
of `genloom title generate --explain`.

Letters: B rows, S source length, T title positions, t tokens generated so far, V vocabulary.

Both title models (`RNNSeq2Seq`, `UniLMCopy`) return log-probabilities from `start` / `step`
(their copy mixture is a distribution, not logits); the search loops' log_softmax leaves them
unchanged, so they run as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from genloom.decode.processors import BannedTokens, NoRepeatNGram
from genloom.decode.protocol import LogitsProcessor
from genloom.decode.loops import beam_search, greedy
from genloom.train import Taps, plot_attention


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
    from genloom.tasks.title_data import pad

    was_training = model.training
    model.eval()
    procs = title_processors(tokenizer, no_repeat_ngram=no_repeat_ngram)
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    out: list[str] = [""] * len(sources)
    bar = tqdm(total=len(sources), desc=desc, unit="title", disable=not progress, leave=False)
    try:
        for i in range(0, len(order), batch_size):
            rows = order[i:i + batch_size]
            src = pad([sources[r] for r in rows], tokenizer.pad_id)  # (B, S)
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


class NoCache(nn.Module):
    """The post's decoder as a `Decodable`: no state but the tokens so far; every `step` re-runs
    the whole model (encoder included) on the source and the full title prefix, as
    bojone/seq2seq's `gen_title` does. The reference that the cached path must equal, and the
    baseline of benchmarks/title_decode.py.

    The wrapped model needs `forward(src, tgt_in) -> log-probs (B, T, V)`.
    """

    def __init__(self, model: nn.Module, *, bos_id: int) -> None:
        super().__init__()
        self.model = model
        self.bos_id = bos_id
        self.vocab_size = model.vocab_size

    def _run(self, state: dict[str, Tensor]) -> Tensor:
        return self.model(state["src"], state["prefix"])[:, -1]  # (B, V)

    def start(self, *, src: Tensor, max_new_tokens: int | None = None) -> tuple[Tensor, dict]:
        """src (B, S) -> log-probs (B, V) of the first title token, state {src, prefix (B, 1)}."""
        bos = torch.full((src.shape[0], 1), self.bos_id, dtype=torch.long, device=src.device)
        state = {"src": src, "prefix": bos}
        return self._run(state), state

    def step(self, tokens: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict]:
        """tokens (B,) appended to the prefix (B, t+1); the whole model runs again."""
        new = {"src": state["src"], "prefix": torch.cat([state["prefix"], tokens[:, None]], 1)}
        return self._run(new), new

    def select(self, state: dict[str, Tensor], index: Tensor) -> dict[str, Tensor]:
        """Keep / reorder rows of the source and prefix."""
        return {k: v.index_select(0, index) for k, v in state.items()}


# ---- the attention picture (--explain) ------------------------------------------------------
# The title is generated, then the model runs once more with teacher forcing on it while `Taps`
# listens: the copy/attention distribution of each title position over the source characters
# ("attention:attn_probs" in both architectures; for a UniLM model without copy, the head-mean of
# the last block's attention from title rows to source columns). A long article is shown as the
# window of `width` source characters that receives the most attention.
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
    for `article`."""
    title = tm.generate([article])[0]
    src_ids, _ = tm.sources([article])
    tok = tm.tokenizer
    src = torch.tensor([src_ids[0]])  # (1, S)
    tgt = torch.tensor([[tok.bos_id] + tok.encode(title)])  # (1, T)
    model = tm.model
    if getattr(model.config, "copy", True) or not hasattr(model, "lm"):
        with Taps(model, ["attention:attn_probs"]) as taps:
            model(src, tgt)
        attn = taps["attention:attn_probs"][0, 0]  # (T, S)
    else:  # UniLM without copy: last block's attention, title rows over source columns
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
