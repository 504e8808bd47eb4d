"""Token healing: continue a prompt that ends mid-word without the prompt-boundary bias.

Letters: B rows of a search, V vocabulary size, t tokens generated so far.

A large vocabulary tokenizes "The quick bro" as ... / " bro", a split the model rarely saw in
training (" brown" is one token), so plain decoding from those ids seldom writes "wn". Healing
backs off the last token(s), keeps their bytes r (" bro"), and asks the model for a continuation
whose text starts with r. Four modes, one API (`heal_prompt` for the prompt step and processor,
`continue_prompt` for prompt step + search):

- `none`: plain tokenization, no constraint.
- `post`: the method of the 2023-09-13 kexue.fm post: back off one token, allow only the tokens
  whose bytes start with its bytes, renormalize; later steps are unconstrained.
- `hf`: Hugging Face's `generate(token_healing=True)` (heal_hf.py; HF models only): last token
  only, a soft +10 bias, prompt stripped of whitespace, the healed token picked greedily.
- `exact` (default): the true conditional p(x | kept tokens, text starts with r). The first
  tokens are drawn token by token from
      p(v | ctx, r) = p(v | ctx) Z(ctx v, r[len v:]) / Z(ctx, r)
  (Z = 1 once v covers r; Z from heal_tree.py, summed over every tokenization of r), so greedy
  decoding takes the argmax of the exact conditional, beam search scores exact conditional
  log-probabilities, and sampling draws exactly from the conditional; once r is covered, decoding
  goes on unconstrained.

Back-off works on bytes (byte-level BPE; a prompt given as bytes may end inside a UTF-8
character, whose bytes then belong to r). By default it is dynamic: keep backing off while the
removed bytes are a proper prefix of some longer vocabulary token (so never more than the longest
token), and never across a special token. `back_off=k` removes exactly k tokens instead.

The prompt step returns the context ids to start the model on and the processors to pass to any
search loop (`greedy`, `beam_search`, `sample`); the processors are pure `(logits, history)`
callables that find their place in the tree from the generated tokens alone, so beams may be
reordered and samples repeated freely.
"""

from __future__ import annotations

import codecs
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from genloom.decode.heal_tree import NEG_INF, PrefixTree, VocabIndex, build_tree
from genloom.decode.protocol import Decodable, LogitsProcessor, model_device
from genloom.decode.loops import Generated, beam_search, greedy, sample
from genloom.errors import UserError

MODES = ("exact", "post", "none", "hf")  # healing modes, default first
STRATEGIES = ("greedy", "beam", "sample")  # search loops a continuation can use


def split_utf8(data: bytes) -> tuple[str, bytes]:
    """(text of the complete characters, trailing bytes of an unfinished last character).

    Raises:
        UserError: invalid UTF-8 anywhere but an unfinished last character.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        text = decoder.decode(data, final=False)
    except UnicodeDecodeError as e:
        raise UserError(f"the prompt is not valid UTF-8 (byte {e.start}: {e.reason})") from None
    return text, decoder.getstate()[0]


def back_off(ids: Sequence[int], index: VocabIndex, *, tail: bytes = b"", k: int | None = None) -> tuple[list[int], bytes]:
    """Split a tokenized prompt into (kept ids, removed bytes r).

    Args:
        ids: the prompt's token ids.
        index: the vocabulary's `VocabIndex`.
        tail: bytes after the last token that are not a whole token (an unfinished UTF-8
            character); they always belong to r.
        k: back off exactly k tokens (fewer if a special token or the start comes first);
            None = dynamic: keep backing off while the bytes removed so far, with the next
            token's in front, are a proper prefix of some longer token.
    Returns:
        (ids kept, r = bytes of the removed tokens + tail).
    """
    if k is not None and k < 0:
        raise UserError(f"back_off must be >= 0, got {k}")
    removed, j = bytes(tail), len(ids)
    while j > 0 and (k is None or len(ids) - j < k):
        tok = int(ids[j - 1])
        data = index.token_bytes[tok] if 0 <= tok < index.vocab_size else b""
        if tok in index.special_ids or not data:
            break
        if k is None and not index.has_proper_extension(data + removed):
            break
        removed, j = data + removed, j - 1
    return [int(i) for i in ids[:j]], removed


class HealProcessor:
    """Logits processor of the `exact` mode: while the generated tokens spell a proper prefix of
    r, each row gets the exact conditional log-probabilities of `PrefixTree.log_conditional`;
    once a token covers r, the row's logits pass through unchanged."""

    sees_prompt = False

    def __init__(self, tree: PrefixTree) -> None:
        self.tree = tree

    def __call__(self, logits: Tensor, history: Tensor) -> Tensor:
        """logits (B, V), history (B, t) -> logits (B, V)."""
        out = None
        for b, row in enumerate(history.tolist()):
            node = self.tree.walk(row)
            if node is None:
                continue
            if out is None:
                out = logits.clone()
            out[b] = self.tree.log_conditional(node, logits[b]).to(logits.dtype)
        return logits if out is None else out


