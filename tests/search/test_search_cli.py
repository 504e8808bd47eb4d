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
from genloom.tasks.search import infer
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


def test_best_edit_search_takes_the_brute_force_best_replacement(zh_models):
    """search "best" against every replacement of every Han position scored one by one."""
    from genloom.tasks.search.data import HAN

    backend = search.load_backend("zh", lm=str(zh_models / "forward"))
    tok = backend.tokenizer
    han = [i for i in backend.vocab if HAN.fullmatch(tok.id_to_token(i))]
    text = "北京天学，好。"
    row = tok.encode(text)
    ones = torch.ones(1, len(row), dtype=torch.bool)
    base = float(backend.lm(torch.tensor([row]), ones)[0])
    brute = max((float(backend.lm(torch.tensor([row[:i] + [t] + row[i + 1:]]), ones)[0]) - base, i, t)
                for i, c in enumerate(text) if HAN.fullmatch(c) for t in han if t != row[i])
    edits = search.BestEdits(backend, backend.lm, han, top_k=len(han))
    [(gain, pos, tok_id)] = edits([row], [[bool(HAN.fullmatch(c)) for c in text]])
    assert (pos, tok_id) == brute[1:] and gain == pytest.approx(brute[0], abs=1e-4)
    g = torch.Generator().manual_seed(0)
    below = search.CorrectConfig(search="best", top_k=len(han), penalty=brute[0] - 1e-3, max_edits=1)
    above = search.CorrectConfig(search="best", top_k=len(han), penalty=brute[0] + 1e-3, max_edits=1)
    fixed = search.correct_texts(backend, [text], below, generator=g, edits=edits)[0]
    assert fixed == text[:pos] + tok.id_to_token(tok_id) + text[pos + 1:]
    assert search.correct_texts(backend, [text], above, generator=g, edits=edits) == [text]
    assert len(edits.memo) == 1  # the second and third calls scored nothing again
    # more edits: each one the best of its own row, never the same position twice, stopping below the penalty
    many = search.CorrectConfig(search="best", top_k=len(han), penalty=0.0, max_edits=3)
    out = search.correct_texts(backend, [text], many, generator=g)[0]
    assert 1 <= sum(a != b for a, b in zip(out, text)) <= 3 and out[4] + out[6] == "，。"


def test_shortlist_ranks_candidates_by_the_one_token_look_ahead(zh_models, monkeypatch):
    """BestEdits' cached look-ahead against whole forwards: log p(w | x_<i) + log p(x_i+1 | x_<i, w)."""
    from genloom.tasks.search.data import HAN

    backend = search.load_backend("zh", lm=str(zh_models / "forward"))
    tok, model = backend.tokenizer, backend.lm.model
    han = [i for i in backend.vocab if HAN.fullmatch(tok.id_to_token(i))]
    key = tuple(tok.encode("北京天学很好"))
    pos, k = [0, 2, 5], 12
    ids = [tok.bos_id, *key, tok.eos_id]
    with torch.no_grad():
        first = model(torch.tensor([ids[:-1]]))[0].float().log_softmax(-1)  # p(. | x_<i) at every i
    scores, cand = first[pos][:, han].topk(k, dim=-1)
    cand = torch.tensor(han)[cand]
    want = []
    for row, p in enumerate(pos):
        look = []
        for w in cand[row].tolist():
            with torch.no_grad():
                nxt = model(torch.tensor([[*ids[: p + 1], w]]))[0, -1].float().log_softmax(-1)
            look.append(float(scores[row, len(look)]) + float(nxt[ids[p + 2]]))
        want.append(sorted(range(k), key=lambda j: -look[j])[:4])
    edits = search.BestEdits(backend, backend.lm, han, top_k=k, shortlist=4)
    expected = [sorted(cand[i, w].tolist()) for i, w in enumerate(want)]
    for chunk in (infer.SHORTLIST_ROWS, 5, 1):  # rows stepped at once: one chunk, ragged chunks (5 < 3 positions x 12)
        monkeypatch.setattr(infer, "SHORTLIST_ROWS", chunk)
        got = edits._shortlist(key, pos, scores, cand)
        assert [sorted(r) for r in got.tolist()] == expected, chunk
    # and the whole search runs with it, choosing among the shortlisted candidates only
    [(gain, at, _)] = edits([list(key)], [[True] * len(key)])
    assert gain > float("-inf") and 0 <= at < len(key)


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
    (["gibbs", "--lm", "{models}/forward"], "Gibbs sampling needs the masked LM"),
    (["keywords", "--lm", "{models}/forward", "--keywords", "北京", "--proposal", "mlm"], "with --lm the proposals"),
    (["keywords", "--lm", "{models}/mlm", "--keywords", "北京"], "is not a causal LM"),
    (["keywords", "--lm", "{models}/forward", "--keywords", "北北北", "--max-run", "2"],
     "repeats a token more than --max-run 2 times"),
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


