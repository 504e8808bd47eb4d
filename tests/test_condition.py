"""The conditional-generation task: the 20-character copy check against brute force, the judge's
padding invariance and accuracy, perplexity against step-by-step scoring, and, on a synthetic
corpus whose two labels use disjoint alphabets, that a CLN model, the label-token baseline and
a CLN model conditioned on sentence vectors (driven by a class-mean vector, not a label) all
generate the requested class; plus the CLI's one-line errors."""

from __future__ import annotations

import json
import random

import pytest
import torch

from genloom.cli import main
from genloom.errors import UserError
from genloom.models.judge import CharCNNJudge, JudgeConfig, classify, encode_texts
from genloom.tasks.condition import (CopyIndex, condition_for, generate, load_data, load_model, mean_nll,
                                     other_conditions)
from genloom.tokenizers import CharTokenizer

ALPHABETS = {"neg": "差烂坏糟恨苦", "pos": "好棒赞美爱乐"}
SMALL = ["--layers", "2", "--width", "32", "--heads", "2", "--max-chars", "14", "--cond-dim", "8",
         "--steps", "100", "--batch-size", "16", "--lr", "3e-3"]


def write_corpus(path, n: int = 500, seed: int = 0) -> None:
    """Texts of 5-12 characters, each label drawing from its own alphabet, with a sentence vector
    per text: the bag of characters times a fixed random matrix (a stand-in sentence encoder)."""
    rng = random.Random(seed)
    alphabet = ALPHABETS["neg"] + ALPHABETS["pos"]
    proj = torch.randn(len(alphabet), 8, generator=torch.Generator().manual_seed(seed))
    seen: set[str] = set()
    with open(path, "w", encoding="utf-8") as f:
        while len(seen) < n:
            label = rng.choice(sorted(ALPHABETS))
            text = "".join(rng.choice(ALPHABETS[label]) for _ in range(rng.randint(5, 12)))
            if text in seen:
                continue
            seen.add(text)
            bag = torch.tensor([text.count(c) for c in alphabet], dtype=torch.float32)
            vec = (bag / bag.sum()) @ proj
            f.write(json.dumps({"text": text, "label": label, "vec": vec.tolist()}, ensure_ascii=False) + "\n")


