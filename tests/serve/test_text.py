"""TextAssembler against a brute force: decode everything at once, cut at the first stop string."""

from __future__ import annotations

import random

import pytest

from genloom.serve.text import TextAssembler, token_text

PIECES = ["a", "b", "\n", "ab", "白", "云", "🙂", "\n\n", "END", "E", "N", "D"]


def _random_tokens(rng: random.Random) -> list[bytes]:
    data = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 12))).encode()
    if rng.random() < 0.2:
        data += bytes([0xBC])  # a stray continuation byte: U+FFFD either way
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, len(data) - 1)))) if len(data) > 1 else []
    bounds = [0, *cuts, len(data)]
    return [data[i:j] for i, j in zip(bounds, bounds[1:])]


def _brute(tokens: list[bytes], skip: bytes, stop: list[str]) -> tuple[str, bool]:
    text = b"".join(tokens)[len(skip):].decode("utf-8", errors="replace")
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


@pytest.mark.parametrize("seed", range(300))
def test_released_text_equals_the_whole_decode(seed):
    rng = random.Random(seed)
    tokens = _random_tokens(rng)
    skip = b"".join(tokens)[: rng.randint(0, 3)] if rng.random() < 0.3 else b""
    stop = rng.sample(["\n\n", "END", "云🙂", "ba"], rng.randint(0, 2))
    asm = TextAssembler(skip=skip, stop=stop)
    released = ""
    for tok in tokens:
        released += asm.add(tok)
        assert not any(s in released for s in stop)  # a stop string never reaches the client
        if asm.stopped:
            break
    released += asm.finish()
    expected, stopped = _brute(tokens, skip, stop)
    assert (released, asm.stopped) == (expected, stopped)


def test_text_is_held_while_it_could_start_a_stop_string():
    asm = TextAssembler(stop=["\n\n"])
    assert asm.add(b"ab\n") == "ab"  # "\n" may begin "\n\n"
    assert asm.add(b"c") == "\nc"  # it did not
    assert asm.add(b"\n") == ""
    assert asm.add(b"\n") == "" and asm.stopped
    assert asm.finish() == ""


def test_a_split_character_is_released_whole():
    asm = TextAssembler()
    data = "白".encode()
    assert asm.add(data[:1]) == "" and asm.add(data[1:2]) == ""
    assert asm.add(data[2:]) == "白"


def test_token_text_spells_partial_characters_as_bytes():
    assert token_text("白".encode()[:2]) == "bytes:\\xe7\\x99"
    assert token_text(b" wor") == " wor"
