"""Character seq2seq of 玩转Keras之seq2seq自动生成标题 (kexue.fm/archives/5861), with a real cache.

Shared character embedding; a 2-layer BiLSTM encoder; a 2-layer LSTM decoder; multiplicative
attention with a padding mask; an output layer over [attention, decoder state, max-pooled encoder];
the post's "prior" (a binary vector of the source's characters, scaled and shifted per vocabulary
item and averaged with the logits); and a pointer-generator copy (See et al. 2017): a learned gate
mixes the attention over source characters into the output distribution.

One addition to the post, for the copy: a *successor bonus* in the attention scores. A title
copies runs of the article ("浙江温州民房倒塌"); after copying a character the next one to copy is
usually the one after it in the source. Without input feeding or coverage the decoder cannot see
where it copied last, and early in training it copies the same character again and again
("产产产产"). The bonus adds w1 to the score of every source position that follows an occurrence of
the last generated character and w2 where the last two match (`successor_matches`; w learned,
starting at 1); the source counts as preceded by bos, so the first step favours the article's
first character (news titles often start where the article does). It needs only the ids, so training stays parallel over the title and a decoding
step stays O(S).

Padding in the BiLSTM: the backward direction runs a one-directional LSTM over each row reversed
within its own length (pads stay at the end), then reverses back. That equals a packed-sequence
BiLSTM on the valid positions and is far faster on CPU than `pack_padded_sequence`.

With copy on, the output is a probability mixture, so `forward`, `start` and `step` return
log-probabilities in place of logits. Search loops only apply log_softmax-invariant operations
(log_softmax of log-probabilities is the identity), so they are used unchanged.

Letters: B batch rows, S source length, T target length, V vocabulary, E embedding width,
H encoder width per direction (2H both), D decoder width, L layers, O output hidden width.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genloom.nn import probe
from genloom.nn.pointer import source_presence, successor_matches
from genloom.nn.rows import reverse_rows

__all__ = ["Attention", "BiLSTMEncoder", "RNNSeq2Seq", "RNNSeq2SeqConfig", "RNNSeq2SeqState", "reverse_rows",
           "source_presence", "successor_matches", "title_rnn_small"]


@dataclass
class RNNSeq2SeqConfig:
    vocab_size: int  # characters incl. special ids
    pad_id: int = 0  # padding id (never a real character; masked everywhere)
    bos_id: int = 2  # id fed to the decoder before the first target character
    emb_dim: int = 128  # shared encoder/decoder character embedding width (E)
    enc_hidden: int = 64  # encoder LSTM width per direction (H); the post uses 64
    dec_hidden: int = 128  # decoder LSTM width (D); the post uses 128
    num_layers: int = 2  # LSTM layers in encoder and decoder
    out_hidden: int = 512  # width of the relu layer before the vocabulary projection (O)
    dropout: float = 0.1  # dropout on embeddings and between layers while training
    prior: bool = True  # the post's source-character prior averaged with the logits
    copy: bool = True  # pointer-generator copy from the source with a learned gate
    successor: bool = True  # attention bonus on source positions that continue the last one /
    # two title characters in the source (see `successor_matches`)
    gen_vocab: int | None = None  # G: the generator's softmax covers ids < G only (ids are by
    # frequency); rarer characters come by copy. None: all V. Needs copy when set below V
    max_source_len: int = 400  # longest source the model is meant for (the task truncates)

    def __post_init__(self) -> None:
        if self.gen_vocab is not None and not 4 < self.gen_vocab <= self.vocab_size:
            raise ValueError(f"gen_vocab must be in (4, vocab_size], got {self.gen_vocab}")
        if self.gen_vocab is not None and self.gen_vocab < self.vocab_size and not self.copy:
            raise ValueError("gen_vocab below vocab_size needs copy (rare characters come by copy)")

    @property
    def generated(self) -> int:
        """G with the None default resolved."""
        return self.gen_vocab or self.vocab_size


def title_rnn_small(vocab_size: int, **overrides: Any) -> RNNSeq2SeqConfig:
    """The default title model: the post's 2018 sizes (E 128, BiLSTM 2x64, LSTM 128, dense 512)
    with copy and prior on: about 0.74M parameters plus 0.64k per vocabulary item (0.13k per
    item past gen_vocab)."""
    return RNNSeq2SeqConfig(vocab_size=vocab_size, **overrides)


class BiLSTMEncoder(nn.Module):
    """Stacked BiLSTM over right-padded rows, each direction a one-directional LSTM."""

    def __init__(self, in_dim: int, hidden: int, num_layers: int, dropout: float) -> None:
        super().__init__()
        dims = [in_dim] + [2 * hidden] * (num_layers - 1)
        self.fwd = nn.ModuleList(nn.LSTM(d, hidden, batch_first=True) for d in dims)
        self.bwd = nn.ModuleList(nn.LSTM(d, hidden, batch_first=True) for d in dims)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """x (B, S, E), lengths (B,) -> states (B, S, 2H); positions past a row's length are junk."""
        for i, (f, b) in enumerate(zip(self.fwd, self.bwd)):
            if i:
                x = self.dropout(x)
            out_f, _ = f(x)  # (B, S, H)
            out_b, _ = b(reverse_rows(x, lengths))  # (B, S, H), in reversed order
            x = torch.cat([out_f, reverse_rows(out_b, lengths)], dim=-1)  # (B, S, 2H)
        return x


