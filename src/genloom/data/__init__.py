"""genloom.data: named corpora read offline from installed packages, readers for user files.

    CORPORA, CorpusInfo        the table of named corpora (registry.py)
    load_corpus(name, split)   cleaned records of a named corpus (list of dicts)
    corpus_pairs(name, split)  its (content, title) pairs
    corpus_stats(name, split)  what reading / cleaning did to a split
    chinese_lm_texts(split)    all Chinese text of a split, for LM pre-training
    read_records, read_pairs   streaming JSONL / CSV / TSV / TXT readers (readers.py)
    split_sentences            rule-based sentence splitting (sentences.py)
    safe_load                  unpickling with no globals admitted (safe_pickle.py)
"""

from genloom.data.readers import read_pairs, read_records
from genloom.data.registry import (CORPORA, CorpusInfo, chinese_lm_texts, corpus_info,
                                   corpus_pairs, corpus_stats, load_corpus)
from genloom.data.safe_pickle import safe_load
from genloom.data.sentences import split_sentences

__all__ = ["CORPORA", "CorpusInfo", "chinese_lm_texts", "corpus_info", "corpus_pairs", "corpus_stats",
           "load_corpus", "read_pairs", "read_records", "safe_load", "split_sentences"]
