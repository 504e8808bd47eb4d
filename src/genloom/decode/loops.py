"""Search loops over any `Decodable` (protocol.py): greedy, sampling, beam search, streaming.

Letters: B input rows, K beams, R sequences returned per row, S samples per row, V vocabulary
size, N max_new_tokens, t tokens generated so far, P prompt length (longest prompt).

The loops never ask which model they drive: they call `model.start(**inputs, max_new_tokens=N)`,
then `model.step(tokens, state)` once per further token and `model.select(state, index)` to
repeat rows (samples, beams) or reorder them (beams). Every loop stops after N tokens or when
every row has finished, and never steps the model for a token it will not use.

Finished rows are kept and stepped, masked (fed their EOS, outputs ignored) rather than dropped
with `select`: a step costs about 1/B of a batch's work per row, while dropping rows would gather
the whole cache. In beam search a finished row is frozen exactly as in Hugging Face's batched
beam search, so a row's result does not depend on the other rows in the batch.

Processors (processors.py) get the generated tokens as history. Hugging Face's repetition
penalty and no-repeat-n-gram ban also look at the prompt: pass `prompt_ids` (the token ids of each
input row's prompt) and the processors marked `sees_prompt` get prompt + generated tokens, so
results equal Hugging Face's `generate()` on the same weights. Processors marked `sees_state`
also get the decoding state returned with the logits they process (its rows are theirs).

Beam search reproduces `transformers` 5.x `_beam_search` (generation/utils.py): 2K candidates per
row (K times (1 + number of EOS ids), at least 2K), processors applied to log-probabilities, the
length penalty dividing a finished hypothesis's summed log-probability by (number of generated
tokens, EOS included, prompt excluded) ** length_penalty, only candidates among the top K allowed
to finish, and `early_stopping` True (stop once K hypotheses are finished), False (stop when the
best running beam, normalised by its current length, cannot beat the worst finished one) or
"never" (the same test with the most favourable length: an admissible bound, so with enough
beams the search is exact for any length_penalty).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from torch import Tensor

from genloom.decode.processors import MinLength, apply
from genloom.decode.protocol import Decodable, LogitsProcessor

EosId = int | Sequence[int] | None
_NEG = -1.0e9  # Hugging Face's "impossible" score; reproduced so ties break the same way


@dataclass
class Generated:
    """What a search returns. Rows are grouped by input row: row i * n + j is the j-th result of
    input i (n = 1 for greedy, S for sampling, R for beam search, best first)."""

    sequences: list[list[int]]  # new token ids of each result, without EOS or padding
    scores: list[float] | None  # greedy/sample: summed log-prob of the picked tokens (EOS included)
    # under the processed distribution; beam: Hugging Face's length-penalised sequence score


@dataclass
class _Step:
    tokens: Tensor  # (B,) long: the token picked for each row (fill for rows already finished)
    logp: Tensor | None  # (B,) float: its log-probability under the processed distribution (None
    # when the loop was asked for no scores)
    alive: Tensor  # (B,) bool: the row had not finished before this token


def _eos_tensor(eos_id: EosId, device: torch.device) -> Tensor | None:
    """EOS ids as a (E,) long tensor, or None."""
    if eos_id is None:
        return None
    ids = [eos_id] if isinstance(eos_id, int) else list(eos_id)
    if not ids or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids):
        raise ValueError(f"eos_id must be a non-negative token id or a list of them, got {eos_id!r}")
    return torch.tensor(ids, dtype=torch.long, device=device)


def _check_common(max_new_tokens: int, min_new_tokens: int) -> None:
    """Validate the length options shared by every loop."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if isinstance(min_new_tokens, bool) or not isinstance(min_new_tokens, int) or min_new_tokens < 0:
        raise ValueError(f"min_new_tokens must be an integer >= 0, got {min_new_tokens!r}")


def _with_min_length(processors: Sequence[LogitsProcessor], min_new_tokens: int, eos: Tensor | None) -> list:
    """Prepend MinLength when asked for (it commutes with every processor in processors.py)."""
    if min_new_tokens > 0 and eos is not None:
        return [MinLength(min_new_tokens, eos.tolist()), *processors]
    return list(processors)


