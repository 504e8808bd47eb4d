"""The RTF layer: kernel exactness at every lag, recurrence, prefill, init, Montel, errors.

References are independent of the layer: the paper's corrected numerator C = b~ (I - A^N)^-1
solved in numpy float64, the unrolled companion recurrence in numpy long double, and
scipy.signal.lfilter.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch

from genloom.errors import UserError
from genloom.nn.rtf import RTF, pole_radii, rtf_kernel

N = 256  # DFT size (max_len) used by most tests


def poles_to_a(poles: np.ndarray) -> np.ndarray:
    """Monic polynomial with these roots, without its leading 1: a_1..a_n."""
    return np.real(np.poly(poles))[1:]


def conjugate_poles(rng: np.random.Generator, n: int, rmax: float) -> np.ndarray:
    """n poles in conjugate pairs, radii in [0.3, rmax], one pair exactly at rmax."""
    r = rng.uniform(0.3, rmax, n // 2)
    r[0] = rmax
    th = rng.uniform(0.0, np.pi, n // 2)
    return np.concatenate([r * np.exp(1j * th), r * np.exp(-1j * th)])


POLE_SETS = {
    "random-0.9": lambda rng: conjugate_poles(rng, 8, 0.9),
    "random-0.99": lambda rng: conjugate_poles(rng, 8, 0.99),
    "repeated-0.99": lambda rng: np.array([0.99, 0.99, -0.99, 0.99j, -0.99j]),
    "real-0.99-n16": lambda rng: np.linspace(-0.99, 0.99, 16),
}


def layer_with(poles_per_channel: list[np.ndarray], rng: np.random.Generator, dtype) -> RTF:
    """An RTF whose channel d has the given poles, random b~ and h0 (all channels same n)."""
    n = len(poles_per_channel[0])
    D = len(poles_per_channel)
    m = RTF(D, n, N).to(dtype)
    with torch.no_grad():
        m.a_raw[0] = torch.tensor(np.stack([poles_to_a(p) for p in poles_per_channel]))
        m.b[0] = torch.tensor(rng.standard_normal((D, n)))
        m.h0[0] = torch.tensor(rng.standard_normal(D))
    return m


def true_numerator(a: np.ndarray, b_tilde: np.ndarray, n_fft: int) -> np.ndarray:
    """The paper's get_C: C = b~ (I - A^N)^-1 for the companion A = [-a; shift]."""
    n = len(a)
    A = np.zeros((n, n))
    A[0] = -a
    A[1:, :-1] = np.eye(n - 1)
    return np.linalg.solve((np.eye(n) - np.linalg.matrix_power(A, n_fft)).T, b_tilde)


def unrolled_impulse(a: np.ndarray, c: np.ndarray, h0: float, length: int) -> np.ndarray:
    """The companion recurrence x' = A x + e1 u, y = c.x + h0 u on an impulse, long double."""
    a, c = a.astype(np.longdouble), c.astype(np.longdouble)
    x = np.zeros(len(a), dtype=np.longdouble)
    out = []
    for t in range(length):
        u = np.longdouble(1.0 if t == 0 else 0.0)
        out.append(c @ x + np.longdouble(h0) * u)
        x = np.concatenate([[u - a @ x], x[:-1]])
    return np.array(out, dtype=np.float64)


