"""The figures benchmarks/search.py reports, against hand counts and a brute force: keyword
coverage, and the NLL per token (EOS counted) of padded batches against each text scored alone."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from genloom.decode.targets import CausalLMScorer
from genloom.models import Transformer, TransformerConfig
from genloom.tokenizers import CharTokenizer

spec = importlib.util.spec_from_file_location("benchmark_search",
                                              Path(__file__).resolve().parents[2] / "benchmarks" / "search.py")
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench
spec.loader.exec_module(bench)


def test_coverage_by_hand():
    assert bench.covered("广州的白云机场", ["白云", "机场"], "zh")
    assert not bench.covered("广州的白云机场", ["白云", "上海"], "zh")
    assert bench.covered("Open the File now", ["file", "OPEN"], "en")  # English ignores case
    assert not bench.covered("白云", ["白云", "白云机"], "zh")


def test_nll_per_token_equals_each_text_scored_alone():
    texts = ["白云机场很大", "白云", "今天天气很好，我们去机场"]
    tok = CharTokenizer.train(texts)
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, d_model=16, d_ff=32,
                                          max_len=32, init_std=0.5)).eval()
    got = bench.nll_per_token(CausalLMScorer(model, bos_id=tok.bos_id, eos_id=tok.eos_id), tok, texts)
    for text, value in zip(texts, got):
        ids = [tok.bos_id, *tok.encode(text), tok.eos_id]
        with torch.no_grad():
            logp = model(torch.tensor([ids[:-1]]))[0].log_softmax(-1)  # (L + 1, V)
        want = -float(logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum()) / (len(ids) - 1)
        assert abs(value - want) <= 1e-5 * max(1.0, abs(want))


def test_a_text_past_the_context_is_scored_on_its_first_part_without_eos():
    """An output longer than the evaluation LM's context (a 24-token English sample can hold 139
    characters, 141 tokens with BOS and EOS) is scored on the tokens that fit, with no EOS it
    never reaches there; the texts that fit in the same batch keep their EOS."""
    texts = ["白云机场很大今天天气很好我们去机场白云", "白云", "今天天气很好"]
    tok = CharTokenizer.train(texts)
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, d_model=16, d_ff=32,
                                          max_len=12, init_std=0.5)).eval()
    scorer = CausalLMScorer(model, bos_id=tok.bos_id, eos_id=tok.eos_id)
    assert bench.text_room(scorer) == 10
    got = bench.nll_per_token(scorer, tok, texts)
    for text, value in zip(texts, got):
        ids = [tok.bos_id, *tok.encode(text)[:10]] + ([tok.eos_id] if len(text) <= 10 else [])
        with torch.no_grad():
            logp = model(torch.tensor([ids[:-1]]))[0].log_softmax(-1)
        want = -float(logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum()) / (len(ids) - 1)
        assert abs(value - want) <= 1e-5 * max(1.0, abs(want))


def test_keyword_sets_of_a_split_are_nouns_of_that_splits_titles():
    """--zh-split dev tunes on dev titles: its sets come from dev titles only, never a test one."""
    from genloom.data import load_corpus

    tok = CharTokenizer.train([r["title"] for split in ("dev", "test") for r in load_corpus("inews", split)])
    titles = {split: {r["title"] for r in load_corpus("inews", split)} for split in ("dev", "test")}
    for split in ("dev", "test"):
        sets = bench.chinese_sets(tok, 20, 0, split=split)
        assert len(sets) == 20
        for s in sets:
            assert s["source"] in titles[split] and s["source"] not in titles[{"dev": "test", "test": "dev"}[split]]
            assert 2 <= len(s["keywords"]) <= 3 and all(k in s["source"] for k in s["keywords"])


def test_reused_baselines_only_for_the_same_sets_and_settings(tmp_path):
    import argparse

    import pytest

    from genloom.errors import UserError

    sets = [{"keywords": ["host", "port"]}, {"keywords": ["find", "file"]}]
    methods = {m: {"outputs": [f"{m} one", f"{m} two"], "seconds_per_set": 1.5} for m in ("sample", "beam", "beam-norep3")}
    old = {"keyword_sets": [s["keywords"] for s in sets], "config": {"max_len": 24, "beam": 3}, "methods": methods}
    out = tmp_path / "search.json"
    out.write_text(json.dumps({"keywords_en": old}), encoding="utf-8")
    args = argparse.Namespace(out=str(out), reuse_baselines="keywords_en", beam=3)
    outputs, seconds = bench.reused_baselines(args, sets, 24)
    assert outputs == {m: v["outputs"] for m, v in methods.items()} and seconds == {m: 3.0 for m in methods}
    for changed, max_len, message in ((dict(vars(args), reuse_baselines="keywords_zh"), 24, "has no"),
                                      (dict(vars(args), beam=4), 24, "other keyword sets"),
                                      (vars(args), 32, "other keyword sets")):
        with pytest.raises(UserError, match=message):
            bench.reused_baselines(argparse.Namespace(**changed), sets, max_len)
    with pytest.raises(UserError, match="other keyword sets"):
        bench.reused_baselines(args, sets[::-1], 24)


@pytest.mark.parametrize("both", [False, True])
def test_correction_oracle_against_the_lm_by_hand(zh_models, sentences, monkeypatch, tmp_path, both):
    """Every position tried and every Han character a candidate: the oracle finds each right
    character, and its gains are log p(clean) - log p(corrupted) under correction's fluency: the
    target LM, or with --both the mean of the forward and the backward LM's."""
    import argparse
    import shutil

    from genloom.models.io import write_direction
    from genloom.tasks import search

    back = tmp_path / "backward"
    shutil.copytree(zh_models / "backward", back)
    write_direction(back, True)  # as `genloom lm pretrain --reverse` marks it
    backend = search.load_backend("zh", lm=str(zh_models / "forward"), lm_backward=str(back))
    monkeypatch.setattr(bench, "correction_sentences", lambda tok, n, seed, split: sentences[:n])
    args = argparse.Namespace(correct=5, seed=0, correct_split="dev", correct_top_k=10_000, positions=0,
                              shortlist=0, penalties="0,1000", both=both)
    got = bench.correction_oracle(backend, args)
    clean, corrupted, _ = bench.corruptions(backend, args)

    def logp(lm, text):
        return float(lm(torch.tensor([backend.encode(text)]), torch.ones(1, len(text), dtype=torch.bool))[0])

    lms = (backend.lm, backend.lm_backward) if both else (backend.lm,)
    with torch.no_grad():
        gains = [sum(logp(lm, a) - logp(lm, b) for lm in lms) / len(lms) for a, b in zip(clean, corrupted)]
    assert got["position_tried"] == got["in_top_k"] == got["in_shortlist"] == 1.0
    assert abs(got["gain_quantiles"]["0.50"] - sorted(gains)[2]) < 1e-4
    assert got["by_penalty"][0]["gain_above"] == got["by_penalty"][0]["reachable"] == sum(g > 0 for g in gains) / 5
    assert got["by_penalty"][1]["gain_above"] == 0.0
    narrow = bench.correction_oracle(backend, argparse.Namespace(**{**vars(args), "correct_top_k": 1, "positions": 1}))
    assert narrow["in_top_k"] < 1.0 and narrow["position_tried"] < 1.0  # one candidate, one position: some lost