def _prompt_block(
    prompt_ids: Sequence[Sequence[int]] | None, procs: Sequence[LogitsProcessor], rows: int, repeats: int, device
) -> Tensor | None:
    """The prompts, left-padded with -1 and each repeated `repeats` times: (rows * repeats, P);
    None when there are none or no processor looks at them."""
    if prompt_ids is None:
        return None
    if len(prompt_ids) != rows:
        raise ValueError(f"prompt_ids has {len(prompt_ids)} rows but the model was started with {rows}")
    if not any(getattr(p, "sees_prompt", False) for p in procs):
        return None
    width = max((len(p) for p in prompt_ids), default=0)
    block = torch.full((rows, width), -1, dtype=torch.long, device=device)  # (B, P)
    for r, ids in enumerate(prompt_ids):
        if len(ids):
            block[r, width - len(ids) :] = torch.as_tensor(list(ids), dtype=torch.long, device=device)
    return block.repeat_interleave(repeats, dim=0)  # (B * repeats, P)


def _start(model: Decodable, max_new_tokens: int, repeats: int, inputs: dict[str, Any]) -> tuple[Tensor, Any, int]:
    """Prefill, then repeat each row `repeats` times; returns logits (B * repeats, V), state, B."""
    logits, state = model.start(**inputs, max_new_tokens=max_new_tokens)  # (B, V)
    rows = logits.shape[0]
    if rows == 0:
        raise ValueError("no prompts to decode: the input batch is empty")
    if repeats > 1:
        index = torch.arange(rows, device=logits.device).repeat_interleave(repeats)  # (B * repeats,)
        logits, state = logits[index], model.select(state, index)
    return logits, state, rows


def _steps(
    model: Decodable,
    choose: Callable[[Tensor], tuple[Tensor, Tensor]],
    *,
    max_new_tokens: int,
    repeats: int,
    eos_id: EosId,
    min_new_tokens: int,
    processors: Sequence[LogitsProcessor],
    prompt_ids: Sequence[Sequence[int]] | None,
    inputs: dict[str, Any],
    output_scores: bool = True,
) -> Iterator[_Step]:
    """The token-by-token loop shared by greedy, sample and stream: `choose(scores (B, V))` ->
    (tokens (B,), their scores (B,)). Without `output_scores` the log-softmax normaliser of the
    picks is not computed (as Hugging Face's `generate()` by default) and `_Step.logp` is None."""
    _check_common(max_new_tokens, min_new_tokens)
    with torch.no_grad():
        logits, state, rows = _start(model, max_new_tokens, repeats, inputs)
    device = logits.device
    eos = _eos_tensor(eos_id, device)
    procs = _with_min_length(processors, min_new_tokens, eos)
    prompt = _prompt_block(prompt_ids, procs, rows, repeats, device)
    width = 0 if prompt is None else prompt.shape[1]
    buf = torch.zeros(logits.shape[0], width + max_new_tokens, dtype=torch.long, device=device)  # (B, P + N)
    if prompt is not None:
        buf[:, :width] = prompt
    alive = torch.ones(logits.shape[0], dtype=torch.bool, device=device)  # (B,)
    all_alive = True  # no row has finished yet (then the masking below is skipped)
    fill = 0 if eos is None else int(eos[0])
    for t in range(max_new_tokens):
        full = buf[:, : width + t] if prompt is not None else None  # (B, P + t)
        scores = apply(procs, logits.float(), buf[:, width : width + t], full, state)  # (B, V)
        if not all_alive:
            scores = torch.where(alive[:, None], scores, 0.0)  # finished rows: anything finite
        # -inf where every token was removed: the normaliser, or (no scores wanted) the best score
        norm = scores.logsumexp(dim=-1) if output_scores else scores.amax(dim=-1)  # (B,)
        if bool(torch.isneginf(norm).any()):
            raise ValueError(f"the logits processors removed every token of some row at step {t}")
        tokens, picked = choose(scores)  # (B,) each
        logp = picked - norm if output_scores else None  # (B,) log-softmax of the pick
        if not all_alive:
            tokens = torch.where(alive, tokens, fill)
        buf[:, width + t] = tokens
        yield _Step(tokens, logp, alive)
        if eos is not None:
            alive = alive & ~torch.isin(tokens, eos)
            all_alive = bool(alive.all())
            if not all_alive and not bool(alive.any()):
                return
        if t + 1 == max_new_tokens:
            return
        with torch.no_grad():
            logits, state = model.step(tokens, state)  # (B, V)


