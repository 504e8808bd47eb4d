"""The UniLM title model: the project Transformer under the prefix mask (source bidirectional,
title causal, segment ids 0/1, as bert4keras's `application='unilm'`), plus the title task's
prior and pointer-generator copy over the source positions; and char-LM pre-training for it.

Letters: B rows, S source length, T title positions (bos + title), C model width, V vocabulary.

Copy: a pointer attention (its own query/key projections of the final hidden states) over the
real source positions, and a gate sigmoid(w . h_t), give
p(y) = g * softmax(logits)[y] + (1 - g) * sum of the pointer attention on source positions
holding y, exactly as in `RNNSeq2Seq`; `forward`, `start` and `step` return log-probabilities.

Decoding reuses the Transformer's cache through its own `start` / `step` / `select`. Two public
pieces of the Transformer are used besides: `hidden_states` (the source's final hidden states,
keys of the pointer, computed once in `start`: an extra bidirectional pass over the source, since
`Transformer.start` returns only the last position) and a forward hook on its final norm, which
hands over the hidden state that produced each step's logits.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from genloom.models.rnn_seq2seq import source_presence, successor_matches
from genloom.models.transformer import Transformer, TransformerConfig
from genloom.nn import probe
from genloom.tasks.title_data import normalise, pad


@dataclass
class UniLMCopyConfig:
    vocab_size: int  # characters incl. special ids
    pad_id: int = 0  # padding id
    bos_id: int = 2  # first target token (the UniLM [SEP] role)
    d_model: int = 128  # Transformer width C
    n_layer: int = 4  # Transformer blocks
    n_head: int = 4  # attention heads
    d_ff: int = 512  # feed-forward width
    dropout: float = 0.1  # dropout in the Transformer while training
    prior: bool = True  # the post's source-character prior averaged with the logits
    copy: bool = True  # pointer-generator copy from the source
    successor: bool = True  # pointer bonus on source positions continuing the last 1 / 2 chars
    max_source_len: int = 256  # longest source (the task truncates to it)
    max_title_len: int = 41  # longest target input (bos + title) the context is sized for

    def transformer(self) -> TransformerConfig:
        """The underlying Transformer's config (GPT-2 flavour, prefix mask, 2 segments)."""
        return TransformerConfig(
            vocab_size=self.vocab_size, n_layer=self.n_layer, n_head=self.n_head,
            d_model=self.d_model, d_ff=self.d_ff, max_len=self.max_source_len + self.max_title_len + 1,
            mask="prefix", n_segment=2, dropout=self.dropout, tie_embeddings=True)


def title_unilm_small(vocab_size: int, **overrides: Any) -> UniLMCopyConfig:
    """4 layers, width 128, 4 heads, feed-forward 512: about 0.85M parameters plus 0.13k per
    vocabulary item (tied embeddings + prior). At width 256 a training step on CPU costs about
    10x the RNN's (every source character passes 4 full blocks), which a 15-minute budget
    cannot afford; at 128 it is about 2-3x."""
    return UniLMCopyConfig(vocab_size=vocab_size, **overrides)


