"""Exact prefix probabilities over every tokenization: the tree behind exact token healing.

Letters: V vocabulary size, N rows (tree nodes) stepped together in one level.

For a context (token ids) and a byte string s, let Z(ctx, s) be the probability that the text the
model generates after ctx starts with s, summed over *all* token sequences that spell it (the
canonical tokenization and every other one):

    Z(ctx, s) = sum_{v covers s} p(v | ctx)  +  sum_{v proper prefix of s} p(v | ctx) Z(ctx v, s[len v:])

where "v covers s" means the bytes of v start with s (the constraint is met inside v) and "proper
prefix" means the bytes of v are a shorter non-empty prefix of s. Special tokens and tokens with
no bytes take part in neither sum (an end-of-text before s is complete does not spell s).

`build_tree` evaluates this recursion with the model's cache. The nodes of the tree are the token
paths that spell a proper prefix of s; every node is one row of the decoding state. The tree grows
one level per model call: all nodes of a level are stepped together (`select` repeats each parent
row once per child, `step` feeds the children's last tokens), so the cost is one prefill plus one
batched step per level, and the number of levels is at most len(s) - 1. Z depends on the whole path
(the model's context differs), so nodes are never merged: the recursion is exact.

Pruning with a certified bound. A sub-tree rooted at a path of probability q contributes at most q
(Z <= 1). With `tol` > 0 a child is left unexpanded while the summed probability M of all such
children stays below tol * L, where L is the part of Z already computed (a lower bound of the final
value); `max_rows` caps the rows of a level (children beyond it are pruned too, and their mass
counted). For long targets little of Z is found before the deep levels, so L is 0 early on and
nothing can be pruned; `probe=True` first walks one path (the most probable consistent token at
each step, batch 1) and takes the covering mass met on the way as L from the start. The computed value Zc satisfies Zc <= Z <= Zc + M, and the distribution the healing
processor induces over the first token sequences that complete s differs from the exact
conditional by total variation (Z - Zc) / Z <= M / Zc: `PrefixTree.bound`, computed from the tree
itself (so it is certified whatever guided the pruning); it is at most tol / (1 - tol) unless the
row cap was hit. With tol = 0 and no row cap hit, bound = 0 and the tree is exact.

Hand-written: no library computes token-level prefix probabilities over a generic step function
(genlm-bytes and byte-sampler are research code for their own model wrappers and not installed).
"""

from __future__ import annotations

import gc
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from genloom.decode.protocol import Decodable, model_device
from genloom.errors import UserError
from genloom.tokenizers.trie import VocabTrie

NEG_INF = float("-inf")


def _logaddexp(a: float, b: float) -> float:
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    m = max(a, b)
    return m + math.log1p(math.exp(-abs(a - b)))


class VocabIndex:
    """A vocabulary's token bytes with the queries healing needs, cached per byte string.

    Args:
        token_bytes: the bytes of ids 0, 1, ... (b"" for specials).
        special_ids: ids never allowed while a constraint is open (end of text, padding, ...).
    """

    def __init__(self, token_bytes: Sequence[bytes], *, special_ids: Sequence[int] | frozenset[int] = ()) -> None:
        # ~100k small objects: with a model loaded, the cyclic GC's passes over everything alive
        # took as long as the build itself (0.1 s for SmolLM2's 49k tokens), and none of them
        # can form a cycle
        enabled = gc.isenabled()
        gc.disable()
        try:
            self.token_bytes = [bytes(b) for b in token_bytes]
            self.special_ids = frozenset(int(i) for i in special_ids)
            self.vocab_size = len(self.token_bytes)
            self.trie = VocabTrie(self.token_bytes, exclude=self.special_ids)
        finally:
            if enabled:
                gc.enable()
        self.longest_token_len = self.trie.longest_token_len
        self._cover: dict[tuple[bytes, int], Tensor] = {}
        self._prefixes: dict[tuple[bytes, int], list[int]] = {}

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> VocabIndex:
        """Index any genloom `Tokenizer` (its `token_bytes` and `special_ids`)."""
        return cls(tokenizer.all_token_bytes(), special_ids=tokenizer.special_ids)

    def cover(self, rest: bytes, min_len: int = 0) -> Tensor:
        """Ids (long) of the tokens whose bytes start with `rest` and are at least `min_len` long."""
        key = (rest, min_len)
        if key not in self._cover:
            ids = self.trie.extensions(rest)
            if min_len > len(rest):
                ids = [i for i in ids if len(self.token_bytes[i]) >= min_len]
            self._cover[key] = torch.tensor(ids, dtype=torch.long)
        return self._cover[key]

    def proper_prefixes(self, rest: bytes, min_len: int = 0) -> list[int]:
        """Ids of the tokens whose bytes are a non-empty proper prefix of `rest`, >= `min_len` long."""
        key = (rest, min_len)
        if key not in self._prefixes:
            tb = self.token_bytes
            self._prefixes[key] = [i for i in self.trie.prefixes_of(rest)
                                   if min_len <= len(tb[i]) < len(rest)]
        return self._prefixes[key]

    def has_proper_extension(self, data: bytes) -> bool:
        """True when some token's bytes start with `data` and are longer than it."""
        return len(self.trie.extensions(data)) > len(self.trie.lookup(data))


