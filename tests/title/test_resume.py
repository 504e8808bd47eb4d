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
# 48 training pairs after the hold-out, batches of 8: 6 steps an epoch, 3 epochs; an evaluation
# (and so a checkpoint) every 4 steps and at the end
FLAGS = ["--max-epochs", "3", "--minutes", "10", "--batch-size", "8", "--max-source-len", "30",
         "--dev-size", "4", "--eval-every", "4", "--patience", "50", "--model-json", TINY,
         "--quiet", "--threads", "1"]
KILL_AT = 12  # the run is killed while writing this step's checkpoint (the one of step 8 is whole)


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
    r = _cli("title", "train", "--data", str(data), "--out", str(whole), *FLAGS)
    assert r.returncode == 0, r.stderr

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
    assert (broken / "checkpoints" / "step-00000008").is_dir() and not (broken / "title.json").exists()

    # a plain rerun refuses and names the flag; a rerun with other settings is refused too
    r = _cli("title", "train", "--data", str(data), "--out", str(broken), *FLAGS)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "--resume" in err[0] and "unfinished title run" in err[0], r.stderr
    r = _cli("title", "train", "--data", str(data), "--out", str(broken), "--resume", *FLAGS, "--lr", "0.01")
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "these differ: lr" in err[-1] and "Traceback" not in r.stderr, r.stderr

    r = _cli("title", "train", "--data", str(data), "--out", str(broken), "--resume", *FLAGS)
    assert r.returncode == 0, r.stderr
    assert "resuming from" in r.stderr and "step-00000008" in r.stderr

    a, b = _records(whole), _records(broken)
    assert [x["event"] for x in a].count("train") == 1 and [x["event"] for x in a].count("eval") == 5
    assert a == b  # every train loss, lr, gradient norm and dev ROUGE, and the end record
    for name in ("model.safetensors", "model_ema.safetensors"):
        wa, wb = load_file(whole / "model" / name), load_file(broken / "model" / name)
        assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa), name
    assert json.loads((broken / "config.json").read_text())["resumed_from"] == 8
    assert not (broken / "checkpoints").exists() and (broken / "title.json").is_file()

    # a finished model has nothing to resume
    r = _cli("title", "train", "--data", str(data), "--out", str(broken), "--resume", *FLAGS)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "nothing to resume" in err[0], r.stderr


def test_a_run_stopped_in_its_pretraining_is_resumed(tmp_path, monkeypatch):
    """A UniLM run interrupted (Ctrl-C) while pre-training its char LM has nothing to resume and
    leaves nothing behind; one killed after its pre-training (only pretrain/ written) is a stopped
    title run: a plain rerun points to --resume, and --resume pre-trains again and finishes."""
    import genloom.train.lm as lm
    from genloom.errors import UserError
    from genloom.tasks.title.config import ARCHS, TitleConfig
    from genloom.tasks.title.data import build_tokenizer
    from genloom.tasks.title.infer import load_title_model
    from genloom.tasks.title.train import pretrain_lm, train
    from genloom.train.outdir import occupant

    pairs = [(CHARS[i:] + CHARS[:i], CHARS[i:i + 4]) for i in range(12)]
    texts = [a for a, _ in pairs] * 3
    cfg = TitleConfig(arch="unilm", pretrain_minutes=0.01, minutes=5, max_epochs=1, batch_size=4,
                      max_source_len=30, max_title_len=8, dev_size=2,
                      model={"d_model": 16, "n_layer": 1, "n_head": 2, "d_ff": 32})
    real, calls = lm.causal_lm_loss, {"n": 0}

    def interrupted(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)

    out = tmp_path / "run"
    run = dict(train_pairs=pairs[:10], dev_pairs=pairs[10:], out_dir=out, progress=False, log=lambda s: None,
               lm_texts=lambda: texts)
    monkeypatch.setattr(lm, "causal_lm_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, **run)
    monkeypatch.setattr(lm, "causal_lm_loss", real)
    assert not out.exists()

    # what a SIGKILL right after the pre-training leaves: pretrain/ and nothing else
    tok = build_tokenizer([t for p in pairs[:10] for t in p] + texts, min_count=cfg.min_count)
    pretrain_lm(ARCHS["unilm"](cfg, tok), tok, texts, minutes=0.01, run_dir=out / "pretrain", batch_size=4,
                lr=1e-3, seed=0, progress=False)
    taken = occupant(out)
    assert (taken.kind, taken.finished) == ("title", False) and sorted(p.name for p in out.iterdir()) == ["pretrain"]
    with pytest.raises(UserError, match="pass --resume to continue it"):
        train(cfg, **run)
    _, result = train(cfg, **run, resume=True)
    assert result.step >= 1 and load_title_model(out).config.arch == "unilm"
    pre = [json.loads(x) for x in (out / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert pre[-1]["event"] == "end"


def test_resume_may_change_the_limits_only(tmp_path):
    """--resume with a longer --minutes (or other --max-epochs / --patience) goes on; any other
    setting, or other data, is refused, naming what differs."""
    from dataclasses import asdict

    from genloom.errors import UserError
    from genloom.tasks.title.config import TitleConfig
    from genloom.tasks.title.train import _check_same_run

    task = {"writer": "title", **asdict(TitleConfig()), "train_data": "a", "dev_data": "b"}
    (tmp_path / "config.json").write_text(json.dumps({"train": {}, "task": task}))
    _check_same_run(tmp_path, {**task, "minutes": 60.0, "max_epochs": 9, "patience": 1})
    for change in ({"lr": 0.5}, {"train_data": "c"}, {"model": {"emb_dim": 4}}):
        with pytest.raises(UserError, match=f"these differ: {next(iter(change))}"):
            _check_same_run(tmp_path, {**task, **change})
