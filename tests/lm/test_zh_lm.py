"""The Chinese LM builder (tasks/lm/zh_lm.py) in a few steps on tiny texts: the directory loads,
its BPE holds multi-character Chinese tokens, `pack_blocks` rows overlap by one token, a finished
run resumes to the same model, and a failed build leaves the old directory in place."""

from __future__ import annotations

import json

import pytest
import torch

from genloom.errors import UserError
from genloom.models import load
from genloom.tasks.lm.zh_lm import build
from genloom.train.lm import pack_blocks


def test_build_writes_a_loadable_large_vocabulary_lm(zh_dir, zh_texts):
    model, tok = load(zh_dir)
    summary = json.loads((zh_dir / "zh_lm.json").read_text(encoding="utf-8"))
    assert summary["steps"] == 4 and summary["stop_reason"] == "max_steps"
    assert tok.vocab_size > 300 and model.config.vocab_size == tok.vocab_size
    # multi-character Chinese tokens exist (the point of a large vocabulary)
    assert any(len(tok.token_bytes(i).decode("utf-8", "ignore")) >= 2 and tok.token_bytes(i)[0] >= 0xE0
               for i in range(tok.vocab_size))
    blocks = pack_blocks(tok, zh_texts[:3], 8)
    stream = [i for t in zh_texts[:3] for i in [tok.bos_id, *tok.encode(t), tok.eos_id]]
    assert torch.equal(blocks[:, 1:][:-1, -1], blocks[1:, 0])  # consecutive blocks overlap by one
    assert blocks[0].tolist() == stream[:9] and blocks[1].tolist() == stream[8:17]


def test_build_resumes_from_its_run_directory(tmp_path, zh_texts, zh_config):
    cfg = zh_config(max_steps=2, evals=2)
    build(tmp_path / "a", cfg, run_dir=tmp_path / "run", texts=zh_texts, dev_texts=zh_texts[:12])
    first, tok = load(tmp_path / "a")
    assert (tmp_path / "run" / "tokenizer").is_dir()
    # resuming a finished run trains no further step and rebuilds the same model and tokenizer
    build(tmp_path / "b", cfg, run_dir=tmp_path / "run", texts=zh_texts, dev_texts=zh_texts[:12], resume=True)
    again, tok2 = load(tmp_path / "b")
    assert tok2.encode(zh_texts[0]) == tok.encode(zh_texts[0])
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))


def test_a_failed_build_keeps_the_old_directory(tmp_path, zh_texts, zh_config, monkeypatch):
    import genloom.models

    out = tmp_path / "lm"
    out.mkdir()
    (out / "keep.txt").write_text("old", encoding="utf-8")

    def broken_save(model, tokenizer, directory, **kw):
        (directory / "config.json").write_text("{}", encoding="utf-8")  # half a model directory
        raise UserError("disk full")

    monkeypatch.setattr(genloom.models, "save", broken_save)
    with pytest.raises(UserError, match="disk full"):
        build(out, zh_config(max_steps=2), run_dir=tmp_path / "run", texts=zh_texts, dev_texts=zh_texts[:12])
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm", "run"]  # no temporary directory left
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(UserError, match="is a file"):  # found before any training
        build(tmp_path / "file", zh_config(), run_dir=tmp_path / "run2", texts=zh_texts, dev_texts=zh_texts[:12])
    assert not (tmp_path / "run2").exists()
