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


def test_a_stopped_run_resumes_to_the_uninterrupted_losses_and_weights(tmp_path, sentences, monkeypatch):
    """A train-models run interrupted after its first checkpoint (KeyboardInterrupt, as Ctrl-C) is
    continued by resume=True: the same metrics (but the clock) and the same saved weights as an
    uninterrupted run; a model already saved is kept, and a plain rerun points to --resume."""
    from safetensors.torch import load_file

    import genloom.tasks.search.models as search_models

    tok = chinese_tokenizer(sentences, 200)
    texts = {"train": sentences * 4, "dev": sentences[:4]}
    cfg = SearchModelsConfig(steps=8, minutes=5.0, batch_size=4, progress=False, eval_sentences=4, lr=3e-3)
    train_one("forward", dataclasses.replace(cfg, out=str(tmp_path / "whole")), texts, tok)

    real, calls = search_models.causal_lm_loss, {"n": 0}

    def interrupted(model, batch):
        calls["n"] += 1
        if calls["n"] == 8:  # the forward of step 6 (steps and the dev evaluations at steps 2 and 4 counted)
            raise KeyboardInterrupt
        return real(model, batch)

    cut = dataclasses.replace(cfg, out=str(tmp_path / "cut"))
    monkeypatch.setattr(search_models, "causal_lm_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_one("forward", cut, texts, tok)
    monkeypatch.setattr(search_models, "causal_lm_loss", real)
    assert not (tmp_path / "cut" / "forward").exists()
    assert (tmp_path / "cut" / "runs" / "forward" / "checkpoints" / "step-00000004").is_dir()
    with pytest.raises(UserError, match="--resume to continue it"):
        train_one("forward", cut, texts, tok)
    with pytest.raises(UserError, match="these differ: lr"):
        train_one("forward", dataclasses.replace(cut, resume=True, lr=1e-3), texts, tok)
    train_one("forward", dataclasses.replace(cut, resume=True), texts, tok)

    def records(root):
        lines = (root / "runs" / "forward" / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k not in ("time", "tokens_per_s")} for x in lines]

    assert records(tmp_path / "whole") == records(tmp_path / "cut") and len(records(tmp_path / "cut")) >= 4
    for name in ("model.safetensors", "model_ema.safetensors"):
        a, b = load_file(tmp_path / "whole" / "forward" / name), load_file(tmp_path / "cut" / "forward" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # resuming the whole set keeps the saved model and trains nothing
    before = (tmp_path / "cut" / "forward" / "model.safetensors").read_bytes()
    done = train_search_models(dataclasses.replace(cut, resume=True, models=("forward",)))
    assert done == {"forward": tmp_path / "cut" / "forward"}
    assert (tmp_path / "cut" / "forward" / "model.safetensors").read_bytes() == before
    with pytest.raises(UserError, match="nothing to resume"):
        train_search_models(dataclasses.replace(cut, out=str(tmp_path / "none"), resume=True, models=("forward",)))