def rel_err(x: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(x - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("name", sorted(POLE_SETS))
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_kernel_equals_unrolled_recurrence_and_lfilter_at_every_lag(name, dtype, tol):
    rng = np.random.default_rng(0)
    poles = [POLE_SETS[name](rng) for _ in range(3)]
    m = layer_with(poles, rng, dtype)
    k = m.kernel(N)[0].detach().double().numpy()  # (D, N)
    for d in range(3):
        a = m.a_raw[0, d].detach().double().numpy()
        bt = m.b[0, d].detach().double().numpy()
        h0 = float(m.h0[0, d].detach())
        split = 1e-3 if dtype == torch.float32 else 1e-6  # float32 rounding splits double roots
        assert np.abs(np.roots(np.r_[1.0, a])).max() <= 0.99 + split
        c = true_numerator(a, bt, N)
        ref = unrolled_impulse(a, c, h0, N)
        assert rel_err(k[d], ref) <= tol  # every lag, 0 included
        assert k[d, 0] == pytest.approx(h0, rel=1e-6 if dtype == torch.float32 else 1e-15)
        impulse = np.zeros(N)
        impulse[0] = 1.0
        lf = scipy.signal.lfilter(np.r_[h0, c + h0 * a], np.r_[1.0, a], impulse)
        assert rel_err(k[d], lf) <= tol


def test_plain_length_n_dft_aliases_lag_n_onto_lag_0():
    """The reference algorithm (b~ padded from lag 1) is exact at lags 1..N-1 but adds the
    lag-N tap C A^(N-1) e1 to lag 0; the shifted numerator used here returns lag N exactly."""
    rng = np.random.default_rng(1)
    a = poles_to_a(np.array([0.995, 0.99 * np.exp(0.3j), 0.99 * np.exp(-0.3j)]))
    bt, h0, n_fft = rng.standard_normal(3), 0.5, 128
    num = np.r_[0.0, bt]  # the reference's padding: b~_i at index i
    spectrum = np.fft.rfft(num, n_fft) / np.fft.rfft(np.r_[1.0, a], n_fft) + h0  # h0 at lag 0
    plain = np.fft.irfft(spectrum, n_fft)
    c = true_numerator(a, bt, n_fft)
    ref = unrolled_impulse(a, c, h0, n_fft + 1)  # lags 0..N
    assert rel_err(plain[1:], ref[1:n_fft]) < 1e-9
    assert abs(plain[0] - (h0 + ref[n_fft])) < 1e-9 * np.abs(ref).max()
    assert abs(ref[n_fft]) > 1.0  # the aliasing error is large: poles at 0.99..0.995
    ours = rtf_kernel(
        torch.tensor(a)[None], torch.tensor(bt)[None], torch.tensor([h0]), n_fft + 1, n_fft
    )[0].numpy()
    assert rel_err(ours, ref) < 1e-9  # lags 0..N, no aliasing


@pytest.mark.parametrize("montel", [False, True])
def test_parallel_forward_equals_step_by_step(montel):
    torch.manual_seed(0)
    m = RTF(12, 6, 128, num_a=4, init="xavier", montel=montel)
    if montel:
        with torch.no_grad():
            m.a_raw.mul_(3.0)  # far larger than init: the constraint still keeps them stable
    radii = pole_radii(m.denominators()[0].detach())
    assert 0.75 < radii.max() < 1.0  # this seed's Xavier draw is stable, with slow poles
    u = torch.randn(3, 100, 12)
    y = m(u)
    rec = m.recurrence()
    x = m.initial_state(3)
    steps = []
    for t in range(100):
        yt, x = m.step(u[:, t], x, rec)
        steps.append(yt)
    ys = torch.stack(steps, 1)  # (B, L, D)
    assert (ys - y).abs().max() <= 1e-5 * y.abs().max()


def test_prefill_state_equals_stepped_state_with_padding():
    torch.manual_seed(1)
    m = RTF(8, 5, 64, num_a=2, init="xavier", montel=True)
    u = torch.randn(3, 40, 8)
    lengths = torch.tensor([40, 1, 23])
    y, state = (t.detach() for t in m.prefill(u, lengths=lengths))
    assert torch.allclose(y, m(u), atol=1e-6)
    rec = m.recurrence()
    for row, T in enumerate(lengths.tolist()):
        x = m.initial_state(1)
        for t in range(T):
            _, x = m.step(u[row : row + 1, t], x, rec)
        assert torch.allclose(state[row], x[0], rtol=1e-5, atol=1e-5 * float(x.abs().max()))
        if T < 40:  # continuing from the prefilled state equals the parallel pass
            yt, _ = m.step(u[row : row + 1, T], state[row : row + 1], rec)
            assert torch.allclose(yt[0], y[row, T], atol=1e-5 * float(y.abs().max()))


def test_zero_init_is_identity():
    m = RTF(5, 7, 32, num_a=1)
    k = m.kernel(32)[0]  # (D, L)
    delta = torch.zeros(32)
    delta[0] = 1.0
    assert torch.equal(k, m.h0[0][:, None] * delta)
    u = torch.randn(2, 32, 5)
    assert torch.allclose(m(u), u, atol=1e-6)
    bi = RTF(5, 7, 32, bidirectional=True)
    assert torch.allclose(bi(u), u, atol=1e-6)


def test_bidirectional_equals_direct_convolution():
    torch.manual_seed(2)
    m = RTF(3, 4, 16, init="xavier", montel=True, bidirectional=True).double()
    u = torch.randn(2, 16, 3, dtype=torch.float64)
    kf, kb = m.kernel(16)  # (D, L) each
    ref = torch.zeros_like(u)
    for t in range(16):
        for s in range(16):
            ref[:, t] += (kf[:, t - s] if s <= t else kb[:, s - t - 1]) * u[:, s]
    assert torch.allclose(m(u), ref, atol=1e-12)
    with pytest.raises(UserError, match="bidirectional"):
        m.recurrence()


def test_montel_keeps_every_pole_inside_unit_circle():
    torch.manual_seed(3)
    m = RTF(16, 12, 64, init="xavier", montel=True)
    with torch.no_grad():
        m.a_raw.mul_(50.0)  # raw coefficients far outside any stable region
        m.slack.fill_(0.0)  # the tightest the constraint can be
    u = torch.randn(2, 64, 16)
    m(u).pow(2).sum().backward()
    with torch.no_grad():
        for p in m.parameters():
            p -= 10.0 * p.grad  # a large step cannot leave the constrained set either
    for a in m.denominators()[0].detach().double().numpy():
        assert np.abs(a).sum() < 1.0
        assert np.abs(np.roots(np.r_[1.0, a])).max() < 1.0
    raw = m.a_raw[0].detach().double().numpy()
    assert max(np.abs(np.roots(np.r_[1.0, r])).max() for r in raw) > 1.0  # unconstrained would not


def test_ill_conditioned_correction_warns_and_root_of_unity_raises():
    m = RTF(1, 1, 64)
    with torch.no_grad():
        m.a_raw.fill_(-0.999999)  # pole at 0.999999: 1 - r^N ~ 6.4e-5
        m.b.fill_(1.0)
    with pytest.warns(RuntimeWarning, match="amplifies"):
        rec = m.recurrence()
    r = -float(m.a_raw.detach())
    assert rec.gain == pytest.approx(1 / (1 - r**64), rel=1e-6)  # B~[0] = 1 / (1 - r^N)
    with torch.no_grad():
        m.a_raw.fill_(-1.0)  # pole at z = 1, an N-th root of unity
    with pytest.raises(UserError, match="root of unity"):
        m.recurrence()
    with torch.no_grad():
        m.a_raw.fill_(-1.01)  # unstable pole
    with pytest.warns(RuntimeWarning, match="modulus 1.01"):
        m.recurrence()


def test_user_errors():
    with pytest.raises(UserError, match="num_a"):
        RTF(6, 4, 32, num_a=4)
    with pytest.raises(UserError, match="max_len"):
        RTF(6, 32, 32)
    with pytest.raises(UserError, match="init"):
        RTF(6, 4, 32, init="normal")
    m = RTF(6, 4, 32)
    with pytest.raises(UserError, match="max_len=32"):
        m(torch.randn(1, 33, 6))
    with pytest.raises(UserError, match="input"):
        m(torch.randn(1, 8, 5))
    with pytest.raises(UserError, match="lengths"):
        m.prefill(torch.randn(2, 8, 6), lengths=torch.tensor([9, 1]))


def test_gradients_match_finite_differences():
    torch.manual_seed(4)
    m = RTF(2, 3, 16, num_a=1, init="xavier", montel=True).double()
    u = torch.randn(1, 12, 2, dtype=torch.float64)
    names = ("a_raw", "b", "h0", "slack")

    def f(*values):
        return torch.func.functional_call(m, dict(zip(names, values)), (u,))

    inputs = tuple(getattr(m, k).detach().clone().requires_grad_(True) for k in names)
    assert torch.autograd.gradcheck(f, inputs)