class PostProcessor:
    """Logits processor of the `post` mode: at the first step only the tokens whose bytes start
    with r are allowed (renormalized); later steps pass through."""

    sees_prompt = False

    def __init__(self, allowed: Tensor) -> None:
        """allowed: ids (A,) of the tokens extending the backed-off text (at least one)."""
        if allowed.numel() == 0:
            raise UserError("no vocabulary token extends the backed-off text")
        self.allowed = allowed

    def __call__(self, logits: Tensor, history: Tensor) -> Tensor:
        """logits (B, V), history (B, t) -> logits (B, V)."""
        if history.shape[1] > 0:
            return logits
        ids = self.allowed.to(logits.device)
        out = torch.full_like(logits, NEG_INF)  # (B, V)
        out[:, ids] = logits[:, ids]
        return out.log_softmax(dim=-1)


class ApproximateHealingWarning(UserWarning):
    """Exact healing ran on a tree pruned past its `tol`: a level reached `max_rows`, so the
    continuation is drawn within the tree's certified bound (total variation) of the exact
    distribution, not within tol. Raise max_rows (or accept the bound the result reports)."""


def tol_bound(tol: float) -> float:
    """The most a tree pruned by the tol budget alone can be off: tol / (1 - tol) (heal_tree.py)."""
    return tol / (1 - tol) if tol < 1 else math.inf


@dataclass
class HealedPrompt:
    """The result of the prompt step: what to start the model on and which processors to use."""

    mode: str  # "none", "post" or "exact"
    prompt: bytes  # the prompt as given, in bytes
    context: list[int]  # ids the model is started on (start token if any, then the kept tokens)
    removed: bytes  # r: the bytes the continuation must start with (b"" = unconstrained)
    processors: list[LogitsProcessor] = field(default_factory=list)  # give these to the search loop
    tree: PrefixTree | None = None  # exact: the evaluated tree (tree.bound: certified TV bound)
    tol: float = 0.0  # exact: the pruning budget the tree was built with

    @property
    def approximate(self) -> bool:
        """exact only: the tree was pruned past `tol` (a level hit max_rows); its `bound` says how far."""
        return self.tree is not None and self.tree.bound > tol_bound(self.tol) * (1 + 1e-9)

    def continuation_bytes(self, token_bytes: Sequence[bytes]) -> bytes:
        """The bytes after the prompt, from the generated tokens' bytes (r stripped off)."""
        data = b"".join(token_bytes)
        if not data.startswith(self.removed[: len(data)]):
            raise ValueError("the generated tokens do not start with the backed-off text")
        return data[len(self.removed):]

    def continuation_text(self, data: bytes) -> str:
        """The text after the prompt: an unfinished character of the prompt is completed by the
        continuation, so the text starts with that whole character; bad bytes become U+FFFD."""
        head, _ = split_utf8(self.prompt)
        full = (self.prompt + data).decode("utf-8", errors="replace")
        return full[len(head):]


def encode_prompt(tokenizer: Any, index: VocabIndex, prompt: str | bytes | Sequence[int]) -> tuple[bytes, list[int], bytes]:
    """(prompt bytes, ids of its complete text, tail bytes of an unfinished last character)."""
    if isinstance(prompt, str):
        data = prompt.encode("utf-8")
    elif isinstance(prompt, (bytes, bytearray)):
        data = bytes(prompt)
    else:
        ids = [int(i) for i in prompt]
        if any(i < 0 or i >= index.vocab_size for i in ids):
            raise UserError(f"a prompt token id is outside the vocabulary (size {index.vocab_size})")
        if not ids:
            raise UserError("the prompt is empty: give some text to continue")
        return b"".join(index.token_bytes[i] for i in ids), ids, b""
    if not data:
        raise UserError("the prompt is empty: give some text to continue")
    text, tail = split_utf8(data)
    return data, (tokenizer.encode(text) if text else []), tail


