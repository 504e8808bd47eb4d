"""The `hf` healing mode: Hugging Face's own `generate(token_healing=True, tokenizer=tok)`.

Kept for comparison with genloom's modes (heal.py), run exactly as transformers ships it:
`heal_tokens` decodes the prompt, strips leading and trailing whitespace, re-encodes it, backs off
the last token only, adds a soft +10 bias to the tokens extending it (+1 more to the original),
picks one token greedily, and then `generate` continues with the requested strategy. On some
mid-word prompts transformers raises inside `heal_tokens` (a tensor size mismatch when the
re-encoded prompt has a different length; a KeyError when the last token is not among the
extensions of its own decoded text); any such exception surfaces here as `HFHealingError`, a
`UserError` the benchmark counts as a miss.

The continuation text is what follows the prompt in the decoded output; when healing rewrote the
prompt's own text (a soft bias lets a token that does not extend the prompt win, or stripping lost
the prompt's trailing whitespace and the model wrote something else there), the continuation is
None: the output does not continue the prompt the user gave.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from genloom.errors import UserError


class HFHealingError(UserError):
    """transformers' token healing raised on this prompt."""


def hf_continue(
    model: Any,
    tokenizer: Any,
    prompt: str | bytes | Sequence[int],
    *,
    strategy: str = "greedy",
    max_new_tokens: int = 32,
    num_beams: int = 4,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
) -> list:
    """Continue `prompt` with transformers' token healing.

    Args:
        model: an `HFCausalLM` (its `.model`) or a transformers causal LM.
        tokenizer: a genloom `HFTokenizer` (its `.hf`) or a transformers tokenizer.
        prompt: text (HF healing works on text only).
        strategy: "greedy", "beam" or "sample" (seeded from `generator`'s initial seed).
        eos_id: stop at this token; None = exactly max_new_tokens tokens.
    Returns:
        list of `heal.Continuation` (num_samples for sampling, else one).
    """
    from genloom.decode.heal import Continuation

    hf_model = model if hasattr(model, "generate") else getattr(model, "model", None)  # HFCausalLM wraps it
    hf_tok = getattr(tokenizer, "hf", tokenizer)
    if not hasattr(hf_model, "generate") or not callable(getattr(hf_tok, "decode", None)):
        raise UserError("mode hf needs a Hugging Face causal LM and its tokenizer (e.g. --model smollm2-135m)")
    if not isinstance(prompt, str):
        raise UserError("mode hf takes a text prompt")
    if not prompt.strip():
        raise UserError("the prompt is empty: give some text to continue")
    device = hf_model.device
    input_ids = hf_tok(prompt, return_tensors="pt").input_ids.to(device)  # (1, T)
    healed_len = len(hf_tok(prompt.strip()).input_ids)  # heal_tokens keeps the stripped length
    kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, token_healing=True, tokenizer=hf_tok,
                                  pad_token_id=hf_tok.pad_token_id if hf_tok.pad_token_id is not None
                                  else hf_tok.eos_token_id)
    if eos_id is None:
        kwargs["min_new_tokens"] = max_new_tokens  # generate() would stop at the config's EOS otherwise
    else:
        kwargs["eos_token_id"] = eos_id
    if strategy == "greedy":
        kwargs.update(do_sample=False, num_beams=1)
    elif strategy == "beam":
        kwargs.update(do_sample=False, num_beams=num_beams)
    else:
        kwargs.update(do_sample=True, num_return_sequences=num_samples, top_k=0, top_p=1.0, temperature=1.0)
        torch.manual_seed(generator.initial_seed() if generator is not None else 0)
    try:
        with torch.no_grad():
            out = hf_model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)  # (R, L)
    except Exception as e:  # any crash inside transformers' healing (seen: RuntimeError, KeyError)
        first = (str(e).splitlines() or [""])[0]
        raise HFHealingError(f"transformers token healing failed: {type(e).__name__}: {first}") from None
    head = prompt.lstrip()  # heal_tokens strips leading whitespace too
    results = []
    special = set(getattr(hf_tok, "all_special_ids", []))
    for row in out.tolist():
        new = [t for t in row[healed_len:] if t not in special]
        full = hf_tok.decode(row, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        text = full[len(head):] if full.startswith(head) else None
        results.append(Continuation(text=text, data=None if text is None else text.encode("utf-8"),
                                    token_ids=new, score=None, healed=None, full_text=full))
    return results
