"""The request bodies of `genloom serve`: OpenAI's fields, validated with pydantic, plus genloom's.

Fields OpenAI defines keep its names, types, ranges and defaults (max_tokens 16 for completions,
temperature 1, top_p 1, n 1); fields nobody defines are ignored, as OpenAI ignores them.
genloom's own fields: `heal` ("exact" | "post" | "none"; default exact for completions, none for
chat), `tol` / `max_rows` (exact healing's pruning), `top_k`, `min_p`, `repetition_penalty`,
`no_repeat_ngram_size`, `num_beams` (beam search; `best_of` is read as the beam width),
`min_tokens`, `ignore_eos` (vLLM's). Fields OpenAI defines that genloom does not implement (`suffix`, `echo`,
`logit_bias`, presence / frequency penalties other than 0) are refused with a 400 naming them,
rather than silently ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

HealMode = Literal["exact", "post", "none"]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Common(BaseModel):
    """Fields shared by both endpoints."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=64)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # genloom's extras
    top_k: int | None = Field(default=None, ge=1)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    no_repeat_ngram_size: int | None = Field(default=None, ge=1)
    num_beams: int | None = Field(default=None, ge=1, le=64)
    min_tokens: int = Field(default=0, ge=0)
    ignore_eos: bool = False  # vLLM's: decode max_tokens tokens whatever the model says
    tol: float = Field(default=1e-6, ge=0.0, lt=1.0)
    max_rows: int = Field(default=128, ge=1, le=4096)


class CompletionRequest(_Common):
    """POST /v1/completions."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=20)
    best_of: int | None = Field(default=None, ge=1, le=64)
    echo: bool = False
    suffix: str | None = None
    heal: HealMode = "exact"


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None


class ChatRequest(_Common):
    """POST /v1/chat/completions."""

    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    heal: HealMode = "none"