def in_alphabet(texts: list[str], label: str) -> float:
    """Share of the texts' characters that belong to `label`'s alphabet."""
    chars = "".join(texts)
    return sum(c in ALPHABETS[label] for c in chars) / max(1, len(chars))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One synthetic corpus and the models of the task, trained briefly through the CLI."""
    root = tmp_path_factory.mktemp("condition")
    data = root / "syn.jsonl"
    write_corpus(data)
    torch.set_num_threads(1)
    runs = {"cln": ["--model", "cln"], "prefix": ["--model", "prefix"],
            "vec": ["--model", "cln", "--vector-field", "vec"], "plain": ["--model", "plain"]}
    for name, extra in runs.items():
        assert main(["condition", "train", "--data", str(data), "--out", str(root / name), *extra, *SMALL]) == 0
    assert main(["condition", "train", "--model", "judge", "--data", str(data), "--out", str(root / "judge"),
                 "--steps", "60", "--batch-size", "32"]) == 0
    return root


def test_copy_index_equals_brute_force():
    rng = random.Random(1)
    corpus = ["".join(rng.choice("abc") for _ in range(rng.randint(0, 30))) for _ in range(40)]
    index = CopyIndex(corpus, span=6)
    for _ in range(300):
        text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 14)))
        windows = [text[i : i + 6] for i in range(len(text) - 5)]
        brute = next((w for w in windows if any(w in t for t in corpus)), None)
        assert index.copied_span(text) == brute
    # a span across two training texts is not a copy
    assert CopyIndex(["xxabc", "defyy"], span=6).copied_span("abcdef") is None


def test_judge_ignores_padding():
    torch.manual_seed(0)
    tok = CharTokenizer.train(["好坏差美棒一二三四五"])
    judge = CharCNNJudge(JudgeConfig(vocab_size=tok.vocab_size, d_emb=8, channels=5, kernel_sizes=(2, 5))).eval()
    texts = ["好坏差美棒一二三四五", "好", "坏差美", "三四五五五五"]
    batch = judge(encode_texts(tok, texts, 64))  # (4, K), rows padded to 10
    for i, t in enumerate(texts):
        alone = judge(encode_texts(tok, [t], 64))[0]  # no padding (a 1-char text is padded to 5)
        torch.testing.assert_close(batch[i], alone, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(classify(judge, tok, texts), batch.softmax(-1), atol=1e-6, rtol=1e-6)


def test_judge_bag_is_a_linear_model_over_chars_and_hashed_bigrams():
    torch.manual_seed(0)
    tok = CharTokenizer.train(["好坏差美棒一二三四五"])
    cfg = JudgeConfig(vocab_size=tok.vocab_size, d_emb=8, channels=5, kernel_sizes=(2,), bag_buckets=7, bag_scale=3.0)
    judge = CharCNNJudge(cfg)
    assert not judge.bag.weight.any()  # zero-initialised: the judge starts as the CNN alone
    with torch.no_grad():
        judge.bag.weight.normal_()
    texts = ["好坏差美棒", "一"]
    ids = encode_texts(tok, texts, 64)
    got = judge.bag_logits(ids, ids != 0)  # (2, K)
    v = tok.vocab_size
    for i, text in enumerate(texts):
        chars = tok.encode(text)
        rows = chars + [v + (a * v + b) % 7 for a, b in zip(chars, chars[1:])]
        want = 3.0 * judge.bag.weight[rows].sum(0) / len(rows) ** 0.5
        torch.testing.assert_close(got[i], want)
    judge.eval()
    torch.testing.assert_close(judge(ids), judge.out(judge.features(ids)) + got)


def test_judge_is_accurate_on_the_synthetic_test_split(trained):
    meta = json.loads((trained / "judge" / "condition.json").read_text())
    assert meta["test_size"] > 0 and meta["test_accuracy"] == 1.0


def test_mean_nll_equals_step_by_step_scoring(trained):
    lm, tok, _ = load_model(trained / "plain", kind="plain")
    texts, ended = ["好棒赞", "差烂坏糟恨苦差", "美"], [True, False, True]
    total = count = 0.0
    for text, end in zip(texts, ended):
        ids = [tok.bos_id] + tok.encode(text) + ([tok.eos_id] if end else [])
        logits, state = lm.start(input_ids=torch.tensor([ids[:1]]), max_new_tokens=len(ids))
        for nxt in ids[1:]:
            total -= float(logits.log_softmax(-1)[0, nxt])
            count += 1
            logits, state = lm.step(torch.tensor([nxt]), state)
    assert mean_nll(lm, tok, texts, ended) == pytest.approx(total / count, rel=1e-5)


@pytest.mark.parametrize("name", ["cln", "prefix"])
def test_label_controls_the_alphabet(trained, name):
    model, tok, meta = load_model(trained / name)
    for label in ALPHABETS:
        texts, _ = generate(model, tok, meta, condition=condition_for(meta, label=label), n=40, seed=3)
        assert in_alphabet(texts, label) >= 0.97, (name, label, texts[:5])


@pytest.mark.parametrize("name", ["cln", "prefix", "vec"])
def test_guided_sampling_keeps_the_label(trained, name):
    """Guidance against the other label, for labels, label tokens and class-mean vectors."""
    model, tok, meta = load_model(trained / name)
    for label in ALPHABETS:
        texts, _ = generate(model, tok, meta, condition=condition_for(meta, label=label), n=40, seed=3,
                            guidance=2.0, contrast=other_conditions(meta, label))
        assert in_alphabet(texts, label) >= 0.97, (name, label, texts[:5])


def test_class_mean_vector_drives_a_vector_conditioned_model(trained):
    """Not a label: the mean of a class's sentence vectors, through the same `condition` API."""
    model, tok, meta = load_model(trained / "vec")
    assert model.config.cond_labels == 0 and model.config.cond_dim == 8
    data = load_data(data=meta["source"]["data"], label_field="label", vector_field="vec")
    train = data.splits["train"]
    for k, label in enumerate(data.label_names):
        mean = train.vectors[torch.tensor(train.labels) == k].mean(0)  # (E,)
        assert torch.allclose(condition_for(meta, label=label), mean)  # what `--label` resolves to
        texts, _ = generate(model, tok, meta, condition=mean, n=40, seed=5)
        assert in_alphabet(texts, label) >= 0.97, (label, texts[:5])
    with pytest.raises(UserError, match=r"must be \(1, 8\) or \(8,\)"):
        generate(model, tok, meta, condition=torch.zeros(3), n=1)


