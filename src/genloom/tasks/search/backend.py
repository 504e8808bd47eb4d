"""A language's search models, wired for the samplers: the fluency target, the slot model that
ranks edit candidates, the vocabulary a move may write (Chinese: no whitespace tokens).

Chinese runs on the models of `train-models` (a directory of several models): the target is the
forward character LM, the proposals come from the masked LM (`proposal="mlm"`) or the forward x
backward LMs (`proposal="lm"`). Given `lm`, a genloom causal LM directory (genloom-zh-base, from
`genloom lm pretrain`), Chinese runs on that LM alone instead: it is the target and, read left to
right, the proposal (no masked LM: no Gibbs sampling); with `lm_backward`, the backward run of
the same base (`genloom lm pretrain --reverse`), the proposal is CGMH's forward x backward and
correction may score with both. English runs on SmolLM2-135M (any local
Hugging Face causal LM): it is the target and, read left to right, the proposal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from genloom.errors import UserError

LANGS = ("zh", "en")
PROPOSALS = ("mlm", "lm")
EN_ENGINES = ("genloom", "llamacpp")  # the English LM converted to genloom's Transformer, or on llama.cpp


@dataclass
class Backend:
    """A language's models, wired for the samplers."""

    lang: str  # "zh" or "en"
    tokenizer: Any  # genloom tokenizer of the models
    lm: Any  # CausalLMScorer: the fluency target log p(x)
    slots: Any  # SlotModel ranking candidates (MaskedSlots or LMSlots)
    vocab: list[int]  # ids a move may write (no specials, no [MASK]; Chinese: no whitespace)
    masked: Any | None  # MaskedLMScorer for Gibbs (None for English)
    mask_id: int | None  # the [MASK] id (None for English)
    pad_id: int  # id under padding
    lm_backward: Any | None = None  # CausalLMScorer of the right-to-left LM (Chinese), or None

    def encode(self, text: str) -> list[int]:
        """Token ids of a whole sentence."""
        return self.tokenizer.encode(text)

    def encode_keyword(self, word: str) -> list[int]:
        """Token ids of a keyword as it appears inside a sentence (English: after a space)."""
        ids = self.tokenizer.encode(word if self.lang == "zh" else " " + word)
        if self.lang == "zh" and self.tokenizer.unk_id in ids:
            bad = "".join(c for c, i in zip(word, ids) if i == self.tokenizer.unk_id)
            raise UserError(f"keyword {word!r} has characters the Chinese models do not know: {bad}")
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids)).strip()


def chinese_backend(models: str, *, proposal: str = "mlm", lm: str | None = None,
                    lm_backward: str | None = None) -> Backend:
    """The Chinese models of a `train-models` directory, or the causal LM directory `lm` alone
    (module docstring)."""
    from genloom.decode.mcmc_edits import LMSlots, MaskedSlots
    from genloom.decode.targets import CausalLMScorer, MaskedLMScorer
    from genloom.tasks.search.models import load_chinese_models

    if proposal not in PROPOSALS:
        raise UserError(f"--proposal must be 'mlm' or 'lm', got {proposal!r}")
    if lm_backward is not None and lm is None:
        raise UserError("--lm-backward goes with --lm, the forward LM it pairs with")
    if lm is not None:
        return chinese_lm_backend(lm, lm_backward)
    m = load_chinese_models(models)
    tok = m.tokenizer
    masked = MaskedLMScorer(m.mlm, mask_id=m.mask_id, bos_id=tok.bos_id, eos_id=tok.eos_id)
    slots = MaskedSlots(masked) if proposal == "mlm" else LMSlots(m.forward, m.backward, bos_id=tok.bos_id)
    vocab = writable_ids(tok, [m.mask_id])
    return Backend(lang="zh", tokenizer=tok, lm=CausalLMScorer(m.forward, bos_id=tok.bos_id, eos_id=tok.eos_id),
                   slots=slots, vocab=vocab, masked=masked, mask_id=m.mask_id, pad_id=tok.pad_id,
                   lm_backward=CausalLMScorer(m.backward, bos_id=tok.bos_id, eos_id=tok.eos_id, reverse=True))


def writable_ids(tok: Any, extra: Sequence[int] = ()) -> list[int]:
    """Ids a Chinese move may write: no specials, none of `extra`, and no token with whitespace
    in its text (a space, newline or ideographic space inside a generated Chinese sentence is an
    artefact of the corpora, not a word)."""
    skip = set(tok.special_ids) | set(extra)
    return [i for i in range(tok.vocab_size)
            if i not in skip and not any(c.isspace() for c in tok.decode([i]))]


