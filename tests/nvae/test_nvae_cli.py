"""`genloom nvae train|eval|sample`: the commands on a tiny run, the shared flags (--model or the
positional, --force, --resume), and one-line errors for what a user can get wrong."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from genloom.cli import main as cli_main

TRAIN = ["nvae", "train", "--data", "shapes", "--preset", "tiny", "--limit", "32", "--batch-size", "16",
         "--eval-images", "16", "--eval-every", "0", "--bn-iters", "1", "--quiet"]


def _error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    capsys.readouterr()
    try:
        rc = cli_main(argv)
    except SystemExit as e:  # a bad flag value: argparse's one line
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_cli_eval_and_sample(tiny_run, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tiny_run.run_dir
    results = []
    # --json FILE is the old spelling of --out FILE
    for how, flag in (([str(run)], "--out"), (["--model", str(run / "model")], "--json")):
        out = tmp_path / f"nll{flag}.json"
        assert cli_main(["nvae", "eval", *how, "--data", "shapes", "--k", "8", "--limit", "16",
                         flag, str(out), "--quiet"]) == 0
        results.append(json.loads(out.read_text()))
    res = results[0]
    assert results[1] == res and res["k"] == 8 and res["images"] == 16 and res["nll_nats"] > 0
    assert res["bpd"] == pytest.approx(res["nll_nats"] / (math.log(2) * 256))
    capsys.readouterr()
    grids = []
    # --n is the old spelling of --num-samples; --quiet keeps the BatchNorm progress bar off stderr
    for flag, quiet in (("--num-samples", ["--quiet"]), ("--n", [])):
        png = tmp_path / f"s{flag}.png"
        assert cli_main(["nvae", "sample", "--model", str(run), "--out", str(png), flag, "16",
                         "--bn-iters", "3", "--threads", "1", *quiet]) == 0
        out, err = capsys.readouterr()
        assert "wrote 16 samples" in out and ("BatchNorm" in err) != bool(quiet)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        grids.append(png.read_bytes())
    assert grids[0] == grids[1]  # seeded: the same grid


def test_cli_train_force_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert cli_main([*TRAIN, "--out", str(out), "--steps", "2"]) == 0
    assert "trained nvae for 2 steps" in capsys.readouterr().out
    assert (out / "samples.png").is_file() and (out / "recon.png").is_file()
    assert "--force to replace it" in _error(capsys, [*TRAIN, "--out", str(out), "--steps", "2"])
    assert "pass one" in _error(capsys, [*TRAIN, "--out", str(out), "--steps", "2", "--force", "--resume"])
    assert cli_main([*TRAIN, "--out", str(out), "--steps", "3", "--resume"]) == 0
    assert "for 3 steps" in capsys.readouterr().out
    assert cli_main([*TRAIN, "--out", str(out), "--steps", "1", "--force", "--model-type", "vae"]) == 0
    assert json.loads((out / "model" / "config.json").read_text())["model_type"] == "vae"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000001"]


def test_cli_user_errors(tiny_run, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert "not a saved model" in _error(capsys, ["nvae", "eval", str(tmp_path / "nope")])
    assert "--model DIR" in _error(capsys, ["nvae", "eval"])
    assert "not both" in _error(capsys, ["nvae", "sample", str(tmp_path), "--model", str(tiny_run.run_dir),
                                         "--out", str(tmp_path / "s.png")])
    assert "--steps or --minutes" in _error(capsys, ["nvae", "train", "--out", str(tmp_path / "r"),
                                                     "--data", "shapes"])
    assert "must be a positive integer" in _error(capsys, ["nvae", "train", "--out", str(tmp_path / "r"),
                                                           "--steps", "0"])
    assert "must be a positive number" in _error(capsys, ["nvae", "train", "--out", str(tmp_path / "r"),
                                                          "--minutes", "-1"])
    assert "does not exist" in _error(capsys, ["nvae", "train", "--out", str(tmp_path / "r"), "--data",
                                               str(tmp_path / "nodir"), "--steps", "1"])
    assert not (tmp_path / "r" / "model").exists()
    cut = tmp_path / "cut"
    shutil.copytree(tiny_run.run_dir / "model", cut)
    weights = cut / "model_ema.safetensors"
    weights.write_bytes(weights.read_bytes()[: len(weights.read_bytes()) // 2])
    assert "cannot read the weights" in _error(capsys, ["nvae", "eval", str(cut), "--data", "shapes"])
    assert "must be a positive integer" in _error(capsys, ["nvae", "eval", str(cut), "--k", "0"])


def test_cli_train_and_eval_on_the_real_fashion_mnist_sample(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    """The real-data path end to end, on every machine: 28x28 idx images from a directory (the
    shipped Fashion-MNIST sample), trained on its train split and scored on its test split."""
    sample = str(Path(__file__).resolve().parents[1] / "fixtures" / "fashion_mnist_sample")
    out = tmp_path / "fm"
    assert cli_main([*TRAIN[:2], "--data", sample, *TRAIN[4:], "--out", str(out), "--steps", "2"]) == 0
    res = tmp_path / "nll.json"
    assert cli_main(["nvae", "eval", str(out), "--data", sample, "--k", "2", "--limit", "8",
                     "--out", str(res), "--quiet"]) == 0
    got = json.loads(res.read_text())
    assert got["images"] == 8 and math.isfinite(got["nll_nats"]) and got["nll_nats"] > 0
    assert got["bpd"] == pytest.approx(got["nll_nats"] / (math.log(2) * 28 * 28))
