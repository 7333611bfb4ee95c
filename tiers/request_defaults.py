"""A feature's request defaults: its instructions and output contract, applied to every request it serves.

A feature's `request:` block in the routing table holds a system message, a `max_tokens` (the default and
the cap), a temperature, stop sequences and a response format. They are applied to the internal request
right after routing, so every wire API (chat, Messages, Responses, completions) gets them the same way.
A client's own value wins unless the key is `locked`; a client value the feature replaced (a locked key,
or a max_tokens over the cap) is named in the response's `x-overridden` header. A request that names no
max_tokens anywhere gets the server's default, so no answer runs to the end of the context by surprise.
"""

from __future__ import annotations

from typing import Literal

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, model_validator

from runners.request import Message, Request, ResponseFormat, TextPart

RequestKey = Literal["system", "max_tokens", "temperature", "stop", "response_format"]
SYSTEM_ROLES = ("system", "developer")


class RequestDefaults(BaseModel):
    """A feature's `request` block in the routing table."""

    model_config = ConfigDict(extra="forbid")
    system: str | None = Field(
        default=None, min_length=1, max_length=20_000,
        description="instructions sent as a system message ahead of the client's messages (ahead of a plain prompt)")
    max_tokens: int | None = Field(
        default=None, ge=1, le=32_768,
        description="for requests that set none, and the most a request may ask for (a larger ask is lowered)")
    temperature: float | None = Field(default=None, ge=0, le=2, description="for requests that set none")
    stop: list[str] | None = Field(default=None, min_length=1, max_length=4,
                                   description="stop sequences for requests that send none")
    response_format: ResponseFormat | None = Field(
        default=None, description="output format for requests that ask for none, e.g. {type: json_schema, schema: ...}")
    locked: list[RequestKey] = Field(
        default_factory=list, description="keys the client cannot override: its value is replaced by the feature's")

    @model_validator(mode="after")
    def _locked_keys_are_set(self) -> RequestDefaults:
        for key in self.locked:
            if getattr(self, key) is None:
                raise ValueError(f"locked lists {key!r}, which this block does not set; set request.{key} "
                                 f"or remove it from locked")
        schema = self.response_format.schema_ if self.response_format else None
        if schema is not None:
            try:
                jsonschema.Draft202012Validator.check_schema(schema)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"response_format.schema is not a valid JSON Schema: {exc.message}") from None
        return self


_NO_DEFAULTS = RequestDefaults()  # a feature with no `request` block: built once, not per request


def apply(defaults: RequestDefaults | None, request: Request, default_max_tokens: int) -> tuple[Request, list[str]]:
    """The request as the feature wants it sent, and the client values it replaced (for `x-overridden`)."""
    d = defaults or _NO_DEFAULTS
    update: dict = {}
    overridden: list[str] = []
    locked = set(d.locked)

    if d.system is not None:
        update.update(_with_system(request, d.system, "system" in locked, overridden))
    for key, unset in (("temperature", request.temperature is None), ("stop", not request.stop),
                       ("response_format", request.response_format is None)):
        wanted = getattr(d, key)
        if wanted is None:
            continue
        if unset:
            update[key] = wanted
        elif key in locked and getattr(request, key) != wanted:
            update[key] = wanted
            overridden.append(key)

    asked = request.max_tokens
    if d.max_tokens is None:
        if asked is None:
            update["max_tokens"] = default_max_tokens
    elif asked is None:
        update["max_tokens"] = d.max_tokens
    elif asked > d.max_tokens or ("max_tokens" in locked and asked != d.max_tokens):
        update["max_tokens"] = d.max_tokens
        overridden.append("max_tokens")
    return (request.model_copy(update=update) if update else request), overridden


def _with_system(request: Request, system: str, locked: bool, overridden: list[str]) -> dict:
    """The feature's instructions go first; a locked `system` drops the client's own system messages."""
    if request.prompt is not None and not request.messages:
        return {"prompt": f"{system}\n\n{request.prompt}"}
    messages = request.messages
    if messages and messages[0].role == "system" and messages[0].text() == system:
        messages = messages[1:]  # already applied (a stored prompt replayed): applying twice changes nothing
    if locked and any(m.role in SYSTEM_ROLES for m in messages):
        messages = [m for m in messages if m.role not in SYSTEM_ROLES]
        overridden.append("system")
    return {"messages": [Message(role="system", content=[TextPart(text=system)]), *messages]}


def overridden_header(overridden: list[str]) -> dict[str, str]:
    return {"x-overridden": ",".join(overridden)} if overridden else {}
