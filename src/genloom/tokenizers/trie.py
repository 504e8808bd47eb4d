"""A trie over the bytes of a vocabulary's tokens, for token healing and constrained decoding.

Two questions, each answered in time proportional to the answer plus the bytes walked:
- `extensions(prefix)`: every token whose bytes start with `prefix` (equal included), e.g. the
  candidates 白云, 白云山, 白云机场 for a prompt that ends in 白云;
- `prefixes_of(data)`: every token whose bytes are a non-empty prefix of `data` (the tokens that
  could start a re-tokenization of `data`); the walk stops after `longest_token_len` bytes.

Hand-written (about 60 lines) because no installed library does both queries in output-linear
time: pygtrie is not installed and is a dict-of-dicts whose subtree walk costs a Python call per
node, and `tokenizers`/`transformers` keep no byte index. The layout: token ids sorted by their
bytes, so the tokens under any trie node form one contiguous slice of that order; each node
stores the slice bounds (and how many tokens end exactly there, which sort first), and the edges
of all nodes live in one dict keyed `node * 256 + byte`. `extensions` is then a walk of
len(prefix) edges and one list slice. Special tokens and tokens with no bytes are left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from genloom.tokenizers.base import Tokenizer


class VocabTrie:
    """Byte trie over a vocabulary: `VocabTrie(tokenizer)` or `VocabTrie(list_of_token_bytes)`."""

    def __init__(self, vocab: Tokenizer | Sequence[bytes], *, exclude: Iterable[int] = ()) -> None:
        """vocab: a tokenizer (its special ids are excluded) or the bytes of ids 0, 1, ...;
        exclude: further ids to leave out."""
        if isinstance(vocab, Tokenizer):
            skip = set(vocab.special_ids) | set(exclude)
            items = [(vocab.token_bytes(i), i) for i in range(vocab.vocab_size) if i not in skip]
        else:
            skip = set(exclude)
            items = [(bytes(b), i) for i, b in enumerate(vocab) if i not in skip]
        items = sorted(item for item in items if item[0])
        self._order: list[int] = [i for _, i in items]  # token ids sorted by (bytes, id)
        n = len(items)
        self._lo: list[int] = [0]  # per node: start of its tokens' slice of _order
        self._hi: list[int] = [n]  # per node: end of that slice
        self._ends: list[int] = [0]  # per node: how many tokens end exactly at it
        self._edges: dict[int, int] = {}  # node * 256 + byte -> child node
        self.longest_token_len = max((len(b) for b, _ in items), default=0)
        path = [0]  # nodes along the previous token's bytes; path[k] sits at depth k
        prev = b""
        for pos, (data, _) in enumerate(items):
            common = 0
            limit = min(len(prev), len(data))
            while common < limit and prev[common] == data[common]:
                common += 1
            for node in path[common + 1 :]:  # subtrees the sorted order has now left
                self._hi[node] = pos
            del path[common + 1 :]
            for byte in data[common:]:
                node = len(self._lo)
                self._lo.append(pos)
                self._hi.append(n)
                self._ends.append(0)
                self._edges[path[-1] * 256 + byte] = node
                path.append(node)
            self._ends[path[-1]] += 1
            prev = data

    def __len__(self) -> int:
        """Number of tokens indexed."""
        return len(self._order)

    def _node(self, prefix: bytes) -> int | None:
        node: int | None = 0
        edges = self._edges
        for byte in prefix:
            node = edges.get(node * 256 + byte)
            if node is None:
                return None
        return node

    def extensions(self, prefix: bytes) -> list[int]:
        """Ids of all tokens whose bytes start with `prefix` (equal included), sorted by bytes."""
        node = self._node(prefix)
        return [] if node is None else self._order[self._lo[node] : self._hi[node]]

    def lookup(self, data: bytes) -> list[int]:
        """Ids of the tokens whose bytes equal `data` (several when a vocabulary repeats bytes)."""
        node = self._node(data)
        if node is None or not data:
            return []
        lo = self._lo[node]
        return self._order[lo : lo + self._ends[node]]

    def prefixes_of(self, data: bytes) -> list[int]:
        """Ids of all tokens whose bytes are a non-empty prefix of `data`, shortest first."""
        out: list[int] = []
        node: int | None = 0
        edges, lo, ends, order = self._edges, self._lo, self._ends, self._order
        for byte in data:
            node = edges.get(node * 256 + byte)
            if node is None:
                break
            if ends[node]:
                out.extend(order[lo[node] : lo[node] + ends[node]])
        return out
