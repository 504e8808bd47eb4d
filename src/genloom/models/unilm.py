"""Seq2seq UniLM: a prefix-mask Transformer with optional output heads over the source.

Letters: B rows, S source positions, T target positions (bos + target), C model width,
V vocabulary, L = S + T.

The model is composed of three parts, each optional but the first:

- `lm`: the project `Transformer` under the prefix mask (UniLM, bert4keras's
  `application='unilm'`): a row is source, bos, target (segments 0, 1, 1); the source is
  bidirectional among itself, the target causal, padding masked out (positions count real
  tokens only). The hidden state at bos and at each target token predicts the next target token.
- `head` (`prior` / `pointer`): `genloom.nn.pointer.PointerPrior`, the title post's
  source-character prior and a pointer-generator copy over source positions (with the
  successor bonus); with it the outputs are log-probabilities of that mixture, without it logits.
- `copy_head` (`copy_labels`): SPACES's B/I/O copy-label scores, `Linear(C, 3)` on the final
  hidden states of every position (source and target), for `genloom.decode.copy.CopyConstraint`.

Decoding protocol: `start(src=...)` prefills source + bos through the Transformer's cache (which
hands back the hidden state behind its logits, `output_hidden=True`) and, for the pointer, runs
the source once more on its own (under the prefix mask the source's hidden states do not depend
on the target, so this is what training's joint pass gives the pointer). Everything a step needs
is in the `UniLMState`: the cache, the last id fed, the source tensors of the head, and the copy
scores of the rows whose logits were just returned (`copy_logits`, read by `CopyConstraint` from
the state the search loop holds, so concurrent decodes never share them).

Directories saved before this class, by the title task (model_type "unilm_copy",
`UniLMCopyConfig`) and by the summarizer ("summarize_unilm", `CopyUniLMConfig`), load into it:
their configs map onto `UniLMSeq2SeqConfig` (`unilm()`) and their flat head weight names
(`attention.q.weight`) onto `head.*` (`rename_weight`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genloom.errors import UserError
from genloom.models.transformer import Transformer, TransformerConfig, TransformerState
from genloom.nn.pointer import PointerPrior, SourceSide


@dataclass
class UniLMSeq2SeqConfig:
    """Shape and heads of a `UniLMSeq2Seq` (saved as its config.json, model_type "unilm_seq2seq")."""

    vocab_size: int  # V, characters incl. the special ids
    pad_id: int = 0  # padding id
    bos_id: int = 2  # first target-side input (the UniLM [SEP] role)
    eos_id: int = 3  # ends a target
    d_model: int = 128  # Transformer width C
    n_layer: int = 4  # Transformer blocks
    n_head: int = 4  # attention heads
    d_ff: int = 512  # feed-forward width
    dropout: float = 0.1  # dropout inside the Transformer while training
    max_source_len: int = 256  # longest source (the tasks cut to it)
    max_target_len: int = 41  # longest target-side input (bos + target); the context is S + this + 1
    prior: bool = False  # the source-character prior averaged with the logits (genloom.nn.pointer)
    pointer: bool = False  # the pointer-generator copy over source positions
    successor: bool = True  # with the pointer: its bonus on positions continuing the last 1 / 2 ids
    copy_labels: bool = False  # SPACES's B/I/O copy-label head (for copy-constrained decoding)
    sparse_k: int | None = None  # the Sparse Softmax top-k it is trained and decoded with (None: off)
    sparse_p: float | None = None  # or its top-p (used when sparse_k is None)

    def transformer(self) -> TransformerConfig:
        """The underlying Transformer's config (GPT-2 flavour, prefix mask, 2 segments, tied)."""
        return TransformerConfig(
            vocab_size=self.vocab_size, n_layer=self.n_layer, n_head=self.n_head, d_model=self.d_model,
            d_ff=self.d_ff, max_len=self.max_source_len + self.max_target_len + 1, mask="prefix",
            n_segment=2, dropout=self.dropout, tie_embeddings=True)

    @property
    def sparse(self) -> dict[str, Any] | None:
        """Sparse Softmax's set as keyword arguments (k= or top_p=), or None when off."""
        if self.sparse_k is not None:
            return {"k": self.sparse_k}
        if self.sparse_p is not None:
            return {"k": None, "top_p": self.sparse_p}
        return None


def title_unilm_small(vocab_size: int, **overrides: Any) -> UniLMSeq2SeqConfig:
    """The title task's UniLM: 4 layers, width 128, 4 heads, feed-forward 512, prior and pointer
    on: about 0.85M parameters plus 0.13k per vocabulary item. At width 256 a training step on
    CPU costs about 10x the RNN's (every source character passes 4 full blocks), which a
    15-minute budget cannot afford; at 128 it is about 2-3x."""
    return UniLMSeq2SeqConfig(vocab_size=vocab_size, **{"prior": True, "pointer": True, **overrides})


