"""The SPACES pipeline (tasks/summarize/) and `genloom summarize` on a tiny model."""

import json
from dataclasses import replace

import pytest
import torch

from genloom.cli import main
from genloom.data import load_corpus
from genloom.errors import UserError
from genloom.tasks.summarize.config import SummarizeConfig
from genloom.tasks.summarize.convert import extraction_labels, split_clauses
from genloom.tasks.summarize.evaluate import evaluate, score
from genloom.tasks.summarize.pipeline import (Summarizer, best_clause_text, extracted_text, extraction_recall,
                                              select_clauses, truncate_text, with_oracle)
from genloom.tasks.summarize.train import train

TINY = SummarizeConfig(window=48, max_target_len=16, max_clauses=24, encoder_steps=3, encoder_minutes=1.0,
                       folds=2, extract_epochs=1, extract_hidden=16, d_model=32, n_layer=1, n_head=2, d_ff=64,
                       steps=4, minutes=None, warmup_steps=2, batch_size=8, num_beams=2, vocab_max=800)


def _pairs(split, n):
    return [(r["content"], r["title"]) for r in load_corpus("inews", split) if len(r["content"]) > 80][:n]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("sum") / "pipeline"
    return train(TINY, _pairs("train", 16), out=out, progress=False), out


def test_select_clauses_by_hand():
    clauses = ["甲甲，", "乙乙乙，", "丙，", "丁丁丁丁。"]
    probs = [0.1, 0.9, 0.3, 0.25]
    # above the threshold, most probable first, kept in document order
    assert select_clauses(clauses, probs, window=100, threshold=0.2, fill=False) == [1, 2, 3]
    assert select_clauses(clauses, probs, window=100, threshold=0.5, fill=False) == [1]
    # the window: 乙乙乙， (4) + 丙， (2) fit in 7, 丁丁丁丁。 (5) does not, 甲甲， (3) does not either
    assert select_clauses(clauses, probs, window=7, threshold=0.2, fill=False) == [1, 2]
    # fill tops up with clauses below the threshold that still fit
    assert select_clauses(clauses, probs, window=9, threshold=0.5, fill=True) == [0, 1, 2]
    # the best clause is kept even when it alone exceeds the window (then cut)
    assert select_clauses(clauses, probs, window=2, threshold=0.95, fill=False) == [1]
    assert extracted_text(clauses, [2, 1], 5) == "乙乙乙，丙"
    assert truncate_text(clauses, 6) == "甲甲，乙乙乙"
    # the oracle ranks the aligned clauses first, then the others by their probability
    assert with_oracle(probs, [3]) == [0.1, 0.9, 0.3, 2.0]
    assert select_clauses(clauses, with_oracle(probs, [3]), window=9, threshold=0.2, fill=False) == [1, 3]
    assert best_clause_text(clauses, probs, 6) == "乙乙乙，丙，"


def test_extraction_recall_by_hand():
    r = extraction_recall([[1, 2], [0]], [[2, 3], [0]])
    assert r["recall"] == pytest.approx(100 * 2 / 3) and r["precision"] == pytest.approx(100 * 2 / 3)
    assert extraction_recall([[]], [[]])["recall"] == 0.0
    # selected and aligned counts differ: 1 hit of 3 aligned, of 1 selected (recall != precision)
    r = extraction_recall([[4]], [[4, 5, 6]])
    assert (r["recall"], r["precision"], r["aligned"], r["selected"]) == (pytest.approx(100 / 3), 100.0, 3, 1)


def test_config_errors():
    with pytest.raises(UserError, match="mode"):
        SummarizeConfig(mode="abstract")
    with pytest.raises(UserError, match="budget"):
        SummarizeConfig(steps=None, minutes=None)
    with pytest.raises(UserError, match="threshold"):
        SummarizeConfig(threshold=1.5)