def test_a_causal_lm_directory_alone_is_target_and_proposal(zh_models, capsys):
    """`--lm DIR` (genloom-zh-base's way in): the LM's log p is the target, its next-token scores the
    proposal, and the search still pins every keyword."""
    from genloom.models import load

    backend = search.load_backend("zh", lm=str(zh_models / "forward"))
    model, tok = load(zh_models / "forward")
    assert backend.masked is None and backend.lm_backward is None and backend.slots.backward is None
    ids = tok.encode("北京大学")
    with torch.no_grad():
        logp = model(torch.tensor([[tok.bos_id, *ids]]))[0].double().log_softmax(-1)
    by_hand = sum(float(logp[i, t]) for i, t in enumerate([*ids, tok.eos_id]))
    got = backend.lm(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.bool))
    assert float(got[0]) == pytest.approx(by_hand, abs=1e-4)
    rc, out, err = run_cli(capsys, "keywords", "--lm", str(zh_models / "forward"), "--keywords", "北京,科学",
                           "--num-samples", "2", "--steps", "15", "--chains", "2", "--max-len", "12", "--json")
    assert rc == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows and all("北京" in r["output"] and "科学" in r["output"] for r in rows)
    rc, out, err = run_cli(capsys, "correct", "--lm", str(zh_models / "forward"), "--text", "今天天气很好。")
    assert rc == 0 and len(out.splitlines()) == 1, err


def test_a_backward_lm_pairs_with_the_forward_one(zh_models, tmp_path, capsys):
    """`--lm FWD --lm-backward BWD`: the proposal is log p_fwd(w | left) + log p_bwd(w | right read
    backwards), `lm_backward` scores the sentence right to left, and mismatched pairs are refused."""
    import shutil

    from genloom.models import Transformer, TransformerConfig, load, save
    from genloom.tasks.search.data import chinese_tokenizer

    back = tmp_path / "backward"
    shutil.copytree(zh_models / "backward", back)
    (back / "direction.json").write_text('{"reverse": true}', encoding="utf-8")  # as `lm pretrain --reverse` writes
    backend = search.load_backend("zh", lm=str(zh_models / "forward"), lm_backward=str(back))
    fwd, tok = load(zh_models / "forward")
    bwd, _ = load(back)
    ids = tok.encode("北京大学很好")
    ones = torch.ones(1, len(ids), dtype=torch.bool)
    with torch.no_grad():
        left = fwd(torch.tensor([[tok.bos_id, *ids[:2]]]))[0, -1].float().log_softmax(-1)
        right = bwd(torch.tensor([[tok.bos_id, *ids[3:][::-1]]]))[0, -1].float().log_softmax(-1)
        logp = bwd(torch.tensor([[tok.bos_id, *ids[::-1]]]))[0].double().log_softmax(-1)
    got = backend.slots.slot_scores(torch.tensor([ids]), ones, torch.tensor([2]))[0]
    assert torch.allclose(got, left + right, atol=1e-5)
    by_hand = sum(float(logp[i, t]) for i, t in enumerate([*ids[::-1], tok.eos_id]))
    assert float(backend.lm_backward(torch.tensor([ids]), ones)[0]) == pytest.approx(by_hand, abs=1e-4)
    rc, out, err = run_cli(capsys, "correct", "--lm", str(zh_models / "forward"), "--lm-backward", str(back),
                           "--both", "--text", "今天天气很好。")
    assert rc == 0 and len(out.splitlines()) == 1, err
    other = tmp_path / "other"  # a backward LM of another vocabulary
    torch.manual_seed(0)
    other_tok = chinese_tokenizer(["别的句子里的字"], 200)
    save(Transformer(TransformerConfig(vocab_size=other_tok.vocab_size, n_layer=1, n_head=2, d_model=16, d_ff=32,
                                       max_len=40)), other_tok, other)
    (other / "direction.json").write_text('{"reverse": true}', encoding="utf-8")
    for argv, message in ((["--lm", str(zh_models / "forward"), "--lm-backward", str(zh_models / "forward")],
                           "reads left to right"),
                          (["--lm", str(back)], "reads right to left"),
                          (["--lm-backward", str(back)], "--lm-backward goes with --lm"),
                          (["--lm", str(zh_models / "forward"), "--lm-backward", str(other)], "another vocabulary")):
        rc, out, err = run_cli(capsys, "correct", *argv, "--text", "今天天气很好。")
        assert rc == 2 and out == "" and message in err and len(err.strip().splitlines()) == 1, err


