"""A hosted tier's options, and the two provider protocols it speaks: OpenAI chat completions or Anthropic Messages.

Each wire knows its path, auth headers and JSON; the runner (`runners/hosted.py`) adds timeouts,
retries and the circuit breaker around whichever one the profile picked.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runners.answer import Answer
from runners.openai_http import OpenAIStream
from runners.request import Request
from runners.wire import anthropic, openai_chat, openai_chat_protocol

ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
DEFAULTS = {  # provider -> (base_url, api_key_env, base_url_env): the variables the official SDKs read
    "openai": ("https://api.openai.com/v1", "OPENAI_API_KEY", "OPENAI_BASE_URL"),
    "anthropic": ("https://api.anthropic.com", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"),
}


class HostedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: Literal["openai", "anthropic"] = Field(
        default="openai", description="wire protocol: openai (chat completions) or anthropic (Messages API)")
    base_url: str = Field(default="", pattern=r"^(https?://.*)?$",
                          description="API root; openai: ending in /v1 (default OpenAI's), anthropic: default Anthropic's")
    base_url_env: str | None = Field(
        default="", description="environment variable that, when set, replaces base_url (default OPENAI_BASE_URL or "
                                "ANTHROPIC_BASE_URL); null: base_url only")
    api_key_env: str | None = Field(default="", description="environment variable holding the key; null for none")
    anthropic_version: str = Field(default="2023-06-01", description="anthropic-version header (anthropic only)")
    default_max_tokens: int = Field(default=1024, ge=1, description="max_tokens when the request has none (anthropic)")
    connect_timeout_s: float = Field(default=5.0, gt=0, description="longest wait to open a connection")
    first_byte_timeout_s: float = Field(default=60.0, gt=0,
                                        description="longest wait for the response headers, and a stream's first event")
    read_timeout_s: float = Field(default=60.0, gt=0, description="longest wait for the next byte")
    total_timeout_s: float = Field(default=600.0, gt=0, description="longest one attempt may take, streams included")
    max_attempts: int = Field(default=3, ge=1, le=10, description="tries per request, the first included")
    retry_base_s: float = Field(default=0.5, ge=0, description="first backoff step; doubles per retry, with jitter")
    retry_max_backoff_s: float = Field(default=8.0, ge=0, description="longest backoff step")
    retry_budget_s: float = Field(default=30.0, ge=0, description="no retry starts past this many seconds of a request")
    circuit_failure_threshold: int = Field(default=5, ge=1, description="consecutive failed attempts that open the circuit")
    circuit_cooldown_s: float = Field(default=30.0, gt=0, description="open time before one probe request goes through")
    max_connections: int = Field(default=32, ge=1)

    @field_validator("api_key_env")
    @classmethod
    def _a_name_not_a_key(cls, name: str | None) -> str | None:
        """A key pasted here would be echoed wherever the variable is named (/ready, logs): refused, never shown."""
        if name and not ENV_NAME.match(name):
            raise ValueError("must be the name of an environment variable (A-Z, 0-9, _), not the key itself: export "
                             "the key as e.g. OPENAI_API_KEY=<key> and put OPENAI_API_KEY here")
        return name

    @model_validator(mode="after")
    def _provider_defaults(self) -> HostedOptions:
        base_url, key_env, base_url_env = DEFAULTS[self.provider]
        self.base_url = self.base_url or base_url
        if self.api_key_env == "":
            self.api_key_env = key_env
        if self.base_url_env == "":
            self.base_url_env = base_url_env
        return self



class OpenAIWire:
    path = "/chat/completions"

    def __init__(self, options: HostedOptions):
        self.options = options

    def headers(self, key: str | None) -> dict[str, str]:
        return {"authorization": f"Bearer {key}"} if key else {}

    def body(self, request: Request, model: str, stream: bool) -> dict[str, Any]:
        return openai_chat.to_payload(request, model, stream)

    def completion(self, data: Any) -> Answer:
        return openai_chat.from_completion(openai_chat_protocol.ChatCompletion.model_validate(data))

    def translator(self) -> OpenAIStream:
        return OpenAIStream()


class AnthropicWire:
    path = "/v1/messages"

    def __init__(self, options: HostedOptions):
        self.options = options

    def headers(self, key: str | None) -> dict[str, str]:
        headers = {"anthropic-version": self.options.anthropic_version}
        if key:
            headers["x-api-key"] = key
        return headers

    def body(self, request: Request, model: str, stream: bool) -> dict[str, Any]:
        return anthropic.to_anthropic(request, model, self.options.default_max_tokens, stream)

    def completion(self, data: Any) -> Answer:
        return anthropic.from_anthropic(data)

    def translator(self) -> anthropic.StreamTranslator:
        return anthropic.StreamTranslator()