class Pointer(nn.Module):
    """Scaled dot-product attention of title states over source states (the copy distribution);
    records "attn_probs" (B, 1, T, S) for taps."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, h: Tensor, keys: Tensor, mask: Tensor, bias: Tensor | None = None) -> Tensor:
        """h (B, T, C), keys (B, S, C) (already projected), mask (B, S), optional additive score
        bias (B, T, S) -> probs (B, T, S)."""
        scores = self.q(h) @ keys.transpose(1, 2) * self.scale  # (B, T, S)
        if bias is not None:
            scores = scores + bias
        attn = scores.masked_fill(~mask[:, None, :], float("-inf")).softmax(-1)  # (B, T, S)
        if probe.active():
            probe.record(self, "attn_probs", attn[:, None])  # (B, 1, T, S)
        return attn


class PointerPriorMixin:
    """The title task's output layer over a UniLM's hidden states: the post's source-character
    prior averaged with the logits, and the pointer-generator copy over source positions (with the
    successor bonus), as in `RNNSeq2Seq`. Shared by `UniLMCopy` and the SPACES seq2seq
    (`genloom.tasks.summarize_seq2seq.CopyUniLM`); the host is an nn.Module with
    `config.pad_id`, `config.bos_id` and `config.vocab_size`."""

    def _hook_hidden(self) -> None:
        """Keep the final norm's output (the hidden state behind the logits) in `_hidden` while
        `_grab` is set (self.lm is the host's Transformer)."""
        self._hidden: Tensor | None = None
        self._grab = False
        self.lm.norm.register_forward_hook(self._keep_hidden)

    def _keep_hidden(self, module: nn.Module, args: Any, output: Tensor) -> None:
        if self._grab:
            self._hidden = output

    def _init_pointer(self, d_model: int, vocab_size: int, *, prior: bool, copy: bool,
                      successor: bool) -> None:
        self._use_prior, self._use_copy, self._use_successor = prior, copy, copy and successor
        self.attention = Pointer(d_model)
        if copy:
            self.gate = nn.Linear(d_model, 1)
        if copy and successor:  # as RNNSeq2Seq: continue 1- / 2-character source matches
            self.successor_weight = nn.Parameter(torch.ones(2))
        if prior:
            self.prior_log_scale = nn.Parameter(torch.zeros(vocab_size))
            self.prior_shift = nn.Parameter(torch.zeros(vocab_size))

    def _mix(self, logits: Tensor, h: Tensor, st: dict[str, Any], prev1: Tensor, prev2: Tensor
             ) -> Tensor:
        """logits (B, T, V), hidden h (B, T, C), the ids fed at those positions prev1 (B, T) and
        the ids before them prev2 (B, T) -> log-probs (B, T, V) with prior and copy."""
        if self._use_prior:
            logits = (logits + st["prior"][:, None, :]) / 2
        logp = logits.float().log_softmax(-1)  # (B, T, V)
        if not self._use_copy:
            return logp
        bias = None
        if self._use_successor:
            m1, m2 = successor_matches(st["src"], prev1, prev2, start_id=self.config.bos_id)
            bias = self.successor_weight[0] * m1 + self.successor_weight[1] * m2
        attn = self.attention(h, st["keys"], st["mask"], bias)  # (B, T, S)
        g = torch.sigmoid(self.gate(h))  # (B, T, 1)
        src = st["src"][:, None, :].expand(-1, h.shape[1], -1)  # (B, T, S)
        copy = torch.zeros_like(logp).scatter_add_(2, src, attn)  # (B, T, V)
        return torch.log((g * logp.exp() + (1 - g) * copy).clamp_min(1e-30))

    def _source_side(self, src: Tensor, h_src: Tensor) -> dict[str, Any]:
        """Per-row source tensors `_mix` reads: pointer keys, mask, ids and the prior (B, V)."""
        st: dict[str, Any] = {"keys": self.attention.k(h_src), "mask": src != self.config.pad_id,
                              "src": src}
        if self._use_prior:
            chi = source_presence(src, self.config.vocab_size, self.config.pad_id)  # (B, V)
            st["prior"] = self.prior_log_scale.exp() * chi + self.prior_shift
        return st


class UniLMCopy(PointerPriorMixin, nn.Module):
    """Prefix-mask Transformer + prior + copy, with the decoding protocol.

    State: {"lm": TransformerState, "keys" (B, S, C), "mask" (B, S), "src" (B, S),
    "last" (B,) the last id fed, "prior" (B, V) when the prior is on}.
    """

    def __init__(self, config: UniLMCopyConfig) -> None:
        super().__init__()
        c = self.config = config
        self.vocab_size = c.vocab_size
        self.lm = Transformer(c.transformer())
        self._init_pointer(c.d_model, c.vocab_size, prior=c.prior, copy=c.copy,
                           successor=c.successor)
        self._hook_hidden()

    def forward(self, src: Tensor, tgt_in: Tensor, tgt_out: Tensor | None = None) -> Tensor:
        """src (B, S), tgt_in (B, T) starting with bos: log-probs (B, T, V), or with tgt_out the
        mean NLL per target character (as `RNNSeq2Seq.forward`)."""
        pad_id = self.config.pad_id
        S = src.shape[1]
        ids = torch.cat([src, tgt_in], 1)  # (B, S + T)
        seg = torch.cat([torch.zeros_like(src), torch.ones_like(tgt_in)], 1)  # (B, S + T)
        valid = torch.cat([src != pad_id, torch.ones_like(tgt_in, dtype=torch.bool)], 1)
        h = self.lm.hidden_states(ids, segment_ids=seg, attention_mask=valid)  # (B, S + T, C)
        h_src, h_tgt = h[:, :S], h[:, S:]  # (B, S, C), (B, T, C)
        st = self._source_side(src, h_src)
        prev2 = F.pad(tgt_in, (1, 0), value=-2)[:, :-1]  # (B, T)
        logp = self._mix(self.lm.lm_head(h_tgt), h_tgt, st, tgt_in, prev2)  # (B, T, V)
        if tgt_out is None:
            return logp
        keep = tgt_out != pad_id  # (B, T)
        lp = logp.gather(2, tgt_out[:, :, None])[:, :, 0]  # (B, T)
        return -(lp * keep).sum() / keep.sum().clamp_min(1)

    @torch.no_grad()
    def start(self, *, src: Tensor, max_new_tokens: int) -> tuple[Tensor, dict]:
        """Encode the source (B, S), prefill source + bos: log-probs (B, V) of the first char."""
        c = self.config
        valid = src != c.pad_id  # (B, S)
        lengths = valid.sum(1)  # (B,)
        h_src = self.lm.hidden_states(src, segment_ids=torch.zeros_like(src), attention_mask=valid)
        st = self._source_side(src, h_src)
        prompt = F.pad(src, (0, 1), value=c.pad_id)  # (B, S + 1)
        prompt.scatter_(1, lengths[:, None], c.bos_id)
        seg = torch.zeros_like(prompt).scatter_(1, lengths[:, None], 1)  # (B, S + 1)
        self._grab = True
        try:
            logits, st["lm"] = self.lm.start(input_ids=prompt, lengths=lengths + 1, segment_ids=seg,
                                             max_new_tokens=max_new_tokens)
            h = self._hidden
        finally:
            self._grab, self._hidden = False, None
        bos = torch.full_like(lengths, c.bos_id)[:, None]  # (B, 1)
        out = self._mix(logits[:, None], h[:, None], st, bos, torch.full_like(bos, -2))[:, 0]
        st["last"] = bos[:, 0]
        return out, st

    @torch.no_grad()
    def step(self, tokens: Tensor, state: dict) -> tuple[Tensor, dict]:
        """tokens (B,) -> log-probs (B, V); one cached Transformer step."""
        self._grab = True
        try:
            logits, lm_state = self.lm.step(tokens, state["lm"])
            h = self._hidden
        finally:
            self._grab, self._hidden = False, None
        out = self._mix(logits[:, None], h[:, None], state, tokens[:, None], state["last"][:, None])
        return out[:, 0], dict(state, lm=lm_state, last=tokens)

    def select(self, state: dict, index: Tensor) -> dict:
        """Reorder rows of the Transformer cache and of the source-side tensors."""
        return {k: self.lm.select(v, index) if k == "lm" else v.index_select(0, index)
                for k, v in state.items()}




# ---- char-LM pre-training ---------------------------------------------------------------------
class _Chunks(Dataset):
    """Texts cut into windows of `length` characters (ids), for causal LM training."""

    def __init__(self, texts: list[str], tokenizer: Any, length: int, seed: int) -> None:
        self.items: list[list[int]] = []
        for text in texts:
            ids = tokenizer.encode(normalise(text))
            self.items += [ids[i:i + length] for i in range(0, len(ids) - 1, length)
                           if len(ids[i:i + length]) > 1]
        random.Random(seed).shuffle(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> list[int]:
        return self.items[i]


class _Pad:
    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[list[int]]) -> Tensor:
        return pad(rows, self.pad_id)


class _LMObjective(nn.Module):
    """Causal LM loss of the wrapped Transformer (every token segment 1: the prefix mask's
    cumsum rule is then exactly causal, the title side's regime)."""

    def __init__(self, lm: Transformer, pad_id: int) -> None:
        super().__init__()
        self.lm = lm
        self.pad_id = pad_id

    def forward(self, ids: Tensor) -> Tensor:
        valid = ids != self.pad_id  # (B, T)
        logits = self.lm(ids, segment_ids=torch.ones_like(ids), attention_mask=valid)  # (B, T, V)
        return F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:].masked_fill(
            ~valid[:, 1:], -100), ignore_index=-100)


