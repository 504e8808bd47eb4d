"""One configurable decoder Transformer: GPT-2 and Llama families, causal / prefix / bidirectional.

Letters: B batch rows, T positions, W packed prompt width, S cache columns (W + new tokens),
C model width, F feed-forward width, V vocabulary size, L layers, E condition width.

`Transformer.forward` runs whole sequences (training, scoring). The decoding protocol
(`genloom.decode.protocol`) runs prompts with a cache:

- `start` left-packs right-padded prompts: row b's `lengths[b]` tokens are moved to the right
  end of a width-W window (W = the longest prompt), so every row writes its next token into the
  same cache column and a step is one slice assignment per layer, never a scatter or a cat.
  Each row keeps its own positions (column - offset), and the padding columns on the left are
  masked out of every attention. The one cache tensor, (B, L, *mixer state), is allocated here
  once for W + max_new_tokens columns.
- `step` feeds one token per row, writes its keys/values in place and returns the next logits.
  The state is updated in place and returned (a state passed to `step` or `select` must not be
  used again).
- `select` reorders, repeats or drops rows in place: only rows whose source is another row copy
  the used columns of that row (beams that keep their own history cost nothing); the buffer only
  grows when a select asks for more rows than it holds (e.g. expanding prompts into beams).

With mask="prefix" (UniLM), the prompt is the source, bidirectional among itself, and generated
tokens are causal; with mask="bidirectional", `start(max_new_tokens=0)` returns the last prompt
position's logits and asking for new tokens is refused (a bidirectional model has no
left-to-right factorisation to decode).

Every Linear weight is stored input-major (`input_major_`): batch-1 decoding is a chain of
matrix-vector products, which read that layout faster; a head tied to the embedding is read
through an input-major copy while decoding.

With `cond_dim` set every norm is a Conditional LayerNorm / RMSNorm (`genloom.nn.cln`):
`forward` and `start` take `condition=` (label ids (B,) through a learned embedding when
`cond_labels` > 0, or any vectors (B, E)); `start` keeps the (B, E) vectors in the state, so
`step` and `select` need nothing more.

The blocks (MLP, token mixers, `Block`, input-major storage, the fused decoding step) are in
`genloom.models.blocks`, prompt checks and left packing in `genloom.models.prompts`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genloom.errors import UserError
from genloom.models.blocks import MIXERS, MLP, MLP_ACTIVATIONS, Block, apply_norm, block_norm, fast_step, input_major_
from genloom.models.prompts import check_prompts, left_pack
from genloom.nn import blas, probe
from genloom.nn.attention import Frame, allowed_mask, rope_tables
from genloom.nn.cln import ACTIVATIONS as COND_ACTIVATIONS
from genloom.nn.cln import Condition, ConditionInput, resolve_condition
from genloom.nn.rtf import HyenaRTF

__all__ = ["MIXERS", "MLP", "Block", "Transformer", "TransformerConfig", "TransformerState", "check_prompts",
           "gpt2_small_test", "input_major_", "left_pack", "smollm2_135m"]


@dataclass
class TransformerConfig:
    """Shape and flavour of a `Transformer` (saved as config.json by `genloom.models.save`)."""

    vocab_size: int = 8000  # V, token ids 0..V-1
    n_layer: int = 4  # L, number of blocks
    n_head: int = 4  # H, query heads per attention layer
    n_kv_head: int | None = None  # K, key/value heads (grouped-query attention); None = n_head
    d_model: int = 256  # C, residual stream width
    d_ff: int = 1024  # F, hidden width of the feed-forward layer (per branch for swiglu)
    head_dim: int | None = None  # D, width of one head; None = d_model // n_head
    max_len: int = 1024  # longest sequence (prompt + generated) the model accepts
    norm: str = "layer"  # "layer" (LayerNorm, GPT-2) or "rms" (RMSNorm, Llama)
    mlp: str = "gelu"  # "gelu" (tanh approximation, GPT-2), "gelu_erf" (exact erf) or "swiglu"
    pos: str = "learned"  # "learned" absolute position embeddings (GPT-2) or "rope" (Llama)
    rope_theta: float = 10000.0  # RoPE base period (pos="rope" only)
    tie_embeddings: bool = True  # the output projection shares the token embedding matrix
    mask: str = "causal"  # "causal" LM, "prefix" (UniLM seq2seq from segment ids) or "bidirectional"
    bias: bool = True  # biases in the attention and feed-forward projections and LayerNorms
    norm_eps: float = 1e-5  # epsilon of every norm
    dropout: float = 0.0  # dropout on embeddings, residual branches and attention probabilities
    n_segment: int = 0  # segment (token-type) embeddings added to the input, BERT/UniLM style; 0 = none
    cond_dim: int | None = None  # width of a condition vector for conditional norms; None = plain
    cond_labels: int = 0  # label ids a condition may be given as (a learned cond_dim embedding); 0 = vectors only
    cond_hidden: int | None = None  # each conditional norm projects the condition to this width first; None = no
    cond_act: str = "linear"  # activation of that projection, a key of genloom.nn.cln.ACTIVATIONS
    mixer: str = "attention"  # token mixer of every block, a key of MIXERS
    rtf_state_size: int = 64  # mixer="rtf": n, order of every channel's transfer function (< max_len)
    rtf_num_a: int | None = None  # mixer="rtf": G, shared RTF denominators per layer (divides d_model); None = one per channel
    rtf_short_conv: int = 3  # mixer="rtf": K, width of the causal depthwise conv on q, k, v (0 = none)
    rtf_init: str = "xavier"  # mixer="rtf": "xavier" or "zeros" (every RTF filter the identity, k = h0 delta)
    rtf_montel: bool = True  # mixer="rtf": l1-Montel constraint, every pole inside the unit circle
    init_std: float = 0.02  # std of the normal initialisation of weight matrices and embeddings

    def __post_init__(self) -> None:
        choices = {"norm": ("layer", "rms"), "mlp": tuple(MLP_ACTIVATIONS) + ("swiglu",),
                   "pos": ("learned", "rope"), "mask": ("causal", "prefix", "bidirectional")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if self.mixer not in MIXERS:
            raise UserError(f"mixer={self.mixer!r} is not one of {', '.join(MIXERS)}")
        for name in ("vocab_size", "n_layer", "n_head", "d_model", "d_ff", "max_len"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.mixer == "rtf":
            self._check_rtf()
        elif self.head_dim is None and self.d_model % self.n_head:  # heads matter to attention only
            raise UserError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if self.n_head % self.kv_heads:
            raise UserError(f"n_head={self.n_head} is not a multiple of n_kv_head={self.kv_heads}")
        if self.pos == "rope" and self.dim_head % 2:
            raise UserError(f"RoPE needs an even head width, got {self.dim_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.cond_dim is None and (self.cond_labels or self.cond_hidden):
            raise UserError("cond_labels and cond_hidden need cond_dim (the condition width)")
        if any(v is not None and v < 1 for v in (self.cond_dim, self.cond_hidden)) or self.cond_labels < 0:
            raise UserError("cond_dim and cond_hidden must be >= 1 and cond_labels >= 0")
        if self.cond_act not in COND_ACTIVATIONS:
            raise UserError(f"cond_act={self.cond_act!r} is not one of {', '.join(COND_ACTIVATIONS)}")

    def _check_rtf(self) -> None:
        """The options of mixer="rtf" (HyenaRTF is causal and has no attention to rotate)."""
        if self.mask != "causal":
            raise UserError(f"mixer='rtf' needs mask='causal' (its RTF filters and short convs are causal), "
                            f"got mask={self.mask!r}")
        if self.pos == "rope":
            raise UserError("mixer='rtf' has no attention for RoPE to rotate; use pos='learned'")
        if self.rtf_init not in ("xavier", "zeros"):
            raise UserError(f"rtf_init={self.rtf_init!r} is not one of xavier, zeros")
        if self.rtf_state_size < 1 or self.rtf_short_conv < 0:
            raise UserError(f"rtf_state_size must be >= 1 and rtf_short_conv >= 0, "
                            f"got {self.rtf_state_size}, {self.rtf_short_conv}")
        if self.rtf_num_a is not None and (self.rtf_num_a < 1 or self.d_model % self.rtf_num_a):
            raise UserError(f"rtf_num_a={self.rtf_num_a} does not divide d_model={self.d_model}")

    @property
    def kv_heads(self) -> int:
        """K, with the None default resolved."""
        return self.n_kv_head or self.n_head

    @property
    def dim_head(self) -> int:
        """D, with the None default resolved."""
        return self.head_dim or self.d_model // self.n_head


def gpt2_small_test(**overrides) -> TransformerConfig:
    """The small GPT-2 shape of the decoding benchmark: 4 layers, 4 heads, width 256, vocab 8000."""
    return replace(TransformerConfig(vocab_size=8000, n_layer=4, n_head=4, d_model=256, d_ff=1024,
                                     max_len=1024), **overrides)


def smollm2_135m(**overrides) -> TransformerConfig:
    """SmolLM2-135M's shape (Llama: RoPE, RMSNorm, SwiGLU, 9 query / 3 K/V heads, tied)."""
    return replace(TransformerConfig(
        vocab_size=49152, n_layer=30, n_head=9, n_kv_head=3, d_model=576, d_ff=1536, head_dim=64,
        max_len=8192, norm="rms", mlp="swiglu", pos="rope", rope_theta=100000.0, tie_embeddings=True,
        bias=False, norm_eps=1e-5), **overrides)


