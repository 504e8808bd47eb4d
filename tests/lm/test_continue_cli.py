"""`genloom continue` (tasks/lm/continue_.py) on tiny models (tests/lm/conftest.py): the Chinese LM
of `zh_lm.build` (a genloom model directory) and a tiny Hugging Face Llama with a byte-level BPE
(the hf mode and the adapter path): the CLI prints what `continue_prompt` returns."""

from __future__ import annotations

import json

import pytest
import torch

from genloom.decode.heal import back_off, continue_prompt
from genloom.decode.heal_tree import VocabIndex
from genloom.models import load


def test_cli_matches_the_library_for_every_mode_and_strategy(zh_dir, genloom):
    model, tok = load(zh_dir)
    index = VocabIndex.from_tokenizer(tok)
    prompt = "广州的白云机"
    for mode in ("exact", "post", "none"):
        for strategy in ("greedy", "beam", "sample"):
            beams = ["--num-beams", "2"] if strategy == "beam" else []
            rc, out, err = genloom("continue", "--model", str(zh_dir), "--prompt", prompt, "--heal", mode,
                                   "--strategy", strategy, "--max-new-tokens", "4", "--no-eos", "--json",
                                   "--seed", "3", *beams)
            assert rc == 0, err
            record = json.loads(out)
            want = continue_prompt(model, tok, prompt, mode=mode, strategy=strategy, max_new_tokens=4,
                                   num_beams=2, generator=torch.Generator().manual_seed(3),
                                   bos_id=tok.bos_id, index=index)[0]
            assert record["output"] == want.text and record["token_ids"] == want.token_ids
            if mode != "none":
                generated = b"".join(tok.token_bytes(i) for i in record["token_ids"])
                assert generated.startswith(bytes.fromhex(record["removed_hex"]))  # healed text starts with r


def test_cli_prompt_file_cut_inside_a_character(zh_dir, genloom, tmp_path):
    model, tok = load(zh_dir)
    data = "广州的白云".encode()[:-1]  # the last character cut after two of its three bytes
    path = tmp_path / "p.txt"
    path.write_bytes(data)
    rc, out, err = genloom("continue", "--model", str(zh_dir), "--prompt-file", str(path), "--max-new-tokens", "3",
                           "--no-eos", "--json")
    assert rc == 0, err
    record = json.loads(out)
    index = VocabIndex.from_tokenizer(tok)
    kept, removed = back_off(tok.encode("广州的白"), index, tail=data[-2:])
    assert removed.endswith(data[-2:])
    generated = b"".join(tok.token_bytes(i) for i in record["token_ids"])
    assert generated.startswith(removed)
    # the printed continuation starts with the completed character
    assert record["output"] == (data + generated[len(removed):]).decode("utf-8", "replace")[4:]


def test_cli_prompt_from_stdin_is_the_file_s_bytes(zh_dir, genloom, tmp_path, monkeypatch):
    """--input - reads the same bytes --input FILE (and its older name --prompt-file) reads; the
    record says what was continued."""
    import io

    data = "广州的白云".encode()[:-1]
    path = tmp_path / "p.txt"
    path.write_bytes(data)
    common = ["continue", "--model", str(zh_dir), "--max-new-tokens", "3", "--no-eos", "--json"]
    rc, from_file, err = genloom(*common, "--prompt-file", str(path))
    assert rc == 0, err
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))
    rc, from_stdin, err = genloom(*common, "--input", "-")
    assert rc == 0, err
    assert from_stdin == from_file
    record = json.loads(from_stdin)
    assert record["id"] == 1 and record["index"] == 0 and record["input"] == data.decode("utf-8", "replace")


def test_cli_back_off_past_the_prompt_is_refused_before_the_model_loads(genloom):
    rc, out, err = genloom("continue", "--model", "/nonexistent/model", "--prompt", "广州", "--back-off", "7")
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert "--back-off 7 is more than the prompt's 6 bytes" in err


