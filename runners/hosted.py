"""Tier 1: a hosted frontier API that speaks OpenAI chat completions (OpenAI, OpenRouter, a gateway...).

The key is read from the environment variable the profile names, sent only in the Authorization
header, and never logged or echoed in an error.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hardware.errors import InvalidRequest, RunnerFailed, TierUnavailable
from runners.base import Runner, register_runner
from runners.protocol import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest


class HostedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: Literal["openai"] = Field(default="openai", description="wire protocol of the API")
    base_url: str = Field(default="https://api.openai.com/v1", pattern=r"^https?://", description="API root, ending in /v1")
    api_key_env: str | None = Field(default="OPENAI_API_KEY", description="environment variable holding the key")
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=60.0, gt=0, description="longest wait for the next byte")
    max_connections: int = Field(default=32, ge=1)


@register_runner
class HostedRunner(Runner):
    kind = "hosted"
    Options = HostedOptions
    options: HostedOptions

    @property
    def where(self) -> str:
        return urlsplit(self.options.base_url).netloc

    async def start(self) -> None:
        opts = self.options
        headers = {}
        if opts.api_key_env:
            key = os.environ.get(opts.api_key_env)
            if not key:
                self._set_state("failed", f"environment variable {opts.api_key_env} is not set; export the API key")
                return
            headers["authorization"] = f"Bearer {key}"
        timeout = httpx.Timeout(opts.read_timeout_s, connect=opts.connect_timeout_s)
        limits = httpx.Limits(max_connections=opts.max_connections)
        self._client = httpx.AsyncClient(base_url=opts.base_url.rstrip("/"), headers=headers, timeout=timeout,
                                         limits=limits)
        self._set_state("ready")

    async def stop(self) -> None:
        if hasattr(self, "_client"):
            await self._client.aclose()
        self._set_state("stopped")

    def _payload(self, request: ChatCompletionRequest, stream: bool) -> dict:
        if self._state != "ready":
            raise TierUnavailable(f"tier {self.tier} ({self.model_name} at {self.where}) is {self._state}: {self._detail}")
        payload = request.model_dump(mode="json", exclude_none=True, by_alias=True)
        payload.update(model=self.model_name, stream=stream)
        if not stream:
            payload.pop("stream_options", None)
        return payload

    def _unreachable(self, exc: httpx.HTTPError) -> TierUnavailable:
        return TierUnavailable(f"tier {self.tier} ({self.model_name} at {self.where}) is unreachable "
                               f"({exc.__class__.__name__}); check the provider's status and base_url")

    async def _raise_for_status(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        body = (await response.aread()).decode("utf-8", "replace")
        try:
            message = json.loads(body)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = body[:200]
        where = f"tier {self.tier} ({self.model_name} at {self.where})"
        if response.status_code in (400, 404, 422):
            raise InvalidRequest(f"{where} rejected the request: {message}")
        raise RunnerFailed(f"{where} answered HTTP {response.status_code}: {message}")

    async def complete(self, request: ChatCompletionRequest) -> ChatCompletion:
        try:
            response = await self._client.post("/chat/completions", json=self._payload(request, stream=False))
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        await self._raise_for_status(response)
        try:
            return ChatCompletion.model_validate(response.json())
        except (ValueError, ValidationError) as exc:
            raise RunnerFailed(f"tier {self.tier} answered something that is not a chat completion: {exc}") from None

    async def stream(self, request: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        payload = self._payload(request, stream=True)
        try:
            async with self._client.stream("POST", "/chat/completions", json=payload) as response:
                await self._raise_for_status(response)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line.removeprefix("data:").strip()
                    if data == "[DONE]":
                        return
                    event = json.loads(data)
                    if "error" in event:
                        raise RunnerFailed(f"tier {self.tier} failed mid-stream: {event['error'].get('message', '')}")
                    yield ChatCompletionChunk.model_validate(event)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
