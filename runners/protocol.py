"""OpenAI chat-completion wire formats, shared by every runner and the HTTP server."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


MAX_SCHEMA_DEPTH = 24
MAX_SCHEMA_NODES = 2000


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None

    @field_validator("schema_")
    @classmethod
    def _bounded(cls, schema: dict[str, Any]) -> dict[str, Any]:
        """Grammars are built from schemas: a deeply nested or enormous one would stall the server."""
        nodes, stack = 0, [(schema, 1)]
        while stack:
            node, depth = stack.pop()
            nodes += 1
            if depth > MAX_SCHEMA_DEPTH:
                raise ValueError(f"schema nests deeper than {MAX_SCHEMA_DEPTH} levels")
            if nodes > MAX_SCHEMA_NODES:
                raise ValueError(f"schema has more than {MAX_SCHEMA_NODES} values (a huge enum?)")
            children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
            stack.extend((child, depth + 1) for child in children)
        return schema


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_goes_with_type(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a `json_schema` object with `name` and `schema`")
        return self


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's request that the tiers honour; anything else is rejected by name."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    model: str = Field(min_length=1, description="feature:<name>, tier:<n>, or any name when X-Feature is sent")
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    n: Literal[1] = 1
    user: str | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    # vLLM's guided decoding extensions: only the vLLM runner accepts them; the others answer 400 naming
    # response_format, which every tier honours.
    guided_json: dict[str, Any] | None = Field(default=None, description="vLLM only: output follows this JSON schema")
    guided_choice: list[str] | None = Field(default=None, min_length=1, description="vLLM only: output is one of these")
    guided_regex: str | None = Field(default=None, min_length=1, description="vLLM only: output matches this regex")

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]

    def guided_fields(self) -> list[str]:
        """The vLLM guided-decoding fields this request sets."""
        return [name for name in ("guided_json", "guided_choice", "guided_regex") if getattr(self, name) is not None]

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def json_schema(self) -> dict[str, Any] | None:
        """The schema the output must follow, if the request asked for structured output."""
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return {"type": "object"}
        return fmt.json_schema.schema_ or {"type": "object"}


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None


FinishReason = Literal["stop", "length", "content_filter"]


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
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


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


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())



def chunks_from_completion(completion: ChatCompletion, include_usage: bool) -> list[ChatCompletionChunk]:
    """Replay a finished completion as a stream: role and content, the finish reason, then usage."""
    choice = completion.choices[0]

    def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=completion.id, created=completion.created, model=completion.model,
                                   choices=choices, usage=usage)

    chunks = [
        chunk([ChunkChoice(delta=Delta(role="assistant", content=choice.message.content or ""),
                           logprobs=choice.logprobs)]),
        chunk([ChunkChoice(delta=Delta(), finish_reason=choice.finish_reason)]),
    ]
    if include_usage:
        chunks.append(chunk([], usage=completion.usage))
    return chunks