def _causal_lm(directory: str, flag: str, *, reverse: bool) -> tuple[Any, Any]:
    """(model, tokenizer) of a genloom causal LM directory reading in the given direction."""
    from genloom.models import load
    from genloom.models.io import reads_reversed

    model, tok = load(directory)
    if getattr(getattr(model, "config", None), "mask", "causal") != "causal":
        raise UserError(f"{flag} {directory} is not a causal LM (its mask is {model.config.mask!r})")
    if tok is None or tok.bos_id is None or tok.eos_id is None:
        raise UserError(f"{flag} {directory} has no tokenizer with BOS and EOS to frame sentences with")
    if reads_reversed(directory) != reverse:
        raise UserError(f"{flag} {directory} reads {'right to left' if not reverse else 'left to right'}: "
                        f"{flag} takes a {'backward (--reverse)' if reverse else 'forward'} LM")
    return model.eval(), tok


def chinese_lm_backend(directory: str, backward: str | None = None) -> Backend:
    """A genloom causal LM directory (e.g. models/genloom-zh-base-char/model) as the Chinese target and,
    read left to right, the proposal; with `backward` (a right-to-left LM of the same tokenizer) the
    proposal is forward x backward and `lm_backward` scores right to left."""
    from genloom.decode.mcmc_edits import LMSlots
    from genloom.decode.targets import CausalLMScorer

    model, tok = _causal_lm(directory, "--lm", reverse=False)
    back = lm_backward = None
    if backward is not None:
        back, back_tok = _causal_lm(backward, "--lm-backward", reverse=True)
        if [back_tok.id_to_token(i) for i in range(back_tok.vocab_size)] != \
                [tok.id_to_token(i) for i in range(tok.vocab_size)]:
            raise UserError(f"--lm-backward {backward} has another vocabulary than --lm {directory}")
        lm_backward = CausalLMScorer(back, bos_id=tok.bos_id, eos_id=tok.eos_id, reverse=True)
    vocab = writable_ids(tok)
    pad = tok.pad_id if tok.pad_id is not None else tok.eos_id
    return Backend(lang="zh", tokenizer=tok, lm=CausalLMScorer(model, bos_id=tok.bos_id, eos_id=tok.eos_id),
                   slots=LMSlots(model, back, bos_id=tok.bos_id), vocab=vocab, masked=None, mask_id=None,
                   pad_id=pad, lm_backward=lm_backward)


def english_backend(lm: str = "smollm2-135m", *, engine: str = "genloom", quant: str | None = None) -> Backend:
    """A Hugging Face causal LM (name, directory or .gguf) as target and proposal, converted to
    genloom's Transformer (engine "genloom") or, a GGUF, on llama.cpp ("llamacpp", `quant`)."""
    from genloom.decode.mcmc_edits import LMSlots
    from genloom.decode.targets import CausalLMScorer

    if engine not in EN_ENGINES:
        raise UserError(f"unknown engine {engine!r} (choose from {', '.join(EN_ENGINES)})")
    if engine == "llamacpp":
        from genloom.models.llamacpp import load_llamacpp

        model, tok = load_llamacpp(lm, quant=quant)
    else:
        from transformers.utils import logging as hf_logging

        from genloom.models.hf import from_hf

        hf_logging.disable_progress_bar()
        model, tok = from_hf(lm)
    if tok is None:
        raise UserError(f"{lm} has no tokenizer files")
    boundary = tok.token_to_id("<|endoftext|>")
    boundary = boundary if boundary is not None else (tok.eos_id if tok.eos_id is not None else tok.bos_id)
    if boundary is None:
        raise UserError(f"{lm}'s tokenizer has no <|endoftext|>, EOS or BOS token to frame sentences with")
    vocab = [i for i in range(tok.vocab_size) if i not in tok.special_ids]
    return Backend(lang="en", tokenizer=tok, lm=CausalLMScorer(model, bos_id=boundary, eos_id=boundary),
                   slots=LMSlots(model, None, bos_id=boundary), vocab=vocab, masked=None, mask_id=None,
                   pad_id=boundary)


def load_backend(lang: str, *, models: str = "models/search", proposal: str = "mlm", lm: str | None = None,
                 engine: str = "genloom", quant: str | None = None, lm_backward: str | None = None) -> Backend:
    """Load the models of `lang` (module docstring) and wire targets and slot models. `lm`:
    Chinese, a genloom causal LM directory used instead of `models`; English, the Hugging Face
    LM (default smollm2-135m). `lm_backward`: Chinese, the right-to-left LM paired with `lm`."""
    if lang not in LANGS:
        raise UserError(f"unknown language {lang!r} (choose from {', '.join(LANGS)})")
    if lang == "zh":
        return chinese_backend(models, proposal=proposal, lm=lm, lm_backward=lm_backward)
    if lm_backward is not None:
        raise UserError("--lm-backward applies to --lang zh only")
    return english_backend(lm or "smollm2-135m", engine=engine, quant=quant)
