"""The independent judge of conditional generation: a character CNN text classifier.

Letters: B batch rows, T characters, E char embedding width, F filters per kernel width,
K labels.

Issue 7 scores how well a condition controls generated text by asking a classifier that shares
nothing with the generators: its own tokenizer, its own weights, trained separately on the
training split of the same corpus. It is Kim (2014)'s CNN over characters: an embedding, one
1-D convolution per n-gram width (2..5 by default) with ReLU, a max over the positions each
window of which lies inside the text, the pooled features concatenated, dropout, and a linear
layer to K logits. Max-pooling makes it look for the strongest evidence anywhere in a text
("不错", "失望"), which suits sentiment and costs one pass.

`CharCNNJudge` is registered with `genloom.models.io` as "char_cnn_judge", so
`genloom.models.load(dir)` rebuilds a saved judge (import this module first).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genloom.errors import UserError
from genloom.models.io import register_model


@dataclass
class JudgeConfig:
    """Shape of a `CharCNNJudge` (saved as config.json)."""

    vocab_size: int = 4000  # character ids of the judge's own tokenizer (0 = padding)
    n_labels: int = 2  # K, number of classes
    d_emb: int = 64  # E, character embedding width
    channels: int = 96  # F, filters per kernel width
    kernel_sizes: tuple[int, ...] = (2, 3, 4, 5)  # convolution widths (character n-gram sizes)
    dropout: float = 0.3  # dropout on the pooled features (training only)
    max_len: int = 192  # texts are cut to their first max_len characters
    labels: tuple[str, ...] = ()  # label names by id (len K), kept with the weights

    def __post_init__(self) -> None:
        self.kernel_sizes = tuple(int(k) for k in self.kernel_sizes)
        self.labels = tuple(self.labels)
        for name in ("vocab_size", "d_emb", "channels", "max_len"):
            if getattr(self, name) < 1:
                raise UserError(f"judge {name} must be >= 1, got {getattr(self, name)}")
        if self.n_labels < 2:
            raise UserError(f"a judge needs at least 2 labels, got {self.n_labels}")
        if not self.kernel_sizes or min(self.kernel_sizes) < 1:
            raise UserError(f"kernel sizes must be >= 1, got {self.kernel_sizes}")
        if self.labels and len(self.labels) != self.n_labels:
            raise UserError(f"{len(self.labels)} label names for {self.n_labels} labels")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}")


class CharCNNJudge(nn.Module):
    """Character CNN classifier: embedding, parallel convolutions, masked max-pool, linear."""

    def __init__(self, config: JudgeConfig) -> None:
        super().__init__()
        c = self.config = config
        self.emb = nn.Embedding(c.vocab_size, c.d_emb, padding_idx=0)
        self.convs = nn.ModuleList(nn.Conv1d(c.d_emb, c.channels, k) for k in c.kernel_sizes)
        self.drop = nn.Dropout(c.dropout)
        self.out = nn.Linear(c.channels * len(c.kernel_sizes), c.n_labels)

    def features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Pooled features (B, F * len(kernel_sizes)) of right-padded ids (B, T)."""
        valid = input_ids != 0 if attention_mask is None else attention_mask.bool()  # (B, T)
        widest = max(self.config.kernel_sizes)
        if input_ids.shape[1] < widest:  # every convolution needs at least one window
            pad = widest - input_ids.shape[1]
            input_ids, valid = F.pad(input_ids, (0, pad)), F.pad(valid, (0, pad))
        x = self.emb(input_ids).transpose(1, 2)  # (B, E, T)
        pooled = []
        for k, conv in zip(self.config.kernel_sizes, self.convs):
            h = F.relu(conv(x))  # (B, F, T - k + 1)
            inside = valid[:, k - 1 :]  # (B, T - k + 1): the window's last char is a real one
            # ReLU outputs are >= 0, so zeroing the windows that run into padding excludes them
            # from the max (a text shorter than k pools to 0)
            pooled.append(h.masked_fill(~inside[:, None, :], 0.0).amax(dim=2))  # (B, F)
        return torch.cat(pooled, dim=1)  # (B, F * n_kernels)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits (B, K) of right-padded ids (B, T) (0 = padding)."""
        return self.out(self.drop(self.features(input_ids, attention_mask)))  # (B, K)


register_model("char_cnn_judge", JudgeConfig, CharCNNJudge)  # genloom.models.load rebuilds judges


def encode_texts(tokenizer, texts: Sequence[str], max_len: int) -> Tensor:
    """Right-padded char ids (B, T) of `texts`, each cut to max_len (an empty text is one <unk>
    so it still has a position to pool)."""
    rows = [tokenizer.encode(t)[:max_len] or [tokenizer.unk_id] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)  # (B, T)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return ids


@torch.no_grad()
def classify(model: CharCNNJudge, tokenizer, texts: Sequence[str], *, batch_size: int = 256) -> Tensor:
    """Class probabilities (N, K) of `texts` under the judge (eval mode, batched by length).

    Args:
        model: a trained judge.
        tokenizer: the judge's own tokenizer (pad id 0).
        texts: the texts to score.
        batch_size: texts per forward pass.
    """
    if not len(texts):
        raise UserError("no texts to classify")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    probs = torch.empty(len(texts), model.config.n_labels)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        ids = encode_texts(tokenizer, [texts[i] for i in idx], model.config.max_len).to(device)
        probs[idx] = model(ids).float().softmax(dim=-1).cpu()  # (b, K)
    model.train(was_training)
    return probs