@dataclass
class TreeNode:
    """One token path that spells a proper prefix of the target."""

    offset: int  # bytes of the target the path spells
    parent: int  # index of the parent node; -1 for the root
    token: int  # the token from the parent to this node; -1 for the root
    log_step: float  # log p(token | parent path)
    log_path: float  # log p(path | context): the path's joint probability
    log_cover: float = NEG_INF  # log of the probability that the next token covers the rest
    children: dict[int, int] = field(default_factory=dict)  # expanded prefix token -> node index
    n_pruned: int = 0  # prefix tokens left unexpanded (their mass is in the tree's bound)
    log_z: float = NEG_INF  # log Z(context + path, rest of the target), computed bottom-up


@dataclass
class PrefixTree:
    """The evaluated recursion for one context and target (see the module docstring)."""

    context: list[int]  # the token ids the model was started on
    target: bytes  # s: the bytes the continuation must start with
    root_min_len: int  # the first token must be at least this many bytes long (post-style filters)
    nodes: list[TreeNode]  # nodes[0] is the root; children come after their parents
    index: VocabIndex  # the vocabulary the sets were drawn from
    log_pruned: float  # log M: summed probability of the unexpanded paths
    model_calls: int  # one prefill plus one batched step per level
    rows_capped: int = 0  # children pruned because a level reached max_rows (not by the tol budget)
    root_logp: Tensor | None = None  # (V,) float64 log p(. | context); None when no model call was needed
    _allowed: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict, repr=False)

    @property
    def log_z(self) -> float:
        """log Z(context, target) as computed (exact when `bound` is 0)."""
        return self.nodes[0].log_z

    @property
    def bound(self) -> float:
        """Certified upper bound on (Z - Z computed) / Z computed, hence on the total variation
        between the healed and the exact distribution of completions (0 = exact)."""
        if self.log_pruned == NEG_INF:
            return 0.0
        return math.exp(self.log_pruned - self.log_z)

    def log_z_first_at_least(self, min_len: int) -> float:
        """log of the part of Z whose first token is at least `min_len` bytes long (min_len at most
        len(target): every covering token qualifies), from a tree built with root_min_len = 0."""
        if self.root_min_len or min_len > len(self.target):
            raise ValueError("log_z_first_at_least needs root_min_len = 0 and min_len <= len(target)")
        root = self.nodes[0]
        z = root.log_cover
        for tok, c in root.children.items():
            if len(self.index.token_bytes[tok]) >= min_len:
                child = self.nodes[c]
                z = _logaddexp(z, child.log_step + child.log_z)
        return z

    def walk(self, path: Sequence[int]) -> int | None:
        """The node reached by `path` (generated tokens), or None once a token left the tree
        (covered the rest of the target: from there on decoding is unconstrained)."""
        node = 0
        for tok in path:
            nxt = self.nodes[node].children.get(int(tok))
            if nxt is None:
                return None
            node = nxt
        return node

    def allowed(self, node: int) -> tuple[Tensor, Tensor]:
        """(ids (A,) long, bias (A,) float64) at `node`: the tokens with non-zero conditional
        probability and log Z(child) - log Z(node) for each (children) or -log Z(node) (covers)."""
        if node not in self._allowed:
            n = self.nodes[node]
            rest = self.target[n.offset:]
            min_len = self.root_min_len if node == 0 else 0
            cover = self.index.cover(rest, min_len)
            kids = [(tok, self.nodes[c].log_z) for tok, c in n.children.items() if self.nodes[c].log_z > NEG_INF]
            ids = torch.cat([cover, torch.tensor([t for t, _ in kids], dtype=torch.long)])
            bias = torch.cat([torch.zeros(len(cover), dtype=torch.float64),
                              torch.tensor([z for _, z in kids], dtype=torch.float64)]) - n.log_z
            self._allowed[node] = (ids, bias)
        return self._allowed[node]

    def log_conditional(self, node: int, logits: Tensor) -> Tensor:
        """The exact next-token log-probabilities (V,) at `node` given that the text continues
        with the rest of the target, from the model's logits (V,) there; -inf off the allowed set."""
        ids, bias = self.allowed(node)
        logp = logits.double().log_softmax(dim=-1)  # (V,)
        out = torch.full_like(logp, NEG_INF)  # (V,)
        ids = ids.to(logits.device)
        out[ids] = logp[ids] + bias.to(logits.device)
        return out


