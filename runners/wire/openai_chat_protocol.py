"""OpenAI chat-completions JSON as pydantic models: what clients send us and what OpenAI-style servers answer.

Requests are strict (`extra="forbid"`): a field we do not honour is a 400 that names it, never
silently ignored. Responses are lenient, because upstream servers add fields of their own.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_serializer, model_validator

from runners.answer import TokenLogprob, TopLogprob  # noqa: F401  (the wire's logprobs are the internal ones)
from runners.request import MAX_N, TOOL_NAME, check_schema_size
from runners.wire.openai_common import StopSequences


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextContent(_Strict):
    type: Literal["text"]
    text: str


class ImageURL(_Strict):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class ImageContent(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(_Strict):
    data: str
    format: str


class AudioContent(_Strict):
    type: Literal["input_audio"]
    input_audio: InputAudio


class FileContent(_Strict):
    type: Literal["file"]
    file: dict[str, Any]


class RefusalContent(_Strict):
    type: Literal["refusal"]
    refusal: str


ContentPart = Annotated[TextContent | ImageContent | AudioContent | FileContent | RefusalContent,
                        Field(discriminator="type")]


class FunctionCall(BaseModel):
    name: str
    arguments: str = ""


class ToolCallOut(BaseModel):
    """A tool call in an assistant message or an answer."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallOut] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None

    @model_validator(mode="after")
    def _role_fields(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id: the id of the call it answers")
        return self


class JsonSchemaSpec(_Strict):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None

    @field_validator("schema_")
    @classmethod
    def _bounded(cls, schema: dict[str, Any]) -> dict[str, Any]:
        return check_schema_size(schema)


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_goes_with_type(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a `json_schema` object with `name` and `schema`")
        return self


class FunctionSpec(_Strict):
    name: str = Field(pattern=TOOL_NAME, description="letters, digits, _ . - (at most 64)")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _bounded(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if schema is None else check_schema_size(schema)


class ToolSpec(_Strict):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    """The subset of OpenAI's request that the tiers honour; anything else is rejected by name."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    model: str = Field(min_length=1, description="feature:<name>, tier:<n>, or any name when X-Feature is sent")
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: StopSequences | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    n: int = Field(default=1, ge=1, le=MAX_N)
    user: str | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    tools: list[ToolSpec] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # Legacy function calling: accepted only to answer a 400 that names the replacement.
    functions: list[dict[str, Any]] | None = None
    function_call: Any = None
    # vLLM extensions: min_tokens on every local tier; guided_* only on vLLM (others answer 400).
    min_tokens: int | None = Field(default=None, ge=0, description="vLLM extension: no end of turn before this many")
    guided_json: dict[str, Any] | None = Field(default=None, description="vLLM only: output follows this JSON schema")
    guided_choice: list[str] | None = Field(default=None, min_length=1, description="vLLM only: output is one of these")
    guided_regex: str | None = Field(default=None, min_length=1, description="vLLM only: output matches this regex")


# -- answers ----------------------------------------------------------------------------------------
class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float | None = Field(default=None, description="ours, on a stream's usage chunk: what the answer cost")

    @model_serializer(mode="wrap")
    def _omit_absent_cost(self, handler) -> dict[str, Any]:
        data = handler(self)
        if self.cost_usd is None:
            data.pop("cost_usd", None)
        return data


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCallOut] | None = None

    @model_serializer(mode="wrap")
    def _omit_absent_calls(self, handler) -> dict[str, Any]:
        """OpenAI's message has `content` and `refusal` always (null allowed) and `tool_calls` only when made."""
        data = handler(self)
        if not self.tool_calls:
            data.pop("tool_calls", None)
        return data


FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None


class FunctionDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallChunk(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionDelta | None = None


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCallChunk] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None

    @field_serializer("delta")
    def _only_set_fields(self, delta: Delta) -> dict[str, Any]:
        """OpenAI omits absent delta fields rather than sending null."""
        return delta.model_dump(exclude_none=True)


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
