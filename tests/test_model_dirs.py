"""Model directories are never destroyed by a user's mistake (issue 24, parts 3 and 7).

Every destructive case runs the real command as a subprocess and checks what a user sees and
keeps: exit code 2, one line on stderr, no traceback, every file of the old model byte for byte
as it was, and the old model still loading (`genloom.models.load`). The cases: a training command
pointed at another command's model (with and without --force), `title train --force` with bad
data, and a `--force` run killed halfway (the old model is replaced only by a complete new one).
`occupant`, the rule's reading of a directory, is checked on one directory of every kind."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from genloom.cli import main
from genloom.models import Transformer, TransformerConfig, load, save
from genloom.tasks.title.infer import load_title_model
from genloom.train.outdir import check_out, occupant

TINY_RNN = json.dumps({"emb_dim": 8, "enc_hidden": 8, "dec_hidden": 8, "out_hidden": 16})
TITLE_FLAGS = ["--max-epochs", "2", "--minutes", "5", "--batch-size", "8", "--max-source-len", "30",
               "--dev-size", "4", "--model-json", TINY_RNN, "--quiet", "--threads", "1"]
COND_FLAGS = ["--layers", "1", "--width", "16", "--heads", "2", "--max-chars", "8", "--steps", "2", "--quiet"]
CHARS = "天地人和春夏秋冬山水风云日月星辰金木火土东西南北"


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genloom.cli", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def _one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("genloom: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def snapshot(root: Path) -> dict[str, str]:
    """Every file and directory under `root` (relative path -> BLAKE2b of the bytes, or "dir")."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.blake2b(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """A pairs file for title and a labelled texts file for condition."""
    import random

    root = tmp_path_factory.mktemp("data")
    rng = random.Random(5)
    pairs, texts = root / "pairs.jsonl", root / "texts.jsonl"
    rows = []
    for _ in range(40):
        content = "".join(rng.choice(CHARS) for _ in range(rng.randint(12, 30)))
        rows.append(json.dumps({"content": content, "title": content[1:6]}, ensure_ascii=False))
    pairs.write_text("\n".join(rows) + "\n", encoding="utf-8")
    rows = [json.dumps({"text": "".join(rng.choice(CHARS[:8] if i % 2 else CHARS[8:16]) for _ in range(6)),
                        "label": "ab"[i % 2]}, ensure_ascii=False) for i in range(120)]
    texts.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return {"pairs": pairs, "texts": texts}


@pytest.fixture(scope="module")
def title_dir(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "title"
    assert main(["title", "train", "--data", str(data["pairs"]), "--out", str(out), *TITLE_FLAGS]) == 0
    return out


@pytest.fixture(scope="module")
def condition_dir(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "cond"
    assert main(["condition", "train", "--arch", "plain", "--data", str(data["texts"]), "--out", str(out),
                 *COND_FLAGS]) == 0
    return out


def _intact_title(title_dir: Path, before: dict[str, str]) -> None:
    assert snapshot(title_dir) == before
    load(title_dir / "model")
    assert load_title_model(title_dir).config.max_source_len == 30
    assert not [p for p in title_dir.parent.iterdir() if p.name.startswith(".title.")]  # no temporary left


@pytest.mark.parametrize("bad", ["missing", "wrong-fields", "empty"])
def test_title_force_with_bad_data_keeps_the_old_model(title_dir, tmp_path, bad):
    before = snapshot(title_dir)
    path = tmp_path / "bad.jsonl"
    if bad == "wrong-fields":
        path.write_text('{"text": "天地", "label": 1}\n', encoding="utf-8")
    elif bad == "empty":
        path.write_text("", encoding="utf-8")
    r = _cli("title", "train", "--out", str(title_dir), "--force", "--data", str(path), *TITLE_FLAGS)
    _one_line_error(r, str(path))
    _intact_title(title_dir, before)


def test_condition_force_with_bad_data_keeps_the_old_model(condition_dir, tmp_path):
    before = snapshot(condition_dir)
    r = _cli("condition", "train", "--arch", "cln", "--out", str(condition_dir), "--force", "--data",
             str(tmp_path / "none.jsonl"), *COND_FLAGS)
    _one_line_error(r, "none.jsonl")
    assert snapshot(condition_dir) == before
    assert json.loads((condition_dir / "condition.json").read_text())["kind"] == "plain"
    load(condition_dir)


def test_nvae_force_with_bad_data_keeps_the_old_run(tmp_path):
    tiny = ["--preset", "tiny", "--limit", "32", "--batch-size", "16", "--eval-images", "16", "--eval-every", "0",
            "--bn-iters", "1", "--quiet", "--steps", "1"]
    run = tmp_path / "nvae"
    assert main(["nvae", "train", "--data", "shapes", "--out", str(run), *tiny]) == 0
    before = snapshot(run)
    r = _cli("nvae", "train", "--data", str(tmp_path / "no-images"), "--out", str(run), "--force", *tiny)
    _one_line_error(r, "no-images")
    assert snapshot(run) == before and not [p for p in tmp_path.iterdir() if p.name.startswith(".nvae.")]
    model, _ = load(run / "model")
    assert type(model).__name__ == "NVAE"


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_title_train_never_writes_over_a_condition_model(condition_dir, data, force):
    before = snapshot(condition_dir)
    r = _cli("title", "train", "--out", str(condition_dir), "--data", str(data["pairs"]), *force, *TITLE_FLAGS)
    _one_line_error(r, "holds a condition 'plain' model", "not a title model", "with or without --force")
    assert snapshot(condition_dir) == before
    model, tokenizer = load(condition_dir)
    assert isinstance(model, Transformer) and tokenizer is not None


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_condition_train_never_writes_over_a_title_model(title_dir, data, force):
    before = snapshot(title_dir)
    r = _cli("condition", "train", "--arch", "plain", "--out", str(title_dir), "--data", str(data["texts"]),
             *force, *COND_FLAGS)
    _one_line_error(r, "holds a title model", "not a condition model")
    _intact_title(title_dir, before)


@pytest.mark.parametrize("command", [
    ["nvae", "train", "--data", "shapes", "--steps", "1"],
    ["summarize", "train", "--limit", "4"],
    ["search", "train-models", "--steps", "1"],
])
def test_other_training_commands_never_write_over_a_title_model(title_dir, command):
    before = snapshot(title_dir)
    r = _cli(*command, "--out", str(title_dir), "--force")
    _one_line_error(r, "holds a title model", f"not a {command[0]} model")
    _intact_title(title_dir, before)


def test_a_killed_force_run_leaves_the_old_model_and_a_complete_one_replaces_it(title_dir, data, tmp_path):
    """--force trains beside the old model: killed mid-run (mid-checkpoint), the old one is
    untouched; run to the end, the new one takes its place whole, and the killed run's temporary
    directory is removed."""
    work = tmp_path / "work"
    work.mkdir()
    old = work / "title"
    os.system(f"cp -r '{title_dir}' '{old}'")
    before = snapshot(old)
    cmd = [sys.executable, "-m", "genloom.cli", "title", "train", "--out", str(old), "--force", "--data",
           str(data["pairs"]), *TITLE_FLAGS, "--seed", "1", "--eval-every", "2"]
    p = subprocess.Popen(cmd, env={**os.environ, "GENLOOM_CHECKPOINT_PAUSE": "4:60"},
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while not list(work.glob(".title.*.tmp/checkpoints/.tmp-step-00000004-*/model.safetensors")):
        assert p.poll() is None and time.monotonic() < deadline, "the --force run never reached step 4"
        time.sleep(0.1)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert snapshot(old) == before
    assert load_title_model(old).config.seed == 0
    assert len(list(work.glob(".title.*.tmp"))) == 1  # what the killed run was building

    r = _cli("title", "train", "--out", str(old), "--force", "--data", str(data["pairs"]), *TITLE_FLAGS, "--seed", "1")
    assert r.returncode == 0, r.stderr
    assert load_title_model(old).config.seed == 1 and not (old / "checkpoints").exists()
    assert snapshot(old) != before and not (old / ".genloom-owner").exists()
    assert sorted(p.name for p in work.iterdir()) == ["title"]  # the abandoned temporary was removed


def test_occupant_reads_every_kind_of_directory(title_dir, condition_dir, tmp_path):
    bare = tmp_path / "bare"
    save(Transformer(TransformerConfig(vocab_size=10, n_layer=1, n_head=2, d_model=8, d_ff=16, max_len=8)), None, bare)
    search = tmp_path / "search"
    (search / "runs" / ".mlm.x1.tmp").mkdir(parents=True)  # a search run killed before its first model
    nvae = tmp_path / "nvae"
    (nvae / "model").mkdir(parents=True)
    (nvae / "model" / "config.json").write_text('{"model_type": "nvae"}')
    run = tmp_path / "title-run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"train": {}, "task": {"writer": "title"}}))
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    got = {name: occupant(path) for name, path in [
        ("title", title_dir), ("condition", condition_dir), ("bare", bare), ("search", search), ("nvae", nvae),
        ("run", run), ("other", other), ("empty", tmp_path / "empty"), ("absent", tmp_path / "absent"),
        ("file", tmp_path / "file")]}
    assert {k: None if v is None else (v.kind, v.finished) for k, v in got.items()} == {
        "title": ("title", True), "condition": ("condition", True), "bare": ("model", True),
        "search": ("search", False), "nvae": ("nvae", True), "run": ("title", False), "other": ("other", True),
        "empty": None, "absent": None, "file": ("file", True)}
    # the rule: own model -> --force replaces it whole; own stopped run -> resumed in place
    assert check_out(title_dir, kind="title", force=True) is True
    assert check_out(run, kind="title", resume=True) is False
    assert check_out(tmp_path / "absent" / "deeper", kind="title") is False and not (tmp_path / "absent").exists()
