"""`genloom generate` and `genloom continue` on RTF LMs: the directory of tests/fixtures/old_models/rtf_lm
(written by earlier code) and a fresh RTFLM saved by `genloom.models.save` (tests/lm/conftest.py),
each recognised through `genloom.models.io.MODEL_TYPES`, not taken for a Hugging Face model. The
printed texts spell exactly the ids the search loops give when called directly on the loaded model;
prompt + new tokens run past the fresh model's max_len = 16 (its parallel pass, not a limit)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from genloom.cli import main
from genloom.decode import loops
from genloom.decode.heal import continue_prompt
from genloom.models import load
from genloom.models.rtf_lm import RTFLM

OLD = Path(__file__).parents[1] / "fixtures" / "old_models" / "rtf_lm"
EXPECTED = json.loads((OLD.parent / "expected.json").read_text(encoding="utf-8"))
PROMPTS = ["广州的白云机场很大，白云山也很美。我们今天去", "白云", "the theme"]  # the first: 22 chars > max_len


def _generate(capsys, *argv: str) -> list[str]:
    """The lines `genloom generate` prints (none of the tests' outputs holds a newline)."""
    capsys.readouterr()
    assert main(["generate", *argv]) == 0
    return capsys.readouterr().out.splitlines()


def _spells(tok, lines: list[str], sequences: list[list[int]]) -> None:
    """Each printed line is the decoded loop result, and its characters are those ids (specials,
    which decode to nothing, left out)."""
    assert lines == [tok.decode(s) for s in sequences]
    for line, seq in zip(lines, sequences):
        assert tok.encode(line) == [i for i in seq if i not in tok.special_ids]


def test_old_rtf_lm_directory_generates_what_it_did(capsys):
    model, tok = load(OLD)
    assert isinstance(model, RTFLM)
    lines = _generate(capsys, "--model", str(OLD), "--prompt", "天地", "--prompt", "山水风",
                      "--max-new-tokens", "8")
    ids, lengths = tok.encode_batch(["天地", "山水风"])
    direct = loops.greedy(model, input_ids=ids, lengths=lengths, max_new_tokens=8, eos_id=tok.eos_id).sequences
    assert direct == EXPECTED["rtf_lm"]  # what the code that wrote the directory decoded
    _spells(tok, lines, direct)


@pytest.mark.parametrize("strategy, flags, loop", [
    ("greedy", [], lambda m, kw: loops.greedy(m, **kw)),
    ("greedy", ["--truncate"], lambda m, kw: loops.greedy(m, **kw)),  # nothing to cut: no context limit
    ("beam", ["--num-beams", "3", "--num-return-sequences", "2"],
     lambda m, kw: loops.beam_search(m, num_beams=3, num_return_sequences=2, **kw)),
    ("sample", ["--seed", "7", "--num-return-sequences", "2"],
     lambda m, kw: loops.sample(m, num_samples=2, generator=torch.Generator().manual_seed(7), **kw)),
])
def test_fresh_rtf_lm_generates_what_the_loops_give(rtf_lm_dir, capsys, strategy, flags, loop):
    model, tok = load(rtf_lm_dir)
    assert isinstance(model, RTFLM) and model.config.max_len == 16
    argv = ["--model", str(rtf_lm_dir), "--strategy", strategy, "--max-new-tokens", "10", *flags]
    lines = _generate(capsys, *argv, *[a for p in PROMPTS for a in ("--prompt", p)])
    ids, lengths = tok.encode_batch(PROMPTS)
    direct = loop(model, dict(input_ids=ids, lengths=lengths, max_new_tokens=10, eos_id=tok.eos_id)).sequences
    assert len(direct) == len(lines) == len(PROMPTS) * (1 if strategy == "greedy" else 2)
    _spells(tok, lines, direct)


def test_continue_runs_on_an_rtf_lm(rtf_lm_dir, capsys):
    model, tok = load(rtf_lm_dir)
    assert main(["continue", "--model", str(rtf_lm_dir), "--prompt", PROMPTS[0], "--max-new-tokens", "6",
                 "--no-eos", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    want = continue_prompt(model, tok, PROMPTS[0], max_new_tokens=6, bos_id=tok.bos_id)[0]
    assert record["token_ids"] == want.token_ids and record["output"] == want.text