def build_tree(
    model: Decodable,
    context: Sequence[int],
    target: bytes,
    index: VocabIndex,
    *,
    root_min_len: int = 0,
    tol: float = 1e-6,
    max_rows: int = 128,
    probe: bool = False,
) -> PrefixTree:
    """Evaluate Z(context, target) and every node's Z with the model's cache, level by level.

    Args:
        model: any Decodable whose `start` takes `input_ids` (1, T).
        context: the token ids the continuation follows (at least one).
        target: the bytes the continuation must start with (may be empty: Z = 1).
        index: the vocabulary's `VocabIndex`.
        root_min_len: only first tokens at least this many bytes long count (the post's method
            restricts the first token to extensions of the backed-off text).
        tol: certified total-variation budget for pruning unlikely paths (0 = exact).
        max_rows: the most nodes stepped in one level (more are pruned and counted in the bound).
        probe: walk one likely path first (one more prefill) so pruning can start at level 1;
            worth it for long targets (many levels), not for a few bytes.
    Returns:
        The `PrefixTree` (its `log_z`, `bound`, `walk`, `log_conditional`).
    """
    if not context:
        raise UserError("healing needs at least one context token (a start token or a kept prompt token)")
    if tol < 0 or max_rows < 1:
        raise UserError(f"tol must be >= 0 and max_rows >= 1, got {tol} and {max_rows}")
    root = TreeNode(offset=0, parent=-1, token=-1, log_step=0.0, log_path=0.0)
    tree = PrefixTree(context=list(context), target=bytes(target), root_min_len=root_min_len,
                      nodes=[root], index=index, log_pruned=NEG_INF, model_calls=0)
    if not target:
        root.log_z = 0.0
        return tree
    device = model_device(model)
    ids = torch.tensor([list(context)], dtype=torch.long, device=device)  # (1, T)
    log_hint = _probe(model, ids, target, index, root_min_len) if probe and tol > 0 else NEG_INF
    with torch.no_grad():
        logits, state = model.start(input_ids=ids, max_new_tokens=len(target))  # (1, V)
    tree.model_calls = 1
    tree.root_logp = logits[0].double().log_softmax(dim=-1)  # (V,)
    level = [0]  # node index of each row of `state`
    log_lower = NEG_INF  # log L: mass of the completions found so far
    log_tol = math.log(tol) if tol > 0 else NEG_INF
    while True:
        logp = logits.double().log_softmax(dim=-1)  # (N, V)
        candidates: list[tuple[float, float, int, int, int]] = []  # (log path, log step, row, node, token)
        by_offset: dict[int, list[int]] = {}
        for row, node in enumerate(level):
            by_offset.setdefault(tree.nodes[node].offset, []).append(row)
        for offset, rows in by_offset.items():
            rest = target[offset:]
            min_len = root_min_len if tree.model_calls == 1 else 0
            cover = index.cover(rest, min_len).to(logp.device)
            if cover.numel():
                cover_lse = torch.logsumexp(logp[rows][:, cover], dim=1).tolist()  # (n,)
            else:
                cover_lse = [NEG_INF] * len(rows)
            prefixes = index.proper_prefixes(rest, min_len)
            steps = logp[rows][:, prefixes].tolist() if prefixes else [[] for _ in rows]  # (n, P)
            for row, lse, step in zip(rows, cover_lse, steps):
                node = tree.nodes[level[row]]
                node.log_cover = lse
                log_lower = _logaddexp(log_lower, node.log_path + lse)
                for tok, ls in zip(prefixes, step):
                    if ls > NEG_INF:
                        candidates.append((node.log_path + ls, ls, row, level[row], tok))
        base = max(log_lower, log_hint)  # a lower bound of Z
        keep = _prune(tree, candidates, log_budget=log_tol + base if base > NEG_INF else NEG_INF,
                      max_rows=max_rows)
        if not keep:
            break
        parents, tokens = [], []
        new_level = []
        for log_path, ls, row, parent, tok in keep:
            pn = tree.nodes[parent]
            child = TreeNode(offset=pn.offset + len(index.token_bytes[tok]), parent=parent, token=tok,
                             log_step=ls, log_path=log_path)
            pn.children[tok] = len(tree.nodes)
            new_level.append(len(tree.nodes))
            tree.nodes.append(child)
            parents.append(row)
            tokens.append(tok)
        with torch.no_grad():
            state = model.select(state, torch.tensor(parents, dtype=torch.long, device=device))
            logits, state = model.step(torch.tensor(tokens, dtype=torch.long, device=device), state)  # (N, V)
        tree.model_calls += 1
        level = new_level
    for node in reversed(tree.nodes):  # children come after parents
        z = node.log_cover
        for c in node.children.values():
            child = tree.nodes[c]
            z = _logaddexp(z, child.log_step + child.log_z)
        node.log_z = z
    if tree.log_z == NEG_INF:
        raise UserError(f"no token sequence of this vocabulary spells {bytes(target)!r} after the context"
                        + (" (every path was pruned: raise max_rows)" if tree.log_pruned > NEG_INF else ""))
    return tree


