"""SPACES seq2seq: a UniLM (the project Transformer under the prefix mask) plus a B/I/O copy head,
trained jointly with Sparse Softmax, decoded with the copy constraint.

Letters: B rows, S source positions, T target positions (BOS + target), C model width,
V vocabulary, L = S + T.

Layout. A training row is source, BOS, target (segments 0, 1, 1), right-padded per part, with the
padding masked out of attention (positions count real tokens only, as in `UniLMCopy` of the
title task). The hidden state at BOS and at each target token predicts the next target token
(the last one predicts EOS).

Copy head. `Linear(C, 3)` on the final hidden states gives scores of O / B / I (SPACES: a Dense(3)
on BERT's MLM-Norm output). Labels come from `summarize_convert.copy_labels`, the LCS of the
(noised) source and the target, on both sides as the post does: a source position is labelled
with its own token's label, a target-side position with the label of the token it predicts
(EOS: O). One difference: the post drops the first target token's label (an artefact of its
[SEP] bookkeeping); here the BOS position carries it, since decoding needs the label of the
first generated token. Loss = token loss + `copy_weight` x copy cross-entropy (the post: 2).

Token loss: Sparse Softmax (`genloom.nn.losses`, top-k with k = `sparse_k`, or top-p) or, with
both off, plain cross-entropy. Decoding applies the matching `SparseSoftmax` processor.

Pointer and prior (`pointer`, `prior`; off in the config's defaults, on in `SummarizeConfig`'s):
the title task's output layer (`title_unilm.PointerPriorMixin`): the source-character prior
averaged with the logits and a pointer-generator copy over source positions, so `forward`,
`start` and `step` return log-probabilities of that mixture; Sparse Softmax then keeps its top-k.
The post has neither: its only copy is the B/I/O constraint. We add them because at our data
size (5k documents, a small model, no pretrained BERT) a UniLM without a pointer barely learns
to write titles (title ablation: 4.07 ROUGE-L without copy, 17.35 with), which no extraction can
rescue.

Decoding protocol: `start(src=...)` prefills source + BOS through the Transformer's cache and
returns the next-token logits; the copy scores of the same rows are kept in `copy_logits`
(read by `genloom.decode.copy.CopyConstraint`), reordered by `select` with the state. The
hidden state behind each step's logits is taken with a forward hook on the Transformer's final
norm (as `UniLMCopy` does).

Training noise (the post): each source token is replaced, with probability `source_noise`, by a
random token of the same source, before the copy labels are computed.

Pre-training (`CausalLMObjective`): the same Transformer as a causal char LM (segment 1 at every
position, where the prefix mask is causal), a stand-in for the post's pretrained NEZHA.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from genloom.decode.copy import O, CopyConstraint, SparseSoftmax
from genloom.decode.processors import NoRepeatNGram
from genloom.decode.loops import beam_search, greedy
from genloom.errors import UserError
from genloom.models.transformer import Transformer, TransformerConfig
from genloom.nn.losses import sparse_softmax_cross_entropy
from genloom.tasks.summarize_convert import copy_labels
from genloom.tasks.title_unilm import PointerPriorMixin


@dataclass
class CopyUniLMConfig:
    """Shape and training objective of a `CopyUniLM` (saved as its config.json)."""

    vocab_size: int  # V, characters incl. the 4 special ids
    pad_id: int = 0  # padding id
    bos_id: int = 2  # first target-side input (the UniLM [SEP] role)
    eos_id: int = 3  # ends a target
    d_model: int = 256  # width C
    n_layer: int = 4  # Transformer blocks
    n_head: int = 4  # attention heads
    d_ff: int = 1024  # feed-forward width
    dropout: float = 0.1  # dropout inside the Transformer while training
    max_source_len: int = 256  # the window: the longest source (characters)
    max_target_len: int = 40  # the longest target, EOS excluded
    copy: bool = True  # the B/I/O copy head (training loss and constrained decoding)
    copy_weight: float = 2.0  # weight of the copy loss (the post's 2)
    sparse_k: int | None = 10  # Sparse Softmax top-k in training and decoding (None: off)
    sparse_p: float | None = None  # or its top-p variant (used when sparse_k is None)
    source_noise: float = 0.15  # chance each source token is replaced by a random source token (training)
    pointer: bool = False  # the title task's pointer-generator copy over source positions (+ successor bonus)
    prior: bool = False  # the title task's source-character prior averaged with the logits

    def transformer(self) -> TransformerConfig:
        """The underlying prefix-mask Transformer (GPT-2 flavour, 2 segments)."""
        return TransformerConfig(
            vocab_size=self.vocab_size, n_layer=self.n_layer, n_head=self.n_head, d_model=self.d_model,
            d_ff=self.d_ff, max_len=self.max_source_len + self.max_target_len + 2, mask="prefix",
            n_segment=2, dropout=self.dropout, tie_embeddings=True)

    @property
    def sparse(self) -> dict[str, Any] | None:
        """Sparse Softmax's set as keyword arguments (k= or top_p=), or None when off."""
        if self.sparse_k is not None:
            return {"k": self.sparse_k}
        if self.sparse_p is not None:
            return {"k": None, "top_p": self.sparse_p}
        return None