class Seq2SeqOutput(NamedTuple):
    """What `UniLMSeq2Seq.forward` returns for whole sequences."""

    logits: Tensor  # (B, T, V) at the target positions: log-probs with the head, else logits
    copy_logits: Tensor | None  # (B, S + T, 3) O/B/I scores of every position (None without copy_head)


@dataclass
class UniLMState:
    """Decoding state of a `UniLMSeq2Seq` (the same type whatever the heads)."""

    lm: TransformerState  # the Transformer's cache
    last: Tensor  # (B,) the last id fed (bos at the start), for the successor bonus
    source: SourceSide | None  # the head's per-row source tensors (None without the head)
    copy_logits: Tensor | None  # (B, 3) copy scores behind the logits last returned (None without copy_head)


_OLD_HEAD = ("attention.", "gate.", "successor_weight", "prior_log_scale", "prior_shift")


class UniLMSeq2Seq(nn.Module):
    """Prefix-mask Transformer + optional prior / pointer head + optional B/I/O copy head, with
    the decoding protocol (module docstring)."""

    def __init__(self, config: UniLMSeq2SeqConfig | UniLMCopyConfig | CopyUniLMConfig) -> None:
        super().__init__()
        if not isinstance(config, UniLMSeq2SeqConfig):  # a directory saved by the older classes
            config = config.unilm()
        c = self.config = config
        self.vocab_size = c.vocab_size
        self.lm = Transformer(c.transformer())
        self.copy_head = nn.Linear(c.d_model, 3) if c.copy_labels else None
        self.head = None
        if c.prior or c.pointer:
            self.head = PointerPrior(c.d_model, c.vocab_size, pad_id=c.pad_id, start_id=c.bos_id, prior=c.prior,
                                     pointer=c.pointer, successor=c.successor)

    def rename_weight(self, name: str) -> str | None:
        """The name here of a weight read from a file (`genloom.models.io.load`): directories saved
        before the head was a module name its weights flat (`attention.q.weight` ->
        `head.attention.q.weight`); None drops one this model lacks (the older classes built an
        unused pointer when only the prior was on)."""
        if not name.startswith(_OLD_HEAD):
            return name
        new = "head." + name
        return new if new in dict(self.named_parameters()) else None

    # ---- whole sequences --------------------------------------------------------------------------
    def forward(self, src: Tensor, tgt_in: Tensor, tgt_out: Tensor | None = None) -> Seq2SeqOutput | Tensor:
        """Teacher forcing. src (B, S) and tgt_in (B, T) (bos + target) right-padded with pad_id.

        Returns:
            `Seq2SeqOutput(logits (B, T, V), copy_logits (B, S + T, 3) or None)`; with tgt_out
            (B, T) (pad_id at padding) the mean NLL per target token instead (as `RNNSeq2Seq`).
        """
        pad = self.config.pad_id
        s = src.shape[1]
        ids = torch.cat([src, tgt_in], 1)  # (B, L)
        seg = torch.cat([torch.zeros_like(src), torch.ones_like(tgt_in)], 1)  # (B, L)
        valid = torch.cat([src != pad, tgt_in != pad], 1)  # (B, L)
        h = self.lm.hidden_states(ids, segment_ids=seg, attention_mask=valid)  # (B, L, C)
        h_tgt = h[:, s:]  # (B, T, C)
        logits = self.lm.lm_head(h_tgt)  # (B, T, V)
        if self.head is not None:  # the prefix mask keeps h[:, :s] source-only
            prev2 = F.pad(tgt_in, (1, 0), value=-2)[:, :-1]  # (B, T)
            logits = self.head(logits, h_tgt, self.head.source(src, h[:, :s]), tgt_in, prev2)
        copy = self.copy_head(h) if self.copy_head is not None else None
        if tgt_out is None:
            return Seq2SeqOutput(logits, copy)
        if self.head is None:  # the head gives log-probs; logits: float32 at least, float64 kept
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)
        keep = tgt_out != pad  # (B, T)
        lp = logits.gather(2, tgt_out[:, :, None])[:, :, 0]  # (B, T)
        return -(lp * keep).sum() / keep.sum().clamp_min(1)

    # ---- decoding protocol ------------------------------------------------------------------------
    def _output(self, logits: Tensor, lm: TransformerState, source: SourceSide | None, fed: Tensor,
                before: Tensor) -> tuple[Tensor, UniLMState]:
        """The step's outputs from the Transformer's logits (B, V) and state, the ids fed (B,) and
        the ids before them (B,)."""
        h = lm.hidden  # (B, C) or None
        if self.head is not None:
            logits = self.head(logits[:, None], h[:, None], source, fed[:, None], before[:, None])[:, 0]
        copy = self.copy_head(h).float() if self.copy_head is not None else None  # (B, 3)
        return logits, UniLMState(lm=lm, last=fed, source=source, copy_logits=copy)

    @torch.inference_mode()
    def start(self, *, src: Tensor, max_new_tokens: int) -> tuple[Tensor, UniLMState]:
        """Prefill sources (B, S) (right-padded with pad_id) + bos: scores (B, V) of the first token."""
        c = self.config
        valid = src != c.pad_id  # (B, S)
        lengths = valid.sum(1)  # (B,)
        if bool((lengths == 0).any()):
            raise UserError("an empty source cannot be decoded")
        source = None
        if self.head is not None:
            h_src = None
            if self.head.use_pointer:  # the pointer's keys: the source's own pass
                h_src = self.lm.hidden_states(src, segment_ids=torch.zeros_like(src), attention_mask=valid)
            source = self.head.source(src, h_src)
        prompt = F.pad(src, (0, 1), value=c.pad_id)  # (B, S + 1)
        prompt.scatter_(1, lengths[:, None], c.bos_id)
        seg = torch.zeros_like(prompt).scatter_(1, lengths[:, None], 1)  # (B, S + 1)
        logits, lm = self.lm.start(input_ids=prompt, lengths=lengths + 1, segment_ids=seg,
                                   max_new_tokens=max_new_tokens,
                                   output_hidden=self.head is not None or self.copy_head is not None)
        bos = torch.full_like(lengths, c.bos_id)  # (B,)
        return self._output(logits, lm, source, bos, torch.full_like(bos, -2))

    @torch.inference_mode()
    def step(self, tokens: Tensor, state: UniLMState) -> tuple[Tensor, UniLMState]:
        """tokens (B,) -> scores (B, V) of the next token; one cached Transformer step."""
        logits, lm = self.lm.step(tokens, state.lm)
        return self._output(logits, lm, state.source, tokens, state.last)

    def select(self, state: UniLMState, index: Tensor) -> UniLMState:
        """Keep / reorder rows of the cache, the source tensors and the copy scores alike."""
        return UniLMState(
            lm=self.lm.select(state.lm, index), last=state.last.index_select(0, index),
            source=None if state.source is None else state.source.select(index),
            copy_logits=None if state.copy_logits is None else state.copy_logits.index_select(0, index))