def _collect(steps: Iterator[_Step], eos_id: EosId) -> Generated:
    """Run a step iterator to the end and gather the sequences (EOS and padding dropped)."""
    run = list(steps)  # gathered once at the end: nothing but the loop itself runs per step
    tokens, alive = torch.stack([s.tokens for s in run], 1), torch.stack([s.alive for s in run], 1)  # (B, t)
    eos = _eos_tensor(eos_id, tokens.device)
    emitted = alive if eos is None else alive & ~torch.isin(tokens, eos)  # (B, t)
    sequences = [[tok for tok, k in zip(row, m) if k] for row, m in zip(tokens.tolist(), emitted.tolist())]
    if run[0].logp is None:
        return Generated(sequences=sequences, scores=None)
    logp = torch.stack([s.logp for s in run], 1)  # (B, t)
    total = torch.where(alive, logp, 0.0).sum(dim=1)  # (B,)
    return Generated(sequences=sequences, scores=total.tolist())


def _argmax(scores: Tensor) -> tuple[Tensor, Tensor]:
    """The best token of each row and its score, in one reduction (first index on ties, as argmax)."""
    best, tokens = scores.max(dim=-1)  # (B,) each
    return tokens, best


def _sampler(generator: torch.Generator | None) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """Draw one token per row from softmax(scores), on the generator's device if it has one."""

    def choose(scores: Tensor) -> tuple[Tensor, Tensor]:
        probs = scores.softmax(dim=-1)  # (B, V)
        if generator is not None and generator.device != probs.device:
            tokens = torch.multinomial(probs.to(generator.device), 1, generator=generator).to(probs.device)
        else:
            tokens = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
        return tokens.squeeze(1), scores.gather(1, tokens).squeeze(1)  # (B,) each

    return choose


def greedy(
    model: Decodable,
    *,
    max_new_tokens: int,
    eos_id: EosId = None,
    min_new_tokens: int = 0,
    processors: Sequence[LogitsProcessor] = (),
    prompt_ids: Sequence[Sequence[int]] | None = None,
    output_scores: bool = True,
    **inputs: Any,
) -> Generated:
    """Pick the highest processed logit at every step.

    Args:
        model: any Decodable; `inputs` go to `model.start`.
        max_new_tokens: the most tokens generated per row (>= 1).
        eos_id: id(s) that end a row (not included in the result).
        min_new_tokens: EOS is forbidden before this many tokens.
        processors: applied in order to the logits (B, V) before the argmax.
        prompt_ids: each row's prompt ids, for processors that also look at the prompt.
        output_scores: also return each sequence's summed log-probability (one log-softmax
            normaliser per step; False skips it, as Hugging Face's `generate()` by default).
    Returns:
        Generated with one sequence per input row (scores None without `output_scores`).
    """
    steps = _steps(model, _argmax, max_new_tokens=max_new_tokens, repeats=1, eos_id=eos_id,
                   min_new_tokens=min_new_tokens, processors=processors, prompt_ids=prompt_ids, inputs=inputs,
                   output_scores=output_scores)
    return _collect(steps, eos_id)