class CopyUniLM(PointerPriorMixin, nn.Module):
    """UniLM + B/I/O copy head with the decoding protocol (module docstring)."""

    def __init__(self, config: CopyUniLMConfig) -> None:
        super().__init__()
        c = self.config = config
        self.vocab_size = c.vocab_size
        self.lm = Transformer(c.transformer())
        self.copy_head = nn.Linear(c.d_model, 3) if c.copy else None
        self._mixed = c.pointer or c.prior  # outputs are log-probs of the title model's mixture
        if self._mixed:
            self._init_pointer(c.d_model, c.vocab_size, prior=c.prior, copy=c.pointer, successor=True)
        self.copy_logits: Tensor | None = None  # (B, 3) copy scores of the rows last returned
        self._hook_hidden()

    def forward(self, src: Tensor, tgt_in: Tensor) -> tuple[Tensor, Tensor | None]:
        """src (B, S) right-padded, tgt_in (B, T) BOS + target right-padded ->
        (token logits (B, T, V) at the target side, copy scores (B, S + T, 3) or None)."""
        pad = self.config.pad_id
        ids = torch.cat([src, tgt_in], 1)  # (B, L)
        seg = torch.cat([torch.zeros_like(src), torch.ones_like(tgt_in)], 1)  # (B, L)
        valid = torch.cat([src != pad, tgt_in != pad], 1)  # (B, L)
        h = self.lm.hidden_states(ids, segment_ids=seg, attention_mask=valid)  # (B, L, C)
        s = src.shape[1]
        logits = self.lm.lm_head(h[:, s:])  # (B, T, V)
        if self._mixed:  # log-probs of prior + pointer copy; the prefix mask keeps h[:, :s] source-only
            prev2 = F.pad(tgt_in, (1, 0), value=-2)[:, :-1]  # (B, T)
            logits = self._mix(logits, h[:, s:], self._source_side(src, h[:, :s]), tgt_in, prev2)
        return logits, (self.copy_head(h) if self.copy_head is not None else None)

    # ---- decoding protocol ----------------------------------------------------------------------
    def _copy_scores(self, h: Tensor) -> Tensor:
        if self.copy_head is None:  # no head: every step is O
            scores = torch.zeros(h.shape[0], 3, device=h.device)
            scores[:, O] = 1.0
            return scores
        return self.copy_head(h).float()  # (B, 3)

    @torch.inference_mode()
    def start(self, *, src: Tensor, max_new_tokens: int) -> tuple[Tensor, Any]:
        """Prefill source (B, S) (right-padded with pad_id) + BOS; logits (B, V) of the first token."""
        c = self.config
        lengths = (src != c.pad_id).sum(1)  # (B,)
        if bool((lengths == 0).any()):
            raise UserError("an empty source cannot be summarized")
        prompt = F.pad(src, (0, 1), value=c.pad_id)  # (B, S + 1)
        prompt.scatter_(1, lengths[:, None], c.bos_id)
        seg = torch.zeros_like(prompt).scatter_(1, lengths[:, None], 1)  # (B, S + 1)
        self._grab = True
        try:
            logits, state = self.lm.start(input_ids=prompt, lengths=lengths + 1, segment_ids=seg,
                                          max_new_tokens=max_new_tokens)
            h = self._hidden
            self.copy_logits = self._copy_scores(h)
        finally:
            self._grab, self._hidden = False, None
        if not self._mixed:
            return logits, state
        # the pointer's keys: the source's own pass (what the joint pass gives it under the prefix mask)
        h_src = self.lm.hidden_states(src, segment_ids=torch.zeros_like(src), attention_mask=src != c.pad_id)
        st = self._source_side(src, h_src)
        bos = torch.full_like(lengths, c.bos_id)[:, None]  # (B, 1)
        out = self._mix(logits[:, None], h[:, None], st, bos, torch.full_like(bos, -2))[:, 0]
        return out, dict(st, lm=state, last=bos[:, 0])

    @torch.inference_mode()
    def step(self, tokens: Tensor, state: Any) -> tuple[Tensor, Any]:
        """tokens (B,) -> logits (B, V); the copy scores of the same rows go to `copy_logits`."""
        self._grab = True
        try:
            logits, lm_state = self.lm.step(tokens, state["lm"] if self._mixed else state)
            h = self._hidden
            self.copy_logits = self._copy_scores(h)
        finally:
            self._grab, self._hidden = False, None
        if not self._mixed:
            return logits, lm_state
        out = self._mix(logits[:, None], h[:, None], state, tokens[:, None], state["last"][:, None])
        return out[:, 0], dict(state, lm=lm_state, last=tokens)

    def select(self, state: Any, index: Tensor) -> Any:
        """Reorder the cache rows, the source-side tensors and `copy_logits` alike."""
        if self.copy_logits is not None:
            self.copy_logits = self.copy_logits.index_select(0, index.to(self.copy_logits.device))
        if not self._mixed:
            return self.lm.select(state, index)
        return {k: self.lm.select(v, index) if k == "lm" else v.index_select(0, index)
                for k, v in state.items()}




