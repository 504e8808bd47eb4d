"""Checkpoints: the JSON + safetensors codec round-trips optimizer / RNG / numpy state; pruning keeps
the last K and the best; a run SIGKILLed while writing a checkpoint leaves the previous one
loadable, and resumed it retraces the uninterrupted run's losses bit for bit."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from genloom.errors import UserError
from genloom.train.checkpoint import (flatten, latest_checkpoint, list_checkpoints, load_checkpoint,
                                      rng_state, save_checkpoint, save_weights, set_rng_state,
                                      unflatten)
from genloom.train.ema import EMA

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from train_toy import make_model  # noqa: E402


def same(a, b) -> bool:
    """Deep equality with exact tensor / array comparison (dtype included)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return a == b and type(a) is type(b)


def test_codec_round_trips_optimizer_state_and_odd_types():
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.9))
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    opt.step()
    tree = {"optimizer": opt.state_dict(), "arr": np.arange(5, dtype=np.uint32),
            "mixed": {1: "a", (2, 3): [1.5, None, True]}, "__odd": 1,
            "bf16": torch.ones(2, dtype=torch.bfloat16), "flag": torch.tensor([True, False]),
            "scalar": torch.tensor(7, dtype=torch.int64), "nan": float("nan")}
    tensors: dict[str, torch.Tensor] = {}
    encoded = json.loads(json.dumps(flatten(tree, tensors)))  # through real JSON text
    back = unflatten(encoded, tensors)
    nan = back.pop("nan")
    assert nan != nan
    tree.pop("nan")
    assert same(back, tree)
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt2.load_state_dict(back["optimizer"])
    assert same(opt2.state_dict(), opt.state_dict())
    with pytest.raises(TypeError, match="cannot store"):
        flatten({"x": object()}, {})


def test_rng_state_round_trip():
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's legacy state
    saved = json.loads(json.dumps(flatten(rng_state(), t := {})))
    expect = (torch.rand(4), np.random.randn(3), random.random())
    set_rng_state(unflatten(saved, t))
    got = (torch.rand(4), np.random.randn(3), random.random())
    assert torch.equal(got[0], expect[0]) and np.array_equal(got[1], expect[1])
    assert got[2] == expect[2]


def test_keep_last_and_protect(tmp_path):
    model = make_model()
    for step in (1, 2, 3, 4, 5):
        save_checkpoint(tmp_path, step, model=model, state={"s": step}, keep_last=2, protect={2})
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 4, 5]
    assert latest_checkpoint(tmp_path).name == "step-00000005"
    (tmp_path / ".tmp-step-00000006-999").mkdir()  # a killed writer's leftover
    save_checkpoint(tmp_path, 6, model=model, state={}, keep_last=2)
    assert not list(tmp_path.glob(".tmp-*"))
    assert load_checkpoint(tmp_path / "step-00000005", model=model)["state"] == {"s": 5}


def test_load_errors_are_one_line_user_errors(tmp_path):
    model = make_model()
    path = save_checkpoint(tmp_path, 1, model=model, state={})
    other = torch.nn.Linear(2, 2)
    with pytest.raises(UserError, match="does not match the model"):
        load_checkpoint(path, model=other)
    (path / "state.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_checkpoint(path)


def test_save_weights_writes_raw_and_ema(tmp_path):
    model = make_model()
    ema = EMA(model, 0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    save_weights(model, tmp_path, ema=ema)
    raw = load_file(str(tmp_path / "model.safetensors"))
    avg = load_file(str(tmp_path / "model_ema.safetensors"))
    for name, p in model.named_parameters():
        assert torch.equal(raw[name], p.detach())
        assert torch.equal(avg[name], ema.averaged()[name])
        assert not torch.equal(avg[name], raw[name])
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors", "model_ema.safetensors"]


def _toy(run_dir: Path, *extra: str, env: dict | None = None, wait: bool = True):
    cmd = [sys.executable, str(HERE / "train_toy.py"), str(run_dir), "--max-steps", "30",
           "--ckpt-every", "10", "--workers", "1", *extra]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if wait:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]
    return proc


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if r["event"] == "train"]


def test_sigkill_while_writing_leaves_previous_and_resume_is_bit_exact(tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    ref = _toy(whole, wait=False)  # the uninterrupted run, in parallel with the one we kill
    victim = _toy(broken, env={"GENLOOM_CHECKPOINT_PAUSE": "20:120"}, wait=False)
    ckpts = broken / "checkpoints"
    deadline = time.time() + 90
    while not list(ckpts.glob(".tmp-step-00000020-*/model.safetensors")):
        assert victim.poll() is None, victim.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "the checkpoint of step 20 never started"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)  # mid-checkpoint: model written, state not yet
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert [s for s, _ in list_checkpoints(ckpts)] == [10]
    prev = load_checkpoint(ckpts / "step-00000010", model=make_model())
    assert prev["step"] == 10 and prev["state"]["progress"]["step"] == 10

    _toy(broken, "--resume")
    out, err = ref.communicate(timeout=120)
    assert ref.returncode == 0, err.decode()[-2000:]
    expected = _losses(whole)
    assert [s for s, _ in expected] == list(range(1, 31))
    assert _losses(broken) == expected  # bit for bit: floats compared exactly
    a = load_file(str(whole / "final" / "model_ema.safetensors"))
    b = load_file(str(broken / "final" / "model_ema.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list(ckpts.glob(".tmp-*"))
    for name in ("metrics.jsonl", "curves.png", "config.json"):
        assert (broken / name).is_file()
    assert json.loads((broken / "config.json").read_text())["resumed_from"] == 10