class Attention(nn.Module):
    """Multiplicative attention softmax(q W k^T / sqrt(D)) over the unpadded source; records its
    probabilities as "attn_probs" (B, 1, T, S) for `genloom.train.taps.Taps`."""

    def __init__(self, mem_dim: int, query_dim: int) -> None:
        super().__init__()
        self.w = nn.Linear(mem_dim, query_dim, bias=False)  # the W of q.W.k
        self.scale = 1.0 / math.sqrt(query_dim)

    def keys(self, memory: Tensor) -> Tensor:
        """memory (B, S, M) -> keys (B, S, D), computed once per source."""
        return self.w(memory)

    def forward(self, q: Tensor, keys: Tensor, memory: Tensor, mask: Tensor,
                bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """q (B, T, D), keys (B, S, D), memory (B, S, M), mask (B, S) True at real positions,
        optional additive score bias (B, T, S) -> (context (B, T, M), probabilities (B, T, S))."""
        scores = q @ keys.transpose(1, 2) * self.scale  # (B, T, S)
        if bias is not None:
            scores = scores + bias
        attn = scores.masked_fill(~mask[:, None, :], float("-inf")).softmax(-1)  # (B, T, S)
        if probe.active():
            probe.record(self, "attn_probs", attn[:, None])  # (B, 1, T, S): one head
        return attn @ memory, attn  # (B, T, M), (B, T, S)


@dataclass
class RNNSeq2SeqState:
    """Decoding state of an `RNNSeq2Seq`: every tensor has the rows on dim 0, but h and c (dim 1)."""

    h: Tensor  # (L, B, D) decoder LSTM hidden states
    c: Tensor  # (L, B, D) decoder LSTM cell states
    memory: Tensor  # (B, S, 2H) encoder states
    keys: Tensor  # (B, S, D) memory projected for attention
    mask: Tensor  # (B, S) True at real source positions
    pooled: Tensor  # (B, 2H) max-pooled encoder states
    src: Tensor  # (B, S) source ids, for the copy scatter and the successor bonus
    last: Tensor  # (B,) the id fed before the newest one (-2 at the start), for the successor bonus
    prior: Tensor | None = None  # (B, V) the prior's scaled, shifted vector (None without the prior)

    def select(self, index: Tensor) -> RNNSeq2SeqState:
        """Keep / reorder rows: index (B',) into the current rows."""
        rows = {name: None if v is None else v.index_select(1 if name in ("h", "c") else 0, index)
                for name, v in vars(self).items()}
        return RNNSeq2SeqState(**rows)


class RNNSeq2Seq(nn.Module):
    """Article -> title seq2seq implementing the decoding protocol (start / step / select) over an
    `RNNSeq2SeqState`."""

    def __init__(self, config: RNNSeq2SeqConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.vocab_size = c.vocab_size
        self.embed = nn.Embedding(c.vocab_size, c.emb_dim, padding_idx=c.pad_id)
        self.encoder = BiLSTMEncoder(c.emb_dim, c.enc_hidden, c.num_layers, c.dropout)
        self.init_state = nn.Linear(2 * c.enc_hidden, 2 * c.num_layers * c.dec_hidden)
        self.decoder = nn.LSTM(
            c.emb_dim, c.dec_hidden, num_layers=c.num_layers, batch_first=True,
            dropout=c.dropout if c.num_layers > 1 else 0.0,
        )
        self.attention = Attention(2 * c.enc_hidden, c.dec_hidden)
        feat = 2 * c.enc_hidden + c.dec_hidden + 2 * c.enc_hidden
        self.hidden = nn.Linear(feat, c.out_hidden)
        self.out = nn.Linear(c.out_hidden, c.generated)
        self.dropout = nn.Dropout(c.dropout)
        if c.prior:  # s = exp(log_scale) = 1 and t = 0 at the start, as the post
            self.prior_log_scale = nn.Parameter(torch.zeros(c.vocab_size))
            self.prior_shift = nn.Parameter(torch.zeros(c.vocab_size))
        if c.copy:
            self.gate = nn.Linear(feat + c.emb_dim, 1)
        if c.successor:  # score bonus for continuing a 1- / 2-character match (learned)
            self.successor_weight = nn.Parameter(torch.ones(2))

    # ---- encoder side -------------------------------------------------------------------------
    def encode(self, src: Tensor) -> RNNSeq2SeqState:
        """src (B, S) right-padded ids -> the decoding state before any target token."""
        c = self.config
        mask = src != c.pad_id  # (B, S)
        lengths = mask.sum(1).clamp_min(1)  # (B,)
        x = self.dropout(self.embed(src))  # (B, S, E)
        memory = self.encoder(x, lengths)  # (B, S, 2H)
        pooled = memory.masked_fill(~mask[:, :, None], -1e4).max(1).values  # (B, 2H)
        B = src.shape[0]
        hc = torch.tanh(self.init_state(pooled)).view(B, 2, c.num_layers, c.dec_hidden)
        hc = hc.permute(1, 2, 0, 3).contiguous()  # (2, L, B, D)
        prior = None
        if c.prior:
            chi = source_presence(src, c.vocab_size, c.pad_id)  # (B, V)
            prior = self.prior_log_scale.exp() * chi + self.prior_shift  # (B, V)
        return RNNSeq2SeqState(
            h=hc[0], c=hc[1], memory=memory, keys=self.attention.keys(memory), mask=mask, pooled=pooled, src=src,
            last=torch.full((B,), -2, dtype=torch.long, device=src.device), prior=prior)

    # ---- decoder side -------------------------------------------------------------------------
    def _features(self, dec: Tensor, emb: Tensor, st: RNNSeq2SeqState, prev1: Tensor,
                  prev2: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Decoder states dec (B, T, D), their input ids prev1 (B, T) and embeddings emb
        (B, T, E), the ids before those prev2 (B, T) -> output features (B, T, 4H + D),
        attention (B, T, S) and the copy gate (B, T, 1) (None without copy)."""
        bias = None
        if self.config.successor:
            m1, m2 = successor_matches(st.src, prev1, prev2, start_id=self.config.bos_id)
            bias = self.successor_weight[0] * m1 + self.successor_weight[1] * m2
        ctx, attn = self.attention(dec, st.keys, st.memory, st.mask, bias)
        pooled = st.pooled[:, None, :].expand(-1, dec.shape[1], -1)  # (B, T, 2H)
        feat = torch.cat([ctx, dec, pooled], dim=-1)  # (B, T, 4H + D)
        gate = torch.sigmoid(self.gate(torch.cat([feat, emb], -1))) if self.config.copy else None
        return feat, attn, gate

    def _generator(self, feat: Tensor, prior: Tensor | None) -> Tensor:
        """Features (..., 4H + D) and prior rows (..., V) -> generator log-probs (..., G)."""
        logits = self.out(self.dropout(F.relu(self.hidden(self.dropout(feat)))))  # (..., G)
        if prior is not None:
            logits = (logits + prior[..., : logits.shape[-1]]) / 2
        return logits.log_softmax(-1)

    def _output(self, dec: Tensor, emb: Tensor, st: RNNSeq2SeqState, prev1: Tensor,
                prev2: Tensor) -> Tensor:
        """As `_features` -> log-probs (B, T, V) of the next character: the generator, mixed
        with the copy distribution."""
        feat, attn, g = self._features(dec, emb, st, prev1, prev2)
        prior = st.prior[:, None, :] if self.config.prior else None  # (B, 1, V)
        logp = self._generator(feat, prior)  # (B, T, G)
        extra = self.vocab_size - logp.shape[-1]
        if g is None:
            return logp
        p = F.pad(g * logp.exp(), (0, extra))  # (B, T, V): ids >= G only by copy
        src = st.src[:, None, :].expand(-1, dec.shape[1], -1)  # (B, T, S)
        p = p.scatter_add(2, src, (1 - g) * attn)  # (B, T, V)
        return torch.log(p.clamp_min(1e-30))

    def forward(self, src: Tensor, tgt_in: Tensor, tgt_out: Tensor | None = None) -> Tensor:
        """Teacher forcing. src (B, S), tgt_in (B, T) starting with bos. Without tgt_out: the
        log-probs (B, T, V), position t predicting the character after tgt_in[:, :t+1].

        With tgt_out (B, T) (pad where masked): the mean negative log-likelihood per target
        character, computed on the unpadded positions only and from the target's probability
        alone (no (B, T, V) copy scatter). Targets that cannot be produced (ids >= G that are not
        in the source) are left out of the mean: they carry no gradient.
        """
        st = self.encode(src)
        emb = self.dropout(self.embed(tgt_in))  # (B, T, E)
        dec, _ = self.decoder(emb, (st.h, st.c))  # (B, T, D)
        prev2 = torch.cat([st.last[:, None], tgt_in[:, :-1]], 1)  # (B, T)
        if tgt_out is None:
            return self._output(dec, emb, st, tgt_in, prev2)
        feat, attn, g = self._features(dec, emb, st, tgt_in, prev2)
        keep = tgt_out != self.config.pad_id  # (B, T)
        rows = keep.nonzero()[:, 0]  # (N,) batch row of each kept position
        y = tgt_out[keep]  # (N,)
        prior = st.prior[rows] if self.config.prior else None  # (N, V)
        logp = self._generator(feat[keep], prior)  # (N, G)
        G = logp.shape[-1]
        lp = logp.gather(1, y.clamp(max=G - 1)[:, None])[:, 0]  # (N,)
        lp = lp.masked_fill(y >= G, float("-inf"))
        if g is None:
            return -lp.mean()
        hits = (st.src[rows] == y[:, None]).to(attn.dtype)  # (N, S)
        p_copy = (attn[keep] * hits).sum(-1)  # (N,)
        gk = g[keep][:, 0]  # (N,)
        p = gk * lp.exp() + (1 - gk) * p_copy  # (N,)
        possible = (y < G) | (hits.sum(-1) > 0)  # (N,)
        return -torch.log(p[possible].clamp_min(1e-30)).sum() / possible.sum().clamp_min(1)

    # ---- decoding protocol --------------------------------------------------------------------
    def start(self, *, src: Tensor, max_new_tokens: int | None = None) -> tuple[Tensor, RNNSeq2SeqState]:
        """Encode src (B, S) and feed bos: log-probs (B, V) for the first title character."""
        st = self.encode(src)
        bos = torch.full((src.shape[0],), self.config.bos_id, dtype=torch.long, device=src.device)
        return self.step(bos, st)

    def step(self, tokens: Tensor, state: RNNSeq2SeqState) -> tuple[Tensor, RNNSeq2SeqState]:
        """tokens (B,) -> log-probs (B, V) for the next character; O(S) work, no re-run."""
        emb = self.embed(tokens)[:, None, :]  # (B, 1, E)
        dec, (h, c) = self.decoder(emb, (state.h, state.c))  # (B, 1, D)
        out = self._output(dec, emb, state, tokens[:, None], state.last[:, None])  # (B, 1, V)
        return out[:, 0], replace(state, h=h, c=c, last=tokens)

    def select(self, state: RNNSeq2SeqState, index: Tensor) -> RNNSeq2SeqState:
        """Keep / reorder rows of every tensor in the state (h, c on dim 1, the rest on dim 0)."""
        return state.select(index)

    def config_dict(self) -> dict[str, Any]:
        """The config as plain JSON-able data."""
        return asdict(self.config)