def sample(
    model: Decodable,
    *,
    max_new_tokens: int,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    eos_id: EosId = None,
    min_new_tokens: int = 0,
    processors: Sequence[LogitsProcessor] = (),
    prompt_ids: Sequence[Sequence[int]] | None = None,
    output_scores: bool = True,
    **inputs: Any,
) -> Generated:
    """Draw each token from softmax(processed logits); `num_samples` independent samples per
    input row (rows repeated once after the prefill through `model.select`). The same seeded
    `generator` gives the same samples. Other arguments as in `greedy`.

    Returns:
        Generated with S = num_samples sequences per input row, grouped by row (scores: each
        sample's log-probability under the processed distributions; None without `output_scores`).
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    steps = _steps(model, _sampler(generator), max_new_tokens=max_new_tokens, repeats=num_samples,
                   eos_id=eos_id, min_new_tokens=min_new_tokens, processors=processors,
                   prompt_ids=prompt_ids, inputs=inputs, output_scores=output_scores)
    return _collect(steps, eos_id)


def stream(
    model: Decodable,
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    eos_id: EosId = None,
    min_new_tokens: int = 0,
    processors: Sequence[LogitsProcessor] = (),
    prompt_ids: Sequence[Sequence[int]] | None = None,
    **inputs: Any,
) -> Iterator[list[int | None]]:
    """Greedy (or, with `do_sample`, sampled) decoding that yields as it goes: one list per step
    with the new token of every row, None for a row that has finished (its EOS is not yielded).
    Concatenating the yields of a row gives exactly `greedy(...)` / `sample(...)`'s sequence.
    The model is stepped only when the next item is asked for."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    choose = _sampler(generator) if do_sample else _argmax
    steps = _steps(model, choose, max_new_tokens=max_new_tokens, repeats=num_samples, eos_id=eos_id,
                   min_new_tokens=min_new_tokens, processors=processors, prompt_ids=prompt_ids, inputs=inputs,
                   output_scores=False)
    eos_set = set() if eos_id is None else {eos_id} if isinstance(eos_id, int) else set(eos_id)
    for s in steps:
        yield [tok if alive and tok not in eos_set else None for tok, alive in zip(s.tokens.tolist(), s.alive.tolist())]


def _gather(x: Tensor, index: Tensor) -> Tensor:
    """x (B, M, ...) gathered along dim 1 by index (B, M')."""
    while index.dim() < x.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(x, index, dim=1)


