"""`genloom generate` (tasks/lm) on the tiny Hugging Face GPT-2 of tests/lm/conftest.py and on a
genloom model directory: it prints what `generate()` returns, reads prompt files, writes --output
atomically, both engines agree, and bad input is one line and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from genloom.cli import main
from genloom.decode.generate import generate
from genloom.errors import UserError

PROMPTS = ["the quick", "hello", "你好", "pack my box with"]


def _lines(texts):
    """What the CLI prints for these outputs (backslashes and newlines escaped)."""
    return "".join(t.replace("\\", "\\\\").replace("\n", "\\n") + "\n" for t in texts)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "genloom.cli", "generate", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_cli_subprocess_prints_what_generate_returns(hf_gpt2_dir, hf_gpt2):
    _, model, tok = hf_gpt2
    r = _cli("--model", str(hf_gpt2_dir), "--prompt", PROMPTS[0], "--prompt", PROMPTS[2], "--max-new-tokens", "12",
             "--no-repeat-ngram-size", "2")
    assert r.returncode == 0, r.stderr
    expected = generate(model, tok, [PROMPTS[0], PROMPTS[2]], max_new_tokens=12, no_repeat_ngram_size=2)
    assert r.stdout == _lines(expected)


@pytest.mark.parametrize("args,message", [
    (["--model", "/nonexistent/model-dir", "--prompt", "hi"], "no local Hugging Face model '/nonexistent/model-dir'"),
    (["--prompt", "hi", "--strategy", "sample", "--top-p", "1.5"], "top_p must be in (0, 1], got 1.5"),
    (["--prompt", "hi", "--strategy", "beam", "--num-beams", "0"], "--num-beams: '0' must be a positive integer"),
])
def test_cli_subprocess_bad_input_exits_2_with_one_line(hf_gpt2_dir, args, message):
    if "--model" not in args:
        args = ["--model", str(hf_gpt2_dir), *args]
    r = _cli(*args)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("genloom") and message in r.stderr


def test_cli_input_file_jsonl_output_and_engines(hf_gpt2_dir, hf_gpt2, tmp_path, capsys):
    _, model, tok = hf_gpt2
    src = tmp_path / "prompts.txt"
    blanks = "\n".join(PROMPTS[:2]) + "\n\n" + "\n".join(PROMPTS[2:]) + "\n\n"  # blank lines are skipped
    src.write_text(blanks, encoding="utf-8")
    outs = {}
    for engine in ("genloom", "hf"):
        dest = tmp_path / f"out-{engine}.jsonl"
        rc = main(["generate", "--model", str(hf_gpt2_dir), "--input", str(src), "--strategy", "beam",
                   "--num-beams", "3", "--num-return-sequences", "2", "--max-new-tokens", "10", "--jsonl",
                   "--output", str(dest), "--engine", engine])
        assert rc == 0 and capsys.readouterr().out == ""
        outs[engine] = [json.loads(line) for line in dest.read_text(encoding="utf-8").splitlines()]
    assert outs["genloom"] == outs["hf"]  # converted Transformer == HF model behind HFCausalLM
    expected = generate(model, tok, PROMPTS, strategy="beam", num_beams=3, num_return_sequences=2, max_new_tokens=10)
    assert [o["output"] for o in outs["hf"]] == expected
    lines = [n for n, line in enumerate(blanks.splitlines(), start=1) if line]  # ids: the prompts' line numbers
    assert [(o["id"], o["input"], o["index"]) for o in outs["hf"]] == \
           [(n, p, i) for n, p in zip(lines, PROMPTS) for i in range(2)]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["out-genloom.jsonl", "out-hf.jsonl", "prompts.txt"]


def test_cli_stream_equals_batch(hf_gpt2_dir, hf_gpt2, capsys):
    _, model, tok = hf_gpt2
    args = ["--model", str(hf_gpt2_dir), "--prompt", PROMPTS[1], "--strategy", "sample", "--seed", "5", "--top-k", "40",
            "--max-new-tokens", "14"]
    assert main(["generate", *args, "--stream"]) == 0
    streamed = capsys.readouterr().out
    expected = generate(model, tok, [PROMPTS[1]], strategy="sample", seed=5, top_k=40, max_new_tokens=14)[0]
    assert streamed == expected + "\n"


def test_cli_json_records_carry_input_ids_and_stream_their_pieces(hf_gpt2_dir, hf_gpt2, tmp_path):
    """--input - (stdin) with JSONL records: each output's record carries the record's id; --stream
    --json gives a {id, index, delta} line per piece and then the same record as without --stream."""
    _, model, tok = hf_gpt2
    records = "".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS[:2]))
    common = ["generate", "--model", str(hf_gpt2_dir), "--input", "-", "--max-new-tokens", "6", "--json"]
    whole = subprocess.run([sys.executable, "-m", "genloom.cli", *common], input=records, capture_output=True,
                           text=True, timeout=120)
    assert whole.returncode == 0, whole.stderr
    got = [json.loads(line) for line in whole.stdout.splitlines()]
    want = generate(model, tok, PROMPTS[:2], max_new_tokens=6)
    assert got == [{"id": f"p{i}", "input": p, "output": w, "index": 0} for i, (p, w) in enumerate(zip(PROMPTS, want))]
    streamed = subprocess.run([sys.executable, "-m", "genloom.cli", *common, "--stream"], input=records,
                              capture_output=True, text=True, timeout=120)
    assert streamed.returncode == 0, streamed.stderr
    lines = [json.loads(line) for line in streamed.stdout.splitlines()]
    finals = [r for r in lines if "output" in r]
    assert finals == got
    for record in finals:
        pieces = [r["delta"] for r in lines if "delta" in r and r["id"] == record["id"]]
        assert "".join(pieces) == record["output"]
    assert sum("delta" in r for r in lines) > len(finals)  # pieces, not one line per output


@pytest.mark.parametrize("extra,message", [
    (["--input", "{missing}"], "no such file"),
    (["--input", "{empty}"], "holds no input"),
    (["--input", "{latin}"], "latin.txt:2: invalid UTF-8 (byte 0xe9)"),
    (["--prompt", "hi", "--output", "{nodir}"], "a parent is not a directory"),
    (["--prompt", "hi", "--output", "{tmp}"], "is a directory, not a file"),
    (["--prompt", "hi", "--stream", "--strategy", "beam"], "streaming works with strategy 'greedy' or 'sample'"),
    (["--prompt", "hi", "--stream", "--out", "{tmp}/o.txt"], "--stream prints to the terminal"),
])
def test_cli_in_process_bad_input(hf_gpt2_dir, tmp_path, capsys, extra, message):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    (tmp_path / "latin.txt").write_bytes("好\n".encode() + "caf\xe9\n".encode("latin-1"))
    paths = dict(missing=str(tmp_path / "nope.txt"), empty=str(empty), latin=str(tmp_path / "latin.txt"),
                 nodir=str(empty / "out.txt"), tmp=str(tmp_path))
    extra = [a.format(**paths) for a in extra]
    assert main(["generate", "--model", str(hf_gpt2_dir), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert sorted(f.name for f in tmp_path.iterdir()) == ["empty.txt", "latin.txt"]  # nothing written


def test_cli_on_a_genloom_model_directory(hf_gpt2_dir, hf_gpt2, tmp_path):
    """io.save of the converted model: `genloom generate` reads it back and gives the same text."""
    from genloom.models import io

    _, model, tok = hf_gpt2
    io.save(model, tok, tmp_path / "lm")
    r = _cli("--model", str(tmp_path / "lm"), "--prompt", PROMPTS[3], "--strategy", "beam", "--num-beams", "2",
             "--max-new-tokens", "10")
    assert r.returncode == 0, r.stderr
    expected = generate(model, tok, [PROMPTS[3]], strategy="beam", num_beams=2, max_new_tokens=10)
    assert r.stdout == _lines(expected)
    (tmp_path / "lm" / "model.safetensors").write_bytes(b"not safetensors")
    r = _cli("--model", str(tmp_path / "lm"), "--prompt", "hi")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cannot read the weights" in r.stderr


def test_engines_pick_the_model_class(hf_gpt2_dir, tmp_path):
    from genloom.models import HFCausalLM, Transformer
    from genloom.tasks.lm.load import load_model

    assert isinstance(load_model(str(hf_gpt2_dir))[0], Transformer)  # auto: GPT-2 converts
    assert isinstance(load_model(str(hf_gpt2_dir), engine="genloom")[0], Transformer)
    assert isinstance(load_model(str(hf_gpt2_dir), engine="hf")[0], HFCausalLM)
    with pytest.raises(UserError, match="unknown engine 'onnx'"):
        load_model(str(hf_gpt2_dir), engine="onnx")


@pytest.mark.parametrize("extra,message", [
    (["--max-new-tokens", "0"], "--max-new-tokens: '0' must be a positive integer"),
    (["--max-new-tokens", "-1"], "--max-new-tokens: '-1' must be a positive integer"),
    (["--min-new-tokens", "9", "--max-new-tokens", "8"], "--min-new-tokens 9 is above --max-new-tokens 8"),
    (["--num-beams", "3"], "--num-beams applies to --strategy beam only"),
    (["--length-penalty", "0.5", "--strategy", "sample"], "--length-penalty applies to --strategy beam only"),
    (["--strategy", "sample", "--temperature", "nan"], "--temperature: 'nan' must be a positive number"),
    (["--strategy", "sample", "--temperature", "0"], "--temperature: '0' must be a positive number"),
    (["--strategy", "sample", "--top-k", "0"], "--top-k: '0' must be a positive integer"),
    (["--strategy", "sample", "--min-p", "1.5"], "--min-p: '1.5' must be a number in [0, 1]"),
    (["--temperature", "0.7"], "temperature is a sampling option: use strategy 'sample', not 'greedy'"),
    (["--num-return-sequences", "2"], "greedy search returns one sequence per prompt"),
    (["--threads", "0"], "--threads: '0' must be a positive integer"),
])
def test_cli_bad_numbers_are_one_line_before_the_model_loads(tmp_path, genloom, extra, message):
    # a model path that does not exist: every check comes before loading
    rc, out, err = genloom("generate", "--model", str(tmp_path / "no-model"), "--prompt", "hi", *extra)
    assert rc == 2 and out == "" and err.count("\n") == 1 and message in err, err