def heal_prompt(
    model: Decodable,
    tokenizer: Any,
    prompt: str | bytes | Sequence[int],
    *,
    mode: str = "exact",
    back_off_tokens: int | None = None,
    bos_id: int | None = None,
    tol: float = 1e-6,
    max_rows: int = 128,
    index: VocabIndex | None = None,
) -> HealedPrompt:
    """The prompt step of token healing.

    Args:
        model: the Decodable (used by `exact` to evaluate the tree; not called otherwise).
        tokenizer: a genloom `Tokenizer` (encode, token_bytes, special_ids).
        prompt: text, bytes (may end inside a UTF-8 character) or token ids (may end in a
            special token, which is never backed off across).
        mode: "exact", "post" or "none" ("hf" runs through `continue_prompt`).
        back_off_tokens: tokens to back off; None = dynamic for exact, 1 for post.
        bos_id: a start token put before the context (needed when nothing else is left).
        tol, max_rows: pruning of the exact tree (heal_tree.py; tol = 0 is fully exact).
        index: the vocabulary index (built from the tokenizer when not given; build it once).
    Returns:
        `HealedPrompt`: start the model on `context`, pass `processors` to the search loop.
    Warns:
        `ApproximateHealingWarning` when the exact tree had to be pruned past `tol` (a level
        reached `max_rows`); `HealedPrompt.approximate` and `tree.bound` say so afterwards too.
    """
    if mode not in MODES or mode == "hf":
        raise UserError(f"heal_prompt mode must be one of exact, post, none; got {mode!r}")
    index = index or VocabIndex.from_tokenizer(tokenizer)
    data, ids, tail = encode_prompt(tokenizer, index, prompt)
    start = [] if bos_id is None else [int(bos_id)]
    if mode == "none":
        tail_ids = []
        for byte in tail:
            found = index.trie.lookup(bytes([byte]))
            if not found:
                raise UserError(f"the vocabulary has no token for the byte {byte:#04x} the prompt ends with")
            tail_ids.append(found[0])
        context, removed, processors, tree = start + ids + tail_ids, b"", [], None
    else:
        k = back_off_tokens if back_off_tokens is not None or mode == "exact" else 1
        kept, removed = back_off(ids, index, tail=tail, k=k)
        context = start + kept
        processors: list[LogitsProcessor] = []
        tree = None
        if not context:
            raise UserError("nothing is left to condition on after backing off the prompt (it is a single "
                            "partial token): give the model a start token (bos_id)")
        if removed and mode == "post":
            processors = [PostProcessor(index.cover(removed))]
        elif removed:
            tree = build_tree(model, context, removed, index, tol=tol, max_rows=max_rows)
            processors = [HealProcessor(tree)]
    if not context:
        raise UserError("the prompt has no tokens to start from: give the model a start token (bos_id)")
    healed = HealedPrompt(mode=mode, prompt=data, context=context, removed=removed, processors=processors,
                          tree=tree, tol=tol)
    if healed.approximate:
        warnings.warn(ApproximateHealingWarning(
            f"exact healing is approximate: {tree.rows_capped} tokenization paths were cut at max_rows="
            f"{max_rows}, certified total-variation bound {tree.bound:.3g} > tol {tol:g}; raise max_rows"),
            stacklevel=2)
    return healed


@dataclass
class Continuation:
    """One continuation of a prompt."""

    text: str | None  # the text after the prompt (None: hf healing rewrote the prompt's own text)
    data: bytes | None  # the same as bytes (None as for text)
    token_ids: list[int]  # the generated ids (hf: those after the healed prompt)
    score: float | None  # the search's score (greedy/sample: summed log-prob of the processed steps)
    healed: HealedPrompt | None = None  # the prompt step (None for hf)
    full_text: str | None = None  # hf: the whole decoded output (prompt as healed + continuation)


def _run_search(strategy: str, model: Decodable, input_ids: Tensor, *, max_new_tokens: int,
                processors: list[LogitsProcessor], eos_id: int | None, num_beams: int, num_samples: int,
                generator: torch.Generator | None, prompt_ids: list[list[int]]) -> Generated:
    common = dict(max_new_tokens=max_new_tokens, eos_id=eos_id, processors=processors,
                  prompt_ids=prompt_ids, input_ids=input_ids)
    if strategy == "greedy":
        return greedy(model, **common)
    if strategy == "beam":
        return beam_search(model, num_beams=num_beams, **common)
    return sample(model, num_samples=num_samples, generator=generator, **common)


