"""`genloom condition` on the command line: generate and eval end to end, the shared flags
(`--model DIR` everywhere, `--arch` for what train builds, the old `train --model cln` still
accepted), checked numbers, refusing to overwrite another model without --force, and one-line
errors."""

from __future__ import annotations

import json

import pytest

from genloom.cli import main
from genloom.models import Transformer, TransformerConfig, save


def run(argv: list[str]) -> int:
    """main's exit code, also for the errors argparse raises as SystemExit."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_generate_and_eval_cli(trained, tmp_path, capsys, in_alphabet):
    vec = tmp_path / "v.json"
    vec.write_text(json.dumps(json.loads((trained / "vec" / "condition.json").read_text())["class_means"]["pos"]))
    assert main(["condition", "generate", "--model", str(trained / "vec"), "--vector-file", str(vec),
                 "--num-samples", "6", "--json", "--quiet"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 6 and in_alphabet([r["output"] for r in rows], "pos") >= 0.9
    assert [r["id"] for r in rows] == [1, 2, 3, 4, 5, 6] and all(list(r) == ["id", "input", "output"] for r in rows)
    assert all(r["input"] == json.loads(vec.read_text()) for r in rows)  # the vector conditioned on
    out = tmp_path / "table.json"
    assert main(["condition", "eval", "--model", str(trained / "cln"), str(trained / "prefix"), "--judge",
                 str(trained / "judge"), "--lm", str(trained / "plain"), "--num-samples", "30", "--out", str(out),
                 "--threads", "1"]) == 0
    printed, err = capsys.readouterr()
    assert "control" in printed
    progress = err.splitlines()  # a line per model (without --quiet)
    assert len(progress) == 2 and progress[0].startswith("condition eval [1/2]: ") and "prefix" in progress[1]
    table = json.loads(out.read_text())
    assert table["reference"]["judge_test_accuracy"] == 1.0
    assert [r["kind"] for r in table["models"]] == ["cln", "prefix"]
    for row in table["models"]:
        assert 0.95 <= row["controllability"] <= 1 and row["samples_per_label"] == 30
        per_label = row["per_label"]
        assert set(per_label) == {"neg", "pos"} and 0 < row["distinct_2"] <= 1
        # equal samples per label: the overall share is the mean of the per-label shares
        assert row["controllability"] == pytest.approx(sum(v["controllability"] for v in per_label.values()) / 2)
        assert 1 < row["perplexity"] < 8  # 6 equally likely characters (+ <eos>) per class


def test_generate_json_and_the_old_spellings(trained, capsys):
    """--json rows carry the label as input; -n and --jsonl (the old spellings) give the same
    seeded samples; --quiet keeps the progress bar of a run of several batches off stderr."""
    base = ["condition", "generate", "--model", str(trained / "cln"), "--label", "neg", "--threads", "1"]
    assert main([*base, "--num-samples", "3", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["id"], r["input"]) for r in rows] == [(1, "neg"), (2, "neg"), (3, "neg")]
    assert main([*base, "-n", "3", "--jsonl"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == rows
    assert main([*base, "-n", "3"]) == 0
    assert capsys.readouterr().out.splitlines() == [r["output"] for r in rows]
    assert main([*base, "-n", "251", "--max-new-tokens", "2"]) == 0
    assert "sampling" in capsys.readouterr().err  # two batches: a progress bar
    assert main([*base, "-n", "251", "--max-new-tokens", "2", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and len(out.splitlines()) == 251


def test_old_model_flag_still_names_the_arch(trained, tmp_path):
    """`train --model plain` (README and older scripts) builds what `--arch plain` builds."""
    small = ["--layers", "1", "--width", "16", "--heads", "2", "--max-chars", "8", "--steps", "2", "--quiet"]
    data = str(trained / "syn.jsonl")
    assert main(["condition", "train", "--model", "plain", "--data", data, "--out", str(tmp_path / "a"), *small]) == 0
    assert main(["condition", "train", "--arch", "plain", "--data", data, "--out", str(tmp_path / "b"), *small]) == 0
    a, b = (json.loads((tmp_path / d / "condition.json").read_text()) for d in ("a", "b"))
    assert a["kind"] == b["kind"] == "plain" and a["spec"] == b["spec"] and a["steps"] == b["steps"] == 2


def test_force_is_needed_to_replace_a_model(trained, tmp_path, capsys):
    data = str(trained / "syn.jsonl")
    small = ["--layers", "1", "--width", "16", "--heads", "2", "--max-chars", "8", "--steps", "2", "--quiet"]
    other = tmp_path / "other"
    save(Transformer(TransformerConfig(vocab_size=10, n_layer=1, n_head=2, d_model=8, d_ff=16, max_len=8)), None, other)
    before = (other / "config.json").read_bytes()
    assert main(["condition", "train", "--arch", "plain", "--data", data, "--out", str(other), *small]) == 2
    err = capsys.readouterr().err
    assert "holds another model (transformer)" in err and "--force" in err and "\n" not in err.strip()
    assert (other / "config.json").read_bytes() == before and not (other / "condition.json").exists()
    # another kind of model is refused with --force too, and left as it was
    assert main(["condition", "train", "--arch", "plain", "--data", data, "--out", str(other), "--force", *small]) == 2
    err = capsys.readouterr().err
    assert "holds another model (transformer)" in err and "with or without --force" in err
    assert (other / "config.json").read_bytes() == before and sorted(p.name for p in other.iterdir()) == [
        "config.json", "model.safetensors"]
    mine = tmp_path / "mine"
    assert main(["condition", "train", "--arch", "plain", "--data", data, "--out", str(mine), *small]) == 0
    # a condition model is not silently retrained over either; --force replaces it
    assert main(["condition", "train", "--arch", "cln", "--data", data, "--out", str(mine), *small]) == 2
    assert "already holds a condition 'plain' model" in capsys.readouterr().err
    assert json.loads((mine / "condition.json").read_text())["kind"] == "plain"
    assert main(["condition", "train", "--arch", "cln", "--data", data, "--out", str(mine), "--force", *small]) == 0
    assert json.loads((mine / "condition.json").read_text())["kind"] == "cln"


@pytest.mark.parametrize("flags,message", [
    (["--steps", "0"], "argument --steps: '0' must be a positive integer"),
    (["--steps", "5", "--lr", "-1"], "argument --lr: '-1' must be a positive number"),
    (["--steps", "5", "--batch-size", "0"], "argument --batch-size: '0' must be a positive integer"),
    (["--minutes", "0"], "argument --minutes: '0' must be a positive number"),
    (["--steps", "5", "--layers", "0"], "argument --layers: '0' must be a positive integer"),
    (["--steps", "5", "--cond-act", "swish"], "argument --cond-act: invalid choice: 'swish'"),
    (["--arch", "judge", "--epochs", "0"], "argument --epochs: '0' must be a positive integer"),
])
def test_bad_training_numbers_fail_before_anything_is_written(trained, tmp_path, capsys, flags, message):
    out = tmp_path / "m"
    assert run(["condition", "train", "--data", str(trained / "syn.jsonl"), "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not out.exists()


@pytest.mark.parametrize("argv,message", [
    (["generate", "--model", "{cln}", "--label", "happy"], "unknown label 'happy'"),
    (["generate", "--model", "{prefix}", "--vector-file", "{vec}"], "takes labels only"),
    (["generate", "--model", "{cln}", "--label", "pos", "--top-p", "1.5"], "top-p must be in"),
    (["generate", "--model", "{cln}", "--label", "pos", "--top-p", "0"], "argument --top-p: '0' must be a positive"),
    (["generate", "--model", "{plain}", "--label", "pos"], "takes no label"),
    (["generate", "--model", "{cln}", "--label", "pos", "--guidance", "-1"],
     "argument --guidance: '-1' must be a number >= 0"),
    (["generate", "--model", "{cln}", "--label", "pos", "--temperature", "0"],
     "argument --temperature: '0' must be a positive number"),
    (["generate", "--model", "{cln}", "--label", "pos", "-n", "0"],
     "argument --num-samples/-n: '0' must be a positive integer"),
    (["eval", "--model", "{cln}", "--judge", "{plain}", "--lm", "{plain}", "--num-samples", "0"],
     "argument --num-samples/-n: '0' must be a positive integer"),
    (["generate", "--model", "{vecmodel}", "--vector-file", "{vec_file}", "--guidance", "1"],
     "--guidance contrasts a --label"),
    (["generate", "--model", "{root}", "--label", "pos"], "not a `genloom condition` model directory"),
    (["generate", "--label", "pos"], "the following arguments are required: --model"),
    (["train", "--out", "{root}/x", "--vector-field", "vec", "--steps", "1"], "--vector-field needs --data"),
    (["train", "--out", "{root}/x", "--corpus", "nope", "--steps", "1"], "unknown corpus 'nope'"),
    (["train", "--out", "{root}/x", "--model", "{cln}"], "argument --model: invalid choice"),
    (["eval", "--model", "{cln}", "--judge", "{plain}", "--lm", "{plain}"], "holds a 'plain' model, expected 'judge'"),
    (["train", "--data", "{root}/syn.jsonl", "--out", "{root}/fresh", "--resume", "--steps", "5"], "nothing to resume"),
    (["train", "--arch", "judge", "--data", "{root}/syn.jsonl", "--out", "{root}/j2", "--resume"], "--resume is for"),
])
def test_cli_errors_are_one_line(trained, tmp_path, capsys, argv, message):
    vec = tmp_path / "v.json"
    vec.write_text("[0.5, 0.5]")
    vec8 = tmp_path / "v8.json"
    vec8.write_text(json.dumps([0.1] * 8))
    names = {k: str(trained / k) for k in ("cln", "prefix", "plain")} | {
        "root": str(trained), "vec": str(vec), "vec_file": str(vec8), "vecmodel": str(trained / "vec")}
    assert run(["condition", *[a.format(**names) for a in argv]]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
