"""`title train --resume`: a run killed with SIGKILL mid-checkpoint and resumed logs the very losses
and dev scores of an uninterrupted run and saves the same weights; the messages point to the flag;
a resume with other settings is refused. Real subprocesses on a tiny RNN (a few seconds each)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

TINY = json.dumps({"emb_dim": 8, "enc_hidden": 8, "dec_hidden": 8, "out_hidden": 16})
CHARS = "天地人和春夏秋冬山水风云日月星辰金木火土东西南北"
# 48 training pairs after the hold-out, batches of 8: 6 steps an epoch, 4 epochs; an evaluation
# (and so a checkpoint) every 4 steps
FLAGS = ["--max-epochs", "4", "--minutes", "10", "--batch-size", "8", "--max-source-len", "30",
         "--dev-size", "4", "--eval-every", "4", "--patience", "50", "--model-json", TINY,
         "--quiet", "--threads", "1"]
KILL_AT = 16  # the run is killed while writing this step's checkpoint (the one of step 12 is whole)


def _cli(*args: str, env: dict | None = None, wait: bool = True):
    cmd = [sys.executable, "-m", "genloom.cli", *args]
    full = {**os.environ, **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=120)


def _records(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock figures (time, throughput)."""
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out.append({k: v for k, v in r.items() if k not in ("time", "tokens_per_s", "eval_seconds")})
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    import random

    rng = random.Random(3)
    path = tmp_path_factory.mktemp("resume") / "pairs.jsonl"
    rows = []
    for _ in range(52):
        content = "".join(rng.choice(CHARS) for _ in range(rng.randint(12, 30)))
        rows.append(json.dumps({"content": content, "title": content[1:6]}, ensure_ascii=False))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_sigkill_then_resume_gives_the_uninterrupted_losses(data, tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    t0 = time.perf_counter()
    r = _cli("title", "train", "--data", str(data), "--out", str(whole), *FLAGS)
    assert r.returncode == 0, r.stderr
    uninterrupted_s = time.perf_counter() - t0

    # killed while the step-16 checkpoint is half written (the writer pauses there)
    p = _cli("title", "train", "--data", str(data), "--out", str(broken), *FLAGS,
             env={"GENLOOM_CHECKPOINT_PAUSE": f"{KILL_AT}:60"}, wait=False)
    deadline = time.monotonic() + 90
    while not list((broken / "checkpoints").glob(f".tmp-step-{KILL_AT:08d}-*/model.safetensors")):
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, "the run never reached the paused checkpoint"
        time.sleep(0.1)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert (broken / "checkpoints" / "step-00000012").is_dir() and not (broken / "title.json").exists()

    # a plain rerun refuses and names the flag; a rerun with other settings is refused too
    r = _cli("title", "train", "--data", str(data), "--out", str(broken), *FLAGS)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "--resume" in err[0] and "unfinished title run" in err[0], r.stderr
    r = _cli("title", "train", "--data", str(data), "--out", str(broken), "--resume", *FLAGS, "--lr", "0.01")
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "these differ: lr" in err[-1] and "Traceback" not in r.stderr, r.stderr

    r = _cli("title", "train", "--data", str(data), "--out", str(broken), "--resume", *FLAGS)
    assert r.returncode == 0, r.stderr
    assert "resuming from" in r.stderr and "step-00000012" in r.stderr

    a, b = _records(whole), _records(broken)
    assert [x["event"] for x in a].count("train") >= 2 and [x["event"] for x in a].count("eval") == 6
    assert a == b  # every train loss, lr, gradient norm and dev ROUGE, and the end record
    for name in ("model.safetensors", "model_ema.safetensors"):
        wa, wb = load_file(whole / "model" / name), load_file(broken / "model" / name)
        assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa), name
    assert json.loads((broken / "config.json").read_text())["resumed_from"] == 12
    assert not (broken / "checkpoints").exists() and (broken / "title.json").is_file()
    assert uninterrupted_s < 60

    # a finished model has nothing to resume
    r = _cli("title", "train", "--data", str(data), "--out", str(broken), "--resume", *FLAGS)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "nothing to resume" in err[0], r.stderr
