"""Anthropic Messages JSON as pydantic models: what clients send our /v1/messages and what we answer.

Requests are strict (`extra="forbid"`): a field we do not honour (`thinking`, `top_k`, server tools,
`container`, ...) is a 400 that names it. `cache_control` is accepted (top level, blocks, tools) and has no
effect: it is a hint about Anthropic's prompt cache, not about the answer.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from runners.request import check_schema_size


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CacheControl(_Strict):
    type: Literal["ephemeral"]
    ttl: str | None = None


class TextBlock(_Strict):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None
    citations: list[dict[str, Any]] | None = Field(default=None, max_length=0, description="not supported: send none")


class Base64Source(_Strict):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str = Field(min_length=1)


class URLSource(_Strict):
    type: Literal["url"]
    url: str = Field(min_length=1)


class ImageBlock(_Strict):
    type: Literal["image"]
    source: Annotated[Base64Source | URLSource, Field(discriminator="type")]
    cache_control: CacheControl | None = None


class ToolUseBlock(_Strict):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]
    cache_control: CacheControl | None = None


class ToolResultBlock(_Strict):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[Annotated[TextBlock | ImageBlock, Field(discriminator="type")]] = ""
    is_error: bool | None = None
    cache_control: CacheControl | None = None


InputBlock = Annotated[TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock, Field(discriminator="type")]


class InputMessage(_Strict):
    role: Literal["user", "assistant"]
    content: str | list[InputBlock]


class AnthropicTool(_Strict):
    """A client tool (`type` absent or "custom"); Anthropic's server tools (web search, bash, ...) are refused."""

    type: Literal["custom"] | None = None
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    input_schema: dict[str, Any]
    cache_control: CacheControl | None = None

    @field_validator("input_schema")
    @classmethod
    def _bounded(cls, schema: dict[str, Any]) -> dict[str, Any]:
        return check_schema_size(schema)


class AnthropicToolChoice(_Strict):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Metadata(_Strict):
    user_id: str | None = Field(default=None, max_length=256)


class OutputFormat(_Strict):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("schema_")
    @classmethod
    def _bounded(cls, schema: dict[str, Any]) -> dict[str, Any]:
        return check_schema_size(schema)


class OutputConfig(_Strict):
    format: OutputFormat | None = None
    effort: str | None = Field(default=None, description="refused with a 400: the tiers have no effort setting")


class MessagesRequest(_Strict):
    """The subset of Anthropic's request that the tiers honour; anything else is rejected by name."""

    model: str = Field(min_length=1, description="feature:<name>, tier:<n>, or any name when X-Feature is sent")
    messages: list[InputMessage] = Field(min_length=1)
    max_tokens: int = Field(ge=1, description="required, as in Anthropic's API")
    system: str | list[TextBlock] | None = None
    stop_sequences: list[str] | None = Field(default=None, max_length=4)
    stream: bool = False
    output_config: OutputConfig | None = Field(default=None, description="format: structured output, every tier")
    temperature: float | None = Field(default=None, ge=0, le=1, description="honoured (older clients send it)")
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=1, description="refused with a 400: the tiers do not sample by top_k")
    metadata: Metadata | None = None
    tools: list[AnthropicTool] | None = Field(default=None, max_length=128)
    tool_choice: AnthropicToolChoice | None = None
    cache_control: CacheControl | None = Field(default=None, description="accepted, no effect")


class CountTokensRequest(_Strict):
    model: str = Field(min_length=1)
    messages: list[InputMessage] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[AnthropicTool] | None = Field(default=None, max_length=128)
    tool_choice: AnthropicToolChoice | None = None


# -- answers ----------------------------------------------------------------------------------------
class TextBlockOut(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ToolUseBlockOut(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: Any


StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal"]


class AnthropicUsage(BaseModel):
    input_tokens: int
    output_tokens: int


class Message(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[TextBlockOut | ToolUseBlockOut]
    stop_reason: StopReason | None
    stop_sequence: str | None = None
    usage: AnthropicUsage


class TokenCount(BaseModel):
    input_tokens: int


class AnthropicErrorBody(BaseModel):
    type: str
    message: str


class AnthropicError(BaseModel):
    type: Literal["error"] = "error"
    error: AnthropicErrorBody


ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error",
               529: "overloaded_error"}


def error_type(status: int) -> str:
    """Anthropic's error type for a status (its documented table); other 5xx are `api_error`."""
    return ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
