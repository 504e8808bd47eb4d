"""The training loop: token-weighted accumulation equals the big batch, the lr schedule and grad
norm equal hand computations, NaN guard, early stopping with the best checkpoint restored, EMA
evaluation, limits, run files; the hooks: a given optimizer, an lr schedule and on_step over the
budget fraction (steps or minutes), evaluation time off the clock, skipped non-finite steps,
loss_fn statistics."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from genloom.errors import UserError
from genloom.train.checkpoint import list_checkpoints, load_checkpoint
from genloom.train.data import Loader
from genloom.train.trainer import TrainConfig, budget_fraction, fit

sys.path.insert(0, str(Path(__file__).parent))
from train_toy import ToyData, collate, make_model, toy_loss  # noqa: E402

DATA = ToyData()


def loader(batch: int = 8, *, shuffle: bool = True) -> Loader:
    return Loader(DATA, batch_size=batch, collate_fn=collate, seed=1, shuffle=shuffle,
                  lengths=[len(x) for x in DATA.items] if shuffle else None)


def config(**kw) -> TrainConfig:
    base = dict(lr=1e-2, max_steps=6, log_every=1, progress=False, device="cpu")
    return TrainConfig(**{**base, **kw})


def records(run_dir: Path, event: str = "train") -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["event"] == event]


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_run_files_and_resolved_config(tmp_path):
    model = make_model()
    fit(model, toy_loss, loader(), config=config(log_every=2, ema_decay=0.9), run_dir=tmp_path,
        eval_fn=lambda m: {"loss": 1.0}, task_config={"corpus": "toy", "path": tmp_path})
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["train"]["log_every"] == 2 and cfg["train"]["ema_decay"] == 0.9
    assert cfg["task"] == {"corpus": "toy", "path": str(tmp_path)}
    assert [r["step"] for r in records(tmp_path)] == [2, 4, 6]
    assert all(r["tokens_per_s"] > 0 and math.isfinite(r["loss"]) for r in records(tmp_path))
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert records(tmp_path, "end")[0]["stop_reason"] == "max_steps"


def test_accumulation_equals_big_batch(tmp_path):
    """2 micro-batches of 4 (different token counts) take the same step as one batch of 8."""
    small, big = make_model(dropout=0.0), make_model(dropout=0.0)
    fit(small, toy_loss, loader(4, shuffle=False), config=config(accum_steps=2, ema_decay=None),
        run_dir=tmp_path / "a")
    fit(big, toy_loss, loader(8, shuffle=False), config=config(ema_decay=None), run_dir=tmp_path / "b")
    a, b = weights(small), weights(big)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    la = [r["loss"] for r in records(tmp_path / "a")]
    lb = [r["loss"] for r in records(tmp_path / "b")]
    assert la == pytest.approx(lb, abs=1e-6)
    first = next(iter(loader(4, shuffle=False)))
    assert first["mask"].sum() != next(iter(loader(8, shuffle=False)))["mask"].sum() / 2


def test_lr_schedule_and_grad_norm_equal_hand_computation(tmp_path):
    model = make_model(dropout=0.0)
    ref = make_model(dropout=0.0)
    fit(model, toy_loss, loader(), run_dir=tmp_path,
        config=config(max_steps=10, warmup_steps=3, schedule="cosine", min_lr_ratio=0.1,
                      grad_clip=None))
    rows = records(tmp_path)
    hand = [1e-2 * (s + 1) / 3 if s < 3 else
            1e-2 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 3) / 7))) for s in range(10)]
    assert [r["lr"] for r in rows] == pytest.approx(hand, rel=1e-12)
    loss, _ = toy_loss(ref, next(iter(loader())))
    loss.backward()
    norm = torch.sqrt(sum((p.grad**2).sum() for p in ref.parameters())).item()
    assert rows[0]["grad_norm"] == pytest.approx(norm, rel=1e-5)
    assert rows[0]["loss"] == pytest.approx(loss.item(), rel=1e-6)


def test_nan_loss_stops_with_one_line_and_keeps_last_good_checkpoint(tmp_path):
    calls = {"n": 0}

    def poisoned(model, batch):
        calls["n"] += 1
        loss, n = toy_loss(model, batch)
        return (loss * float("nan") if calls["n"] == 7 else loss), n

    model = make_model()
    with pytest.raises(UserError) as err:
        fit(model, poisoned, loader(), config=config(max_steps=20, ckpt_every=5, schedule="constant"),
            run_dir=tmp_path / "bad")
    msg = str(err.value)
    assert "step 7" in msg and "nan" in msg and "step-00000005" in msg and "\n" not in msg
    assert [s for s, _ in list_checkpoints(tmp_path / "bad" / "checkpoints")] == [5]
    clean = make_model()
    fit(clean, toy_loss, loader(), config=config(max_steps=5, schedule="constant"),
        run_dir=tmp_path / "good")
    saved = load_file(str(tmp_path / "bad" / "checkpoints" / "step-00000005" / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in clean.state_dict().items())
    assert not list((tmp_path / "bad" / "checkpoints").glob(".tmp-*"))


def test_early_stopping_keeps_and_restores_the_best(tmp_path):
    values = iter([3.0, 2.0, 1.5, 1.7, 1.6, 1.0, 0.5])
    model = make_model()
    result = fit(model, toy_loss, loader(), eval_fn=lambda m: {"dev": next(values)},
                 config=config(max_steps=40, eval_every=2, metric="dev", mode="min", patience=2,
                               keep_last=1, ema_decay=0.9),
                 run_dir=tmp_path)
    assert result.stop_reason == "early_stopping"
    assert (result.step, result.best_step, result.best_value) == (10, 6, 1.5)
    assert [r["step"] for r in records(tmp_path, "eval")] == [2, 4, 6, 8, 10]
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [6, 10]
    best = load_checkpoint(tmp_path / "checkpoints" / "step-00000006", model=make_model())
    saved = load_file(str(tmp_path / "checkpoints" / "step-00000006" / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    assert result.ema.num_updates == 6 == best["state"]["ema"]["num_updates"]


def test_eval_sees_ema_weights_and_training_keeps_raw(tmp_path):
    seen = []
    model = make_model()
    result = fit(model, toy_loss, loader(), run_dir=tmp_path,
                 eval_fn=lambda m: seen.append(weights(m)) or {"loss": 0.0},
                 config=config(max_steps=4, eval_every=4, ema_decay=0.8))
    averaged = result.ema.averaged()
    assert all(torch.equal(seen[-1][k], averaged[k]) for k in averaged)
    raw = load_file(str(tmp_path / "checkpoints" / "step-00000004" / "model.safetensors"))
    assert all(torch.equal(raw[k], v) for k, v in model.state_dict().items())
    assert any(not torch.equal(raw[k], averaged[k]) for k in raw)


def test_evaluation_does_not_perturb_training_randomness(tmp_path):
    def noisy_eval(m):
        return {"loss": float(torch.rand(()))}  # draws from the global RNG

    with_eval, without = make_model(), make_model()
    fit(with_eval, toy_loss, loader(), config=config(eval_every=2), eval_fn=noisy_eval,
        run_dir=tmp_path / "a")
    fit(without, toy_loss, loader(), config=config(), run_dir=tmp_path / "b")
    assert [r["loss"] for r in records(tmp_path / "a")] == [r["loss"] for r in records(tmp_path / "b")]


def test_epoch_and_time_limits(tmp_path):
    result = fit(make_model(), toy_loss, loader(), eval_fn=lambda m: {"loss": 1.0},
                 config=config(max_steps=None, max_epochs=2, log_every=6), run_dir=tmp_path / "e")
    assert (result.stop_reason, result.step, result.epochs) == ("max_epochs", 24, 2)
    assert [r["step"] for r in records(tmp_path / "e", "eval")] == [12, 24]  # at each epoch end
    result = fit(make_model(), toy_loss, loader(), run_dir=tmp_path / "t",
                 config=config(max_steps=None, max_minutes=1e-9, schedule="constant"))
    assert (result.stop_reason, result.step) == ("max_minutes", 1)
    batches = list(loader())  # a plain re-iterable list works too
    result = fit(make_model(), toy_loss, batches, run_dir=tmp_path / "l",
                 config=config(max_steps=None, max_epochs=1))
    assert (result.stop_reason, result.step) == ("max_epochs", len(batches))


def test_bf16_autocast_is_used_and_close(tmp_path):
    fp32, bf16 = make_model(dropout=0.0), make_model(dropout=0.0)
    fit(fp32, toy_loss, loader(), config=config(max_steps=1), run_dir=tmp_path / "a")
    fit(bf16, toy_loss, loader(), config=config(max_steps=1, bf16=True), run_dir=tmp_path / "b")
    la, lb = records(tmp_path / "a")[0]["loss"], records(tmp_path / "b")[0]["loss"]
    assert la != lb and lb == pytest.approx(la, rel=2e-2)


def test_user_errors(tmp_path):
    fit(make_model(), toy_loss, loader(), config=config(max_steps=1), run_dir=tmp_path)
    with pytest.raises(UserError, match="already holds checkpoints"):
        fit(make_model(), toy_loss, loader(), config=config(), run_dir=tmp_path)
    with pytest.raises(UserError, match="nothing to resume"):
        fit(make_model(), toy_loss, loader(), config=config(), run_dir=tmp_path / "new", resume=True)
    with pytest.raises(UserError, match="never stop"):
        fit(make_model(), toy_loss, loader(), config=config(max_steps=None), run_dir=tmp_path / "x")
    with pytest.raises(UserError, match="needs max_steps"):
        fit(make_model(), toy_loss, iter([]), run_dir=tmp_path / "y",
            config=config(max_steps=None, max_minutes=1.0))
    with pytest.raises(UserError, match="no 'dev'"):
        fit(make_model(), toy_loss, loader(), config=config(metric="dev", eval_every=1),
            eval_fn=lambda m: {"loss": 1.0}, run_dir=tmp_path / "z")


def test_resume_of_a_plain_iterable_fast_forwards_exactly(tmp_path):
    """A list of batches (no Loader): the resumed run skips what was consumed and, with the RNG
    states restored (dropout is on), retraces the uninterrupted run exactly."""
    batches = list(loader(8))  # 12 batches per epoch; the run crosses an epoch boundary
    cfg = dict(schedule="constant", ckpt_every=5, ema_decay=0.9)
    whole = make_model()
    fit(whole, toy_loss, batches, config=config(max_steps=16, **cfg), run_dir=tmp_path / "a")
    part = make_model()
    fit(part, toy_loss, batches, config=config(max_steps=10, **cfg), run_dir=tmp_path / "b")
    again = make_model()
    fit(again, toy_loss, batches, config=config(max_steps=16, **cfg), run_dir=tmp_path / "b",
        resume=True)
    assert [r["loss"] for r in records(tmp_path / "b")] == [r["loss"] for r in records(tmp_path / "a")]
    assert all(torch.equal(v, whole.state_dict()[k]) for k, v in again.state_dict().items())


# ----------------------------------------------------------------------------- hooks


def test_optimizer_fn_is_the_optimizer_used(tmp_path):
    """fit steps the optimizer optimizer_fn builds: the weights equal a hand-written Adamax loop."""
    built = []

    def adamax(params):
        built.append((params, torch.optim.Adamax(params, lr=1e-2, eps=1e-3, weight_decay=3e-4)))
        return built[-1][1]

    model, ref = make_model(dropout=0.0), make_model(dropout=0.0)
    fit(model, toy_loss, loader(shuffle=False), optimizer_fn=adamax, run_dir=tmp_path,
        config=config(schedule="constant", grad_clip=None))
    params, opt = built[0]
    assert len(built) == 1 and params == list(model.parameters())
    assert all(opt.state[p]["step"] == 6 for p in params)
    hand = torch.optim.Adamax(ref.parameters(), lr=1e-2, eps=1e-3, weight_decay=3e-4)
    for batch in list(loader(shuffle=False))[:6]:
        hand.zero_grad()
        toy_loss(ref, batch)[0].backward()
        hand.step()
    a, b = weights(model), weights(ref)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_budget_fraction():
    assert budget_fraction(3, 0.0, total=10, max_minutes=None) == 0.3
    assert budget_fraction(3, 30.0, total=10, max_minutes=1.0) == 0.5  # the larger of the two
    assert budget_fraction(0, 90.0, total=None, max_minutes=1.0) == 1.0  # capped
    assert budget_fraction(5, 5.0, total=None, max_minutes=None) == 0.0


def test_lr_fn_and_on_step_follow_the_step_budget(tmp_path):
    seen = []
    fit(make_model(), toy_loss, loader(), lr_fn=lambda f: 1.0 - f, on_step=seen.append,
        config=config(max_steps=10), run_dir=tmp_path)  # cosine by default: lr_fn replaces it
    assert seen == pytest.approx([s / 10 for s in range(10)], abs=0)
    assert [r["lr"] for r in records(tmp_path)] == pytest.approx([1e-2 * (1 - s / 10) for s in range(10)],
                                                                   rel=1e-12)


def test_lr_fn_follows_the_time_budget(tmp_path):
    """With only max_minutes, the fraction before each step is the training time logged after the
    step before it over the budget, and the lr follows it."""
    seen = []
    result = fit(make_model(), toy_loss, loader(), lr_fn=lambda f: 1.0 - f, on_step=seen.append,
                 config=config(max_steps=None, max_minutes=0.006), run_dir=tmp_path)
    rows = records(tmp_path)
    assert result.stop_reason == "max_minutes" and len(rows) == result.step == len(seen) > 2
    want = [0.0] + [min(1.0, r["time"] / 0.36) for r in rows[:-1]]
    assert seen == pytest.approx(want, abs=1e-12)
    assert seen == sorted(seen) and 0 < seen[-1] <= 1  # capped at 1 when the last step ran over
    assert [r["lr"] for r in rows] == pytest.approx([1e-2 * (1 - f) for f in seen], rel=1e-12)


def test_exclude_eval_time_keeps_evaluations_off_the_clock(tmp_path):
    import time

    def slow_eval(m):
        time.sleep(0.3)
        return {"loss": 1.0}

    for name, exclude in (("on", False), ("off", True)):
        result = fit(make_model(), toy_loss, loader(), eval_fn=slow_eval, run_dir=tmp_path / name,
                     config=config(max_steps=4, eval_every=2, exclude_eval_time=exclude))
        assert (result.elapsed_s > 0.3) is not exclude  # two evaluations: 0.6 s


def _poisoned(bad: set[int]):
    calls = {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += 1
        loss, n = toy_loss(model, batch)
        return (loss * float("nan") if calls["n"] in bad else loss), n, {"twice": 2 * loss.item()}

    return loss_fn


def test_nonfinite_skip_skips_and_counts_and_the_default_raises(tmp_path):
    """With nonfinite="skip", steps 3 and 4's NaN losses are skipped (their batches dropped): the
    weights equal a clean run over the other batches. The default still raises."""
    batches = list(loader(8, shuffle=False))
    model = make_model(dropout=0.0)
    result = fit(model, _poisoned({3, 4}), batches, run_dir=tmp_path / "skip",
                 config=config(nonfinite="skip", schedule="constant"))
    assert (result.step, result.skipped_steps) == (6, 2)
    assert [r["step"] for r in records(tmp_path / "skip", "skipped")] == [2, 2]
    assert records(tmp_path / "skip", "end")[0]["skipped_steps"] == 2
    clean = make_model(dropout=0.0)
    fit(clean, toy_loss, batches[:2] + batches[4:], run_dir=tmp_path / "clean",
        config=config(schedule="constant"))
    assert all(torch.equal(v, clean.state_dict()[k]) for k, v in model.state_dict().items())
    rows = records(tmp_path / "skip")  # loss_fn's statistics, token-weighted per window
    assert [r["twice"] for r in rows] == pytest.approx([2 * r["loss"] for r in rows], rel=1e-6)
    with pytest.raises(UserError, match="loss is nan at step 3"):
        fit(make_model(), _poisoned({3}), batches, config=config(), run_dir=tmp_path / "raise")
    with pytest.raises(UserError, match="^3 non-finite steps in a row") as err:
        fit(make_model(), _poisoned(set(range(2, 99))), batches, run_dir=tmp_path / "stop",
            config=config(nonfinite="skip", max_skipped_in_row=3))
    assert "step 2" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="nonfinite must be one of"):
        fit(make_model(), toy_loss, batches, config=config(nonfinite="ignore"), run_dir=tmp_path / "x")


@pytest.mark.parametrize("budget", [dict(max_steps=0), dict(max_steps=-3), dict(max_steps=None, max_epochs=0),
                                    dict(max_steps=None, max_minutes=float("nan")),
                                    dict(max_steps=None, max_minutes=float("inf")), dict(max_minutes=-1.0)])
def test_a_budget_of_none_or_nan_is_refused_before_anything_is_written(tmp_path, budget):
    """A run of no step would save an untrained model; a NaN or infinite time budget never stops."""
    with pytest.raises(UserError, match="a budget must be positive and finite"):
        fit(make_model(), toy_loss, loader(), config=config(**budget), run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_progress_bar_shows_the_time_budget_left(tmp_path, capsys):
    """With --minutes, the bar says how much of the time budget is left (tqdm's own ETA needs a
    step total, which a time budget alone does not give)."""
    fit(make_model(), toy_loss, loader(), run_dir=tmp_path / "b",
        config=config(max_steps=None, max_minutes=30.0, max_epochs=1, progress=True))
    err = capsys.readouterr().err
    assert "left=29:5" in err or "left=30:00" in err
    fit(make_model(), toy_loss, loader(), run_dir=tmp_path / "s", config=config(progress=True))
    assert "left=" not in capsys.readouterr().err  # no time budget, nothing left to show