def test_pipeline_reads_its_extraction_and_round_trips(pipeline):
    summ, out = pipeline
    docs = [d for d, _ in _pairs("test", 3)]
    rows = summ.summarize(docs, explain=True)
    for doc, row in zip(docs, rows):
        clauses = split_clauses(doc)[: TINY.max_clauses]
        picked = [e["clause"] for e in row["extracted"]]
        assert row["source"] == "".join(picked)[: TINY.window]  # the seq2seq reads exactly the extraction
        assert [e["index"] for e in row["extracted"]] == sorted(e["index"] for e in row["extracted"])
        assert all(clauses[e["index"]] == e["clause"] for e in row["extracted"])
        assert sum(map(len, picked[:-1])) <= TINY.window
    again = Summarizer.load(out)
    assert [r["summary"] for r in again.summarize(docs)] == [r["summary"] for r in rows]
    # EMA weights are the default; the raw ones differ
    raw = Summarizer.load(out, ema=False)
    assert any(not torch.equal(a, b) for a, b in zip(raw.model.parameters(), again.model.parameters()))
    assert summ.info["documents"] == 16 and summ.info["seq2seq_steps"] == 4


def test_evaluate_reports_rows_and_recall(pipeline):
    summ, _ = pipeline
    pairs = _pairs("test", 4)
    res = evaluate(summ, pairs)
    assert set(res["rows"]) == {"summarizer", "extract only"}
    for row in res["rows"].values():
        assert set(row) == {"rouge-1", "rouge-2", "rouge-l", "cail-char", "cail"} and all(0 <= v <= 100 for v in row.values())
    assert 0 <= res["extraction"]["threshold"]["recall"] <= 100 and len(res["predictions"]) == 4
    # every row is the score of its own texts: the generator's summaries, and (recomputed here
    # from the extractor's probabilities) the most probable clause onwards, cut to the length
    refs = [r for _, r in pairs]
    prepared = summ.sources([d for d, _ in pairs])
    assert res["predictions"] == [r["summary"] for r in summ.generate(prepared)]
    assert res["rows"]["summarizer"] == score(res["predictions"], refs)
    extracts = []
    for p in prepared:
        best = max(range(len(p["clauses"])), key=lambda i: (float(p["probs"][i]), -i))
        extracts.append("".join(p["clauses"][best:])[:summ.summary_length])
    assert extracts != res["predictions"]  # so the two rows cannot be swapped unnoticed
    assert res["rows"]["extract only"] == score(extracts, refs)
    gold = [extraction_labels(p["clauses"], r) for p, r in zip(prepared, refs)]
    hit = sum(len(set(p["chosen"]) & set(g)) for p, g in zip(prepared, gold))
    n_gold = sum(len(g) for g in gold)
    assert n_gold > 0 and res["extraction"]["window"]["recall"] == pytest.approx(100 * hit / n_gold)
    # sources extracted once and passed in give the same evaluation
    again = evaluate(summ, pairs, prepared=prepared)
    assert again["rows"] == res["rows"] and again["predictions"] == res["predictions"]
    with pytest.raises(UserError, match="3 prepared sources for 4 pairs"):
        evaluate(summ, pairs, prepared=prepared[:3])


def test_pretrained_init_is_loaded_and_checked(tmp_path):
    from genloom.models import load
    from genloom.tasks.summarize.train import from_pretrained, pretrain

    pairs = _pairs("train", 6)
    cfg = replace(TINY, mode="truncate", pretrain_steps=3)
    path = pretrain(cfg, pairs, out=tmp_path / "pre", progress=False)
    base, tok = load(path)  # EMA weights
    model, tok2 = from_pretrained(replace(cfg, init=str(path)))
    assert tok2.vocab_size == tok.vocab_size
    assert all(torch.equal(a, b) for a, b in zip(model.lm.state_dict().values(), base.lm.state_dict().values()))
    with pytest.raises(UserError, match="another shape"):
        from_pretrained(replace(cfg, init=str(path), d_model=64))
    summ = train(replace(cfg, init=str(path)), pairs, out=tmp_path / "t", progress=False)
    assert summ.info["init"] == str(path) and summ.tokenizer.vocab_size == tok.vocab_size


def test_truncate_mode_reads_the_first_window(tmp_path):
    cfg = replace(TINY, mode="truncate")
    summ = train(cfg, _pairs("train", 8), out=tmp_path / "t", progress=False)
    doc = _pairs("test", 1)[0][0]
    row = summ.summarize([doc], explain=True)[0]
    assert row["source"] == "".join(split_clauses(doc))[: cfg.window] and "extracted" not in row
    assert not (tmp_path / "t" / "extractor").exists()
    with pytest.raises(UserError, match="empty"):
        summ.summarize(["  \n "])


