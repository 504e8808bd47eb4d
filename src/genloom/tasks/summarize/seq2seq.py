"""Training and decoding the SPACES seq2seq: a UniLM (`genloom.models.unilm.UniLMSeq2Seq`, the
project Transformer under the prefix mask) with a B/I/O copy head, trained jointly with Sparse
Softmax and decoded with the copy constraint.

Letters: B rows, S source positions, T target positions (BOS + target), C model width,
V vocabulary, L = S + T.

Layout. A training row is source, BOS, target (segments 0, 1, 1), right-padded per part, with the
padding masked out of attention. The hidden state at BOS and at each target token predicts the
next target token (the last one predicts EOS).

Copy labels. The model's copy head (`copy_labels`, SPACES: a Dense(3) on BERT's MLM-Norm output)
scores O / B / I at every position. Labels come from `convert.copy_labels`, the LCS of the
(noised) source and the target, on both sides as the post does: a source position is labelled
with its own token's label, a target-side position with the label of the token it predicts
(EOS: O). One difference: the post drops the first target token's label (an artefact of its
[SEP] bookkeeping); here the BOS position carries it, since decoding needs the label of the
first generated token. Loss = token loss + `copy_weight` x copy cross-entropy (the post: 2).

Token loss: Sparse Softmax (`genloom.nn.losses`, top-k with the model's `sparse_k`, or top-p) or,
with both off, plain cross-entropy. Decoding applies the matching `SparseSoftmax` processor.

Pointer and prior (the model's `pointer`, `prior`; on in `SummarizeConfig`): the title task's
output layer (`genloom.nn.pointer.PointerPrior`): the source-character prior averaged with the
logits and a pointer-generator copy over source positions, so the model returns
log-probabilities of that mixture; Sparse Softmax then keeps its top-k. The post has neither: its
only copy is the B/I/O constraint. We add them because at our data size (5k documents, a small
model, no pretrained BERT) a UniLM without a pointer barely learns to write titles (title
ablation: 4.07 ROUGE-L without copy, 17.35 with), which no extraction can rescue.

Decoding: the copy scores behind each step's logits travel in the model's `UniLMState`
(`copy_logits`), where `genloom.decode.copy.CopyConstraint` reads them from the state the search
loop hands it.

Training noise (the post): each source token is replaced, with probability `source_noise`, by a
random token of the same source, before the copy labels are computed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from genloom.decode.copy import O, CopyConstraint, SparseSoftmax
from genloom.decode.loops import beam_search, greedy
from genloom.decode.processors import NoRepeatNGram
from genloom.errors import UserError
from genloom.nn.losses import sparse_softmax_cross_entropy
from genloom.tasks.summarize.convert import copy_labels
from genloom.train.lm import pad_rows


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


def seq2seq_losses(model: nn.Module, batch: dict[str, Tensor], *, copy_weight: float = 2.0
                   ) -> tuple[Tensor, Tensor, dict[str, float]]:
    """(loss, scored target tokens, {"token": ..., "copy": ...}) of a `Seq2SeqCollate` batch;
    loss = token loss + copy_weight * copy loss. `model` is a UniLMSeq2Seq or a wrapper of one
    (DDP): its forward is called."""
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
        loss = loss + copy_weight * copy_loss
    return loss, (tgt != -100).sum(), parts


def seq2seq_loss(model: nn.Module, batch: dict[str, Tensor], *, copy_weight: float = 2.0) -> tuple[Tensor, Tensor]:
    """`fit`'s loss_fn (bind copy_weight with functools.partial): the joint loss and its number
    of scored target tokens."""
    loss, n, _ = seq2seq_losses(model, batch, copy_weight=copy_weight)
    return loss, n


# ---- decoding ------------------------------------------------------------------------------------
def decode_processors(model: nn.Module, sources: Sequence[Sequence[int]], *, copy: bool | None = None,
                      sparse: bool = True, no_repeat_ngram: int = 0) -> list:
    """The processor list of SPACES decoding for a UniLMSeq2Seq: [CopyConstraint] (when the model
    has a copy head and `copy` is not False), [NoRepeatNGram] (when no_repeat_ngram > 0), then
    [SparseSoftmax] (when the model was trained with it and `sparse`)."""
    procs: list = []
    use_copy = model.config.copy_labels if copy is None else copy
    if use_copy:
        if not model.config.copy_labels:
            raise UserError("this model has no copy head: decode with copy off")
        procs.append(CopyConstraint(sources, always=[model.config.eos_id]))
    if no_repeat_ngram > 0:
        procs.append(NoRepeatNGram(no_repeat_ngram))
    if sparse and model.config.sparse is not None:
        procs.append(SparseSoftmax(**model.config.sparse))
    return procs


def generate_ids(model: nn.Module, sources: Sequence[Sequence[int]], *, num_beams: int = 3,
                 copy: bool | None = None, sparse: bool = True, no_repeat_ngram: int = 0,
                 max_new_tokens: int | None = None, batch_size: int = 32) -> list[list[int]]:
    """Target ids (EOS stripped) for each source (ids, cut to the window) of a UniLMSeq2Seq, by
    beam search (greedy when num_beams == 1) under `decode_processors`; at most the model's
    target length (max_target_len: the target and its EOS) by default."""
    c = model.config
    n = c.max_target_len if max_new_tokens is None else max_new_tokens
    out: list[list[int]] = []
    model.eval()
    for start in range(0, len(sources), batch_size):
        chunk = [list(s)[: c.max_source_len] for s in sources[start:start + batch_size]]
        if any(not s for s in chunk):
            raise UserError("an empty source cannot be summarized")
        procs = decode_processors(model, chunk, copy=copy, sparse=sparse, no_repeat_ngram=no_repeat_ngram)
        src = pad_rows(chunk, c.pad_id)  # (B, S)
        if num_beams > 1:
            res = beam_search(model, num_beams=num_beams, max_new_tokens=n, eos_id=c.eos_id,
                              min_new_tokens=1, processors=procs, src=src)
        else:
            res = greedy(model, max_new_tokens=n, eos_id=c.eos_id, min_new_tokens=1, processors=procs, src=src)
        out += res.sequences
    return out
