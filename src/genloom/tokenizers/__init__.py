"""Tokenizers behind one protocol (`base.Tokenizer`): characters, byte-level BPE, any Hugging Face
tokenizer, the tokenizer of a GGUF file through llama.cpp; `VocabTrie` indexes their token bytes; `load_tokenizer` rebuilds any saved one."""

from genloom.tokenizers.base import Tokenizer, encode_batch
from genloom.tokenizers.bpe import BPETokenizer
from genloom.tokenizers.char import CharTokenizer
from genloom.tokenizers.gguf import GGUFTokenizer
from genloom.tokenizers.hf import HFTokenizer
from genloom.tokenizers.registry import KINDS, load_tokenizer
from genloom.tokenizers.trie import VocabTrie

__all__ = [
    "BPETokenizer",
    "CharTokenizer",
    "GGUFTokenizer",
    "HFTokenizer",
    "KINDS",
    "Tokenizer",
    "VocabTrie",
    "encode_batch",
    "load_tokenizer",
]
