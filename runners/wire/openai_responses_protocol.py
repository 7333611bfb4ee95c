"""OpenAI's Responses API (`POST /v1/responses`), stateless, as pydantic models: requests strict, answers plain.

Nothing is stored, so `store: true`, `previous_response_id`, `conversation` and `background` are
refused by the conversion (a 400 that says what is supported); built-in tools (web search, file
search, ...), reasoning settings and input items other than messages and function calls and their
outputs are refused by name here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from runners.request import check_schema_size
from runners.wire.openai_chat_protocol import FunctionSpec
from runners.wire.openai_common import OmitsAbsentUsage


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputText(_Strict):
    type: Literal["input_text"]
    text: str


class InputImage(_Strict):
    type: Literal["input_image"]
    image_url: str = Field(min_length=1, description="an http(s) or data: URL; file_id is not supported")
    detail: Literal["auto", "low", "high"] = "auto"


class OutputText(_Strict):
    """An earlier assistant answer sent back as history."""

    type: Literal["output_text"]
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] | None = None


class Refusal(_Strict):
    type: Literal["refusal"]
    refusal: str


ContentPart = Annotated[InputText | InputImage | OutputText | Refusal, Field(discriminator="type")]


class MessageItem(_Strict):
    type: Literal["message"] | None = None
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]
    id: str | None = None
    status: str | None = None
    phase: str | None = None


class FunctionCallItem(_Strict):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(_Strict):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[InputText]
    id: str | None = None
    status: str | None = None


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem


class FunctionTool(_Strict):
    """Responses' function tool: chat's FunctionSpec fields, flat after `type` (checked first, so a built-in
    tool's error names its type)."""

    type: Literal["function"]
    name: str = FunctionSpec.model_fields["name"]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    _bounded = field_validator("parameters")(FunctionSpec._bounded.__func__)


class NamedFunctionChoice(_Strict):
    type: Literal["function"]
    name: str


class TextFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, max_length=64)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("schema_")
    @classmethod
    def _bounded(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if schema is None else check_schema_size(schema)


class TextConfig(_Strict):
    format: TextFormat | None = None


class ResponsesRequest(_Strict):
    """The subset of the Responses request that the tiers honour; anything else is rejected by name."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    model: str = Field(min_length=1, description="feature:<name>, tier:<n>, or any name when X-Feature is sent")
    input: str | list[InputItem] = Field(description="a text, or messages, function calls and their outputs")
    instructions: str | None = Field(default=None, description="a system message before the input")
    tools: list[FunctionTool] | None = Field(default=None, max_length=128, description="function tools only")
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = Field(default=None, description="format: text, json_object or json_schema")
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stream: bool = False
    metadata: dict[str, str] | None = Field(default=None, max_length=16, description="echoed in the answer")
    user: str | None = None
    truncation: Literal["disabled"] | None = Field(default=None, description="only disabled (the default)")
    include: list[str] | None = Field(default=None, max_length=0, description="only empty")
    store: bool | None = Field(default=None, description="only false: nothing is stored")
    previous_response_id: str | None = Field(default=None, description="refused: stateless, send the whole input")
    conversation: Any = Field(default=None, description="refused: stateless, send the whole input")
    background: bool | None = Field(default=None, description="only false")


# -- answers ----------------------------------------------------------------------------------------
class OutputTextPart(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: Literal["in_progress", "completed", "incomplete"] = "completed"
    role: Literal["assistant"] = "assistant"
    content: list[OutputTextPart]


class OutFunctionCall(BaseModel):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"] = "completed"


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class Response(OmitsAbsentUsage):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["completed", "incomplete", "in_progress", "failed"]
    error: dict[str, Any] | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    model: str
    output: list[OutMessage | OutFunctionCall]
    parallel_tool_calls: bool = True
    metadata: dict[str, str] = Field(default_factory=dict)
    tool_choice: Any = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    truncation: Literal["disabled"] = "disabled"
    store: bool = False
    previous_response_id: None = None
    usage: ResponseUsage | None = None
