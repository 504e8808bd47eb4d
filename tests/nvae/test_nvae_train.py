"""NVAE training through `genloom.train.fit`: a tiny run learns without NaN and saves its model
in the one format, the lr and KL schedules follow the budget fraction, a killed run resumes
exactly, and the NaN guard skips bad steps and stops on a run of them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from genloom.errors import UserError
from genloom.models.nvae import NVAE, kl_warmup, load_image_model
from genloom.tasks.nvae import train as task
from genloom.tasks.nvae.train import lr_at, train


def _records(run: Path, event: str = "train") -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["event"] == event]


def test_tiny_training_decreases_the_loss_without_nan(tiny_run) -> None:
    run, result = tiny_run.run_dir, tiny_run.result
    assert result.steps == 60 and result.nan_skipped == 0
    trains = _records(run)
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["nelbo"]) for r in trains)
    assert result.eval_nelbo is not None and result.eval_nelbo < tiny_run.before - 20
    assert trains[-1]["nelbo"] < trains[0]["nelbo"]
    for name in ("config.json", "curves.png", "metrics.jsonl", "model/model_ema.safetensors"):
        assert (run / name).is_file()
    assert json.loads((run / "model" / "config.json").read_text())["model_type"] == "nvae"
    assert json.loads((run / "config.json").read_text())["task"]["preset"] == "tiny"
    assert [s["step"] for s in _records(run, "eval")] == [60]  # eval_every=0: at the end
    assert any(p.dim() == 4 and not p.is_contiguous() for p in result.model.parameters())
    # the saved EMA weights give the same outputs as the EMA applied in memory
    loaded = load_image_model(run / "model")
    x = torch.rand(2, 1, 16, 16).bernoulli()
    with result.ema.applied(result.model):
        result.model.eval()
        torch.manual_seed(0)
        ref = result.model(x).params
    torch.manual_seed(0)
    torch.testing.assert_close(loaded(x).params, ref)


def test_lr_and_kl_warmup_follow_the_step_budget(tiny_run) -> None:
    """Each train line's lr is lr_at of the fraction before its step; beta is the window mean
    of the KL warm-up over the same fractions."""
    cfg = tiny_run.config
    assert lr_at(0.0, cfg) == pytest.approx(cfg.lr * 1e-3) and lr_at(1.0, cfg) == pytest.approx(cfg.lr_min)
    assert lr_at(cfg.lr_warmup, cfg) == pytest.approx(cfg.lr)
    rows = _records(tiny_run.run_dir)
    assert [r["step"] for r in rows] == list(range(10, 61, 10))
    for r in rows:
        fractions = [(s - 1) / 60 for s in range(r["step"] - 9, r["step"] + 1)]
        assert r["lr"] == pytest.approx(lr_at(fractions[-1], cfg), rel=1e-12)
        want = sum(kl_warmup(f, warmup=cfg.kl_warmup) for f in fractions) / 10
        assert r["beta"] == pytest.approx(want, rel=1e-9)


def test_a_killed_run_resumes_exactly(tiny_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_config(batch_size=8, max_steps=10, ckpt_every=4, eval_every=4, log_every=1)
    whole = train(cfg, tmp_path / "whole")
    real = task.VAEObjective.at

    def killed_at_step_7(self, progress):
        if progress >= 0.7:
            raise KeyboardInterrupt
        real(self, progress)

    monkeypatch.setattr(task.VAEObjective, "at", killed_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut")
    monkeypatch.setattr(task.VAEObjective, "at", real)
    again = train(cfg, tmp_path / "cut", resume=True)
    keys = ("step", "loss", "nelbo", "kl", "lr")
    for event in ("train", "eval"):
        a, b = _records(tmp_path / "whole", event), _records(tmp_path / "cut", event)
        assert [[r.get(k) for k in keys] for r in b] == [[r.get(k) for k in keys] for r in a]
    assert all(torch.equal(v, whole.model.state_dict()[k]) for k, v in again.model.state_dict().items())


def test_nan_guard_skips_bad_steps_and_stops_on_a_run_of_them(tiny_config, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = task.vae_loss, {"n": 0}

    def flaky(model, x, **kw):
        loss, stats = real(model, x, **kw)
        calls["n"] += 1
        return (loss * float("nan"), stats) if calls["n"] in bad else (loss, stats)

    monkeypatch.setattr(task, "vae_loss", flaky)
    cfg = tiny_config()
    bad = {2, 3}
    result = train(cfg, tmp_path / "a")
    assert result.steps == 5 and result.nan_skipped == 2 and isinstance(result.model, NVAE)
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    assert len(_records(tmp_path / "a", "skipped")) == 2
    bad, calls["n"] = set(range(1, 100)), 0
    with pytest.raises(UserError, match="non-finite steps in a row"):
        train(tiny_config(max_bad_steps=3), tmp_path / "b")


def test_settings_a_run_cannot_use(tiny_config, tmp_path: Path) -> None:
    for bad, match in (({"max_steps": None}, "--steps or --minutes"), ({"max_steps": 0}, "--steps must"),
                       ({"kl_warmup": 0.0}, "kl_warmup"), ({"preset": "huge"}, "unknown preset"),
                       ({"model": "gan"}, "unknown model")):
        with pytest.raises(UserError, match=match):
            train(tiny_config(**bad), tmp_path / "x")
