"""`genloom search` and the training of its models, on tiny random models saved to disk.

Random models make no fluent text, so the tests assert what must hold for any model: every
keyword in every output, lengths and vocabularies respected, seeded runs reproducible, the
correction search restoring a sentence when its target prefers the original (an oracle target),
one-line errors with exit code 2, and the training pieces (masking, losses, saved directories).
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from genloom.cli import main
from genloom.decode.mcmc_edits import UniformSlots
from genloom.decode.targets import HammingPenalty, Target
from genloom.errors import UserError
from genloom.models import Transformer, TransformerConfig, save
from genloom.tasks import search, search_models
from genloom.tasks.search_models import MASK_CHAR, MaskedCollate, chinese_tokenizer

SENTENCES = ["北京大学的科学研究很好。", "今天天气很好，我们去公园玩。", "科学技术是第一生产力。",
             "他在北京工作了三年。", "大学生喜欢研究新的技术。", "我们的公园里有很多花。"]


@pytest.fixture(scope="module")
def zh_models(tmp_path_factory):
    """mlm / forward / backward directories of tiny random models sharing one tokenizer."""
    root = tmp_path_factory.mktemp("search-models")
    tok = chinese_tokenizer(SENTENCES, 200)
    for seed, (name, mask) in enumerate((("mlm", "bidirectional"), ("forward", "causal"), ("backward", "causal"))):
        torch.manual_seed(seed)
        model = Transformer(TransformerConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, d_model=16, d_ff=32,
                                              max_len=40, mask=mask))
        save(model, tok, root / name)
    return root


def run_cli(capsys, *argv):
    rc = main(["search", *argv, "--quiet"])
    out, err = capsys.readouterr()
    return rc, out, err


def test_keywords_outputs_contain_every_keyword(zh_models, capsys):
    rc, out, _ = run_cli(capsys, "keywords", "--models", str(zh_models), "--keywords", "北京,大学，科学", "-n", "3",
                         "--steps", "25", "--chains", "4", "--min-len", "6", "--max-len", "14", "--jsonl")
    assert rc == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert 1 <= len(rows) <= 3 and [r["rank"] for r in rows] == list(range(len(rows)))
    for r in rows:
        assert r["keywords"] == ["北京", "大学", "科学"]
        assert all(k in r["text"] for k in r["keywords"]) and len(r["text"]) <= 14
        assert MASK_CHAR not in r["text"]
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    again = run_cli(capsys, "keywords", "--models", str(zh_models), "--keywords", "北京,大学,科学", "-n", "3",
                    "--steps", "25", "--chains", "4", "--min-len", "6", "--max-len", "14", "--jsonl")[1]
    assert again == out  # seeded


def test_keywords_from_a_file_with_both_proposals(zh_models, tmp_path, capsys):
    (tmp_path / "sets.txt").write_text("北京,工作\n\n公园 花\n", encoding="utf-8")
    for proposal in ("mlm", "lm"):
        target = tmp_path / f"out-{proposal}.txt"
        rc, out, _ = run_cli(capsys, "keywords", "--models", str(zh_models), "--input", str(tmp_path / "sets.txt"),
                             "-n", "2", "--steps", "15", "--proposal", proposal, "--output", str(target))
        assert rc == 0 and out == ""
        lines = target.read_text(encoding="utf-8").splitlines()
        assert len(lines) == 4
        assert all("北京" in t and "工作" in t for t in lines[:2]) and all("公园" in t and "花" in t for t in lines[2:])


def test_gibbs_samples_have_the_asked_lengths(zh_models, capsys):
    rc, out, _ = run_cli(capsys, "gibbs", "--models", str(zh_models), "-n", "5", "--steps", "30", "--min-len", "4",
                         "--max-len", "7")
    texts = out.splitlines()
    assert rc == 0 and len(texts) == 5
    assert all(4 <= len(t) <= 7 and MASK_CHAR not in t for t in texts)
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
    models = search_models.load_chinese_models(zh_models)
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
    rc, out, _ = run_cli(capsys, "correct", "--models", str(zh_models), "--text", text, "--penalty", "0", "--jsonl")
    row = json.loads(out)
    assert rc == 0 and row["input"] == text and len(row["output"]) == len(text)
    assert re.sub(r"[\u4e00-\u9fff]", "", row["output"]) == re.sub(r"[\u4e00-\u9fff]", "", text)


@pytest.fixture(scope="module")
def en_lm(tmp_path_factory):
    """A tiny random GPT-2 with a byte-level BPE (and <|endoftext|>) saved as a HF directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    texts = ["the library returns a value", "a function of the module", "return the value of the list"] * 3
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=64, n_embd=16, n_layer=1, n_head=2)).eval()
    path = tmp_path_factory.mktemp("tiny-en")
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


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
    (["keywords", "--models", "{models}", "--keywords", "北京", "--output", "{missing}/x.txt"], "no directory"),
    (["keywords", "--models", "{models}", "--keywords", "北京大学", "--max-len", "3"], "max-len"),
    (["correct", "--models", "{models}", "--input", "{missing}.txt"], "no input file"),
    (["gibbs", "--models", "{models}", "--init", " "], "--init is empty"),
    (["train-models", "--out", "{missing}", "--only", "bert"], "unknown model"),
])
def test_errors_are_one_line(zh_models, tmp_path, capsys, argv, message):
    argv = [a.format(models=zh_models, missing=tmp_path / "nope") for a in argv]
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1


