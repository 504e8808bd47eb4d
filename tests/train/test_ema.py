"""EMA: equals torch's AveragedModel over a real training run; bias correction and warm-up equal a
hand computation; applied() restores the raw weights bit for bit, also after an exception."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from genloom.errors import UserError
from genloom.train.ema import EMA


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 3))


def train_steps(model: nn.Module, steps: int, after_step) -> None:
    """A real training run: AdamW on a fixed regression problem; `after_step()` after each step."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 6, generator=g)
    y = torch.randn(256, 3, generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(steps):
        idx = torch.randint(0, 256, (32,), generator=g)
        loss = nn.functional.mse_loss(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        after_step()


def floats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: t for n, t in model.state_dict().items() if t.is_floating_point()}


def test_equals_averaged_model_over_200_steps():
    d = 0.95
    model = small_model()
    ema = EMA(model, d)
    ref = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(d), use_buffers=True)
    ref.update_parameters(model)  # AveragedModel's first update copies; ours copies at construction

    def both():
        ema.update(model)
        ref.update_parameters(model)

    train_steps(model, 200, both)
    ours = ema.averaged()
    theirs = floats(ref.module)
    assert set(theirs) <= set(ours)
    worst = max((ours[n] - theirs[n]).abs().max().item() for n in theirs)
    assert worst <= 1e-6
    # and the average really differs from the live weights (the test is not vacuous)
    live = floats(model)
    assert max((ours[n] - live[n]).abs().max().item() for n in theirs) > 1e-3
    # integer buffers are copied, not averaged
    assert ours["1.num_batches_tracked"].item() == 200


def test_bias_correction_equals_hand_computation():
    d = 0.9
    model = small_model()
    ema = EMA(model, d, bias_correction=True)
    history: list[dict[str, torch.Tensor]] = []
    train_steps(model, 30, lambda: (ema.update(model), history.append(
        {n: t.detach().double().clone() for n, t in floats(model).items()})))
    t = len(history)
    got = ema.averaged()
    for name in history[0]:
        # shadow_t = sum_i (1 - d) d^(t-i) theta_i, started at 0; corrected by 1 - d^t
        hand = sum((1 - d) * d ** (t - i) * h[name] for i, h in enumerate(history, start=1))
        hand = hand / (1 - d**t)
        assert torch.allclose(got[name].double(), hand, atol=1e-6, rtol=0), name


def test_bias_correction_after_one_update_is_the_weights():
    model = small_model()
    ema = EMA(model, 0.999, bias_correction=True)
    with pytest.raises(UserError):
        ema.averaged()
    train_steps(model, 1, lambda: ema.update(model))
    got = ema.averaged()
    for n, t in floats(model).items():
        assert torch.allclose(got[n], t, atol=1e-6), n


def test_warmup_decay_equals_timm_formula_and_hand_average():
    d, gamma, power = 0.99, 1.0, 2 / 3
    model = small_model()
    ema = EMA(model, d, warmup=True)
    decays, history = [], []

    def step():
        decays.append(ema.current_decay())
        ema.update(model)
        history.append({n: t.detach().double().clone() for n, t in floats(model).items()})

    train_steps(model, 40, step)
    # timm ModelEmaV3.get_decay(step) with step = optimizer steps so far (1-based)
    expect = [0.0] + [min(d, 1 - (1 + (s - 1) / gamma) ** -power) for s in range(2, 41)]
    assert decays == pytest.approx(expect, abs=1e-12)
    hand = None
    for dt, h in zip(decays, history):
        hand = h if hand is None else {n: dt * hand[n] + (1 - dt) * h[n] for n in h}
    got = ema.averaged()
    for n in hand:
        assert torch.allclose(got[n].double(), hand[n], atol=1e-6, rtol=0), n


def test_applied_restores_raw_weights_exactly_even_after_exception():
    model = small_model()
    ema = EMA(model, 0.9)
    train_steps(model, 20, lambda: ema.update(model))
    raw = {n: t.clone() for n, t in model.state_dict().items()}
    averaged = ema.averaged()
    with ema.applied(model):
        inside = {n: t.clone() for n, t in model.state_dict().items()}
    for n in averaged:
        assert torch.equal(inside[n], averaged[n]), n
    assert any(not torch.equal(inside[n], raw[n]) for n in raw)
    for n, t in model.state_dict().items():
        assert torch.equal(t, raw[n]), n

    with pytest.raises(RuntimeError, match="boom"):
        with ema.applied(model):
            model[0].weight.data.add_(1.0)  # damage inside the block, then fail
            raise RuntimeError("boom")
    for n, t in model.state_dict().items():
        assert torch.equal(t, raw[n]), n


def test_buffers_copy_mode_tracks_live_buffers():
    model = small_model()
    ema = EMA(model, 0.9, buffers="copy")
    train_steps(model, 10, lambda: ema.update(model))
    got = ema.averaged()
    assert torch.equal(got["1.running_mean"], model[1].running_mean)
    assert not torch.equal(got["0.weight"], model[0].weight.detach())


def test_state_dict_round_trip_and_mismatch_errors():
    model = small_model()
    ema = EMA(model, 0.9, bias_correction=True)
    train_steps(model, 5, lambda: ema.update(model))
    other = EMA(small_model(), 0.9, bias_correction=True)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 5
    for n, t in ema.averaged().items():
        assert torch.equal(other.averaged()[n], t)
    with pytest.raises(UserError, match="bias_correction"):
        EMA(small_model(), 0.9).load_state_dict(ema.state_dict())
    with pytest.raises(UserError, match="not both"):
        EMA(model, 0.9, bias_correction=True, warmup=True)
    with pytest.raises(UserError, match="decay"):
        EMA(model, 1.0)