def beam_search(
    model: Decodable,
    *,
    num_beams: int,
    max_new_tokens: int,
    eos_id: EosId = None,
    length_penalty: float = 1.0,
    early_stopping: bool | Literal["never"] = False,
    num_return_sequences: int = 1,
    min_new_tokens: int = 0,
    processors: Sequence[LogitsProcessor] = (),
    prompt_ids: Sequence[Sequence[int]] | None = None,
    **inputs: Any,
) -> Generated:
    """Beam search with Hugging Face's semantics (module docstring), per-row finishing and n-best.

    Args:
        num_beams: K >= 1 (K = 1 is greedy).
        length_penalty: a finished hypothesis scores sum(log p) / len ** length_penalty, len
            counting the generated tokens including EOS; > 0 favours longer ones.
        early_stopping: True, False or "never", as in `transformers`.
        num_return_sequences: R <= K best hypotheses returned per input row.
        processors: applied in order to the log-probabilities (B * K, V), as Hugging Face does.
        Other arguments as in `greedy`.
    Returns:
        Generated with R sequences per input row, best first, and their scores.
    """
    _check_common(max_new_tokens, min_new_tokens)
    for name, value in (("num_beams", num_beams), ("num_return_sequences", num_return_sequences)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if num_return_sequences > num_beams:
        raise ValueError(f"num_return_sequences ({num_return_sequences}) must be <= num_beams ({num_beams})")
    if not (early_stopping is True or early_stopping is False or early_stopping == "never"):
        raise ValueError(f'early_stopping must be True, False or "never", got {early_stopping!r}')
    K, N, lp = num_beams, max_new_tokens, float(length_penalty)
    with torch.no_grad():
        logits, state, B = _start(model, N, K, inputs)  # (B * K, V)
    device, V = logits.device, logits.shape[-1]
    eos = _eos_tensor(eos_id, device)
    procs = _with_min_length(processors, min_new_tokens, eos)
    prompt = _prompt_block(prompt_ids, procs, B, K, device)  # (B * K, P) or None
    keep = max(2, 1 + (0 if eos is None else eos.numel())) * K  # candidates kept per row
    top_k_mask = torch.arange(keep, device=device) < K  # (2K,): only these may finish
    offsets = (torch.arange(B, device=device) * K)[:, None]  # (B, 1)

    seqs = torch.zeros(B, K, N, dtype=torch.long, device=device)  # running beams' tokens
    run_scores = torch.zeros(B, K, device=device)  # (B, K) summed log-probs
    run_scores[:, 1:] = _NEG  # all beams start equal: only beam 0 may expand at first
    fin_seqs = seqs.clone()  # (B, K, N) finished hypotheses, best first
    fin_scores = torch.full((B, K), _NEG, device=device)  # (B, K) length-penalised
    fin_done = torch.zeros(B, K, dtype=torch.bool, device=device)  # (B, K) slot holds a hypothesis
    fin_len = torch.zeros(B, K, dtype=torch.long, device=device)  # (B, K) tokens incl. EOS
    improvable = torch.ones(B, 1, dtype=torch.bool, device=device)  # (B, 1)

    for t in range(N):
        history = seqs.view(B * K, N)[:, :t]  # (B * K, t)
        full = None if prompt is None else torch.cat([prompt, history], dim=1)  # (B * K, P + t)
        logp = apply(procs, logits.float().log_softmax(dim=-1), history, full, state)  # (B * K, V)
        cand = (logp.view(B, K, V) + run_scores[:, :, None]).view(B, K * V)  # (B, K * V)
        top_scores, top_index = torch.topk(cand, keep, dim=-1)  # (B, 2K)
        parent, token = top_index // V, top_index % V  # (B, 2K) each
        top_seqs = _gather(seqs, parent)  # (B, 2K, N)
        top_seqs[:, :, t] = token
        hits = torch.full_like(token, t + 1 == N, dtype=torch.bool)  # (B, 2K) max length reached
        if eos is not None:
            hits |= torch.isin(token, eos)

        # the K best candidates that did not finish carry on
        run_cand = top_scores + hits.to(torch.float32) * _NEG  # (B, 2K)
        nxt = torch.topk(run_cand, K, dim=-1).indices  # (B, K)
        seqs, run_scores, beam_parent = _gather(top_seqs, nxt), _gather(run_cand, nxt), _gather(parent, nxt)

        # finished candidates among the top K enter the n-best if they beat it
        just = hits & top_k_mask[None, :]  # (B, 2K)
        norm = top_scores / ((t + 1) ** lp)  # (B, 2K)
        full_rows = fin_done.all(dim=-1, keepdim=True) & (early_stopping is True)  # (B, 1)
        norm = norm + full_rows.to(torch.float32) * _NEG
        norm = norm + (~improvable).to(torch.float32) * _NEG
        norm = norm + (~just) * _NEG
        merged_scores = torch.cat([fin_scores, norm], dim=1)  # (B, 3K)
        best = torch.topk(merged_scores, K, dim=-1).indices  # (B, K)
        fin_seqs = _gather(torch.cat([fin_seqs, top_seqs], dim=1), best)
        fin_scores = _gather(merged_scores, best)
        fin_done = _gather(torch.cat([fin_done, just], dim=1), best)
        fin_len = _gather(torch.cat([fin_len, torch.full_like(token, t + 1)], dim=1), best)

        # can a running beam still beat the worst finished hypothesis? (HF's heuristic)
        length = N if (early_stopping == "never" and lp > 0.0) else t + 1
        best_running = run_scores[:, :1] / (length**lp)  # (B, 1)
        worst_finished = torch.where(fin_done, fin_scores.min(dim=1, keepdim=True).values, _NEG)  # (B, K)
        improvable = improvable & (best_running > worst_finished).any(dim=-1, keepdim=True)
        all_full = bool(fin_done.all()) and early_stopping is True
        if not bool(improvable.any()) or all_full or bool(hits.all()):
            break
        index = (beam_parent + offsets).view(-1)  # (B * K,) rows of the previous step
        with torch.no_grad():
            if not torch.equal(index, torch.arange(B * K, device=device)):
                state = model.select(state, index)
            logits, state = model.step(seqs[:, :, t].reshape(-1), state)  # (B * K, V)

    return _beam_output(fin_seqs, fin_scores, fin_len, eos, num_return_sequences)


def _beam_output(fin_seqs: Tensor, fin_scores: Tensor, fin_len: Tensor, eos: Tensor | None, R: int) -> Generated:
    """The R best finished hypotheses per row, EOS stripped."""
    sequences = []
    for row, lengths in zip(fin_seqs[:, :R].tolist(), fin_len[:, :R].tolist()):
        for seq, n in zip(row, lengths):
            seq = seq[:n]
            if seq and eos is not None and seq[-1] in eos.tolist():
                seq = seq[:-1]
            sequences.append(seq)
    return Generated(sequences=sequences, scores=fin_scores[:, :R].reshape(-1).tolist())
