"""Copy-constrained decoding (SPACES's BIO copy) and Sparse Softmax's top-k, as logits processors.

Letters: R search rows (input rows times beams or samples), V vocabulary size, t tokens generated.

SPACES factorises each step as p(y_t, z_t) = p(y_t) p(z_t) with a copy label z_t in {O, B, I}
(0, 1, 2): O = a free token, B = the first token of a span copied from the source, I = the next
token of that span. At each step the decoder (bojone/SPACES `AutoSummary.predict`):

1. takes z_t = argmax of the model's label scores, with I forbidden right after an O (and at
   t = 0): an O -> I transition is impossible;
2. keeps n, the length of the current copied span: n = 0 after O, n = 1 after B, n + 1 after I;
3. for n >= 1 restricts y_t to the tokens that can continue the span: the tokens that follow the
   last n - 1 generated tokens somewhere in the source (a source n-gram); when those n - 1 tokens
   do not occur in the source it falls back to n = 1, any source token;
4. then (Sparse Softmax) keeps only the top k logits.

`CopyConstraint` does steps 1-3, `SparseSoftmax` step 4; compose them in a processor list, in that
order. The label scores come from the model beside the logits, in the decoding state: the
processor is marked `sees_state`, so the search loop passes it the state returned with the logits
it processes, and it reads their (R, 3) scores from `state.copy_logits` (a
`genloom.models.unilm.UniLMState`, written by `start`/`step` and reordered by `select`). Nothing
lives on the model, so any number of decodes may run at once.

The span length n is derived from the history, as the processor protocol asks: the decision at
step t depends only on (source, tokens so far) and on label scores that are themselves a function
of them, so the processor memoises n by (source row, history) and finds the previous step's n
under the history minus its last token. Beams can therefore be reordered, repeated or dropped
freely. Use one `CopyConstraint` per search call. Rows are mapped to sources as the search loops
lay them out: R = len(sources) * repeats, row r belonging to source r // repeats.

A restricted row is renormalised over its allowed tokens (log-softmax), as SPACES's softmax over
the masked logits is; a row under O is returned unchanged, so when the labels never leave O the
processor is the identity and the search is exactly the plain one. `always` names tokens allowed
in every row whatever the label (EOS: the post's sources contain [SEP], so its spans may end
there; ours do not, so EOS is added explicitly).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from genloom.nn.losses import check_sparse, sparse_log_softmax

O, B, I = 0, 1, 2  # copy labels (SPACES's 0, 1, 2)
LABELS = ("O", "B", "I")


class SourceNGrams:
    """The n-grams of one token sequence: for each (n-1)-gram, the set of tokens that follow it.
    Built lazily for each n asked for (O(len(tokens)) each)."""

    def __init__(self, tokens: Sequence[int]) -> None:
        self.tokens = tuple(int(t) for t in tokens)
        self._next: dict[int, dict[tuple[int, ...], frozenset[int]]] = {}

    def following(self, prefix: tuple[int, ...]) -> frozenset[int] | None:
        """Tokens that follow `prefix` somewhere in the sequence (all tokens for an empty prefix);
        None when the prefix does not occur followed by a token."""
        n = len(prefix) + 1
        table = self._next.get(n)
        if table is None:
            grouped: dict[tuple[int, ...], set[int]] = {}
            toks = self.tokens
            for i in range(len(toks) - n + 1):
                grouped.setdefault(toks[i:i + n - 1], set()).add(toks[i + n - 1])
            table = self._next[n] = {k: frozenset(v) for k, v in grouped.items()}
        return table.get(prefix)


class CopyConstraint:
    """SPACES's BIO copy constraint (steps 1-3 of the module docstring).

    Called as `proc(logits, history, state)`: `state.copy_logits` holds the (R, 3) copy-label
    scores (O, B, I) of the rows being processed.

    Args:
        sources: the source tokens of each input row (padding removed).
        always: token ids allowed in every row whatever the label (typically EOS).
    """

    sees_prompt: ClassVar[bool] = False
    sees_state: ClassVar[bool] = True

    def __init__(self, sources: Sequence[Sequence[int]], *, always: Iterable[int] = ()) -> None:
        if len(sources) == 0:
            raise ValueError("CopyConstraint needs at least one source")
        self.ngrams = [SourceNGrams(s) for s in sources]
        if any(not g.tokens for g in self.ngrams):
            raise ValueError("every source needs at least one token")
        self.always = tuple(int(i) for i in always)
        self.decisions: dict[tuple[int, tuple[int, ...]], tuple[int, int]] = {}  # -> (label, n)

    def span_length(self, source: int, history: Sequence[int]) -> int:
        """n decided for the last token of `history` (0 for an empty or unseen history)."""
        if not history:
            return 0
        return self.decisions.get((source, tuple(history[:-1])), (O, 0))[1]

    def __call__(self, logits: Tensor, history: Tensor, state: Any) -> Tensor:
        rows, vocab = logits.shape
        scores = getattr(state, "copy_logits", None)  # (R, 3)
        if scores is None:
            raise ValueError("CopyConstraint needs a decoding state with copy_logits (a model with a copy head)")
        if scores.shape != (rows, 3):
            raise ValueError(f"label scores have shape {tuple(scores.shape)}, expected ({rows}, 3)")
        if rows % len(self.ngrams):
            raise ValueError(f"{rows} rows do not split evenly over {len(self.ngrams)} sources")
        repeats = rows // len(self.ngrams)
        hist = history.tolist()
        prev = [self.span_length(r // repeats, hist[r]) for r in range(rows)]
        z = scores.detach().float().clone()  # (R, 3)
        z[:, I] = torch.where(torch.tensor(prev, device=z.device) == 0, float("-inf"), z[:, I])
        picked = z.argmax(dim=-1).tolist()  # (R,) first maximum on ties
        allowed_rows, allowed_ids = [], []
        for r in range(rows):
            src, h = r // repeats, tuple(hist[r])
            label = picked[r]
            n = 0 if label == O else 1 if label == B else prev[r] + 1
            if n > 0:
                cand = self.ngrams[src].following(h[len(h) - n + 1:]) if n > 1 else None
                if cand is None:  # span start, or the span cannot go on: any source token
                    n, cand = 1, self.ngrams[src].following(())
                ids = [*cand, *self.always]
                allowed_rows += [r] * len(ids)
                allowed_ids += ids
            self.decisions[(src, h)] = (label, n)
        if not allowed_rows:
            return logits.clone()
        if max(allowed_ids) >= vocab:
            raise ValueError(f"a source token id ({max(allowed_ids)}) is outside the vocabulary of {vocab}")
        allow = torch.zeros(rows, vocab, dtype=torch.bool, device=logits.device)  # (R, V)
        allow[allowed_rows, allowed_ids] = True
        restricted = torch.zeros(rows, dtype=torch.bool, device=logits.device)  # (R,)
        restricted[allowed_rows] = True
        masked = logits.masked_fill(~allow, float("-inf")).log_softmax(dim=-1)  # (R, V)
        return torch.where(restricted[:, None], masked, logits)

    def spans(self, source: int, sequence: Sequence[int]) -> list[tuple[int, int, int]]:
        """Replay the decisions along a generated `sequence` of source row `source`:
        (label, n, token) per token, n the span length decided for it."""
        out = []
        for t, token in enumerate(sequence):
            label, n = self.decisions.get((source, tuple(sequence[:t])), (O, 0))
            out.append((label, n, int(token)))
        return out


class SparseSoftmax:
    """Decode with Sparse Softmax's distribution: log-softmax over the top k logits (ties with the
    k-th kept) or the top-p nucleus, -inf elsewhere (`genloom.nn.losses.sparse_log_softmax`).
    Unlike `TopK` it renormalises, so beam scores are sums of sparse-softmax log-probabilities."""

    sees_prompt: ClassVar[bool] = False

    def __init__(self, k: int | None = 10, *, top_p: float | None = None) -> None:
        check_sparse(k, top_p)
        self.k, self.top_p = k, top_p

    def __call__(self, logits: Tensor, history: Tensor) -> Tensor:
        return sparse_log_softmax(logits, k=self.k, top_p=self.top_p)  # (R, V)