def test_cli_run_explain_output_file_and_errors(pipeline, tmp_path, capsys):
    """The older spellings (positional FILE, --output) still work; --explain prints the --json
    records with the source read and the extracted clauses; the first bad line ends the run."""
    summ, model = pipeline
    docs = tmp_path / "docs.jsonl"
    texts = [d for d, _ in _pairs("test", 2)]
    docs.write_text("\n".join(json.dumps({"content": d}, ensure_ascii=False) for d in texts) + "\n",
                    encoding="utf-8")
    out = tmp_path / "out" / "s.jsonl"
    out.parent.mkdir()
    assert main(["summarize", "run", str(docs), "--model", str(model), "--explain", "--output", str(out)]) == 0
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    want = summ.summarize(texts, explain=True)
    assert lines == [{"id": i + 1, "input": t, "output": w.pop("summary"), **w}
                     for i, (t, w) in enumerate(zip(texts, want))]
    assert all("extracted" in x and "source" in x for x in lines)
    assert [p.name for p in out.parent.iterdir()] == ["s.jsonl"]  # no temporary file left behind

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"content": "ok"}\n{"text": "no content field"}\n')
    assert main(["summarize", "run", str(bad), "--model", str(model)]) == 2
    assert "bad.jsonl:2: field 'content'" in capsys.readouterr().err
    bad.write_bytes(b"\xff\xfe broken\n")
    assert main(["summarize", "run", str(bad), "--model", str(model), "--format", "lines"]) == 2
    assert "invalid UTF-8" in capsys.readouterr().err
    assert main(["summarize", "run", str(tmp_path / "none.txt"), "--model", str(model)]) == 2
    assert main(["summarize", "run", str(docs), "--model", str(tmp_path)]) == 2
    assert "not a summarizer directory" in capsys.readouterr().err


def test_cli_run_input_dash_json_ids_and_out(pipeline, tmp_path, capsys, monkeypatch):
    """--input - reads stdin; --json gives {id, input, output} with the JSONL record's id (the
    line number where it has none); --out writes the same text; --num-beams reaches decoding."""
    import io
    import sys

    summ, model = pipeline
    texts = [d for d, _ in _pairs("test", 3)]
    stdin = (json.dumps({"id": "x1", "content": texts[0]}, ensure_ascii=False) + "\n"
             + "".join(json.dumps({"content": t}, ensure_ascii=False) + "\n" for t in texts[1:])).encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    capsys.readouterr()
    assert main(["summarize", "run", "--input", "-", "--model", str(model), "--json", "--num-beams", "1",
                 "--batch-size", "2", "--quiet"]) == 0
    printed = capsys.readouterr()
    want = [r["summary"] for r in summ.summarize(texts, num_beams=1)]
    assert [json.loads(x) for x in printed.out.splitlines()] == [
        {"id": "x1", "input": texts[0], "output": want[0]}, {"id": 2, "input": texts[1], "output": want[1]},
        {"id": 3, "input": texts[2], "output": want[2]}]
    assert printed.err == ""
    plain = tmp_path / "plain.txt"
    plain.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    out = tmp_path / "s.txt"
    assert main(["summarize", "run", "--input", str(plain), "--model", str(model), "--beams", "1",
                 "--out", str(out)]) == 0
    assert capsys.readouterr().out == "" and out.read_text(encoding="utf-8").splitlines() == want


@pytest.mark.parametrize("argv, message", [
    (["summarize", "run", "--model", "m"], "no input: give --input FILE"),
    (["summarize", "run", "a.txt", "--input", "-", "--model", "m"], "the input is given twice"),
    (["summarize", "run", "--input", "/nonexistent.txt", "--model", "m"], "no such file: /nonexistent.txt"),
])
def test_cli_run_input_refusals(argv, message, capsys, monkeypatch):
    class Terminal:  # no FILE and no --input: refused only when stdin is a terminal
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Terminal())
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_cli_old_flag_spellings_parse_to_the_new_dests():
    from genloom.cli import build_parser

    parser = build_parser(only="summarize")
    for action in ("run", "eval"):
        extra = ["--input", "-"] if action == "run" else []
        new = parser.parse_args(["summarize", action, "--model", "m", *extra, "--num-beams", "2", "--out", "o.json"])
        old = parser.parse_args(["summarize", action, "--model", "m", *extra, "--beams", "2", "--output", "o.json"])
        assert vars(new) == vars(old) and (new.num_beams, new.out) == (2, "o.json")
    assert parser.parse_args(["summarize", "run", "--model", "m", "x.txt", "--jsonl"]).json