def test_length_model_and_repeat_ban_keep_every_keyword(zh_models, capsys):
    rc, out, err = run_cli(capsys, "keywords", "--lm", str(zh_models / "forward"), "--keywords", "北京,科学",
                           "--num-samples", "3", "--steps", "30", "--chains", "3", "--max-len", "14",
                           "--natural-len", "10", "--natural-len-sd", "2", "--no-repeat", "2", "--json")
    assert rc == 0, err
    rows = [json.loads(line)["output"] for line in out.splitlines()]
    assert rows and all("北京" in r and "科学" in r and len(r) <= 14 for r in rows)
    assert all(len({r[i: i + 2] for i in range(len(r) - 1)}) == len(r) - 1 for r in rows)  # no 2-gram twice


def _peaked_lm(path, chars: str, peak: str):
    """A char LM over `chars` whose next token is `peak` almost surely, at every position."""
    from genloom.models import Transformer, TransformerConfig, save
    from genloom.tokenizers import CharTokenizer

    tok = CharTokenizer(list(chars))
    model = Transformer(TransformerConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, d_model=16, d_ff=32,
                                          max_len=40, mask="causal", tie_embeddings=False, bias=True))
    ids = [tok.token_to_id(c) for c in peak]
    with torch.no_grad():  # final hidden state = the norm's bias, whose product with a peak row is 50
        model.norm.weight.zero_()
        model.norm.bias.copy_(torch.nn.functional.normalize(torch.ones(16), dim=0))
        model.lm_head.weight.zero_()
        model.lm_head.weight[ids] = model.norm.bias * 50
    save(model, tok, path)
    return tok, ids


def test_max_run_bans_a_token_three_times_in_a_row(tmp_path, capsys):
    """An LM that wants 好 everywhere stutters 好好好 (the 3-gram ban lets one such trigram
    through); --max-run 2 keeps every output to runs of two at most, with every keyword."""
    _peaked_lm(tmp_path / "good", "北京大学科研究很好。", "好")
    argv = ["keywords", "--lm", str(tmp_path / "good"), "--keywords", "北京,科学", "--num-samples", "3",
            "--steps", "30", "--chains", "2", "--max-len", "12", "--no-repeat", "3", "--json"]
    outputs = {}
    for run in ("0", "2"):
        rc, out, err = run_cli(capsys, *argv, "--max-run", run, "--seed", "1")
        assert rc == 0, err
        outputs[run] = [json.loads(line)["output"] for line in out.splitlines()]
    assert any("好好好" in o for o in outputs["0"])
    assert outputs["2"] and all("北京" in o and "科学" in o and not re.search(r"(.)\1\1", o) for o in outputs["2"])


def test_chinese_moves_never_write_whitespace(tmp_path, capsys):
    """An LM that puts all its mass on spaces and newlines (the corpora have them) still gets
    keyword sentences without whitespace: a Chinese move writes only non-whitespace tokens."""
    tok, white = _peaked_lm(tmp_path / "spaces", "北京大学科研究很好。 \n\u3000", " \n\u3000")
    backend = search.load_backend("zh", lm=str(tmp_path / "spaces"))
    by_hand = [i for i in range(tok.vocab_size) if i not in tok.special_ids and i not in white]
    assert backend.vocab == by_hand
    rc, out, err = run_cli(capsys, "keywords", "--lm", str(tmp_path / "spaces"), "--keywords", "北京,科学",
                           "--num-samples", "3", "--steps", "20", "--chains", "2", "--max-len", "12", "--json")
    assert rc == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows and all("北京" in r["output"] and not re.search(r"\s", r["output"]) for r in rows)
