"""Tiny random search models saved to disk, shared by the search tests."""

from __future__ import annotations

import pytest
import torch

from genloom.models import Transformer, TransformerConfig, save
from genloom.tasks.search.data import chinese_tokenizer

SENTENCES = ["北京大学的科学研究很好。", "今天天气很好，我们去公园玩。", "科学技术是第一生产力。",
             "他在北京工作了三年。", "大学生喜欢研究新的技术。", "我们的公园里有很多花。"]


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    return list(SENTENCES)


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
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