def test_generate_and_eval_cli(trained, tmp_path, capsys):
    vec = tmp_path / "v.json"
    vec.write_text(json.dumps(json.loads((trained / "vec" / "condition.json").read_text())["class_means"]["pos"]))
    assert main(["condition", "generate", str(trained / "vec"), "--vector-file", str(vec), "-n", "6", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 6 and in_alphabet([r["text"] for r in rows], "pos") >= 0.9
    out = tmp_path / "table.json"
    assert main(["condition", "eval", str(trained / "cln"), str(trained / "prefix"), "--judge",
                 str(trained / "judge"), "--lm", str(trained / "plain"), "-n", "30", "--out", str(out)]) == 0
    table = json.loads(out.read_text())
    assert table["reference"]["judge_test_accuracy"] == 1.0
    for row in table["models"]:
        assert row["controllability"] >= 0.95 and row["samples_per_label"] == 30
        assert set(row["per_label"]) == {"neg", "pos"} and 0 < row["distinct_2"] <= 1
        assert 1 < row["perplexity"] < 8  # 6 equally likely characters (+ <eos>) per class
    assert "control" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["generate", "{cln}", "--label", "happy"], "unknown label 'happy'"),
    (["generate", "{prefix}", "--vector-file", "{vec}"], "takes labels only"),
    (["generate", "{cln}", "--label", "pos", "--top-p", "1.5"], "top-p must be in"),
    (["generate", "{plain}", "--label", "pos"], "takes no label"),
    (["generate", "{cln}", "--label", "pos", "--guidance", "-1"], "--guidance must be >= 0"),
    (["generate", "{cln}", "--label", "pos", "--temperature", "0"], "--temperature must be > 0"),
    (["generate", "{vecmodel}", "--vector-file", "{vec_file}", "--guidance", "1"], "--guidance contrasts a --label"),
    (["generate", "{root}", "--label", "pos"], "not a `genloom condition` model directory"),
    (["train", "--out", "{root}/x", "--vector-field", "vec", "--steps", "1"], "--vector-field needs --data"),
    (["train", "--out", "{root}/x", "--corpus", "nope", "--steps", "1"], "unknown corpus 'nope'"),
    (["eval", "{cln}", "--judge", "{plain}", "--lm", "{plain}"], "holds a 'plain' model, expected 'judge'"),
    (["train", "--data", "{root}/syn.jsonl", "--out", "{root}/fresh", "--resume", "--steps", "5"], "nothing to resume"),
    (["train", "--model", "judge", "--data", "{root}/syn.jsonl", "--out", "{root}/j2", "--resume"], "--resume is for"),
])
def test_cli_errors_are_one_line(trained, tmp_path, capsys, argv, message):
    vec = tmp_path / "v.json"
    vec.write_text("[0.5, 0.5]")
    vec8 = tmp_path / "v8.json"
    vec8.write_text(json.dumps([0.1] * 8))
    names = {k: str(trained / k) for k in ("cln", "prefix", "plain")} | {
        "root": str(trained), "vec": str(vec), "vec_file": str(vec8), "vecmodel": str(trained / "vec")}
    assert main(["condition", *[a.format(**names) for a in argv]]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
