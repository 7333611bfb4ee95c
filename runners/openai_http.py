"""Forwarding to any server that speaks OpenAI chat completions over HTTP (a hosted API, a vLLM server).

One pooled httpx client per endpoint. Transport failures and error statuses become the product's
named exceptions; the message names the tier and the fix, and never contains a key.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
from pydantic import ValidationError

from hardware.errors import InvalidRequest, RunnerFailed, TierUnavailable
from runners.protocol import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest


def request_payload(request: ChatCompletionRequest, model: str, stream: bool) -> dict:
    """The client's request as JSON for the backend, with the backend's model name."""
    payload = request.model_dump(mode="json", exclude_none=True, by_alias=True)
    payload.update(model=model, stream=stream)
    if not stream:
        payload.pop("stream_options", None)
    return payload


class OpenAIEndpoint:
    """A pooled client for one OpenAI-compatible API root (ending in /v1)."""

    def __init__(self, base_url: str, *, where: str, unreachable_hint: str, headers: dict[str, str] | None = None,
                 connect_timeout_s: float = 5.0, read_timeout_s: float = 60.0, max_connections: int = 32):
        self.where = where  # e.g. "tier 1 (gpt-4o at api.openai.com)"
        self.unreachable_hint = unreachable_hint
        self.client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers or {},
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=max_connections),
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    def unreachable(self, exc: httpx.HTTPError) -> TierUnavailable:
        return TierUnavailable(f"{self.where} is unreachable ({exc.__class__.__name__}); {self.unreachable_hint}")

    async def raise_for_status(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        body = (await response.aread()).decode("utf-8", "replace")
        try:
            message = json.loads(body)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            try:
                message = json.loads(body)["message"]  # vLLM's older error shape
            except (ValueError, KeyError, TypeError):
                message = body[:200]
        if response.status_code in (400, 404, 422):
            raise InvalidRequest(f"{self.where} rejected the request: {message}")
        raise RunnerFailed(f"{self.where} answered HTTP {response.status_code}: {message}")

    async def complete(self, payload: dict) -> ChatCompletion:
        try:
            response = await self.client.post("/chat/completions", json=payload)
        except httpx.HTTPError as exc:
            raise self.unreachable(exc) from None
        await self.raise_for_status(response)
        try:
            return ChatCompletion.model_validate(response.json())
        except (ValueError, ValidationError) as exc:
            raise RunnerFailed(f"{self.where} answered something that is not a chat completion: {exc}") from None

    async def stream(self, payload: dict) -> AsyncIterator[ChatCompletionChunk]:
        try:
            async with self.client.stream("POST", "/chat/completions", json=payload) as response:
                await self.raise_for_status(response)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line.removeprefix("data:").strip()
                    if data == "[DONE]":
                        return
                    event = json.loads(data)
                    if "error" in event:
                        message = (event["error"] or {}).get("message", "") if isinstance(event["error"], dict) else event["error"]
                        raise RunnerFailed(f"{self.where} failed mid-stream: {message}")
                    yield ChatCompletionChunk.model_validate(event)
        except httpx.HTTPError as exc:
            raise self.unreachable(exc) from None
