"""A causal language model of gated RTF blocks (Hyena-RTF) with an O(1)-in-length decoding state.

Each block is pre-norm: x + HyenaRTF(norm(x)), then x + MLP(norm(x)) (`genloom.nn.rtf.HyenaRTF`:
in-projection to q, k, v, short causal convs, an RTF long filter over k * v, gated by q). There
are no position embeddings: the convolutions are causal and time-invariant, so the model has no
context limit when decoding. `max_len` is the RTF's DFT size, the longest *parallel* pass
(training sequences, prompt prefill); longer prompts are prefilled max_len tokens in parallel
and the rest stepped, and generation continues past it through the recurrence.

Decoding protocol (`genloom.decode.protocol`): `start` prefills right-padded prompts in one
parallel pass per block and returns the per-row state (B, L, C, S), a few numbers per channel
whatever the length; `step` costs the same at token 10 and token 10,000; `select` is one
`index_select`. As with `Transformer`, `step` updates the state in place: a state passed to
`step` must not be used again (`select` returns a fresh one).

Letters: B batch rows, T positions, C model width, F feed-forward width, V vocabulary size,
L layers, S = 3(K-1) + n the mixer's state width per channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from genloom.errors import UserError
from genloom.models.transformer import MLP, check_prompts
from genloom.nn.norms import make_norm
from genloom.nn.rtf import HyenaRTF, RTFRecurrence


@dataclass
class RTFLMConfig:
    """Shape of an `RTFLM` (a dataclass, saved as JSON)."""

    vocab_size: int = 8000  # V, token ids 0..V-1
    n_layer: int = 4  # L, number of blocks
    d_model: int = 256  # C, residual stream width (= RTF channels)
    d_ff: int = 1024  # F, hidden width of the feed-forward layer
    state_size: int = 64  # n, order of every channel's transfer function
    num_a: int | None = None  # G, shared RTF denominators per layer; None = one per channel
    short_conv: int = 3  # K, width of the causal depthwise conv on q, k, v (0 = none)
    max_len: int = 1024  # N, the RTF DFT size: longest parallel pass (decoding is unlimited)
    rtf_init: str = "xavier"  # "xavier" or "zeros" (identity filters)
    montel: bool = True  # l1-Montel constraint: every pole inside the unit circle
    norm: str = "rms"  # "rms" (RMSNorm) or "layer" (LayerNorm)
    mlp: str = "gelu"  # "gelu", "gelu_erf" or "swiglu" (as in the Transformer)
    bias: bool = True  # biases in projections, convs and LayerNorms
    norm_eps: float = 1e-5  # epsilon of every norm
    dropout: float = 0.0  # dropout on embeddings and residual branches
    tie_embeddings: bool = True  # the output projection shares the token embedding matrix
    init_std: float = 0.02  # std of the normal initialisation of projections and embeddings

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "d_model", "d_ff", "state_size", "max_len"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.norm not in ("rms", "layer"):
            raise UserError(f"norm={self.norm!r} is not one of rms, layer")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}")


def rtf_lm_small(vocab_size: int, **overrides: Any) -> RTFLMConfig:
    """A CPU-sized RTF LM: 4 blocks of width 256, n = 64, parallel passes up to 1024 tokens."""
    return RTFLMConfig(vocab_size=vocab_size, **overrides)


class RTFBlock(nn.Module):
    """Pre-norm residual block: x + HyenaRTF(norm1(x)), then x + MLP(norm2(x))."""

    def __init__(self, c: RTFLMConfig) -> None:
        super().__init__()
        self.norm1 = make_norm(c.norm, c.d_model, eps=c.norm_eps, bias=c.bias)
        self.mixer = HyenaRTF(
            c.d_model, state_size=c.state_size, max_len=c.max_len, num_a=c.num_a,
            short_conv=c.short_conv, init=c.rtf_init, montel=c.montel, bias=c.bias,
        )
        self.norm2 = make_norm(c.norm, c.d_model, eps=c.norm_eps, bias=c.bias)
        self.mlp = MLP(c.d_model, c.d_ff, kind=c.mlp, bias=c.bias)
        self.drop = nn.Dropout(c.dropout)

    def forward(
        self, x: Tensor, *, lengths: Tensor | None = None, want_state: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """x (B, T, C) -> (B, T, C), and the mixer state (B, C, S) after `lengths` if wanted."""
        y, state = self.mixer.mix(self.norm1(x), lengths=lengths, want_state=want_state)
        x = x + self.drop(y)  # (B, T, C)
        return x + self.drop(self.mlp(self.norm2(x))), state

    def step(self, x: Tensor, state: Tensor, rec: RTFRecurrence) -> Tensor:
        """x (B, C) -> (B, C); state (B, C, S) updated in place."""
        x = x + self.mixer.step(self.norm1(x), None, state, rec)  # (B, C)
        return x + self.mlp(self.norm2(x))  # (B, C)


@dataclass
class RTFLMState:
    """Decoding state of an `RTFLM`: fixed size per row, whatever the length."""

    layers: Tensor  # (B, L, C, S) short-conv histories and RTF states of every layer
    recs: tuple[RTFRecurrence, ...]  # per layer, the step coefficients (shared by all rows)


class RTFLM(nn.Module):
    """Causal LM of gated RTF blocks; see the module docstring."""

    # no context limit (`genloom.decode.protocol.context_length`): config.max_len is the longest
    # parallel pass, not a cap on prompt + generated tokens
    max_len = None

    def __init__(self, config: RTFLMConfig) -> None:
        super().__init__()
        c = self.config = config
        self.vocab_size = c.vocab_size
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(RTFBlock(c) for _ in range(c.n_layer))
        self.norm = make_norm(c.norm, c.d_model, eps=c.norm_eps, bias=c.bias)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2 init of embeddings and projections (residual outputs / sqrt(2L)); the RTF
        filters and short convs keep their own initialisation."""
        std = self.config.init_std
        nn.init.normal_(self.tok_emb.weight, std=std)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and module.weight is not self.tok_emb.weight:
                residual = name.endswith(("mixer.out", "mlp.proj"))  # scaled like GPT-2
                scale = (2 * self.config.n_layer) ** -0.5 if residual else 1.0
                nn.init.normal_(module.weight, std=std * scale)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def config_dict(self) -> dict[str, Any]:
        """The config as a JSON-ready dict."""
        return asdict(self.config)

    def forward(self, input_ids: Tensor) -> Tensor:
        """input_ids (B, T), T <= max_len -> logits (B, T, V); position t predicts token t + 1."""
        x = self.drop(self.tok_emb(input_ids))  # (B, T, C)
        for block in self.blocks:
            x, _ = block(x)
        return self.lm_head(self.norm(x))  # (B, T, V)

    # ---- decoding protocol ------------------------------------------------------------------

    @torch.inference_mode()
    def start(
        self,
        *,
        input_ids: Tensor,
        lengths: Tensor | Sequence[int] | None = None,
        max_new_tokens: int = 0,
        truncate: bool = False,
    ) -> tuple[Tensor, RTFLMState]:
        """Prefill right-padded prompts.

        Args:
            input_ids: (B, T) prompts, right-padded; row b's tokens are input_ids[b, :lengths[b]].
            lengths: (B,) prompt lengths (each >= 1); None = every row is T tokens long.
            max_new_tokens: accepted for the protocol; the state does not grow, so it is unused.
            truncate: accepted for the protocol (as `Transformer.start` takes it); no prompt is
                too long for an RTF LM, so nothing is ever cut.
        Returns:
            (logits (B, V) for the first new token of each row, state).
        """
        ids, lengths, _ = check_prompts(
            input_ids, lengths, max_new_tokens=max_new_tokens, max_len=None
        )
        N = self.config.max_len
        head, head_len = ids[:, :N], lengths.clamp(max=N)  # parallel part
        x = self.tok_emb(head)  # (B, T', C)
        states = []
        for block in self.blocks:
            x, st = block(x, lengths=head_len, want_state=True)
            states.append(st)
        last = x.gather(1, (head_len - 1)[:, None, None].expand(-1, 1, x.shape[-1]))[:, 0]  # (B, C)
        logits = self.lm_head(self.norm(last))  # (B, V)
        state = RTFLMState(
            layers=torch.stack(states, dim=1), recs=tuple(b.mixer._rec for b in self.blocks)
        )
        for p in range(N, int(lengths.max())):  # prompts longer than the parallel pass
            active = lengths > p  # (B,)
            before = state.layers.clone()
            new_logits, state = self.step(ids[:, p], state)
            state.layers = torch.where(active[:, None, None, None], state.layers, before)
            logits = torch.where(active[:, None], new_logits, logits)
        return logits, state

    @torch.inference_mode()
    def step(self, tokens: Tensor, state: RTFLMState) -> tuple[Tensor, RTFLMState]:
        """Feed tokens (B,) (one per row) -> (logits (B, V) for the next token, state)."""
        x = self.tok_emb(tokens)  # (B, C)
        for i, block in enumerate(self.blocks):
            x = block.step(x, state.layers[:, i], state.recs[i])
        return self.lm_head(self.norm(x)), state  # (B, V)

    @torch.inference_mode()
    def select(self, state: RTFLMState, index: Tensor) -> RTFLMState:
        """Keep / reorder rows: index (B',) long into the current rows (repeats allowed)."""
        index = torch.as_tensor(index, dtype=torch.long, device=state.layers.device).reshape(-1)
        return RTFLMState(layers=state.layers.index_select(0, index), recs=state.recs)