def continue_prompt(
    model: Decodable,
    tokenizer: Any,
    prompt: str | bytes | Sequence[int],
    *,
    mode: str = "exact",
    strategy: str = "greedy",
    max_new_tokens: int = 32,
    eos_id: int | None = None,
    num_beams: int = 4,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    processors: Sequence[LogitsProcessor] = (),
    bos_id: int | None = None,
    back_off_tokens: int | None = None,
    tol: float = 1e-6,
    max_rows: int = 128,
    index: VocabIndex | None = None,
) -> list[Continuation]:
    """Continue `prompt` with healing `mode` and search `strategy` (the one API for all modes).

    Args:
        model: a Decodable; for mode "hf", an `HFCausalLM` (or a transformers model).
        tokenizer: the genloom tokenizer (an `HFTokenizer` for mode "hf").
        strategy: "greedy", "beam" (num_beams, best hypothesis returned) or "sample"
            (num_samples draws from `generator`).
        processors: further logits processors, applied after the healing one.
        eos_id: a token that ends a continuation (None: always max_new_tokens tokens).
        Other arguments: as in `heal_prompt`.
    Returns:
        One `Continuation` (num_samples for sampling).
    """
    if strategy not in STRATEGIES:
        raise UserError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    if mode == "hf":
        from genloom.decode.heal_hf import hf_continue

        return hf_continue(model, tokenizer, prompt, strategy=strategy, max_new_tokens=max_new_tokens,
                           num_beams=num_beams, num_samples=num_samples, generator=generator, eos_id=eos_id)
    index = index or VocabIndex.from_tokenizer(tokenizer)
    healed = heal_prompt(model, tokenizer, prompt, mode=mode, back_off_tokens=back_off_tokens, bos_id=bos_id,
                         tol=tol, max_rows=max_rows, index=index)
    ids = torch.tensor([healed.context], dtype=torch.long, device=model_device(model))  # (1, T)
    out = _run_search(strategy, model, ids, max_new_tokens=max_new_tokens,
                      processors=healed.processors + list(processors), eos_id=eos_id, num_beams=num_beams,
                      num_samples=num_samples, generator=generator, prompt_ids=[healed.context])
    results = []
    for seq, score in zip(out.sequences, out.scores or [None] * len(out.sequences)):
        data = healed.continuation_bytes([index.token_bytes[i] for i in seq])
        results.append(Continuation(text=healed.continuation_text(data), data=data, token_ids=list(seq),
                                    score=score, healed=healed))
    return results


def healed_logprobs(
    model: Decodable,
    tokenizer: Any,
    prompt: str | bytes | Sequence[int],
    gold: bytes,
    *,
    modes: Sequence[str] = ("none", "post", "exact"),
    bos_id: int | None = None,
    tol: float = 1e-6,
    max_rows: int = 128,
    index: VocabIndex | None = None,
    healed: HealedPrompt | None = None,
) -> dict[str, tuple[float, float]]:
    """log P(the continuation after `prompt` starts with the bytes `gold`) under the decoding
    distribution of each mode, summed over every tokenization:

    - none: log Z(all prompt tokens, gold);
    - post: the first token is drawn among the extensions of r, renormalized, then the model:
      log [sum_{v extends r} p(v) Z(ctx v, (r gold)[len v:])] - log sum_{v extends r} p(v);
    - exact: log Z(kept, r gold) - log Z(kept, r).
    When post and exact back off to the same context, one tree over r gold serves both (post's
    numerator is the part of its root whose first token is at least len(r) bytes long).

    Args:
        healed: the exact mode's prompt step if already made (its tree gives Z(kept, r)).
        Other arguments: as in `heal_prompt`.
    Returns:
        mode -> (log-probability, certified relative bound of the trees used; 0 = exact).
    """
    unknown = set(modes) - {"none", "post", "exact"}
    if unknown:
        raise UserError(f"healed_logprobs modes must be none, post or exact; got {sorted(unknown)}")
    index = index or VocabIndex.from_tokenizer(tokenizer)
    gold = bytes(gold)
    opts = dict(tol=tol, max_rows=max_rows, probe=True)
    out: dict[str, tuple[float, float]] = {}
    if "none" in modes:
        plain = heal_prompt(model, tokenizer, prompt, mode="none", bos_id=bos_id, index=index)
        tree = build_tree(model, plain.context, gold, index, **opts)
        out["none"] = (tree.log_z, tree.bound)
    exact = post = shared = None
    if "exact" in modes:
        exact = healed if healed is not None and healed.mode == "exact" else heal_prompt(
            model, tokenizer, prompt, mode="exact", bos_id=bos_id, tol=tol, max_rows=max_rows, index=index)
    if "post" in modes:
        post = heal_prompt(model, tokenizer, prompt, mode="post", bos_id=bos_id, index=index)
    if exact is not None and post is not None and (exact.context, exact.removed) == (post.context, post.removed):
        shared = build_tree(model, exact.context, exact.removed + gold, index, **opts)
    if exact is not None:
        tree = shared or build_tree(model, exact.context, exact.removed + gold, index, **opts)
        den, den_bound = (exact.tree.log_z, exact.tree.bound) if exact.tree is not None else (0.0, 0.0)
        out["exact"] = (tree.log_z - den, tree.bound + den_bound)
    if post is not None:
        r = post.removed
        if shared is not None:
            tree, num = shared, shared.log_z_first_at_least(len(r))
        else:
            tree = build_tree(model, post.context, r + gold, index, root_min_len=len(r), **opts)
            num = tree.log_z
        bound = 0.0 if tree.log_pruned == NEG_INF else math.exp(tree.log_pruned - num)
        if not r:
            out["post"] = (num, bound)
        else:
            cover = index.cover(r).to(tree.root_logp.device)
            out["post"] = (num - float(torch.logsumexp(tree.root_logp[cover], dim=0)), bound)
    return out