@pytest.mark.parametrize("argv, message", [
    (["--prompt", ""], "prompt is empty"),
    (["--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens: '0' must be a positive integer"),
    (["--prompt", "x", "--max-new-tokens", "-1"], "--max-new-tokens: '-1' must be a positive integer"),
    (["--prompt", "x", "--tol", "-1"], "--tol: '-1' must be a number in [0, 1]"),
    (["--prompt", "x", "--tol", "nan"], "--tol: 'nan' must be a number in [0, 1]"),
    (["--prompt", "x", "--max-rows", "0"], "--max-rows: '0' must be a positive integer"),
    (["--prompt", "广州的白", "--back-off", "1000"], "--back-off 1000 is more than the prompt's"),
    (["--prompt", "x", "--back-off", "-1"], "--back-off: '-1' must be an integer >= 0"),
    (["--prompt", "x", "--back-off", "1", "--heal", "none"], "--back-off applies to --heal exact or post only"),
    (["--prompt", "x", "--num-beams", "2"], "--num-beams applies to --strategy beam only"),
    (["--prompt", "x", "--num-samples", "2", "--strategy", "beam"], "--num-samples applies to --strategy sample"),
    (["--prompt", "x", "--heal", "hf"], "needs a Hugging Face model"),
    (["--prompt", "x", "--bos", "abc"], "--bos must be auto, none or a token id"),
    (["--prompt", "x", "--bos", "99999"], "outside the vocabulary"),
    (["--prompt-file", "/nonexistent/p.txt"], "no prompt file"),
])
def test_cli_errors_are_one_line(zh_dir, genloom, argv, message):
    rc, out, err = genloom("continue", "--model", str(zh_dir), *argv)
    assert rc == 2 and out == ""
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_missing_model_and_single_partial_token_without_start(zh_dir, genloom):
    rc, _, err = genloom("continue", "--model", "/nonexistent/model", "--prompt", "x")
    assert rc == 2 and err.count("\n") == 1
    rc, _, err = genloom("continue", "--model", str(zh_dir), "--prompt", "the", "--bos", "none", "--back-off", "1")
    assert rc == 2 and "single partial token" in err


# ---- Hugging Face models: the hf mode and the adapter path ---------------------------------------


def test_hf_mode_is_transformers_token_healing(hf_llama_dir, genloom):
    import transformers

    prompt = "visit http:"
    rc, out, err = genloom("continue", "--model", str(hf_llama_dir), "--prompt", prompt, "--heal", "hf",
                           "--max-new-tokens", "5", "--no-eos", "--json")
    assert rc == 0, err
    record = json.loads(out)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_llama_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(hf_llama_dir)
    ids = tok(prompt, return_tensors="pt").input_ids
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), token_healing=True, tokenizer=tok,
                         max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)
    full = tok.decode(ref[0], skip_special_tokens=True, clean_up_tokenization_spaces=False)
    want = full[len(prompt):] if full.startswith(prompt) else None
    assert record["output"] == want
    if want is None:
        assert record["hf_output"] == full


def test_hf_mode_crash_is_a_counted_user_error(hf_llama_dir, monkeypatch):
    from genloom.decode.heal_hf import HFHealingError, hf_continue
    from genloom.models.hf import HFCausalLM, load_hf

    model, tok = load_hf(hf_llama_dir)

    def broken(*args, **kwargs):
        raise RuntimeError("The size of tensor a (82) must match the size of tensor b (81)\nmore")

    monkeypatch.setattr(model, "generate", broken)
    with pytest.raises(HFHealingError, match=r"token healing failed: RuntimeError: The size of tensor a \(82\)"):
        hf_continue(HFCausalLM(model), tok, "visit http:", max_new_tokens=3)

    def broken_key(*args, **kwargs):
        raise KeyError((36826,))

    monkeypatch.setattr(model, "generate", broken_key)
    with pytest.raises(HFHealingError, match=r"KeyError: \(36826,\)"):
        hf_continue(model, tok, "visit http:", max_new_tokens=3)


def test_exact_healing_is_the_same_on_converted_and_wrapped_hf_models(hf_llama_dir, genloom):
    outs = []
    for engine in ("genloom", "hf"):
        rc, out, err = genloom("continue", "--model", str(hf_llama_dir), "--prompt", "visit http:", "--engine", engine,
                               "--max-new-tokens", "4", "--no-eos", "--json", "--tol", "0")
        assert rc == 0, err
        outs.append(json.loads(out))
    assert outs[0]["token_ids"] == outs[1]["token_ids"] and outs[0]["removed"] == ":"
    assert outs[0]["tv_bound"] == 0.0


def test_cli_reports_healing_pruned_past_tol(zh_dir, genloom):
    """--max-rows too small for the tree: one warning line on stderr, and the JSON says the
    continuation is approximate with its certified bound; with room, neither."""
    argv = ["continue", "--model", str(zh_dir), "--prompt", "the theme of these thes", "--max-new-tokens", "2",
            "--no-eos", "--json", "--tol", "0"]
    rc, out, err = genloom(*argv, "--max-rows", "1")
    assert rc == 0, err
    record = json.loads(out)
    assert record["approximate"] is True and record["tol"] == 0.0 and record["tv_bound"] > 0
    assert err.count("\n") == 1 and err.startswith("genloom: warning: exact healing is approximate")
    rc, out, err = genloom(*argv)
    record = json.loads(out)
    assert rc == 0 and err == "" and record["approximate"] is False and record["tv_bound"] == 0.0
