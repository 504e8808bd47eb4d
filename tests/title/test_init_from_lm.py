"""`title train --arch unilm --init DIR`: the UniLM title model starts from a pre-trained causal
LM (genloom-zh-base), through `genloom.train.lm.init_from_causal_lm` (issue 23, part 2)."""

from __future__ import annotations

import json

import pytest
import torch

from genloom.cli import main
from genloom.errors import UserError
from genloom.models import io as model_io
from genloom.models.transformer import Transformer, TransformerConfig
from genloom.models.unilm import UniLMSeq2Seq, UniLMSeq2SeqConfig
from genloom.tasks.title.infer import load_title_model
from genloom.tokenizers import CharTokenizer
from genloom.train.lm import init_from_causal_lm

from test_title import CHARS, _pairs


def _base(vocab: int, **kw) -> Transformer:
    torch.manual_seed(3)
    return Transformer(TransformerConfig(vocab_size=vocab, n_layer=2, n_head=2, d_model=16, d_ff=32, max_len=24,
                                         tie_embeddings=True, **kw))


def test_the_blocks_embeddings_and_known_positions_are_the_base_lm_s():
    base = _base(40)
    uni = UniLMSeq2Seq(UniLMSeq2SeqConfig(vocab_size=40, d_model=16, n_layer=2, n_head=2, d_ff=32,
                                          max_source_len=30, max_target_len=9, pointer=True, prior=True))
    seg_before = uni.lm.seg_emb.weight.clone()
    report = init_from_causal_lm(uni.lm, base)
    got, want = uni.lm.state_dict(), base.state_dict()
    for name in report["copied"]:
        assert torch.equal(got[name], want[name]), name
    assert report["partial"] == ["pos_emb.weight"] and report["fresh"] == ["seg_emb.weight"]
    assert torch.equal(got["pos_emb.weight"][:24], want["pos_emb.weight"])  # the 24 positions the base knows
    assert torch.equal(uni.lm.seg_emb.weight, seg_before)
    assert len(report["copied"]) == len(want) - 1  # every other weight of the base
    # the same blocks under the prefix mask: with every token in the target segment the prefix
    # rule (cumsum(s)[j] <= cumsum(s)[i]) is the causal mask, so with no segment offset the
    # UniLM's Transformer is the base LM itself
    ids = torch.tensor([[5, 7, 9, 11]])
    uni.eval(), base.eval()
    with torch.no_grad():
        uni.lm.seg_emb.weight.zero_()
        torch.testing.assert_close(uni.lm(ids, segment_ids=torch.ones_like(ids)), base(ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw, message", [
    (dict(d_model=32), "d_model 16 (here 32)"),
    (dict(vocab_size=41), "vocab_size 40 (here 41)"),
])
def test_another_shape_is_one_line(kw, message):
    cfg = {**dict(vocab_size=40, d_model=16, n_layer=2, n_head=2, d_ff=32), **kw}
    uni = UniLMSeq2Seq(UniLMSeq2SeqConfig(**cfg))
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        init_from_causal_lm(uni.lm, _base(40))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny causal LM saved as genloom-zh-base saves its model (a Transformer + char tokenizer)."""
    root = tmp_path_factory.mktemp("zh-base")
    tok = CharTokenizer.train([CHARS * 2], min_count=1)
    model_io.save(_base(tok.vocab_size), tok, root / "model")
    return root / "model"


def test_title_train_from_the_base_lm(base_dir, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in _pairs(40)), encoding="utf-8")
    out = tmp_path / "run"
    rc = main(["title", "train", "--arch", "unilm", "--init", str(base_dir), "--data", str(data), "--out", str(out),
               "--max-epochs", "1", "--minutes", "5", "--batch-size", "16", "--max-source-len", "20",
               "--max-title-len", "8", "--dev-size", "4", "--quiet", "--threads", "1"])
    assert rc == 0
    assert "starts from" in capsys.readouterr().err
    tm = load_title_model(out)
    base, base_tok = model_io.load(base_dir)
    assert tm.tokenizer.vocab_size == base_tok.vocab_size
    assert [tm.tokenizer.id_to_token(i) for i in range(base_tok.vocab_size)] == \
           [base_tok.id_to_token(i) for i in range(base_tok.vocab_size)]  # the base's characters, its ids
    shape = ("d_model", "n_layer", "n_head", "d_ff")
    assert [getattr(tm.model.config, k) for k in shape] == [getattr(base.config, k) for k in shape]


@pytest.mark.parametrize("extra, message", [
    (["--arch", "rnn", "--init", "{base}"], "--init needs --arch unilm"),
    (["--arch", "unilm", "--init", "/nonexistent/base"], "--init /nonexistent/base is not a model directory"),
])
def test_init_refusals_are_one_line_before_the_data_is_read(base_dir, tmp_path, capsys, extra, message):
    extra = [a.format(base=base_dir) for a in extra]
    rc = main(["title", "train", *extra, "--data", "/nonexistent/pairs.jsonl", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0]
