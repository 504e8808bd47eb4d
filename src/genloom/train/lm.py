"""Language-model pre-training pieces every task shares: token windows, padding, the causal-LM
objective, BERT masking for masked LMs (`MaskedLMCollate`, `masked_lm_loss`),
`pretrain_causal_lm`, which runs the causal pieces through `fit`, and `init_from_causal_lm`, which
starts a task's Transformer from a pre-trained causal LM (genloom-zh-base).

Letters: B batch rows, T tokens per row, V vocabulary size.

Two ways to cut text into training rows:
- `TokenWindows`: each text on its own, cut into consecutive windows of `length` tokens (a
  window needs two tokens to predict one); rows are right-padded per batch. For short texts
  (titles, reviews, sentences).
- `pack_blocks`: all texts as <bos> ids <eos> in one stream, cut into equal rows of
  `seq_len + 1` tokens that overlap by one, so every token is a target exactly once. For
  long-text LMs with no padding.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from genloom.errors import UserError


class TokenWindows(Dataset):
    """Token-id windows of at most `length` ids, each text cut on its own (windows of one id
    are dropped: nothing to predict). Shuffled by `seed` (None: in text order)."""

    def __init__(self, texts: Sequence[str], tokenizer: Any, length: int, *, seed: int | None = None,
                 add_bos: bool = False, add_eos: bool = False, normalise: Callable[[str], str] | None = None) -> None:
        if length < 2:
            raise UserError(f"LM windows need at least 2 tokens, got {length}")
        self.items: list[list[int]] = []
        for text in texts:
            ids = tokenizer.encode(normalise(text) if normalise else text, add_bos=add_bos, add_eos=add_eos)
            self.items += [ids[i:i + length] for i in range(0, len(ids) - 1, length) if len(ids[i:i + length]) > 1]
        if seed is not None:
            random.Random(seed).shuffle(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> list[int]:
        return self.items[i]

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.items]


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int) -> Tensor:
    """Right-padded (B, T) long tensor of id lists."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for b, r in enumerate(rows):
        out[b, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
    return out


class PadRows:
    """Collate id lists into a right-padded (B, T) tensor (a class, so loader workers can pickle it)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: Sequence[Sequence[int]]) -> Tensor:
        return pad_rows(rows, self.pad_id)


def pack_blocks(tokenizer: Any, texts: Sequence[str], seq_len: int) -> Tensor:
    """Documents as <bos> ids <eos>, concatenated and cut into rows of seq_len + 1 tokens (N, T+1);
    consecutive rows overlap by one token so every token is a target once."""
    stream: list[int] = []
    for ids in tokenizer.encode_many(texts, add_bos=True, add_eos=True):
        stream.extend(ids)
    n = (len(stream) - 1) // seq_len
    if n < 1:
        raise UserError(f"too little text for one block of {seq_len} tokens")
    data = torch.tensor(stream[: n * seq_len + 1], dtype=torch.long)
    index = torch.arange(n)[:, None] * seq_len + torch.arange(seq_len + 1)[None]  # (N, T+1)
    return data[index]


def next_token_loss(logits: Tensor, ids: Tensor, valid: Tensor | None = None) -> Tensor:
    """Mean cross-entropy of predicting ids[:, 1:] from logits[:, :-1] (B, T, V), over valid targets."""
    target = ids[:, 1:] if valid is None else ids[:, 1:].masked_fill(~valid[:, 1:], -100)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.flatten(), ignore_index=-100)


def block_lm_loss(model: nn.Module, batch: Tensor) -> tuple[Tensor, int]:
    """`fit`'s loss_fn for `pack_blocks` rows (B, T+1) and a model(ids) -> logits: (mean loss, tokens)."""
    logits = model(batch[:, :-1])  # (B, T, V)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1))
    return loss, batch[:, 1:].numel()


class CausalLMObjective(nn.Module):
    """A Transformer trained as a causal LM on right-padded rows: forward(ids (B, T)) -> mean
    next-token loss. With `segments=True` every position gets segment 1, where the prefix
    (UniLM) mask is exactly causal: the target side's regime of a seq2seq UniLM."""

    def __init__(self, lm: nn.Module, pad_id: int, *, segments: bool = False) -> None:
        super().__init__()
        self.lm, self.pad_id, self.segments = lm, pad_id, segments

    def forward(self, ids: Tensor) -> Tensor:
        valid = ids != self.pad_id  # (B, T)
        extra = {"segment_ids": torch.ones_like(ids)} if self.segments else {}
        return next_token_loss(self.lm(ids, attention_mask=valid, **extra), ids, valid)


def causal_lm_loss(model: nn.Module, batch: Tensor) -> tuple[Tensor, Tensor]:
    """`fit`'s loss_fn for a `CausalLMObjective` (or its DDP wrapper): (loss, predicted tokens)."""
    pad = getattr(model, "module", model).pad_id
    return model(batch), (batch[:, 1:] != pad).sum()


def pretrain_causal_lm(lm: nn.Module, tokenizer: Any, texts: Sequence[str], *, config: Any, run_dir: str | Path,
                       length: int, segments: bool = False, normalise: Callable[[str], str] | None = None,
                       batch_size: int = 32, keep_checkpoints: bool = False, eval_fn: Any = None,
                       task_config: dict[str, Any] | None = None) -> Any:
    """Train `lm` (in place) as a causal LM on `texts` cut into `TokenWindows` of `length` ids,
    with `fit` under `config` (a TrainConfig); returns fit's result.

    Args:
        lm: a module called as lm(ids, attention_mask=, [segment_ids=]) -> (B, T, V) logits.
        segments: pass segment 1 everywhere (a prefix-mask UniLM trained as a causal LM).
        keep_checkpoints: keep run_dir/checkpoints (default: removed after the run).
        task_config: the calling task's settings, written into the run's config.json (as `fit`).
    """
    from genloom.train.data import Loader
    from genloom.train.trainer import fit

    data = TokenWindows(texts, tokenizer, length, seed=config.seed, normalise=normalise)
    if len(data) == 0:
        raise UserError("no text to pre-train the LM on (every text is shorter than 2 tokens)")
    loader = Loader(data, batch_size=batch_size, collate_fn=PadRows(tokenizer.pad_id), lengths=data.lengths,
                    seed=config.seed)
    result = fit(CausalLMObjective(lm, tokenizer.pad_id, segments=segments), causal_lm_loss, loader,
                 config=config, run_dir=run_dir, eval_fn=eval_fn, task_config=task_config)
    if not keep_checkpoints:
        shutil.rmtree(Path(run_dir) / "checkpoints", ignore_errors=True)
    return result


class MaskedLMCollate:
    """BERT masking for a masked LM, over <bos> ... <eos> id lists: each token between them is
    chosen with probability `rate` (at least one per row); a chosen one becomes `mask_id` 80% of
    the time, a random id in [first_id, vocab_size) 10%, itself 10%. Returns {"inputs", "valid",
    "targets"} (B, T), targets -100 where nothing is predicted. Draws from torch's global RNG,
    which the Loader seeds per batch, so the masks are reproducible."""

    def __init__(self, *, pad_id: int, mask_id: int, first_id: int, vocab_size: int, rate: float = 0.15) -> None:
        self.pad_id, self.mask_id, self.first, self.vocab, self.rate = pad_id, mask_id, first_id, vocab_size, rate

    def __call__(self, rows: Sequence[Sequence[int]]) -> dict[str, Tensor]:
        ids = pad_rows(rows, self.pad_id)  # (B, T)
        lengths = torch.tensor([len(r) for r in rows])  # (B,)
        col = torch.arange(ids.shape[1])[None]
        valid = col < lengths[:, None]  # (B, T)
        inner = (col >= 1) & (col < lengths[:, None] - 1)  # (B, T) tokens, not <bos>/<eos>/padding
        chosen = inner & (torch.rand(ids.shape) < self.rate)
        forced = torch.randint(0, 1 << 30, (ids.shape[0],)) % (lengths - 2).clamp(min=1) + 1  # (B,)
        b = torch.arange(ids.shape[0])
        chosen[b, forced] |= inner[b, forced]
        u = torch.rand(ids.shape)
        random_ids = torch.randint(self.first, self.vocab, ids.shape)
        inputs = torch.where(chosen & (u < 0.8), torch.full_like(ids, self.mask_id), ids)
        inputs = torch.where(chosen & (u >= 0.8) & (u < 0.9), random_ids, inputs)
        return {"inputs": inputs, "valid": valid, "targets": ids.masked_fill(~chosen, -100)}


def masked_lm_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """`fit`'s loss_fn for `MaskedLMCollate` batches and a model(ids, attention_mask=) -> logits:
    (mean cross-entropy over the chosen tokens, their number)."""
    logits = model(batch["inputs"], attention_mask=batch["valid"])  # (B, T, V)
    n = (batch["targets"] != -100).sum()
    return F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten(), ignore_index=-100), n


