"""`genloom search`, on tiny random models saved to disk (conftest.py).

Random models make no fluent text, so the tests assert what must hold for any model: every
keyword in every output, lengths and vocabularies respected, seeded runs reproducible, the
correction search restoring a sentence when its target prefers the original (an oracle target),
and one-line errors with exit code 2 (bad numbers among them).
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import pytest
import torch

from genloom.cli import main
from genloom.decode.mcmc_edits import UniformSlots
from genloom.decode.targets import HammingPenalty, Target
from genloom.tasks import search
from genloom.tasks.search.data import MASK_CHAR
from genloom.tasks.search.models import load_chinese_models


def run_cli(capsys, *argv):
    rc = main(["search", *argv, "--quiet"])
    out, err = capsys.readouterr()
    return rc, out, err


def test_keywords_outputs_contain_every_keyword(zh_models, capsys):
    rc, out, _ = run_cli(capsys, "keywords", "--models", str(zh_models), "--keywords", "北京,大学，科学",
                         "--num-samples", "3", "--steps", "25", "--chains", "4", "--min-len", "6", "--max-len", "14",
                         "--json")
    assert rc == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert 1 <= len(rows) <= 3 and [r["rank"] for r in rows] == list(range(len(rows)))
    for r in rows:
        assert list(r) == ["id", "input", "output", "rank", "score"]
        assert r["id"] == 1 and r["input"] == ["北京", "大学", "科学"]
        assert all(k in r["output"] for k in r["input"]) and len(r["output"]) <= 14
        assert MASK_CHAR not in r["output"]
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    # the old spellings -n and --jsonl give the same (seeded) output
    again = run_cli(capsys, "keywords", "--models", str(zh_models), "--keywords", "北京,大学,科学", "-n", "3",
                    "--steps", "25", "--chains", "4", "--min-len", "6", "--max-len", "14", "--jsonl")[1]
    assert again == out  # seeded


def test_keywords_from_a_file_with_both_proposals(zh_models, tmp_path, capsys):
    (tmp_path / "sets.txt").write_text("北京,工作\n\n公园 花\n", encoding="utf-8")
    for proposal in ("mlm", "lm"):
        target = tmp_path / f"out-{proposal}.txt"
        rc, out, _ = run_cli(capsys, "keywords", "--models", str(zh_models), "--input", str(tmp_path / "sets.txt"),
                             "-n", "2", "--steps", "15", "--proposal", proposal, "--out", str(target))
        assert rc == 0 and out == ""
        lines = target.read_text(encoding="utf-8").splitlines()
        assert len(lines) == 4
        assert all("北京" in t and "工作" in t for t in lines[:2]) and all("公园" in t and "花" in t for t in lines[2:])
    # --output is the old spelling of --out; --json rows carry the line numbers (the blank line counts)
    target = tmp_path / "out.jsonl"
    rc, out, _ = run_cli(capsys, "keywords", "--models", str(zh_models), "--input", str(tmp_path / "sets.txt"),
                         "-n", "1", "--steps", "15", "--output", str(target), "--json")
    rows = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert rc == 0 and out == "" and [(r["id"], r["input"]) for r in rows] == [(1, ["北京", "工作"]), (3, ["公园", "花"])]


def test_keywords_from_stdin_carry_the_jsonl_ids(zh_models, capsys, monkeypatch):
    records = [{"id": "a-7", "keywords": "北京,工作"}, {"keywords": "公园 花"}, {"id": 12, "keywords": "科学"}]
    stdin = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    rc, out, _ = run_cli(capsys, "keywords", "--models", str(zh_models), "--input", "-", "--num-samples", "1",
                         "--steps", "15", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert rc == 0 and [(r["id"], r["input"], r["rank"]) for r in rows] == [
        ("a-7", ["北京", "工作"], 0), (2, ["公园", "花"], 0), (12, ["科学"], 0)]  # no "id": the line number
    assert all(all(k in r["output"] for k in r["input"]) for r in rows)


def test_input_dash_reads_a_real_pipe():
    """The executable reading `--input -` from a pipe: a record without the field is one line
    naming stdin and the line, exit 2, before any model is looked for."""
    proc = subprocess.run([sys.executable, "-m", "genloom.cli", "search", "keywords", "--input", "-",
                           "--models", "/nonexistent-search-models"], input='{"keywords": "北京"}\n{"id": 4}\n',
                          capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == "genloom: error: stdin:2: field 'keywords' is missing or not a string"


def test_correct_reads_stdin_lines(zh_models, capsys, monkeypatch):
    """`--input -` with plain lines: one result per non-blank line, ids the line numbers, text
    output the corrections alone."""
    text = "2019年Apple在北京，科学！"
    stdin = f"{text}\n\n今天天气很好。\n".encode()
    for flags in (["--json"], []):
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
        rc, out, _ = run_cli(capsys, "correct", "--models", str(zh_models), "--input", "-", "--penalty", "1000",
                             *flags)
        assert rc == 0
        if flags:
            assert [json.loads(line) for line in out.splitlines()] == [
                {"id": 1, "input": text, "output": text, "changed": False},  # no edit buys 1000 nats
                {"id": 3, "input": "今天天气很好。", "output": "今天天气很好。", "changed": False}]
        else:
            assert out == f"{text}\n今天天气很好。\n"


def test_gibbs_samples_have_the_asked_lengths(zh_models, capsys):
    rc, out, _ = run_cli(capsys, "gibbs", "--models", str(zh_models), "-n", "5", "--steps", "30", "--min-len", "4",
                         "--max-len", "7")
    texts = out.splitlines()
    assert rc == 0 and len(texts) == 5
    assert all(4 <= len(t) <= 7 and MASK_CHAR not in t for t in texts)
    rc, out, _ = run_cli(capsys, "gibbs", "--models", str(zh_models), "--num-samples", "5", "--steps", "30",
                         "--min-len", "4", "--max-len", "7", "--json")
    assert rc == 0 and [json.loads(line) for line in out.splitlines()] == [
        {"id": i, "input": None, "output": t} for i, t in enumerate(texts, start=1)]  # seeded: the same texts
    rc, out, _ = run_cli(capsys, "gibbs", "--models", str(zh_models), "-n", "2", "--steps", "3", "--init", "今天天气很好。")
    assert all(len(t) == 7 for t in out.splitlines())


class Oracle(Target):
    """A stand-in LM that prefers the true sentence: 10 nats per character that differs from it."""

    def __init__(self, truth_rows, width):
        refs = torch.tensor([r + [0] * (width - len(r)) for r in truth_rows])
        self.ham = HammingPenalty(refs, torch.tensor([len(r) for r in truth_rows]), weight=10.0)

    def __call__(self, tokens, mask, cond=None):
        return self.ham(tokens, mask, cond)


def test_correction_restores_what_the_target_prefers(zh_models):
    models = load_chinese_models(zh_models)
    tok = models.tokenizer
    truth = ["今天天气很好，我们去公园玩。", "科学技术是第一生产力。"]
    typo = ["今天天学很好，我们去公园玩。", "科学技术是第一生产力。"]  # the second one is clean
    backend = search.Backend(lang="zh", tokenizer=tok, lm=Oracle([tok.encode(t) for t in truth], 14),
                             slots=UniformSlots(tok.vocab_size), vocab=list(range(4, tok.vocab_size - 1)),
                             masked=None, mask_id=models.mask_id, pad_id=0)
    g = torch.Generator().manual_seed(0)
    cfg = search.CorrectConfig(top_k=tok.vocab_size, penalty=6.0, sweeps=1)
    assert search.correct_texts(backend, typo, cfg, generator=g) == truth
    # an edit that gains less than the penalty is not made
    strict = search.CorrectConfig(top_k=tok.vocab_size, penalty=15.0, sweeps=1)
    assert search.correct_texts(backend, typo, strict, generator=g) == typo


def test_correct_cli_keeps_non_han_characters(zh_models, capsys):
    text = "2019年Apple在北京，科学！"
    rc, out, _ = run_cli(capsys, "correct", "--models", str(zh_models), "--text", text, "--penalty", "0", "--json")
    row = json.loads(out)
    assert rc == 0 and list(row) == ["id", "input", "output", "changed"] and row["id"] == 1 and row["input"] == text
    assert row["changed"] == (row["output"] != text) and len(row["output"]) == len(text)
    assert re.sub(r"[\u4e00-\u9fff]", "", row["output"]) == re.sub(r"[\u4e00-\u9fff]", "", text)


def test_english_keywords_gibbs_and_correct(en_lm, capsys):
    rc, out, _ = run_cli(capsys, "keywords", "--lang", "en", "--lm", str(en_lm), "--keywords", "library,value",
                         "-n", "2", "--steps", "10", "--max-len", "12", "--min-len", "4")
    assert rc == 0 and out.splitlines()
    assert all("library" in t and "value" in t for t in out.splitlines())
    rc, out, _ = run_cli(capsys, "gibbs", "--lang", "en", "--lm", str(en_lm), "-n", "2", "--steps", "5",
                         "--init", "the library returns a value")
    assert rc == 0 and len(out.splitlines()) == 2
    rc, out, _ = run_cli(capsys, "correct", "--lang", "en", "--lm", str(en_lm), "--text", "the library returns a value",
                         "--penalty", "1000")
    assert rc == 0 and out == "the library returns a value\n"  # no edit buys 1000 nats


@pytest.mark.parametrize("argv, message", [
    (["keywords", "--models", "{missing}", "--keywords", "北京"], "train-models"),
    (["keywords", "--models", "{models}", "--keywords", "北京,猫"], "do not know"),
    (["keywords", "--models", "{models}", "--keywords", "北京", "--min-len", "9", "--max-len", "4"], "--min-len"),
    (["keywords", "--models", "{models}", "--keywords", "北京", "--out", "{missing}/x.txt"], "no directory"),
    (["keywords", "--models", "{models}", "--keywords", "北京", "--output", "{missing}/x.txt"], "no directory"),
    (["keywords", "--models", "{models}", "--keywords", "北京大学", "--max-len", "3"], "max-len"),
    (["correct", "--models", "{models}", "--input", "{missing}.txt"], "no such file"),
    (["correct", "--models", "{models}", "--input", "{blank}"], "holds no input"),
    (["keywords", "--models", "{models}", "--input", "{records}"], "records.jsonl:2: field 'keywords' is missing"),
    (["correct", "--models", "{models}", "--input", "{records}", "--format", "jsonl"], "field 'text' is missing"),
    (["gibbs", "--models", "{models}", "--init", " "], "--init is empty"),
    (["train-models", "--out", "{missing}", "--only", "bert"], "unknown model"),
])
def test_errors_are_one_line(zh_models, tmp_path, capsys, argv, message):
    (tmp_path / "blank.txt").write_text("\n  \n", encoding="utf-8")
    (tmp_path / "records.jsonl").write_text('{"keywords": "北京"}\n{"id": 2}\n', encoding="utf-8")
    argv = [a.format(models=zh_models, missing=tmp_path / "nope", blank=tmp_path / "blank.txt",
                     records=tmp_path / "records.jsonl") for a in argv]
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    (["keywords", "--keywords", "北京", "--chains", "0"], "--chains: '0' must be a positive integer"),
    (["keywords", "--keywords", "北京", "-n", "0"], "--num-samples/-n: '0' must be a positive integer"),
    (["gibbs", "--num-samples", "0"], "--num-samples/-n: '0' must be a positive integer"),
    (["keywords", "--keywords", "北京", "--explore", "1.5"], "--explore: '1.5' must be a number in [0, 1]"),
    (["keywords", "--keywords", "北京", "--schedule", "cosine"], "--schedule: invalid choice"),
    (["correct", "--text", "今天", "--sweeps", "0"], "--sweeps: '0' must be a positive integer"),
    (["correct", "--text", "今天", "--penalty", "-1"], "--penalty: '-1' must be a number >= 0"),
    (["gibbs", "--temperature", "0"], "--temperature: '0' must be a positive number"),
    (["gibbs", "--steps", "-3"], "--steps: '-3' must be an integer >= 0"),
    (["train-models", "--minutes", "-1"], "--minutes: '-1' must be a positive number"),
    (["train-models", "--steps", "nan"], "--steps: 'nan' is not an integer"),
])
def test_bad_numbers_are_one_line_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(["search", *argv])
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1