def pretrain_lm(model: UniLMCopy, tokenizer: Any, texts: list[str], *, minutes: float,
                run_dir: str | Path, batch_size: int, lr: float, seed: int, progress: bool = True,
                length: int = 128) -> Any:
    """Train `model.lm` as a causal char LM on `texts` (windows of `length` characters, at most
    the model's context) for `minutes`."""
    from genloom.train import Loader, TrainConfig, fit

    data = _Chunks(texts, tokenizer, min(length, model.lm.config.max_len), seed)
    loader = Loader(data, batch_size=batch_size, collate_fn=_Pad(tokenizer.pad_id),
                    lengths=[len(x) for x in data.items], seed=seed)
    objective = _LMObjective(model.lm, tokenizer.pad_id)
    cfg = TrainConfig(lr=lr, warmup_steps=50, schedule="constant", max_minutes=minutes,
                      grad_clip=1.0, log_every=10, seed=seed, device="cpu", progress=progress)

    def loss_fn(net: nn.Module, batch: Tensor) -> tuple[Tensor, int]:
        return net(batch), int((batch[:, 1:] != tokenizer.pad_id).sum())

    result = fit(objective, loss_fn, loader, config=cfg, run_dir=run_dir)
    import shutil

    shutil.rmtree(Path(run_dir) / "checkpoints", ignore_errors=True)
    return result