# ---- starting a task's Transformer from a pre-trained causal LM ------------------------------------
SHAPE_FIELDS = ("n_layer", "n_head", "n_kv_head", "d_model", "d_ff", "head_dim", "norm", "mlp", "pos", "bias")


def init_from_causal_lm(lm: nn.Module, base: nn.Module) -> dict[str, list[str]]:
    """Copy a pre-trained causal LM `base` (a genloom `Transformer`, e.g. genloom-zh-base) into
    the Transformer `lm` of a task model (the UniLM title model's `.lm`), which has the same
    blocks and vocabulary: every weight of the same name and shape is copied; a learned position
    table longer than the base's gets the base's rows first (the rest keep their initialisation:
    positions the base never saw); weights the base lacks (segment embeddings) are left as they
    are. The attention mask (causal / prefix) is a setting, not a weight, so the same blocks
    serve a prefix LM. Returns {"copied", "partial", "fresh"} weight names.

    Raises:
        UserError: the two differ in block shape or vocabulary size.
    """
    a, b = lm.config, base.config
    differ = [k for k in (*SHAPE_FIELDS, "vocab_size") if getattr(a, k) != getattr(b, k)]
    if differ:
        raise UserError("the pre-trained LM has another shape: " + ", ".join(
            f"{k} {getattr(b, k)} (here {getattr(a, k)})" for k in differ))
    src = base.state_dict()
    out: dict[str, list[str]] = {"copied": [], "partial": [], "fresh": []}
    with torch.no_grad():
        for name, t in lm.state_dict().items():
            s = src.get(name)
            if s is None:
                out["fresh"].append(name)
            elif s.shape == t.shape:
                t.copy_(s)
                out["copied"].append(name)
            elif name == "pos_emb.weight" and s.shape[1:] == t.shape[1:]:
                n = min(s.shape[0], t.shape[0])
                t[:n].copy_(s[:n])
                out["partial"].append(name)
            else:
                raise UserError(f"the pre-trained LM's {name} has shape {tuple(s.shape)}, here {tuple(t.shape)}")
    return out
