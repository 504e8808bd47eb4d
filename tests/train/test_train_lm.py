"""train/lm.py: windows, padding and the causal-LM objective against direct computation."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from genloom.data.readers import read_all_inputs, read_inputs
from genloom.errors import UserError
from genloom.models import Transformer, TransformerConfig
from genloom.tokenizers import CharTokenizer
from genloom.train.lm import CausalLMObjective, PadRows, TokenWindows, causal_lm_loss, pack_blocks


def test_windows_cover_every_text_in_order():
    tok = CharTokenizer.train(["abcdefg"])
    data = TokenWindows(["abcdefg", "a", "xy"], tok, 3)
    assert [tok.decode(w, skip_special=False) for w in data] == ["abc", "def", "<unk><unk>"]  # "g" and "a" alone: nothing to predict
    assert data.lengths == [3, 3, 2]
    with pytest.raises(UserError, match="at least 2"):
        TokenWindows(["ab"], tok, 1)
    shuffled = TokenWindows(["abcdefg"] * 3, tok, 2, seed=1)
    assert sorted(map(tuple, shuffled)) == sorted(map(tuple, TokenWindows(["abcdefg"] * 3, tok, 2)))


def test_blocks_make_every_token_a_target_once():
    tok = CharTokenizer.train(["abcd"])
    blocks = pack_blocks(tok, ["abcd", "ab"], 3)
    stream = tok.encode("abcd", add_bos=True, add_eos=True) + tok.encode("ab", add_bos=True, add_eos=True)
    assert blocks[:, 1:].flatten().tolist() == stream[1:1 + blocks.shape[0] * 3]
    assert torch.equal(blocks[1:, 0], blocks[:-1, -1])


def test_causal_objective_equals_a_per_row_loss():
    torch.manual_seed(0)
    tok = CharTokenizer.train(["天地人和春夏秋冬"])
    lm = Transformer(TransformerConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, d_model=16, d_ff=32,
                                       max_len=16, mask="prefix")).eval()
    rows = [tok.encode("天地人和春"), tok.encode("夏秋")]
    batch = PadRows(tok.pad_id)(rows)
    loss, n = causal_lm_loss(CausalLMObjective(lm, tok.pad_id, segments=True), batch)
    total, count = 0.0, 0
    for r in rows:  # each row alone, no padding, segment 1 = causal
        ids = torch.tensor([r])
        logits = lm(ids, segment_ids=torch.ones_like(ids))
        total += F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum").item()
        count += len(r) - 1
    assert int(n) == count
    assert loss.item() == pytest.approx(total / count, rel=1e-5)


def test_one_input_reader_for_lines_and_jsonl():
    lines = list(read_inputs(io.BytesIO("\ufeff甲\n\n乙\n".encode()), name="in"))
    assert lines == [(1, "甲", None), (2, None, "in:2: empty line"), (3, "乙", None)]
    jsonl = list(read_inputs(io.BytesIO(b'{"content": "a"}\nnot json\n{"x": 1}\n'), name="in"))
    assert [t for _, t, _ in jsonl] == ["a", None, None]
    assert [e for _, _, e in jsonl][1:] == ["in:2: not a JSON object", "in:3: field 'content' is missing or not a string"]
    assert read_all_inputs(io.BytesIO(b"a\nb\n")) == ["a", "b"]
    with pytest.raises(UserError, match="invalid UTF-8"):
        read_all_inputs(io.BytesIO(b"a\n\xff\n"), name="f")
    with pytest.raises(UserError, match="no input in f"):
        read_all_inputs(io.BytesIO(b""), name="f")
