"""The one internal request every runner answers, whichever wire API it came in on.

Wire adapters (OpenAI chat, Anthropic Messages, Responses, completions) turn their JSON into a
`Request`; routing, gates, cache, ledger, keys and budgets see only this type. It says *what* to
generate; *where* (the feature or tier named by the client) travels beside it, not inside it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_N = 8
MAX_SCHEMA_DEPTH = 24
MAX_SCHEMA_NODES = 2000


def check_schema_size(schema: dict[str, Any]) -> dict[str, Any]:
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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"] = "text"
    text: str


class ImagePart(_Strict):
    """An image by URL (http(s) or a `data:` URL with base64 bytes)."""

    type: Literal["image"] = "image"
    url: str
    detail: str | None = None


class AudioPart(_Strict):
    type: Literal["audio"] = "audio"
    data: str
    format: str


class FilePart(_Strict):
    type: Literal["file"] = "file"
    file: dict[str, Any]


Part = Annotated[TextPart | ImagePart | AudioPart | FilePart, Field(discriminator="type")]


class ToolCall(_Strict):
    """A call the model made: `arguments` is JSON text exactly as generated (it may not parse)."""

    id: str
    name: str
    arguments: str = "{}"


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: list[Part] = Field(default_factory=list)
    name: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list, description="assistant turns only")
    tool_call_id: str | None = Field(default=None, description="tool turns only: the call this answers")

    def text(self) -> str:
        return "".join(part.text for part in self.content if isinstance(part, TextPart))

    def media(self) -> list[tuple[int, Part]]:
        """(index, part) of every part that is not text."""
        return [(i, part) for i, part in enumerate(self.content) if not isinstance(part, TextPart)]


TOOL_NAME = r"^[a-zA-Z0-9_.-]{1,64}$"  # what every wire API's tool name is checked against at the edge


class Tool(_Strict):
    """A function the model may call; `parameters` is its arguments' JSON Schema."""

    name: str = Field(pattern=TOOL_NAME)
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _bounded(cls, schema: dict[str, Any]) -> dict[str, Any]:
        return check_schema_size(schema)


class ToolChoice(_Strict):
    """none: answer in text; auto: the model decides; required: some tool; function: this one."""

    mode: Literal["none", "auto", "required", "function"]
    name: str | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: str | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("schema_")
    @classmethod
    def _bounded(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if schema is None else check_schema_size(schema)


class Guided(_Strict):
    """vLLM's guided-decoding extensions: only a vLLM tier honours them; others answer 400."""

    json_: dict[str, Any] | None = Field(default=None, alias="json")
    choice: list[str] | None = None
    regex: str | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def fields(self) -> list[str]:
        return [f"guided_{name}" for name in ("json", "choice", "regex")
                if getattr(self, "json_" if name == "json" else name) is not None]


class Request(_Strict):
    """What to generate. Either `messages` (chat) or `prompt` (plain text completion, no chat template)."""

    messages: list[Message] = Field(default_factory=list)
    prompt: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    min_tokens: int | None = Field(default=None, ge=0, description="end of turn is masked until this many tokens")
    n: int = Field(default=1, ge=1, le=MAX_N)
    response_format: ResponseFormat | None = None
    tools: list[Tool] = Field(default_factory=list)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    stream: bool = False
    user: str | None = None
    guided: Guided | None = None

    def json_schema(self) -> dict[str, Any] | None:
        """The schema the output must follow, if the request asked for structured output."""
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return {"type": "object"}
        return fmt.schema_ or {"type": "object"}

    def tool(self, name: str) -> Tool | None:
        return next((t for t in self.tools if t.name == name), None)

    def last_user_text(self) -> str:
        if self.prompt is not None:
            return self.prompt
        return self.messages[-1].text() if self.messages else ""
