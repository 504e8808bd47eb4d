"""Chat messages -> prompt token ids, through the model's own chat template where it has one.

A Hugging Face tokenizer (and a GGUF's metadata) may carry a Jinja chat template (SmolLM2's is
ChatML: `<|im_start|>user\\n...<|im_end|>`). It is rendered with jinja2's sandbox, as
transformers renders it, with `add_generation_prompt=True`. A model without one gets ChatML when
its vocabulary has `<|im_start|>` and `<|im_end|>`, else a plain transcript ("User: ...").

The rendered text spells special tokens; genloom's tokenizers read such spellings as plain text
(a prompt must not inject control tokens), so the template's output is split at the special
tokens' spellings, which become their ids, and the text between is encoded as text. So that a
message cannot inject control tokens that way, a message whose content spells a special token is
refused.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from genloom.errors import UserError

CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
PLAIN = ("{% for m in messages %}{{ m.role | capitalize }}: {{ m.content }}\n\n{% endfor %}"
         "{% if add_generation_prompt %}Assistant:{% endif %}")
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "</s>", "<end_of_turn>")


def template_of(tokenizer: Any) -> str:
    """The tokenizer's chat template, or ChatML / a plain transcript (module docstring)."""
    for holder in (tokenizer, getattr(tokenizer, "_tok", None)):
        template = getattr(holder, "chat_template", None)
        if isinstance(template, str) and template:
            return template
    if tokenizer.token_to_id("<|im_start|>") is not None and tokenizer.token_to_id("<|im_end|>") is not None:
        return CHATML
    return PLAIN


def end_of_turn_ids(tokenizer: Any) -> frozenset[int]:
    """Tokens that end an assistant's turn or a document: EOS and the usual end-of-turn tokens."""
    ids = {tokenizer.eos_id} if tokenizer.eos_id is not None else set()
    for text in END_OF_TURN:
        tid = tokenizer.token_to_id(text)
        if tid is not None:
            ids.add(tid)
    return frozenset(ids)


def _specials(tokenizer: Any) -> dict[str, int]:
    out = {}
    for tid in getattr(tokenizer, "special_ids", ()):
        text = tokenizer.id_to_token(tid)
        if text:
            out[text] = tid
    return out


def render(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """Token ids of the chat prompt, ending where the assistant's answer begins.

    Raises:
        UserError: a message spells a special token, or the template fails on these messages.
    """
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    specials = _specials(tokenizer)
    for m in messages:
        for text in specials:
            if text in m["content"]:
                raise UserError(f"a {m['role']} message contains the special token {text!r}")

    def raise_exception(message: str) -> None:
        raise UserError(f"the chat template refused the messages: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    bos = tokenizer.id_to_token(tokenizer.bos_id) if tokenizer.bos_id is not None else ""
    eos = tokenizer.id_to_token(tokenizer.eos_id) if tokenizer.eos_id is not None else ""
    try:
        text = env.from_string(template_of(tokenizer)).render(
            messages=list(messages), add_generation_prompt=True, bos_token=bos, eos_token=eos)
    except jinja2.TemplateError as e:
        raise UserError(f"the model's chat template failed: {e}") from None
    if not specials:
        return tokenizer.encode(text)
    ids: list[int] = []
    pattern = "(" + "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")"
    for piece in re.split(pattern, text):
        if piece in specials:
            ids.append(specials[piece])
        elif piece:
            ids.extend(tokenizer.encode(piece))
    return ids