# ---- training pieces -----------------------------------------------------------------------


def test_masked_collate_masks_only_characters():
    tok = chinese_tokenizer(SENTENCES, 200)
    mask_id = search_models.mask_id_of(tok)
    items = [torch.tensor(tok.encode(s, add_bos=True, add_eos=True)) for s in SENTENCES * 50]
    torch.manual_seed(0)
    batch = MaskedCollate(pad_id=0, mask_id=mask_id, first_char=4, vocab_size=tok.vocab_size - 1, rate=0.15)(items)
    chosen = batch["targets"] != -100
    lengths = batch["valid"].sum(1)
    col = torch.arange(chosen.shape[1])[None]
    assert not bool((chosen & ((col == 0) | (col >= lengths[:, None] - 1))).any())  # never BOS, EOS, pad
    assert bool(chosen.any(1).all())  # at least one per row
    ids, _ = search_models.pad_rows(items, 0)
    assert torch.equal(batch["targets"][chosen], ids[chosen])
    as_mask = (batch["inputs"][chosen] == mask_id).float().mean()
    kept = (batch["inputs"][chosen] == ids[chosen]).float().mean()
    assert 0.75 < float(as_mask) < 0.85 and 0.07 < float(kept) < 0.15
    assert torch.equal(batch["inputs"][~chosen], ids[~chosen])


def test_train_one_saves_loadable_models(tmp_path):
    tok = chinese_tokenizer(SENTENCES, 200)
    cfg = search_models.SearchModelsConfig(out=str(tmp_path), steps=4, minutes=5.0, batch_size=4, progress=False,
                                           eval_sentences=4)
    texts = {"train": SENTENCES * 4, "dev": SENTENCES[:4]}
    for name in ("mlm", "forward", "backward"):
        search_models.train_one(name, cfg, texts, tok)
    models = search_models.load_chinese_models(tmp_path)
    assert models.mask_id == tok.vocab_size - 1 and models.tokenizer.decode(tok.encode(SENTENCES[0])) == SENTENCES[0]
    assert models.mlm.config.mask == "bidirectional" and models.forward.config.mask == "causal"
    log = [json.loads(line) for line in (tmp_path / "runs" / "forward" / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["event"] == "end" and log[-1]["step"] == 4
    with pytest.raises(UserError, match="earlier run"):
        search_models.train_search_models(search_models.SearchModelsConfig(out=str(tmp_path), models=("forward",)))


def test_docstring_sentences_and_hash_split(tmp_path):
    src = tmp_path / "mod.py"
    src.write_text('''"""Return the value of the first item in the list.

Short line.
"""


def f(x):
    """Raise ValueError if the value is not present in the table. See f(x) = 2, e.g. here."""


class C:
    """An object that holds every value of the cache until it is closed."""
''', encoding="utf-8")
    assert search_models.docstring_sentences(src) == [
        "Return the value of the first item in the list.",
        "Raise ValueError if the value is not present in the table.",
        "An object that holds every value of the cache until it is closed."]
    sentences = [f"Sentence number {i} is here." for i in range(2000)]
    train, test = search_models.hash_split(sentences, "train"), search_models.hash_split(sentences, "test")
    assert sorted(train + test) == sorted(sentences) and 150 < len(test) < 250
    assert search_models.hash_split(list(reversed(sentences)), "test") == list(reversed(test))