@dataclass
class TransformerState:
    """Decoding state of a `Transformer`; rows are the current rows of the search."""

    buffer: Tensor  # (B_alloc, L, *state) the one cache allocation; rows [0, B) are in use
    layers: list[Tensor]  # per layer, the view buffer[:B, l] (B, *state)
    rows: int  # B, rows in use
    length: int  # cache columns filled so far (the next token is written at this column)
    capacity: int  # S, the most columns the cache holds (prompt width + max_new_tokens)
    offsets: Tensor | None  # (B,) left-padding columns per row; None when no row is padded
    key_valid: Tensor | None  # (B, S) bool, False at padding columns; None when no row is padded
    segment: int  # segment id of generated tokens (1 for the prefix mask, else 0)
    condition: Tensor | None = None  # (B, E) condition vectors of a conditional (CLN) model, from start()
    plan: list[Callable[[Tensor, Frame, Tensor], Tensor]] | None = None  # fast per-block steps (`fast_step`)
    hidden: Tensor | None = None  # (B, C) final-norm hidden state behind the last logits (start(output_hidden=True))


class Transformer(nn.Module):
    """Decoder-style Transformer; see the module docstring for masks and the decoding state."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        c = self.config = config
        self.vocab_size = c.vocab_size
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb = nn.Embedding(c.max_len, c.d_model) if c.pos == "learned" else None
        self.seg_emb = nn.Embedding(c.n_segment, c.d_model) if c.n_segment else None
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.norm = block_norm(c)
        self.cond_input = ConditionInput(c.cond_dim, n_labels=c.cond_labels) if c.cond_dim else None
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.init_buffers()
        self._time_axis = getattr(self.blocks[0].mixer, "state_time_axis", None)
        self._head_t: Tensor | None = None  # input-major copy of a tied head, for decoding (see _head)
        self._head_blas = False  # whether one-row head products go through OpenBLAS (nn/blas.py)
        self._head_key: tuple | None = None
        self.reset_parameters()
        input_major_(self)

    def init_buffers(self) -> None:
        """(Re)compute the non-persistent buffers (RoPE tables), e.g. after building on the meta device."""
        c = self.config
        cos = sin = None
        if c.pos == "rope":
            weight = self.tok_emb.weight
            cos, sin = (t.to(weight.device, weight.dtype) for t in rope_tables(c.dim_head, c.max_len, c.rope_theta))
        self.register_buffer("rope_cos", cos, persistent=False)  # (max_len, D) or None
        self.register_buffer("rope_sin", sin, persistent=False)  # (max_len, D) or None

    def reset_parameters(self) -> None:
        """GPT-2 initialisation: N(0, init_std) weights, zero biases, residual outputs / sqrt(2L).
        The RTF mixer's filters (xavier or identity) and short convs keep their own init, as in RTFLM."""
        std = self.config.init_std
        own = {id(p) for m in self.modules() if isinstance(m, HyenaRTF)
               for part in (m.rtf, m.conv) if part is not None for p in part.parameters()}
        for name, p in self.named_parameters():
            if id(p) in own or any(part.startswith("cond_") for part in name.split(".")):
                continue  # CLN projections (zero-initialised) and label embeddings keep their own init
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() < 2:  # norm gains
                nn.init.ones_(p)
            elif name.endswith(("mixer.out.weight", "mlp.proj.weight")):
                nn.init.normal_(p, std=std / (2 * self.config.n_layer) ** 0.5)
            else:
                nn.init.normal_(p, std=std)

    # ---- whole sequences --------------------------------------------------------------------

    def _rope(self, positions: Tensor | int, shape: tuple[int, ...]) -> tuple[Tensor | None, Tensor | None]:
        """RoPE cos / signed sin at `positions`, viewed as `shape` (None, None without RoPE)."""
        if self.rope_cos is None:
            return None, None
        return self.rope_cos[positions].view(shape), self.rope_sin[positions].view(shape)

    def _embed(self, input_ids: Tensor, positions: Tensor, segment_ids: Tensor | None) -> Tensor:
        x = self.tok_emb(input_ids)  # (B, T, C)
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        if self.seg_emb is not None:
            x = x + self.seg_emb(segment_ids if segment_ids is not None else torch.zeros_like(input_ids))
        return x

    def hidden_states(
        self, input_ids: Tensor, *, segment_ids: Tensor | None = None, attention_mask: Tensor | None = None,
        condition: Condition | None = None,
    ) -> Tensor:
        """Final-norm hidden states (B, T, C) of whole sequences (see `forward`)."""
        b, t = input_ids.shape
        cond = resolve_condition(self.cond_input, condition, b, like=self.tok_emb.weight)  # (B, E) or None
        if t > self.config.max_len:
            raise UserError(f"sequence of {t} tokens exceeds the model's context of {self.config.max_len}")
        if self.config.mask == "prefix" and segment_ids is None:
            raise UserError("a prefix (UniLM) model needs segment_ids (0 source, 1 target)")
        key_valid = None if attention_mask is None else attention_mask.bool()
        if key_valid is None:
            positions = torch.arange(t, device=input_ids.device)[None]  # (1, T)
        else:
            positions = (key_valid.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, T)
        mask, causal = allowed_mask(self.config.mask, seq_len=t, key_valid=key_valid, segment_ids=segment_ids)
        cos, sin = self._rope(positions, (positions.shape[0], t, 1, -1))
        frame = Frame(cos=cos, sin=sin, mask=mask, causal=causal, column=0)
        x = self.drop(self._embed(input_ids, positions, segment_ids))  # (B, T, C)
        for block in self.blocks:
            x = block(x, frame, None, cond)
        return apply_norm(self.norm, x, cond)  # (B, T, C)

    def forward(
        self, input_ids: Tensor, *, segment_ids: Tensor | None = None, attention_mask: Tensor | None = None,
        condition: Condition | None = None,
    ) -> Tensor:
        """Logits of whole sequences.

        Args:
            input_ids: (B, T) token ids.
            segment_ids: (B, T) 0 = source, 1 = target; needed for mask="prefix" (and fed to the
                segment embeddings when n_segment > 0).
            attention_mask: (B, T) 1 = token, 0 = padding (left or right); padding is never
                attended and positions count only real tokens.
            condition: for a conditional (CLN) model only: label ids (B,) or vectors (B, E)
                (one id or one (E,) vector is used for every row).

        Returns:
            logits (B, T, V); position t predicts token t + 1.
        """
        return self.lm_head(self.hidden_states(input_ids, segment_ids=segment_ids, attention_mask=attention_mask,
                                               condition=condition))

    # ---- decoding protocol ------------------------------------------------------------------

    @torch.inference_mode()
    def start(
        self,
        *,
        input_ids: Tensor,
        lengths: Tensor | Sequence[int] | None = None,
        segment_ids: Tensor | None = None,
        max_new_tokens: int,
        truncate: bool = False,
        condition: Condition | None = None,
        output_hidden: bool = False,
    ) -> tuple[Tensor, TransformerState]:
        """Prefill right-padded prompts and allocate the cache.

        Args:
            input_ids: (B, T) prompts, right-padded; row b's tokens are input_ids[b, :lengths[b]].
            lengths: (B,) prompt lengths (each >= 1); None = every row is T tokens long.
            segment_ids: (B, T) segments of the prompt (prefix mask: 0 = source, 1 = a forced
                start of the target); None = all source. Generated tokens are segment 1 there.
            max_new_tokens: the most tokens that will be stepped (cache columns reserved).
            truncate: if a prompt plus max_new_tokens exceeds max_len, keep its last tokens
                instead of raising.
            condition: for a conditional (CLN) model only, as in `forward`; held in the state.
            output_hidden: keep the final-norm hidden state (B, C) behind each returned logits in
                `state.hidden` (from this call and every `step`), for output layers over it.

        Returns:
            (logits (B, V) for the first new token of each row, state).
        """
        ids, lengths, segment_ids = check_prompts(
            input_ids, lengths, segment_ids, max_new_tokens=max_new_tokens, max_len=self.config.max_len,
            truncate=truncate)
        if self.config.mask == "bidirectional" and max_new_tokens > 0:
            raise UserError("a bidirectional model cannot decode token by token (use mask='causal' or "
                            "'prefix'); start() with max_new_tokens=0 only scores the prompt")
        b = ids.shape[0]
        cond = resolve_condition(self.cond_input, condition, b, like=self.tok_emb.weight)  # (B, E) or None
        packed, src, key_valid, offsets = left_pack(ids, lengths)
        seg = None if segment_ids is None else segment_ids.gather(1, src).masked_fill(~key_valid, 0)
        width = packed.shape[1]
        padded = bool(offsets.any())
        # a prefix model's prompt with no segment ids is all source: bidirectional among itself
        kind = "bidirectional" if self.config.mask == "prefix" and seg is None else self.config.mask
        mask, causal = allowed_mask(kind, seq_len=width, key_valid=key_valid if padded else None, segment_ids=seg)
        cos, sin = self._rope(src, (b, width, 1, -1))
        frame = Frame(cos=cos, sin=sin, mask=mask, causal=causal, column=0)

        capacity = width + max_new_tokens
        mixer = self.blocks[0].mixer
        buffer = torch.zeros(b, len(self.blocks), *mixer.state_shape(capacity),
                             dtype=self.tok_emb.weight.dtype, device=ids.device)  # (B, L, *state)
        layers = [buffer[:, i] for i in range(len(self.blocks))]
        x = self._embed(packed, src, seg)  # (B, W, C)
        for block, layer_state in zip(self.blocks, layers):
            x = block(x, frame, layer_state, cond)
        h = apply_norm(self.norm, x[:, -1], cond)  # (B, C): column W-1 is every row's last token
        logits = self._head(h)  # (B, V)
        state = TransformerState(
            buffer=buffer, layers=layers, rows=b, length=width, capacity=capacity,
            offsets=offsets if padded else None,
            key_valid=torch.cat([key_valid, key_valid.new_ones(b, max_new_tokens)], dim=1) if padded else None,
            segment=1 if self.config.mask == "prefix" else 0, condition=cond, plan=self._plan(cond),
            hidden=h if output_hidden else None)
        return logits, state

    def _plan(self, cond: Tensor | None) -> list | None:
        """Per-block fast steps (`fast_step`) bound to the current weights, or None when any
        block needs its modules (conditional norms, another mixer)."""
        if cond is not None:
            return None
        blas.match_threads()
        plan = [fast_step(block) for block in self.blocks]
        return None if any(p is None for p in plan) else plan

    @torch.inference_mode()
    def step(self, tokens: Tensor, state: TransformerState) -> tuple[Tensor, TransformerState]:
        """Feed tokens (B,) (one per row) and return (logits (B, V) for the next token, state)."""
        n = state.length
        if n >= state.capacity:
            raise ValueError(f"step() past the {state.capacity} cache columns reserved by start(max_new_tokens)")
        b = tokens.shape[0]
        if state.offsets is None:
            positions: Tensor | int = n
            cos, sin = self._rope(n, (1, 1, -1))
            mask = None
        else:
            positions = n - state.offsets  # (B,)
            cos, sin = self._rope(positions, (b, 1, -1))
            mask = state.key_valid[:, None, None, : n + 1]  # (B, 1, 1, S)
        x = F.embedding(tokens, self.tok_emb.weight)  # (B, C)
        if self.pos_emb is not None:
            x = x + (self.pos_emb.weight[positions] if isinstance(positions, int) else self.pos_emb(positions))
        if self.seg_emb is not None:
            x = x + self.seg_emb.weight[state.segment]
        frame = Frame(cos=cos, sin=sin, mask=mask, causal=False, column=n)
        if state.plan is not None and not probe.active():  # plain blocks: direct torch calls
            for fast, layer_state in zip(state.plan, state.layers):
                x = fast(x, frame, layer_state)
        else:
            for block, layer_state in zip(self.blocks, state.layers):
                x = block.step(x, frame, layer_state, state.condition)
        state.length = n + 1
        h = apply_norm(self.norm, x, state.condition)  # (B, C)
        if state.hidden is not None:
            state.hidden = h
        return self._head(h), state  # (B, V)

    def _head(self, x: Tensor) -> Tensor:
        """Decoding logits (B, C) -> (B, V). A head tied to the embedding is read from an
        input-major copy (C, V), rebuilt whenever the weight changes (its version counter or
        storage), since one row at a time reads that layout much faster (see `input_major_`).
        Up to `blas.HEAD_ROWS` rows go through OpenBLAS (the wide head is its one product where
        OpenBLAS beats MKL at several rows: `nn/blas.py`)."""
        w = self.lm_head.weight
        key = (w.data_ptr(), w._version, w.dtype, w.device)
        if self._head_key != key:
            with torch.inference_mode():
                # untied: the parameter is input-major already (a view); tied: an input-major copy
                self._head_t = w.detach().t() if not w.is_contiguous() else w.detach().t().contiguous()  # (C, V)
                self._head_blas = blas.qualifies(self._head_t)
            self._head_key = key
        if self._head_blas and x.shape[0] <= blas.HEAD_ROWS:
            return blas.row_product(x, self._head_t)  # (B, V)
        return x @ self._head_t  # (B, V)

    def _used(self, buffer: Tensor, n: int) -> Tensor:
        """The filled part of a cache buffer: its first n columns along the mixer's time axis."""
        return buffer if self._time_axis is None else buffer.narrow(2 + self._time_axis, 0, n)

    @torch.inference_mode()
    def select(self, state: TransformerState, index: Tensor) -> TransformerState:
        """Keep / reorder rows: index (B',) into the current rows (repeats allowed)."""
        index = torch.as_tensor(index, dtype=torch.long, device=state.buffer.device).reshape(-1)
        n, rows, src = state.length, index.numel(), index.tolist()
        if any(not 0 <= i < state.rows for i in src):
            raise IndexError(f"select index out of range for {state.rows} rows")
        buffer = state.buffer
        if rows > buffer.shape[0]:  # more rows than allocated (prompts expanded into beams)
            buffer = buffer.new_zeros(rows, *buffer.shape[1:])
            self._used(buffer, n).copy_(self._used(state.buffer[: state.rows], n).index_select(0, index))
        else:  # in place, row by row: only rows whose source is another row are copied
            used = self._used(buffer, n)  # (B_alloc, L, *state[:n])
            moved = [r for r, i in enumerate(src) if i != r]
            overwritten = set(moved)  # a source among these is read from a snapshot taken before any write
            saved = {i: used[i].clone() for i in {src[r] for r in moved} if i in overwritten}
            for r in moved:
                used[r].copy_(saved[src[r]] if src[r] in saved else used[src[r]])
        same = buffer is state.buffer and rows == state.rows
        return TransformerState(
            buffer=buffer, layers=state.layers if same else [buffer[:rows, i] for i in range(len(state.layers))],
            rows=rows, length=n, capacity=state.capacity,
            offsets=None if state.offsets is None else state.offsets[index],
            key_valid=None if state.key_valid is None else state.key_valid[index],
            segment=state.segment, condition=None if state.condition is None else state.condition[index],
            plan=state.plan, hidden=None if state.hidden is None else state.hidden[index])

    @torch.inference_mode()
    def clone_state(self, state: TransformerState) -> TransformerState:
        """An independent copy of a decoding state (the cache rows in use copied), so one prefill
        can be decoded twice: exact healing's tree steps one copy, the continuation the other."""
        buffer = state.buffer[: state.rows].clone()
        return replace(state, buffer=buffer, layers=[buffer[:, i] for i in range(len(self.blocks))])

    @torch.inference_mode()
    def join(self, states: Sequence[TransformerState]) -> TransformerState:
        """Stack the rows of several decoding states (of this model) into one, for continuous
        batching: a request prefilled on its own joins the rows already decoding.

        Every state's filled columns are moved right so that all rows write their next token into
        the same column; the columns put in front of a row are padding (masked, its offset grows,
        its positions unchanged), so each row decodes exactly as it did alone. Columns that are
        padding in every row of a state are dropped first, so the width is the longest row's own
        history, however long the batch has been running. The capacity is the most any state still
        had room for. States passed in must not be used again.

        Raises:
            ValueError: a mixer without a time axis (RTF), or states of different segments.
        """
        states = list(states)
        if not states:
            raise ValueError("join() needs at least one state")
        if len(states) == 1:
            return states[0]
        if self._time_axis is None:
            raise ValueError("join() needs a mixer whose state grows with time (attention)")
        if len({s.segment for s in states}) != 1:
            raise ValueError("join() got states of different segments")
        if len({s.condition is None for s in states}) != 1:
            raise ValueError("join() got states with and without a condition")
        axis = 2 + self._time_axis  # the time axis of a (B, L, *state) buffer
        # columns [0, drop) are padding in every row of a state: dropped
        drops = [0 if s.offsets is None else int(s.offsets.min()) for s in states]
        width = max(s.length - d for s, d in zip(states, drops))  # the new filled length
        capacity = width + max(s.capacity - s.length for s in states)
        rows = sum(s.rows for s in states)
        first = states[0].buffer
        buffer = first.new_zeros(rows, *first.shape[1:axis], capacity, *first.shape[axis + 1:])  # (B, L, *state)
        offsets = torch.zeros(rows, dtype=torch.long, device=first.device)  # (B,)
        key_valid = torch.ones(rows, capacity, dtype=torch.bool, device=first.device)  # (B, S)
        r = 0
        for s, drop in zip(states, drops):
            n = s.length - drop  # columns kept
            shift = width - n  # padding put in front
            src = s.buffer[: s.rows].narrow(axis, drop, n)
            buffer[r : r + s.rows].narrow(axis, shift, n).copy_(src)
            own = torch.zeros(s.rows, dtype=torch.long, device=first.device) if s.offsets is None else s.offsets - drop
            offsets[r : r + s.rows] = own + shift
            key_valid[r : r + s.rows, :shift] = False
            if s.key_valid is not None:
                key_valid[r : r + s.rows, shift:width] = s.key_valid[:, drop : s.length]
            r += s.rows
        padded = bool(offsets.any())
        hidden = [s.hidden for s in states]
        return TransformerState(
            buffer=buffer, layers=[buffer[:, i] for i in range(len(self.blocks))], rows=rows, length=width,
            capacity=capacity, offsets=offsets if padded else None, key_valid=key_valid if padded else None,
            segment=states[0].segment,
            condition=None if states[0].condition is None else torch.cat([s.condition for s in states]),
            plan=next((s.plan for s in states if s.plan is not None), None),
            hidden=None if any(h is None for h in hidden) else torch.cat(hidden))
