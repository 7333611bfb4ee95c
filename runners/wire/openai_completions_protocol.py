"""OpenAI's legacy text completions (`POST /v1/completions`) as pydantic models: requests strict, answers lenient.

The same answer and chunk models parse what a vLLM server sends back when a runner forwards a prompt.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from runners.request import MAX_N
from runners.wire.openai_chat_protocol import StreamOptions, Usage
from runners.wire.openai_common import OmitsAbsentUsage, StopSequences


class CompletionRequest(BaseModel):
    """The subset of OpenAI's request that the tiers honour; anything else is rejected by name."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, description="feature:<name>, tier:<n>, or any name when X-Feature is sent")
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="text, or a list of texts (one answer each); token arrays are refused with a 400")
    max_tokens: int | None = Field(default=16, ge=1, description="OpenAI's default: 16")
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    stop: StopSequences | None = None
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(default=None, ge=0, le=5, description="top alternatives per token, 0 to 5")
    echo: bool = Field(default=False, description="true is refused with a 400: the prompt is not echoed")
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    best_of: int | None = Field(default=None, ge=1, le=1, description="only 1 (the default)")
    logit_bias: dict[str, float] | None = Field(default=None, max_length=0, description="only empty")
    user: str | None = None



class Logprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] | None = None
    text_offset: list[int] = Field(default_factory=list)


FinishReason = Literal["stop", "length", "content_filter"]


class CompletionChoice(BaseModel):
    index: int = 0
    text: str = ""
    logprobs: Logprobs | None = None
    finish_reason: FinishReason | None = None


class Completion(OmitsAbsentUsage):
    """A whole answer, and (with `finish_reason` null until the last one) each chunk of a stream."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


def token_array(prompt: Any) -> bool:
    return isinstance(prompt, list) and any(not isinstance(p, str) for p in prompt)
