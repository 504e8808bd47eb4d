"""`genloom continue` (tasks/continue_.py) and the Chinese LM builder (tasks/zh_lm.py), on tiny
models: a genloom model directory built by `zh_lm.build` in a few steps, and a tiny Hugging Face
Llama saved with a byte-level BPE tokenizer (for the hf mode and the HF adapter path)."""

from __future__ import annotations

import json

import pytest
import torch

from genloom.cli import main
from genloom.decode.heal import back_off, continue_prompt
from genloom.decode.heal_tree import VocabIndex
from genloom.models import load
from genloom.tasks.zh_lm import ZhLMConfig, build, pack_blocks

TEXTS = ["广州的白云机场很大，白云山也很美。", "我们今天去白云机场接朋友。", "the theme of these theses is there"] * 30


@pytest.fixture(scope="module")
def zh_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("zh")
    cfg = ZhLMConfig(vocab_size=420, max_steps=4, seq_len=32, batch_size=4, n_layer=1, d_model=32, d_ff=64,
                     n_head=2, warmup_steps=1, eval_blocks=4, progress=False)
    return build(root / "zh-lm", cfg, run_dir=root / "run", texts=TEXTS, dev_texts=TEXTS[:12])


def run_cli(capsys, *argv):
    rc = main(["continue", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_build_writes_a_loadable_large_vocabulary_lm(zh_dir):
    model, tok = load(zh_dir)
    summary = json.loads((zh_dir / "zh_lm.json").read_text(encoding="utf-8"))
    assert summary["steps"] == 4 and summary["stop_reason"] == "max_steps"
    assert tok.vocab_size > 300 and model.config.vocab_size == tok.vocab_size
    # multi-character Chinese tokens exist (the point of a large vocabulary)
    assert any(len(tok.token_bytes(i).decode("utf-8", "ignore")) >= 2 and tok.token_bytes(i)[0] >= 0xE0
               for i in range(tok.vocab_size))
    blocks = pack_blocks(tok, TEXTS[:3], 8)
    stream = [i for t in TEXTS[:3] for i in [tok.bos_id, *tok.encode(t), tok.eos_id]]
    assert torch.equal(blocks[:, 1:][:-1, -1], blocks[1:, 0])  # consecutive blocks overlap by one
    assert blocks[0].tolist() == stream[:9] and blocks[1].tolist() == stream[8:17]


def test_cli_matches_the_library_for_every_mode_and_strategy(zh_dir, capsys):
    model, tok = load(zh_dir)
    index = VocabIndex.from_tokenizer(tok)
    prompt = "广州的白云机"
    for mode in ("exact", "post", "none"):
        for strategy in ("greedy", "beam", "sample"):
            rc, out, err = run_cli(capsys, "--model", str(zh_dir), "--prompt", prompt, "--heal", mode,
                                   "--strategy", strategy, "--max-new-tokens", "4", "--no-eos", "--json",
                                   "--seed", "3", "--num-beams", "2")
            assert rc == 0, err
            record = json.loads(out)
            want = continue_prompt(model, tok, prompt, mode=mode, strategy=strategy, max_new_tokens=4,
                                   num_beams=2, generator=torch.Generator().manual_seed(3),
                                   bos_id=tok.bos_id, index=index)[0]
            assert record["continuation"] == want.text and record["token_ids"] == want.token_ids
            if mode != "none":
                generated = b"".join(tok.token_bytes(i) for i in record["token_ids"])
                assert generated.startswith(bytes.fromhex(record["removed_hex"]))  # healed text starts with r


def test_cli_prompt_file_cut_inside_a_character(zh_dir, capsys, tmp_path):
    model, tok = load(zh_dir)
    data = "广州的白云".encode()[:-1]  # the last character cut after two of its three bytes
    path = tmp_path / "p.txt"
    path.write_bytes(data)
    rc, out, err = run_cli(capsys, "--model", str(zh_dir), "--prompt-file", str(path), "--max-new-tokens", "3",
                           "--no-eos", "--json")
    assert rc == 0, err
    record = json.loads(out)
    index = VocabIndex.from_tokenizer(tok)
    kept, removed = back_off(tok.encode("广州的白"), index, tail=data[-2:])
    assert removed.endswith(data[-2:])
    generated = b"".join(tok.token_bytes(i) for i in record["token_ids"])
    assert generated.startswith(removed)
    # the printed continuation starts with the completed character
    assert record["continuation"] == (data + generated[len(removed):]).decode("utf-8", "replace")[4:]


@pytest.mark.parametrize("argv, message", [
    (["--prompt", ""], "prompt is empty"),
    (["--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["--prompt", "x", "--tol", "-1"], "--tol must be >= 0"),
    (["--prompt", "x", "--heal", "hf"], "needs a Hugging Face model"),
    (["--prompt", "x", "--bos", "abc"], "--bos must be auto, none or a token id"),
    (["--prompt", "x", "--bos", "99999"], "outside the vocabulary"),
    (["--prompt-file", "/nonexistent/p.txt"], "no prompt file"),
])
def test_cli_errors_are_one_line(zh_dir, capsys, argv, message):
    rc, out, err = run_cli(capsys, "--model", str(zh_dir), *argv)
    assert rc == 2 and out == ""
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_missing_model_and_single_partial_token_without_start(zh_dir, capsys):
    rc, _, err = run_cli(capsys, "--model", "/nonexistent/model", "--prompt", "x")
    assert rc == 2 and err.count("\n") == 1
    rc, _, err = run_cli(capsys, "--model", str(zh_dir), "--prompt", "the", "--bos", "none", "--back-off", "1")
    assert rc == 2 and "single partial token" in err


# ---- Hugging Face models: the hf mode and the adapter path ---------------------------------------


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    from genloom.tokenizers import BPETokenizer

    root = tmp_path_factory.mktemp("hf")
    bpe = BPETokenizer.train(TEXTS + ["http://www.example.com and https://docs.python.org"] * 20, vocab_size=400)
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe.backend, bos_token="<bos>",
                                                  eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(hf_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   bos_token_id=2, eos_token_id=3, pad_token_id=0, tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM(cfg)
    model.save_pretrained(root)
    hf_tok.save_pretrained(root)
    return root


def test_hf_mode_is_transformers_token_healing(hf_dir, capsys):
    import transformers

    prompt = "visit http:"
    rc, out, err = run_cli(capsys, "--model", str(hf_dir), "--prompt", prompt, "--heal", "hf", "--max-new-tokens",
                           "5", "--no-eos", "--json")
    assert rc == 0, err
    record = json.loads(out)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ids = tok(prompt, return_tensors="pt").input_ids
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), token_healing=True, tokenizer=tok,
                         max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)
    full = tok.decode(ref[0], skip_special_tokens=True, clean_up_tokenization_spaces=False)
    want = full[len(prompt):] if full.startswith(prompt) else None
    assert record["continuation"] == want
    if want is None:
        assert record["hf_output"] == full


def test_hf_mode_crash_is_a_counted_user_error(hf_dir, monkeypatch):
    from genloom.decode.heal_hf import HFHealingError, hf_continue
    from genloom.models.hf import HFCausalLM, load_hf

    model, tok = load_hf(hf_dir)

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


def test_exact_healing_is_the_same_on_converted_and_wrapped_hf_models(hf_dir, capsys):
    outs = []
    for engine in ("genloom", "hf"):
        rc, out, err = run_cli(capsys, "--model", str(hf_dir), "--prompt", "visit http:", "--engine", engine,
                               "--max-new-tokens", "4", "--no-eos", "--json", "--tol", "0")
        assert rc == 0, err
        outs.append(json.loads(out))
    assert outs[0]["token_ids"] == outs[1]["token_ids"] and outs[0]["removed"] == ":"
    assert outs[0]["tv_bound"] == 0.0


def test_build_resumes_from_its_run_directory(tmp_path):
    cfg = ZhLMConfig(vocab_size=420, max_steps=2, seq_len=32, batch_size=4, n_layer=1, d_model=32, d_ff=64,
                     n_head=2, warmup_steps=1, eval_blocks=4, progress=False, evals=2)
    build(tmp_path / "a", cfg, run_dir=tmp_path / "run", texts=TEXTS, dev_texts=TEXTS[:12])
    first, tok = load(tmp_path / "a")
    assert (tmp_path / "run" / "tokenizer").is_dir()
    # resuming a finished run trains no further step and rebuilds the same model and tokenizer
    build(tmp_path / "b", cfg, run_dir=tmp_path / "run", texts=TEXTS, dev_texts=TEXTS[:12], resume=True)
    again, tok2 = load(tmp_path / "b")
    assert tok2.encode(TEXTS[0]) == tok.encode(TEXTS[0])
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
