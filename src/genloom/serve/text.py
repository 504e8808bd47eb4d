"""Token bytes -> the text a client sees, released only when it is final.

A byte-level tokenizer splits a Chinese character or an emoji across tokens, and a stop string
may be spelled by several tokens ("\\n\\n" as "\\n" + "\\n"), so text cannot be sent token by
token. `TextAssembler` keeps one row's continuation and releases text only when no later token
can change it:

- bytes of an unfinished UTF-8 character are held (an incremental decoder) until the character
  completes; at the end they become U+FFFD, as `bytes.decode(errors="replace")` would;
- a suffix of the text that is the start of a stop string is held until the stop string is
  ruled out (the text goes on differently) or found (the text ends before it);
- with token healing, the first tokens spell the backed-off end of the prompt (r): those bytes
  are not part of the continuation and are skipped.

The same assembler serves streamed and whole responses, so a stream's concatenated text is the
whole response's text by construction.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


def token_text(data: bytes) -> str:
    """A token's bytes as a string for logprobs: its text when the bytes are valid UTF-8, else
    OpenAI's spelling of raw bytes ("bytes:\\xe5\\x8f")."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in data)


class TextAssembler:
    """One row's continuation text, with stop strings and held-back bytes (module docstring)."""

    def __init__(self, *, skip: bytes = b"", stop: Sequence[str] = ()) -> None:
        """skip: the bytes the first tokens re-spell (healing's r), not part of the text;
        stop: strings that end the text (the text ends before the first one found)."""
        self.skip = bytes(skip)
        self.stop = [s for s in stop if s]
        self._seen = 0  # bytes of `skip` matched so far
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""  # the text decoded so far (cut before a stop string once found)
        self.released = 0  # characters of `text` handed out
        self.stopped = False  # a stop string was found

    def offset(self) -> int:
        """Characters of final text before the next token (for logprobs' text_offset)."""
        return len(self.text)

    def add(self, data: bytes) -> str:
        """Feed one token's bytes; returns the text that became final (may be "")."""
        if self.stopped:
            return ""
        if self._seen < len(self.skip):
            n = min(len(data), len(self.skip) - self._seen)
            self._seen += n
            data = data[n:]
        if data:
            self.text += self._decoder.decode(data)
            self._find_stop()
        return self._release(final=self.stopped)

    def finish(self) -> str:
        """The row ended (EOS, length, cancelled): flush held bytes and text; returns the rest."""
        if not self.stopped:
            self.text += self._decoder.decode(b"", final=True)
            self._find_stop()
        return self._release(final=True)

    def _find_stop(self) -> None:
        if not self.stop:
            return
        start = max(0, self.released - max(len(s) for s in self.stop))
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True

    def _held(self) -> int:
        """Characters at the end of the text that could begin a stop string."""
        most = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text)), most, -1):
                if self.text.endswith(s[:k]):
                    most = k
                    break
        return most

    def _release(self, *, final: bool) -> str:
        end = len(self.text) if final else len(self.text) - self._held()
        if end <= self.released:
            return ""
        out, self.released = self.text[self.released : end], end
        return out
