"""genloom.decode: everything that turns a model into text.

`protocol` (the Decodable protocol), `processors` (logits processors), `loops` (greedy, sample,
beam_search, stream over any Decodable) and `generate` (text in, text out over a model and its
tokenizer). Import the search loops and processors from here.
"""

from genloom.decode.processors import (
    PROCESSORS,
    BannedTokens,
    ForcedTokens,
    MinLength,
    MinP,
    NoRepeatNGram,
    RepetitionPenalty,
    Temperature,
    TopK,
    TopP,
)
from genloom.decode.protocol import Decodable, LogitsProcessor
from genloom.decode.loops import Generated, beam_search, greedy, sample, stream

__all__ = [
    "PROCESSORS", "BannedTokens", "ForcedTokens", "MinLength", "MinP", "NoRepeatNGram", "RepetitionPenalty",
    "Temperature", "TopK", "TopP", "Decodable", "LogitsProcessor", "Generated", "beam_search", "greedy",
    "sample", "stream",
]
