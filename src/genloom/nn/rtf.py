"""The rational-transfer-function (RTF) state-space layer (重温SSM(四); Parnichkun et al. 2024).

Every channel d is a linear time-invariant filter with the transfer function

    H_d(z) = h0_d + (c_1 z^-1 + ... + c_n z^-n) / (1 + a_1 z^-1 + ... + a_n z^-n),

2n+1 numbers per channel for any state size n, realised in companion form: A = [-a; shift],
B = e1, C = c, D = h0, so the kernel is k[0] = h0, k[m] = C A^(m-1) e1 for m >= 1.

**The kernel: one DFT division, no aliasing at any lag.** The layer has a fixed DFT size N
(`max_len`, the longest sequence the parallel form accepts) and learns b~ = C (I - A^N), as the
RTF paper does. Then b~(z)/a(z) sampled at the N-th roots of unity, where z^-N = 1, is exactly the
N-periodic sum of C A^(m-1) e1 over m = 1..N: the DFT returns lags 1..N-1 exactly but folds lag N
onto lag 0 (the lag-0 aliasing of the reference code, which adds C A^(N-1) e1 to h0). Here the
numerator is taken one step early (Su's convention): rFFT(b~_1..b~_n, N) / rFFT(1, a_1..a_n, N)
is z times the above, whose inverse rFFT is lags 1..N exactly, in index order 0..N-1; the kernel
is k = [h0, those lags]. Nothing wraps, so every lag 0..L-1 (L <= N) equals the recurrence to
rounding, one pointwise division per frequency, O(N log N) for any n. The division runs in
float64 whatever the parameters' dtype (twice the cost of a term that is small next to the
convolution): in float32 it loses ~eps ||a||_1 / min|a(w)| and measured 1.0e-4 relative error with
8 poles up to |r| = 0.99. The kernel for length L is a prefix of one fixed kernel, so outputs
never depend on the total length.

**Why b~ and not the true numerator C.** Learning C directly makes the length-L kernel the
truncation of an infinite response; computing that exactly needs A^N (O(n^3 log N), the paper's
RTF2) or a power-series inverse 1/a(z) mod z^L, whose FFT Newton iteration was tried and
diverged in float32 for poles at |r| = 0.99 (n = 16, random roots) and in float64 at n = 64. The
b~ form keeps the kernel one stable division. An LM that decodes past N runs the recurrence,
which continues the infinite response of (A, C): stable (poles inside the circle), but its taps
past N were never trained; `recurrence()` warns when they grow large (below).

**Recurrent inference without the inverse.** Decoding needs C = b~ (I - A^N)^-1 (the paper solves
for it; ill-conditioned when a pole r has r^N near 1). Since M = I - A^N commutes with A, the
state x~ = M^-1 x obeys x~_{t+1} = A x~_t + B~ u_t and y_t = b~ . x~_t + h0 u_t, with
B~ = M^-1 e1: the correction moves to the input vector, and B~ needs no matrix power or solve.
With f_N = irFFT(1 / rFFT(1, a, N)) (the N-periodic all-pole response), the periodic state after
inputs u_0..u_(T-1), T <= N, is

    x~_T[i] = sum_s f_N[(T-1-s-i) mod N] u_s,   so   B~ = x~ after a unit impulse = f_N[-i mod N],

a circular convolution read at n positions: prefill is one parallel pass for every row. Each step
costs O(n): w = -a . x~, shift, add B~ u. `recurrence()` computes (a, b~, h0, B~) once and warns
when max|B~| (a lower bound of ||M^-1||) exceeds `max_gain`: decoding then loses about
log10(max|B~|) digits, a pole sits within ~1/N of an N-th root of unity, and the taps past N
grow large. A pole on such a root (B~ not finite) is a UserError. Without Montel it also checks
the poles (companion eigenvalues, O(G n^3) once) and warns about any outside the unit circle:
the parallel form is still the periodic filter, but stepping then amplifies rounding like |r|^t.

**Stability.** With `montel=True` the denominators are a = a_raw / (sum |a_raw| + |s| + eps)
(s learned per denominator), so sum |a_i| < 1 and by Montel's bound (for |z| >= 1,
|sum a_i z^(n-i)| <= sum |a_i| |z|^(n-1) < |z|^n) every pole lies inside the unit circle.
`init="zeros"` (a = b~ = 0, h0 = 1) makes the layer the identity (k = h0 delta); `init="xavier"`
draws a, b~ ~ U(-1/sqrt(n), 1/sqrt(n)) and h0 ~ N(0, 1), which without Montel may start unstable.

**Bidirectional** (encoders): a second filter runs backwards in time one step shifted, so
y_t = sum_{s<=t} k_f[t-s] u_s + sum_{s>t} k_b[s-t-1] u_s: lag 0 is counted once, and zero init
(h0 = 1 forwards, 0 backwards) is still the identity. It has no recurrent form.

`HyenaRTF` (below) is the gated token mixer built on the layer, for the RTF language model and
the Transformer's mixer registry.

Letters: B batch rows, L (or T) sequence length, D channels (C in the mixer), n state size,
G denominator groups (num_a), R = D // G channels per group, P directions (1, or 2 when
bidirectional), N the DFT size, K the short-conv width, S = 3(K-1) + n the mixer's state width.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fft import irfft, rfft

from genloom.errors import UserError
from genloom.nn import probe

_INITS = ("zeros", "xavier")
_MONTEL_EPS = 1e-4  # keeps sum |a| strictly below 1 even when the learned slack s reaches 0


def fft_size(n: int) -> int:
    """The smallest power of two >= n (n >= 1)."""
    return 1 << max(0, (n - 1).bit_length())


def monic(a: Tensor) -> Tensor:
    """(..., n) -> (..., n+1): prepend the leading coefficient 1 of the denominator."""
    return torch.cat([a.new_ones(*a.shape[:-1], 1), a], dim=-1)


def rtf_kernel(a: Tensor, b: Tensor, h0: Tensor, length: int, n_fft: int) -> Tensor:
    """The first `length` taps of the RTF whose periodic numerator b~ was learned at DFT size N.

    Args:
        a: (G, n) denominators a_1..a_n; channel d uses row d // (D // G).
        b: (D, n) periodic numerators b~_1..b~_n.
        h0: (D,) direct terms.
        length: L, 1 <= L <= N + 1.
        n_fft: N > n, the DFT size the numerators belong to.
    Returns:
        (D, L): k[:, 0] = h0, k[:, m] = C A^(m-1) e1 with C = b~ (I - A^N)^-1.
    """
    G, n = a.shape
    D = b.shape[0]
    den = rfft(monic(a.double()), n=n_fft)  # (G, N/2+1)
    num = rfft(b.double(), n=n_fft).view(G, D // G, -1)  # (G, R, N/2+1): shifted one lag early
    lags = irfft(num / den[:, None], n=n_fft).reshape(D, n_fft).to(b.dtype)  # (D, N): lags 1..N
    return torch.cat([h0[:, None], lags[:, : length - 1]], dim=-1)  # (D, L)


def periodic_response(a: Tensor, n_fft: int) -> Tensor:
    """(G, n) -> (G, N): f_N, the N-periodic impulse response of 1 / a(z) (sum over periods)."""
    return irfft(1.0 / rfft(monic(a.double()), n=n_fft), n=n_fft).to(a.dtype)


def pole_radii(a: Tensor) -> Tensor:
    """(G, n) -> (G,): the largest pole modulus of each denominator (companion eigenvalues)."""
    G, n = a.shape
    companion = torch.zeros(G, n, n, dtype=torch.float64, device=a.device)  # (G, n, n)
    companion[:, 0] = -a.double()
    companion[:, 1:, :-1] = torch.eye(n - 1, dtype=torch.float64, device=a.device)
    return torch.linalg.eigvals(companion).abs().amax(-1)


@dataclass(frozen=True)
class RTFRecurrence:
    """Per-channel coefficients of the O(n) step, computed once by `RTF.recurrence()`."""

    a: Tensor  # (D, n) denominators a_1..a_n of each channel
    b: Tensor  # (D, n) periodic numerators b~ (the output row in periodic coordinates)
    h0: Tensor  # (D,) direct terms
    b_in: Tensor  # (D, n) B~ = (I - A^N)^-1 e1, the input column in periodic coordinates
    gain: float  # max |B~|: 1 when the correction is harmless, large when ill-conditioned


class RTF(nn.Module):
    """An RTF state-space layer over (B, L, D) sequences, L <= max_len; see the module docstring."""

    def __init__(
        self,
        d_model: int,
        state_size: int,
        max_len: int,
        *,
        num_a: int | None = None,
        init: str = "zeros",
        montel: bool = False,
        bidirectional: bool = False,
        max_gain: float = 1e4,
    ) -> None:
        """
        Args:
            d_model: D, the number of independent channels.
            state_size: n, the order of each transfer function.
            max_len: N, the DFT size: the longest sequence of the parallel form (> n).
            num_a: G, the number of distinct denominators shared by contiguous channel groups
                (must divide D); None gives every channel its own.
            init: "zeros" (identity layer) or "xavier".
            montel: keep every pole inside the unit circle by the l1-Montel reparameterisation.
            bidirectional: add an anti-causal filter (for encoders; no recurrent form).
            max_gain: `recurrence()` warns when the correction amplifies more than this.
        """
        super().__init__()
        num_a = d_model if num_a is None else num_a
        if d_model < 1 or state_size < 1:
            raise UserError(f"RTF needs d_model, state_size >= 1, got {d_model}, {state_size}")
        if max_len <= state_size:
            raise UserError(f"RTF max_len ({max_len}) must exceed state_size ({state_size})")
        if num_a < 1 or d_model % num_a:
            raise UserError(f"num_a must divide d_model={d_model}, got {num_a}")
        if init not in _INITS:
            raise UserError(f"unknown RTF init {init!r}; choose from {', '.join(_INITS)}")
        self.d_model, self.state_size, self.num_a = d_model, state_size, num_a
        self.max_len = max_len
        self.montel, self.bidirectional, self.max_gain = montel, bidirectional, max_gain
        P = 2 if bidirectional else 1
        self.a_raw = nn.Parameter(torch.zeros(P, num_a, state_size))  # (P, G, n)
        self.b = nn.Parameter(torch.zeros(P, d_model, state_size))  # (P, D, n): b~
        self.h0 = nn.Parameter(torch.zeros(P, d_model))  # (P, D)
        # Montel slack s: sum |a| = S / (S + |s| + eps) with S = sum |a_raw|
        self.slack = nn.Parameter(torch.ones(P, num_a)) if montel else None  # (P, G)
        self.reset_parameters(init)

    @torch.no_grad()
    def reset_parameters(self, init: str = "zeros") -> None:
        """Re-initialise: "zeros" is the identity layer, "xavier" random coefficients."""
        if init == "zeros":
            self.a_raw.zero_()
            self.b.zero_()
            self.h0.zero_()
            self.h0[0].fill_(1.0)  # forward lag 0; the backward filter starts at lag -1
        else:
            bound = 1.0 / math.sqrt(self.state_size)
            self.a_raw.uniform_(-bound, bound)
            self.b.uniform_(-bound, bound)
            self.h0.normal_()
        if self.slack is not None:
            self.slack.fill_(1.0)

    def denominators(self) -> Tensor:
        """(P, G, n) the coefficients a_1..a_n in use (after the Montel constraint if on)."""
        if self.slack is None:
            return self.a_raw
        s = self.a_raw.abs().sum(-1) + self.slack.abs() + _MONTEL_EPS  # (P, G)
        return self.a_raw / s[..., None]

    def _check_length(self, length: int) -> None:
        if not 1 <= length <= self.max_len:
            raise UserError(f"RTF sequence length {length} is outside 1..max_len={self.max_len}")

    def kernel(self, length: int) -> Tensor:
        """(P, D, L) convolution kernels: P=1 causal; P=2 adds the backward filter k_b."""
        self._check_length(length)
        a = self.denominators()  # (P, G, n)
        ks = [rtf_kernel(a[p], self.b[p], self.h0[p], length, self.max_len) for p in range(len(a))]
        return torch.stack(ks)

    def _check_input(self, u: Tensor) -> None:
        if u.dim() != 3 or u.shape[-1] != self.d_model:
            raise UserError(f"RTF expects (B, L, {self.d_model}) input, got {tuple(u.shape)}")
        self._check_length(u.shape[1])

    def forward(self, u: Tensor) -> Tensor:
        """u (B, L, D) -> y (B, L, D), the FFT convolution with the kernel(s)."""
        self._check_input(u)
        L = u.shape[1]
        k = self.kernel(L)  # (P, D, L)
        if probe.active():
            probe.record(self, "kernel", k)
        size = fft_size(2 * L - 1)
        if self.bidirectional:  # backward taps k_b[j-1] at circular lag -j, j = 1..L-1
            gap = k.new_zeros(self.d_model, size - 2 * L + 1)
            k = torch.cat([k[0], gap, k[1, :, : L - 1].flip(-1)], dim=-1)  # (D, N')
        else:
            k = k[0]  # (D, L)
        x = u.transpose(1, 2).to(k.dtype)  # (B, D, L)
        y = irfft(rfft(x, n=size) * rfft(k, n=size), n=size)[..., :L]  # (B, D, L)
        return y.transpose(1, 2).to(u.dtype)  # (B, L, D)

    # ---- recurrent inference (causal only) ----------------------------------------------------

    def _causal_only(self) -> None:
        if self.bidirectional:
            raise UserError("a bidirectional RTF has no recurrent form (it sees the future)")

    def recurrence(self) -> RTFRecurrence:
        """The step's coefficients, computed once (no grad); warns when ill-conditioned."""
        self._causal_only()
        with torch.no_grad():
            a = self.denominators()[0]  # (G, n)
            f = periodic_response(a.double(), self.max_len)  # (G, N)
            idx = (-torch.arange(self.state_size, device=a.device)) % self.max_len  # (n,)
            b_in = f[:, idx]  # (G, n): B~[i] = f_N[-i mod N]
            if not torch.isfinite(b_in).all():
                raise UserError("the RTF has a pole on an N-th root of unity: no recurrent form")
            gain = float(b_in.abs().max())
            radius = 0.0 if self.montel else float(pole_radii(a).max())
            if radius >= 1.0:
                warnings.warn(
                    f"RTF has a pole of modulus {radius:.4g} >= 1: the parallel form is the "
                    f"{self.max_len}-periodic filter, but stepping grows rounding errors like "
                    f"{radius:.4g}^t (use montel=True to keep poles inside the unit circle)",
                    RuntimeWarning,
                    stacklevel=2,
                )
            if gain > self.max_gain:
                warnings.warn(
                    f"RTF numerator correction (I - A^{self.max_len})^-1 amplifies by {gain:.3g} "
                    f"(> {self.max_gain:.3g}): a pole lies near an {self.max_len}-th root of "
                    f"unity, so recurrent decoding loses ~{math.log10(gain):.0f} digits",
                    RuntimeWarning,
                    stacklevel=2,
                )
            R = self.d_model // self.num_a
            return RTFRecurrence(
                a=a.repeat_interleave(R, dim=0).clone(),
                b=self.b[0].detach().clone(),
                h0=self.h0[0].detach().clone(),
                b_in=b_in.to(a.dtype).repeat_interleave(R, dim=0),
                gain=gain,
            )

    def initial_state(
        self, batch: int, *, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> Tensor:
        """(B, D, n) zeros: the state before any input."""
        dtype = dtype or self.b.dtype
        return torch.zeros(batch, self.d_model, self.state_size, device=device, dtype=dtype)

    def step(
        self, u: Tensor, x: Tensor, rec: RTFRecurrence | None = None
    ) -> tuple[Tensor, Tensor]:
        """One O(n) step: u (B, D), state x (B, D, n) -> y (B, D), next state (B, D, n).

        Pass `rec = self.recurrence()` computed once when stepping many times.
        """
        rec = self.recurrence() if rec is None else rec
        y = (x * rec.b).sum(-1) + rec.h0 * u  # (B, D)
        w = -(x * rec.a).sum(-1)  # (B, D): first row of A x~
        shifted = torch.cat([w[..., None], x[..., :-1]], dim=-1)  # (B, D, n): A x~
        return y, shifted + rec.b_in * u[..., None]

    def prefill(self, u: Tensor, *, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One parallel pass over a prompt that also returns the recurrent state.

        Args:
            u: (B, L, D) inputs, right-padded when rows differ in length.
            lengths: (B,) long, each row's real length (1..L); None means all L.
        Returns:
            y (B, L, D) as `forward` (positions past a row's length are padding outputs), and
            the state (B, D, n) after each row's last real input, equal to stepping it.
        """
        self._causal_only()
        y = self.forward(u)  # (B, L, D)
        B, L, D = u.shape
        n, N = self.state_size, self.max_len
        if lengths is None:
            lengths = torch.full((B,), L, dtype=torch.long)
        lengths = lengths.to(u.device)
        if lengths.shape != (B,) or int(lengths.min()) < 1 or int(lengths.max()) > L:
            raise UserError(f"prefill lengths must be (B,) in 1..{L}, got {lengths.tolist()}")
        real = torch.arange(L, device=u.device) < lengths[:, None]  # (B, L)
        a = self.denominators()[0].double()  # (G, n)
        x = (u * real[..., None]).transpose(1, 2).double()  # (B, D, L), padding zeroed
        inv_den = 1.0 / rfft(monic(a), n=N)  # (G, N/2+1)
        x_hat = rfft(x, n=N).view(B, self.num_a, D // self.num_a, -1)  # (B, G, R, N/2+1)
        v = irfft(x_hat * inv_den[:, None], n=N).reshape(B, D, N)  # (B, D, N) circular conv
        pos = (lengths[:, None] - 1 - torch.arange(n, device=u.device)) % N  # (B, n)
        state = v.gather(-1, pos[:, None, :].expand(B, D, n))  # (B, D, n)
        return y, state.to(u.dtype)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, state_size={self.state_size}, max_len={self.max_len}, "
            f"num_a={self.num_a}, montel={self.montel}, bidirectional={self.bidirectional}"
        )


def key_valid_from(frame: object | None) -> Tensor | None:
    """(B, S) bool real-token columns from a Transformer `Frame` (None: every column is real).

    Causal / padding masks (B, 1, T, S) let the last query see every real key, so its row is the
    key-valid mask; a frame without a mask has no padding.
    """
    mask = getattr(frame, "mask", None)
    return None if mask is None else mask[:, 0, -1, :]


class HyenaRTF(nn.Module):
    """A gated RTF token mixer (Hyena order 2 with an RTF long filter), (B, T, C) -> (B, T, C).

    (q, k, v) = in_proj(x), each through a short causal depthwise conv of width K;
    y = out(q * RTF(k * v)). Decoding state per row: (C, 3(K-1) + n), the last K-1 inputs of the
    three short convs (per channel c: q, k, v histories, oldest first) and the RTF state, so a
    step costs O(C (K + n)) whatever the length. It follows the Transformer mixer protocol
    (`forward(x, frame, state)` fills `state` in place when given, `step(x, frame, state)`
    updates it in place, `state_shape`, `state_time_axis = None`). Padding columns (from
    `frame.mask`, or past `lengths` in `mix`) are zeroed before the convolutions, so left- or
    right-padded rows give the same outputs and states as unpadded ones.
    """

    state_time_axis = None  # the state does not grow with length

    def __init__(
        self,
        d_model: int,
        *,
        state_size: int,
        max_len: int,
        num_a: int | None = None,
        short_conv: int = 3,
        init: str = "xavier",
        montel: bool = True,
        bias: bool = True,
    ) -> None:
        """
        Args:
            d_model: C, the width of the mixer's input and output.
            state_size, max_len, num_a, init, montel: of the RTF filter (see `RTF`).
            short_conv: K, width of the causal depthwise conv on q, k, v (0 = none).
            bias: biases in the projections and the short conv.
        """
        super().__init__()
        if short_conv < 0:
            raise UserError(f"short_conv must be >= 0, got {short_conv}")
        C, K = d_model, short_conv
        self.d_model, self.short_conv = C, K
        self.in_proj = nn.Linear(C, 3 * C, bias=bias)
        self.conv = nn.Conv1d(3 * C, 3 * C, K, groups=3 * C, bias=bias) if K else None
        self.rtf = RTF(C, state_size, max_len, num_a=num_a, init=init, montel=montel)
        self.out = nn.Linear(C, C, bias=bias)
        self._rec: RTFRecurrence | None = None  # step coefficients of the last prefill

    @property
    def hist(self) -> int:
        """K - 1, the inputs each short conv remembers (0 without a conv)."""
        return max(self.short_conv - 1, 0)

    def state_shape(self, length: int) -> tuple[int, int]:
        """One row's decoding state for any length: (C, 3(K-1) + n)."""
        del length  # O(1) in length
        return (self.d_model, 3 * self.hist + self.rtf.state_size)

    def forward(
        self, x: Tensor, frame: object | None = None, state: Tensor | None = None
    ) -> Tensor:
        """x (B, T, C) -> (B, T, C); with `state` (B, C, S) it is filled for decoding."""
        y, st = self.mix(x, valid=key_valid_from(frame), want_state=state is not None)
        if state is not None:
            state.copy_(st)
        return y

    def mix(
        self,
        x: Tensor,
        *,
        valid: Tensor | None = None,
        lengths: Tensor | None = None,
        want_state: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """The parallel pass; with `want_state` also the state after each row's last token.

        Args:
            x: (B, T, C).
            valid: (B, T) bool real columns (left padding), or None.
            lengths: (B,) real lengths of right-padded rows, or None (= T).
            want_state: return the decoding state (B, C, S) and keep the step coefficients.
        Returns:
            y (B, T, C), state (B, C, S) or None.
        """
        B, T, C = x.shape
        if lengths is not None:
            real = torch.arange(T, device=x.device) < lengths.to(x.device)[:, None]  # (B, T)
            valid = real if valid is None else valid & real
        h = self.in_proj(x)  # (B, T, 3C)
        if valid is not None:
            h = h * valid[..., None]
        hc = h.transpose(1, 2)  # (B, 3C, T)
        if self.conv is not None:
            hc = F.conv1d(F.pad(hc, (self.hist, 0)), self.conv.weight, self.conv.bias, groups=3 * C)
        q, k, v = hc.transpose(1, 2).chunk(3, dim=-1)  # (B, T, C) each
        u = k * v if valid is None else k * v * valid[..., None]  # (B, T, C)
        if not want_state:
            return self.out(q * self.rtf(u)), None
        r, rtf_state = self.rtf.prefill(u, lengths=lengths)  # (B, T, C), (B, C, n)
        self._rec = self.rtf.recurrence()
        ends = torch.full((B,), T, device=x.device) if lengths is None else lengths.to(x.device)
        pos = ends[:, None] - self.hist + torch.arange(self.hist, device=x.device)  # (B, K-1)
        hist = h.gather(1, pos.clamp(min=0)[..., None].expand(-1, -1, 3 * C))  # (B, K-1, 3C)
        hist = hist * (pos >= 0)[..., None]  # zeros before the sequence
        hist = hist.view(B, self.hist, 3, C).permute(0, 3, 2, 1).reshape(B, C, 3 * self.hist)
        return self.out(q * r), torch.cat([hist, rtf_state], dim=-1)  # (B, C, S)

    def step(
        self, x: Tensor, frame: object | None, state: Tensor, rec: RTFRecurrence | None = None
    ) -> Tensor:
        """One token: x (B, C) -> (B, C); `state` (B, C, S) is updated in place.

        `rec` defaults to the coefficients kept by the last prefill (`forward` with a state).
        """
        del frame  # an RTF step needs no positions or masks
        rec = rec or self._rec or self.rtf.recurrence()
        B, C = x.shape
        h = self.in_proj(x).view(B, 3, C).transpose(1, 2)  # (B, C, 3): q, k, v per channel
        if self.conv is not None:
            K = self.short_conv
            hist = state[..., : 3 * self.hist].view(B, C, 3, self.hist)  # (B, C, 3, K-1)
            window = torch.cat([hist, h[..., None]], dim=-1)  # (B, C, 3, K)
            w = self.conv.weight.view(3, C, K).transpose(0, 1)  # (C, 3, K)
            hc = (window * w).sum(-1)  # (B, C, 3)
            if self.conv.bias is not None:
                hc = hc + self.conv.bias.view(3, C).T
            state[..., : 3 * self.hist] = window[..., 1:].reshape(B, C, 3 * self.hist)
        else:
            hc = h
        r, rtf_state = self.rtf.step(hc[..., 1] * hc[..., 2], state[..., 3 * self.hist :], rec)
        state[..., 3 * self.hist :] = rtf_state
        return self.out(hc[..., 0] * r)  # (B, C)