def _probe(model: Decodable, ids: Tensor, target: bytes, index: VocabIndex, root_min_len: int) -> float:
    """log of a lower bound of Z: the covering mass met along one path that always takes the most
    probable token spelling a proper prefix of the rest (batch 1, one step per token)."""
    with torch.no_grad():
        logits, state = model.start(input_ids=ids, max_new_tokens=len(target))  # (1, V)
        offset, log_path, total = 0, 0.0, NEG_INF
        while True:
            logp = logits[0].double().log_softmax(dim=-1)  # (V,)
            min_len = root_min_len if offset == 0 else 0
            cover = index.cover(target[offset:], min_len).to(logp.device)
            if cover.numel():
                total = _logaddexp(total, log_path + float(torch.logsumexp(logp[cover], dim=0)))
            prefixes = index.proper_prefixes(target[offset:], min_len)
            if not prefixes:
                return total
            values = logp[prefixes]
            j = int(values.argmax())
            if values[j] == NEG_INF:
                return total
            log_path += float(values[j])
            offset += len(index.token_bytes[prefixes[j]])
            logits, state = model.step(torch.tensor([prefixes[j]], dtype=torch.long, device=ids.device), state)


def _prune(tree: PrefixTree, candidates: list[tuple[float, float, int, int, int]], *, log_budget: float,
           max_rows: int) -> list[tuple[float, float, int, int, int]]:
    """Drop the least likely children while their summed mass stays within the budget, then
    beyond `max_rows`; the dropped mass is added to the tree's `log_pruned`."""
    candidates.sort(key=lambda c: c[0])
    start = 0
    while start < len(candidates):
        total = _logaddexp(tree.log_pruned, candidates[start][0])
        if total > log_budget:
            break
        tree.log_pruned = total
        start += 1
    drop = candidates[:start]
    over = max(0, len(candidates) - start - max_rows)
    tree.rows_capped += over
    for c in candidates[start:start + over]:
        tree.log_pruned = _logaddexp(tree.log_pruned, c[0])
    drop += candidates[start:start + over]
    for c in drop:
        tree.nodes[c[3]].n_pruned += 1
    kept = candidates[start + over:]
    kept.sort(key=lambda c: (c[2], c[4]))  # group by parent row: select gathers contiguous rows
    return kept


def prefix_logprob(
    model: Decodable,
    context: Sequence[int],
    target: bytes,
    index: VocabIndex,
    *,
    root_min_len: int = 0,
    tol: float = 1e-6,
    max_rows: int = 128,
    probe: bool = True,
) -> tuple[float, float]:
    """log Z(context, target): the log-probability that the continuation starts with `target`,
    summed over all tokenizations; returns (log Z, certified relative bound; 0 = exact)."""
    tree = build_tree(model, context, target, index, root_min_len=root_min_len, tol=tol, max_rows=max_rows,
                      probe=probe)
    return tree.log_z, tree.bound
