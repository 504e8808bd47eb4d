"""Tiny models shared by the LM task tests (tests/lm): a random GPT-2 and a random Llama saved as
Hugging Face directories with byte-level BPE tokenizers, the Chinese LM built by `zh_lm.build` in
a few steps, and a random RTF LM saved as a genloom model directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

@pytest.fixture
def genloom(capsys):
    """`genloom(*argv) -> (exit code, stdout, stderr)` of the CLI run in this process (a flag
    argparse rejects exits through SystemExit: its code is returned)."""
    from genloom.cli import main

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            rc = main(list(argv))
        except SystemExit as e:
            rc = e.code
        out = capsys.readouterr()
        return rc, out.out, out.err

    return run


GPT2_TEXTS = ["the quick brown fox jumps over the lazy dog", "hello world, a tiny model says hello",
              "你好世界，今天天气很好", "pack my box with five dozen liquor jugs"]
GPT2_EOS = 0
ZH_TEXTS = ["广州的白云机场很大，白云山也很美。", "我们今天去白云机场接朋友。", "the theme of these theses is there"] * 30


@pytest.fixture(scope="session")
def hf_gpt2_dir(tmp_path_factory) -> Path:
    """A random GPT-2 (48 positions, EOS id 0 made likely) + a byte-level BPE of 300 ids."""
    transformers = pytest.importorskip("transformers")  # the optional [hf] extra
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(GPT2_TEXTS * 3, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                                bos_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=300, n_positions=48, n_embd=32, n_layer=2, n_head=2,
                                  initializer_range=0.3, bos_token_id=GPT2_EOS, eos_token_id=GPT2_EOS)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        model.transformer.wte.weight[GPT2_EOS] *= 2.5  # EOS likely enough that some rows finish early
    path = tmp_path_factory.mktemp("tiny-gpt2")
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def hf_gpt2(hf_gpt2_dir):
    """(HF model, genloom Transformer converted from it, its HFTokenizer)."""
    from genloom.models.hf import from_hf, load_hf

    hf_model, _ = load_hf(hf_gpt2_dir)
    model, tokenizer = from_hf(hf_gpt2_dir)
    return hf_model, model, tokenizer


@pytest.fixture(scope="session")
def hf_llama_dir(tmp_path_factory) -> Path:
    """A random Llama (grouped K/V heads, tied head) + a genloom BPE wrapped as an HF tokenizer."""
    transformers = pytest.importorskip("transformers")  # the optional [hf] extra
    from genloom.tokenizers import BPETokenizer

    root = tmp_path_factory.mktemp("hf-llama")
    bpe = BPETokenizer.train(ZH_TEXTS + ["http://www.example.com and https://docs.python.org"] * 20, vocab_size=400)
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe.backend, bos_token="<bos>",
                                                  eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(hf_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   bos_token_id=2, eos_token_id=3, pad_token_id=0, tie_word_embeddings=True)
    transformers.LlamaForCausalLM(cfg).save_pretrained(root)
    hf_tok.save_pretrained(root)
    return root


@pytest.fixture(scope="session")
def gpt2_texts() -> list[str]:
    """The texts the GPT-2's BPE was trained on."""
    return list(GPT2_TEXTS)


@pytest.fixture(scope="session")
def zh_texts() -> list[str]:
    """The Chinese LM's (and the Llama's BPE's) training texts."""
    return list(ZH_TEXTS)


def _zh_config(**overrides):
    from genloom.tasks.lm.zh_lm import ZhLMConfig

    base = dict(vocab_size=420, max_steps=4, seq_len=32, batch_size=4, n_layer=1, d_model=32, d_ff=64, n_head=2,
                warmup_steps=1, eval_blocks=4, progress=False)
    return ZhLMConfig(**{**base, **overrides})


@pytest.fixture(scope="session")
def zh_config():
    """`zh_config(**overrides)`: the few-step `ZhLMConfig` of these tests."""
    return _zh_config


@pytest.fixture(scope="session")
def zh_dir(tmp_path_factory) -> Path:
    """The Chinese LM of `zh_lm.build`, 4 steps on ZH_TEXTS."""
    from genloom.tasks.lm.zh_lm import build

    root = tmp_path_factory.mktemp("zh")
    return build(root / "zh-lm", _zh_config(), run_dir=root / "run", texts=ZH_TEXTS, dev_texts=ZH_TEXTS[:12])


@pytest.fixture(scope="session")
def rtf_lm_dir(tmp_path_factory) -> Path:
    """A random RTFLM (max_len 16, so prompts + new tokens run past its parallel pass) with a
    character tokenizer, saved by `genloom.models.save`."""
    from genloom.models import save
    from genloom.models.rtf_lm import RTFLM, RTFLMConfig
    from genloom.tokenizers import CharTokenizer

    tok = CharTokenizer.train(ZH_TEXTS)
    torch.manual_seed(0)
    model = RTFLM(RTFLMConfig(vocab_size=tok.vocab_size, n_layer=2, d_model=16, d_ff=32, state_size=8, num_a=4,
                              max_len=16)).eval()
    with torch.no_grad():  # larger projections than GPT-2 init, so the outputs vary
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 2:
                p.mul_(10.0)
        model.tok_emb.weight[:3] = 0  # <pad> <unk> <bos> get logit 0 (tied head): rarely chosen
    return save(model, tok, tmp_path_factory.mktemp("rtf") / "rtf-lm")
