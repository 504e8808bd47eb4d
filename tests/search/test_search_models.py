"""The training pieces of the search models: BERT masking, the training and saving of each model
(run and model directories replaced only with force), the English sentences and their split."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from genloom.errors import UserError
from genloom.tasks.search.data import chinese_tokenizer, docstring_sentences, hash_split, mask_id_of
from genloom.tasks.search.models import SearchModelsConfig, load_chinese_models, train_one, train_search_models
from genloom.train.lm import MaskedLMCollate, pad_rows


def test_masked_collate_masks_only_characters(sentences):
    tok = chinese_tokenizer(sentences, 200)
    mask_id = mask_id_of(tok)
    items = [tok.encode(s, add_bos=True, add_eos=True) for s in sentences * 50]
    torch.manual_seed(0)
    batch = MaskedLMCollate(pad_id=0, mask_id=mask_id, first_id=4, vocab_size=tok.vocab_size - 1, rate=0.15)(items)
    chosen = batch["targets"] != -100
    lengths = batch["valid"].sum(1)
    col = torch.arange(chosen.shape[1])[None]
    assert not bool((chosen & ((col == 0) | (col >= lengths[:, None] - 1))).any())  # never BOS, EOS, pad
    assert bool(chosen.any(1).all())  # at least one per row
    ids = pad_rows(items, 0)
    assert torch.equal(batch["targets"][chosen], ids[chosen])
    as_mask = (batch["inputs"][chosen] == mask_id).float().mean()
    kept = (batch["inputs"][chosen] == ids[chosen]).float().mean()
    assert 0.75 < float(as_mask) < 0.85 and 0.07 < float(kept) < 0.15
    assert torch.equal(batch["inputs"][~chosen], ids[~chosen])


def test_train_one_saves_loadable_models(tmp_path, sentences):
    tok = chinese_tokenizer(sentences, 200)
    cfg = SearchModelsConfig(out=str(tmp_path), steps=4, minutes=5.0, batch_size=4, progress=False,
                                           eval_sentences=4)
    texts = {"train": sentences * 4, "dev": sentences[:4]}
    for name in ("mlm", "forward", "backward"):
        train_one(name, cfg, texts, tok)
    models = load_chinese_models(tmp_path)
    assert models.mask_id == tok.vocab_size - 1 and models.tokenizer.decode(tok.encode(sentences[0])) == sentences[0]
    assert models.mlm.config.mask == "bidirectional" and models.forward.config.mask == "causal"
    log = [json.loads(line) for line in (tmp_path / "runs" / "forward" / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["event"] == "end" and log[-1]["step"] == 4
    with pytest.raises(UserError, match="earlier run"):
        train_search_models(SearchModelsConfig(out=str(tmp_path), models=("forward",)))


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
    assert docstring_sentences(src) == [
        "Return the value of the first item in the list.",
        "Raise ValueError if the value is not present in the table.",
        "An object that holds every value of the cache until it is closed."]
    sentences = [f"Sentence number {i} is here." for i in range(2000)]
    train, test = hash_split(sentences, "train"), hash_split(sentences, "test")
    assert sorted(train + test) == sorted(sentences) and 150 < len(test) < 250
    assert hash_split(list(reversed(sentences)), "test") == list(reversed(test))


def test_force_replaces_a_model_and_its_run(tmp_path, sentences):
    tok = chinese_tokenizer(sentences, 200)
    cfg = SearchModelsConfig(out=str(tmp_path), steps=2, minutes=5.0, batch_size=4, progress=False, eval_sentences=4)
    texts = {"train": sentences * 2, "dev": sentences[:2]}
    train_one("eval-zh", cfg, texts, tok)
    before = (tmp_path / "eval-zh" / "model.safetensors").read_bytes()
    with pytest.raises(UserError, match="--force"):
        train_one("eval-zh", cfg, texts, tok)
    assert (tmp_path / "eval-zh" / "model.safetensors").read_bytes() == before  # untouched
    train_one("eval-zh", dataclasses.replace(cfg, force=True, seed=1), texts, tok)
    assert (tmp_path / "eval-zh" / "model.safetensors").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval-zh", "runs"]  # no temporary directories left
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["eval-zh"]