def test_cli_eval_and_train_refuses_to_overwrite(pipeline, tmp_path, capsys):
    _, model = pipeline
    report = tmp_path / "eval.json"
    assert main(["summarize", "eval", "--model", str(model), "--limit", "3", "--output", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "extract only" in printed and "recall" in printed
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["pairs"] == 3 and len(data["references"]) == 3
    assert main(["summarize", "train", "--out", str(model), "--limit", "4"]) == 2
    assert "already holds a summarizer" in capsys.readouterr().err
    assert main(["summarize", "eval", "--model", str(model), "--min-chars", "100000"]) == 2
    assert "no documents" in capsys.readouterr().err


def test_a_stopped_run_resumes_to_the_uninterrupted_seq2seq(tmp_path, monkeypatch, capsys):
    """`train(resume=True)` after an interruption in the seq2seq phase: the saved encoder is used
    again (not retrained), the seq2seq continues from its checkpoint, and the run logs the losses
    and saves the weights of an uninterrupted one; other settings are refused."""
    from safetensors.torch import load_file

    import genloom.tasks.summarize.train as summarize_train

    torch.set_num_threads(1)
    monkeypatch.setattr(summarize_train, "CKPT_EVERY", 4)
    cfg, pairs = replace(TINY, steps=12), _pairs("train", 12)
    train(cfg, pairs, out=tmp_path / "whole", progress=False)

    real, calls = summarize_train.seq2seq_loss, {"n": 0}

    def interrupted(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 7:  # step 7, after the checkpoint of step 4
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(summarize_train, "seq2seq_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, pairs, out=tmp_path / "cut", progress=False)
    monkeypatch.setattr(summarize_train, "seq2seq_loss", real)
    cut = tmp_path / "cut"
    assert (cut / "runs" / "seq2seq" / "checkpoints" / "step-00000004").is_dir()
    assert not (cut / "summarize.json").exists()
    encoder = {p.name: p.stat().st_mtime_ns for p in (cut / "encoder").iterdir()}
    capsys.readouterr()
    assert main(["summarize", "train", "--out", str(cut), "--limit", "4"]) == 2  # a plain rerun points to --resume
    assert "unfinished summarize run; pass --resume to continue it" in capsys.readouterr().err
    with pytest.raises(UserError, match="these differ: lr"):
        train(replace(cfg, lr=cfg.lr * 2), pairs, out=cut, progress=False, resume=True)

    train(cfg, pairs, out=cut, progress=False, resume=True)

    def records(root):
        lines = (root / "runs" / "seq2seq" / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k not in ("time", "tokens_per_s")} for x in lines]

    assert records(tmp_path / "whole") == records(cut) and [r["event"] for r in records(cut)] == ["train", "end"]
    for name in ("model.safetensors", "model_ema.safetensors"):
        a, b = load_file(tmp_path / "whole" / "seq2seq" / name), load_file(cut / "seq2seq" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert {p.name: p.stat().st_mtime_ns for p in (cut / "encoder").iterdir()} == encoder
    assert not (cut / "summarize-run.json").exists()


def test_a_minutes_only_budget_trains(tmp_path):
    """The default budget is minutes with no step count: the seq2seq then keeps a constant lr after
    warm-up (a cosine needs its end) instead of failing after the extraction's work."""
    torch.set_num_threads(1)
    summ = train(replace(TINY, mode="truncate", steps=None, minutes=0.01), _pairs("train", 8), out=tmp_path / "m",
                 progress=False)
    run = json.loads((tmp_path / "m" / "runs" / "seq2seq" / "config.json").read_text())
    assert run["train"]["schedule"] == "constant" and run["train"]["max_steps"] is None
    assert summ.info["seq2seq_steps"] >= 1