# ---- configs of directories saved before UniLMSeq2Seq (read only) ---------------------------------
@dataclass
class _OlderConfig:
    """The fields both older configs have (a saved config holds every field: the defaults only
    serve configs built by hand)."""

    vocab_size: int
    pad_id: int = 0
    bos_id: int = 2
    d_model: int = 128
    n_layer: int = 4
    n_head: int = 4
    d_ff: int = 512
    dropout: float = 0.1
    max_source_len: int = 256
    prior: bool = True

    def _unilm(self, **changed: Any) -> UniLMSeq2SeqConfig:
        """The fields UniLMSeq2SeqConfig has under the same name and meaning, then `changed`."""
        names = {f.name for f in fields(UniLMSeq2SeqConfig)}
        return UniLMSeq2SeqConfig(**{**{k: v for k, v in asdict(self).items() if k in names}, **changed})


@dataclass
class UniLMCopyConfig(_OlderConfig):
    """config.json of a title UniLM saved as model_type "unilm_copy"."""

    copy: bool = True  # the pointer
    successor: bool = True
    max_title_len: int = 41  # bos + title

    def unilm(self) -> UniLMSeq2SeqConfig:
        return self._unilm(max_target_len=self.max_title_len, pointer=self.copy)


@dataclass
class CopyUniLMConfig(_OlderConfig):
    """config.json of a SPACES seq2seq saved as model_type "summarize_unilm" (its training-only
    fields copy_weight and source_noise are the summarizer's settings, kept in summarize.json)."""

    eos_id: int = 3
    max_target_len: int = 40  # the longest target, EOS excluded
    copy: bool = True  # the B/I/O copy head
    copy_weight: float = 2.0
    sparse_k: int | None = 10
    sparse_p: float | None = None
    source_noise: float = 0.15
    pointer: bool = False
    prior: bool = False

    def unilm(self) -> UniLMSeq2SeqConfig:
        return self._unilm(max_target_len=self.max_target_len + 1, copy_labels=self.copy)