# ---- data ----------------------------------------------------------------------------------------
class Seq2SeqData(Dataset):
    """(sources, target) id lists; an example has one source, or two (predicted extraction, oracle
    extraction), and each fetch takes the second with probability `alt_rate` (the post trains on
    either, at random). The source is then noised (module docstring)."""

    def __init__(self, sources: Sequence[Sequence[Sequence[int]]], targets: Sequence[Sequence[int]], *,
                 noise: float, alt_rate: float = 0.5) -> None:
        if len(sources) != len(targets):
            raise ValueError(f"{len(sources)} sources but {len(targets)} targets")
        if any(not 1 <= len(options) <= 2 for options in sources):
            raise ValueError("each example needs one or two sources")
        self.sources, self.targets, self.noise, self.alt_rate = sources, targets, noise, alt_rate

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[list[int], list[int]]:
        options = self.sources[i]
        src = list(options[1] if len(options) == 2 and random.random() < self.alt_rate else options[0])
        if self.noise > 0 and src:
            src = [random.choice(src) if random.random() < self.noise else t for t in src]
        return src, list(self.targets[i])

    def lengths(self) -> list[int]:
        return [max(len(s) for s in srcs) + len(t) for srcs, t in zip(self.sources, self.targets)]


class Seq2SeqCollate:
    """Batch of (source, target) id lists -> src (B, S), tgt_in (B, T), tgt_out (B, T) with -100
    at padding, copy (B, S + T) labels with -100 at padding (module docstring)."""

    def __init__(self, *, pad_id: int, bos_id: int, eos_id: int) -> None:
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id

    def __call__(self, items: Sequence[tuple[list[int], list[int]]]) -> dict[str, Tensor]:
        b = len(items)
        s = max(len(src) for src, _ in items)
        t = max(len(tgt) for _, tgt in items) + 1
        src = torch.full((b, s), self.pad_id, dtype=torch.long)
        tgt_in = torch.full((b, t), self.pad_id, dtype=torch.long)
        tgt_out = torch.full((b, t), -100, dtype=torch.long)
        copy = torch.full((b, s + t), -100, dtype=torch.long)
        for r, (x, y) in enumerate(items):
            sl, tl = copy_labels(x, y)
            src[r, : len(x)] = torch.tensor(x, dtype=torch.long)
            tgt_in[r, : len(y) + 1] = torch.tensor([self.bos_id, *y], dtype=torch.long)
            tgt_out[r, : len(y) + 1] = torch.tensor([*y, self.eos_id], dtype=torch.long)
            copy[r, : len(x)] = torch.tensor(sl, dtype=torch.long)
            copy[r, s: s + len(y) + 1] = torch.tensor([*tl, O], dtype=torch.long)
        return {"src": src, "tgt_in": tgt_in, "tgt_out": tgt_out, "copy": copy}


def seq2seq_losses(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, dict[str, float]]:
    """(loss, scored target tokens, {"token": ..., "copy": ...}) of a `Seq2SeqCollate` batch.
    `model` is a CopyUniLM or a wrapper of one (DDP): its forward is called."""
    c = getattr(model, "module", model).config
    logits, copy = model(batch["src"], batch["tgt_in"])  # (B, T, V), (B, S + T, 3) or None
    tgt = batch["tgt_out"]  # (B, T), -100 at padding
    sparse = c.sparse
    if sparse is None:
        token = F.cross_entropy(logits.flatten(0, 1).float(), tgt.flatten(), ignore_index=-100)
    else:
        token = sparse_softmax_cross_entropy(logits, tgt, **sparse)
    parts = {"token": float(token.detach())}
    loss = token
    if copy is not None:
        copy_loss = F.cross_entropy(copy.flatten(0, 1).float(), batch["copy"].flatten(), ignore_index=-100)
        parts["copy"] = float(copy_loss.detach())
        loss = loss + c.copy_weight * copy_loss
    return loss, (tgt != -100).sum(), parts


