"""Model directories written by earlier code (tests/fixtures/old_models, see its README) still load
and decode to what that code produced."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import torch

from genloom.cli import main
from genloom.models import load

OLD = Path(__file__).parent / "fixtures" / "old_models"
EXPECTED = json.loads((OLD / "expected.json").read_text(encoding="utf-8"))


def _cli(capsys, monkeypatch, *argv: str, stdin: str = "") -> str:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode("utf-8")), encoding="utf-8"))
    capsys.readouterr()
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def _outputs(json_lines: str) -> list[str]:
    """The texts of --json lines: "output" now, "title" / "summary" / "text" in expected.json
    (written when each command had its own JSON shape)."""
    out = []
    for line in json_lines.splitlines():
        record = json.loads(line)
        out.append(next(record[k] for k in ("output", "title", "summary", "text") if k in record))
    return out


@pytest.mark.parametrize("name", ["title_rnn", "title_unilm"])
def test_title_models_decode_as_before(name, capsys, monkeypatch):
    out = _cli(capsys, monkeypatch, "title", "generate", "--model", str(OLD / name), "--json", "--input", "-",
               stdin=EXPECTED["_inputs"]["articles"])
    assert _outputs(out) == _outputs(EXPECTED[name])
    assert [json.loads(line)["id"] for line in out.splitlines()] == [1, 2, 3]


def test_summarizer_decodes_as_before(tmp_path, capsys, monkeypatch):
    docs = tmp_path / "docs.txt"
    docs.write_text(EXPECTED["_inputs"]["documents"], encoding="utf-8")
    out = _cli(capsys, monkeypatch, "summarize", "run", "--input", str(docs), "--model", str(OLD / "summarize"),
               "--json")
    assert _outputs(out) == _outputs(EXPECTED["summarize"])


def test_condition_lm_samples_as_before(capsys, monkeypatch):
    out = _cli(capsys, monkeypatch, "condition", "generate", "--model", str(OLD / "condition_cln"), "--label", "pos",
               "--num-samples", "3", "--seed", "0", "--json")
    assert _outputs(out) == _outputs(EXPECTED["condition_cln"])


def test_judge_scores_as_before():
    model, tok = load(OLD / "condition_judge")
    ids = torch.tensor([[tok.token_to_id(c) if tok.token_to_id(c) is not None else 1 for c in "春夏山水"]])
    torch.testing.assert_close(model(ids), torch.tensor(EXPECTED["condition_judge"]))


@pytest.mark.parametrize("name", ["nvae", "vae"])
def test_image_models_score_as_before(name, tmp_path, capsys, monkeypatch):
    out = tmp_path / "eval.json"
    _cli(capsys, monkeypatch, "nvae", "eval", str(OLD / name), "--data", "shapes", "--k", "2", "--limit", "4",
         "--seed", "0", "--out", str(out), "--quiet")
    got, want = json.loads(out.read_text()), EXPECTED[name]
    assert got["k"] == want["k"] and got["images"] == want["images"]
    assert got["nll_nats"] == pytest.approx(want["nll_nats"], abs=1e-3)


@pytest.mark.parametrize("name", ["transformer", "rtf_lm"])
def test_lms_decode_as_before(name):
    from genloom.decode import greedy

    model, tok = load(OLD / name)
    ids, lengths = tok.encode_batch(["天地", "山水风"])
    got = greedy(model, input_ids=ids, lengths=lengths, max_new_tokens=8).sequences
    assert [list(map(int, s)) for s in got] == EXPECTED[name]


def test_every_family_loads_in_a_fresh_interpreter():
    """`genloom.models.load` rebuilds every family with nothing imported but genloom.models."""
    import subprocess

    dirs = {"transformer": "transformer", "rtf_lm": "rtf_lm", "char_cnn_judge": "condition_judge",
            "rnn_seq2seq": "title_rnn/model", "unilm_copy": "title_unilm/model", "summarize_unilm": "summarize/seq2seq",
            "nvae": "nvae", "vae": "vae"}
    code = ("import json, sys; from genloom.models import load; "
            "print(json.dumps({k: type(load(v)[0]).__name__ for k, v in json.loads(sys.argv[1]).items()}))")
    arg = json.dumps({k: str(OLD / v) for k, v in dirs.items()})
    out = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    from genloom.models.io import MODEL_TYPES

    assert json.loads(out.stdout) == {k: MODEL_TYPES[k][2] for k in dirs}