def seq2seq_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """`fit`'s loss_fn: the joint loss and its number of scored target tokens."""
    loss, n, _ = seq2seq_losses(model, batch)
    return loss, n


# ---- char-LM pre-training ---------------------------------------------------------------------------
class LMChunks(Dataset):
    """Token-id windows for causal LM pre-training."""

    def __init__(self, items: Sequence[Sequence[int]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Sequence[int]:
        return self.items[i]


class PadRows:
    """Collate id lists into a right-padded (B, T) tensor."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: Sequence[Sequence[int]]) -> Tensor:
        return pad_sources(rows, self.pad_id)  # (B, T)


class CausalLMObjective(nn.Module):
    """A CopyUniLM's Transformer as a causal char LM: every position segment 1, where the prefix
    mask is causal (the target side's regime). forward(ids (B, T)) -> mean next-token cross-entropy."""

    def __init__(self, model: CopyUniLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: Tensor) -> Tensor:
        valid = ids != self.model.config.pad_id  # (B, T)
        logits = self.model.lm(ids, segment_ids=torch.ones_like(ids), attention_mask=valid)  # (B, T, V)
        target = ids[:, 1:].masked_fill(~valid[:, 1:], -100)  # (B, T - 1)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.flatten(), ignore_index=-100)


def causal_lm_loss(model: nn.Module, batch: Tensor) -> tuple[Tensor, Tensor]:
    """`fit`'s loss_fn for a CausalLMObjective: (loss, predicted tokens)."""
    pad = getattr(model, "module", model).model.config.pad_id
    return model(batch), (batch[:, 1:] != pad).sum()


# ---- decoding ------------------------------------------------------------------------------------
def pad_sources(sources: Sequence[Sequence[int]], pad_id: int) -> Tensor:
    """Right-padded (B, S) long tensor of source ids."""
    width = max(len(s) for s in sources)
    out = torch.full((len(sources), width), pad_id, dtype=torch.long)
    for r, s in enumerate(sources):
        out[r, : len(s)] = torch.tensor(list(s), dtype=torch.long)
    return out


def decode_processors(model: CopyUniLM, sources: Sequence[Sequence[int]], *, copy: bool | None = None,
                      sparse: bool = True, no_repeat_ngram: int = 0) -> list:
    """The processor list of SPACES decoding: [CopyConstraint] (when the model has a copy head and
    `copy` is not False), [NoRepeatNGram] (when no_repeat_ngram > 0), then [SparseSoftmax] (when the
    model was trained with it and `sparse`)."""
    procs: list = []
    use_copy = model.config.copy if copy is None else copy
    if use_copy:
        if not model.config.copy:
            raise UserError("this model has no copy head: decode with copy off")
        procs.append(CopyConstraint(sources, lambda: model.copy_logits, always=[model.config.eos_id]))
    if no_repeat_ngram > 0:
        procs.append(NoRepeatNGram(no_repeat_ngram))
    if sparse and model.config.sparse is not None:
        procs.append(SparseSoftmax(**model.config.sparse))
    return procs


def generate_ids(model: CopyUniLM, sources: Sequence[Sequence[int]], *, num_beams: int = 3,
                 copy: bool | None = None, sparse: bool = True, no_repeat_ngram: int = 0,
                 max_new_tokens: int | None = None, batch_size: int = 32) -> list[list[int]]:
    """Target ids (EOS stripped) for each source (ids, cut to the window), by beam search
    (greedy when num_beams == 1) under `decode_processors`."""
    c = model.config
    n = (c.max_target_len + 1) if max_new_tokens is None else max_new_tokens
    out: list[list[int]] = []
    model.eval()
    for start in range(0, len(sources), batch_size):
        chunk = [list(s)[: c.max_source_len] for s in sources[start:start + batch_size]]
        if any(not s for s in chunk):
            raise UserError("an empty source cannot be summarized")
        procs = decode_processors(model, chunk, copy=copy, sparse=sparse, no_repeat_ngram=no_repeat_ngram)
        src = pad_sources(chunk, c.pad_id)
        if num_beams > 1:
            res = beam_search(model, num_beams=num_beams, max_new_tokens=n, eos_id=c.eos_id,
                              min_new_tokens=1, processors=procs, src=src)
        else:
            res = greedy(model, max_new_tokens=n, eos_id=c.eos_id, min_new_tokens=1, processors=procs, src=src)
        out += res.sequences
    return out
