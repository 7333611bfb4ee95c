"""HTTP to OpenAI-style servers, for every runner that forwards to one (vLLM, hosted APIs).

The JSON itself is `runners/wire/openai_chat.py`'s; this module adds the transport:
- `OpenAIStream`: SSE lines in, internal deltas out, `[DONE]` and mid-stream error events included.
- `error_message`: the message of an error body, whichever shape the server uses; `status_error`: what its status means.
- `OpenAIEndpoint`: one pooled HTTP session per endpoint (runners/http_pool.py); hosted APIs add retries of their own.
  Transport failures and error statuses become the product's named exceptions; the message names the
  tier and the fix, and never contains a key.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from pydantic import ValidationError

from runners import http_pool
from runners.answer import Answer, Delta
from runners.errors import InvalidRequest, RunnerFailed, TierUnavailable
from runners.wire import openai_chat, openai_chat_protocol as wire, openai_completions


@dataclass(frozen=True)
class Api:
    """One OpenAI-style API path: where to POST, and how its answer and its stream chunks become ours."""

    path: str
    answer: Callable[[Any], Answer]
    chunk: Callable[[Any], Delta]
    what: str


CHAT = Api("/chat/completions", lambda data: openai_chat.from_completion(wire.ChatCompletion.model_validate(data)),
           lambda data: openai_chat.from_chunk(wire.ChatCompletionChunk.model_validate(data)), "a chat completion")
TEXT = Api("/completions", openai_completions.from_completion, openai_completions.from_chunk, "a text completion")


def error_message(body: str) -> str:
    """The message of an error body, or the body's start when it has none."""
    try:
        message = _message_of(json.loads(body))
    except ValueError:
        message = None
    return body[:200] if message is None else message


def status_error(status: int, message: str, where: str, url_key: str) -> InvalidRequest | RunnerFailed:
    """An upstream's error status as ours. A request the upstream refused (400, 413, 422) is the client's 400,
    and a pool does not hold it against the replica. A 404 is the profile's `model` or `url_key`, which the
    client cannot fix and another replica may serve; anything else is the tier failing (502)."""
    if status in (400, 413, 422):
        return InvalidRequest(f"{where} rejected the request: {message}")
    if status == 404:
        return RunnerFailed(f"{where} has no such model or route (HTTP 404): {message}; check the tier's "
                            f"`model` and `{url_key}` in the profile")
    return RunnerFailed(f"{where} answered HTTP {status}: {message}")


def _message_of(data: Any) -> str | None:
    """`{"error": {"message"}}` (OpenAI), `{"error": "..."}`, or `{"message"}` (vLLM's older shape)."""
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, dict) and "message" in error:
        return str(error["message"])
    if isinstance(error, str):
        return error
    return str(data["message"]) if "message" in data else None


class OpenAIStream:
    """Feeds an OpenAI SSE stream line by line; `done` once `[DONE]` arrived.

    An error event raises RunnerFailed("failed mid-stream: ..."), an event that is not a chunk
    RunnerFailed("sent a stream event that is not valid: ..."); callers put the tier's name in front.
    """

    def __init__(self, api: Api = CHAT):
        self.done = False
        self.api = api

    def feed_line(self, line: str) -> list[Delta]:
        if not line.startswith("data:"):
            return []
        data = line.removeprefix("data:").strip()
        if data == "[DONE]":
            self.done = True
            return []
        try:
            event = orjson.loads(data)
            if isinstance(event, dict) and "error" in event:
                raise RunnerFailed(f"failed mid-stream: {_message_of(event) or ''}")
            return [self.api.chunk(event)]
        except (ValueError, ValidationError) as exc:
            raise RunnerFailed(f"sent a stream event that is not valid: {exc}") from None


class OpenAIEndpoint:
    """A pooled client for one OpenAI-compatible API root (ending in /v1); its session is made on first use."""

    def __init__(self, base_url: str, *, where: str, unreachable_hint: str, headers: dict[str, str] | None = None,
                 connect_timeout_s: float = 5.0, read_timeout_s: float = 60.0, max_connections: int = 32):
        self.where = where  # e.g. "tier 2 (smollm2-135m-instruct-bf16 on vLLM)"
        self.unreachable_hint = unreachable_hint
        self.base_url = base_url.rstrip("/")
        self._options = {"connect_timeout_s": connect_timeout_s, "read_timeout_s": read_timeout_s,
                         "max_connections": max_connections}
        self._headers = headers or {}
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = http_pool.session(self._headers, **self._options)
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    def unreachable(self, exc: Exception) -> TierUnavailable:
        return TierUnavailable(f"{self.where} is unreachable ({exc.__class__.__name__}); {self.unreachable_hint}")

    async def healthy(self, url: str, timeout_s: float = 5.0) -> bool:
        """GET `url` answers 200 within `timeout_s`."""
        try:
            async with asyncio.timeout(timeout_s), self.session.get(url) as response:
                return response.status == 200
        except (*http_pool.TRANSPORT_ERRORS, TimeoutError):
            return False

    async def raise_for_status(self, response: aiohttp.ClientResponse) -> None:
        if response.status >= 400:
            message = error_message((await response.read()).decode("utf-8", "replace"))
            raise status_error(response.status, message, self.where, "url")

    def _post(self, path: str, payload: dict):
        """`path` under the API root, or a whole URL (vLLM's /tokenize lives beside /v1, not under it)."""
        url = path if path.startswith(("http://", "https://")) else self.base_url + path
        return self.session.post(url, data=http_pool.dumps(payload), headers=http_pool.JSON_HEADERS)

    async def post(self, path: str, payload: dict, parse: Callable[[Any], Any], what: str) -> Any:
        """POST JSON, then `parse` the answer's JSON; errors named for this endpoint."""
        try:
            async with self._post(path, payload) as response:
                await self.raise_for_status(response)
                data = await response.read()
        except http_pool.TRANSPORT_ERRORS as exc:
            raise self.unreachable(exc) from None
        try:
            return parse(orjson.loads(data))
        except (ValueError, ValidationError) as exc:
            raise RunnerFailed(f"{self.where} answered something that is not {what}: {exc}") from None

    async def complete(self, payload: dict, api: Api = CHAT) -> Answer:
        return await self.post(api.path, payload, api.answer, api.what)

    async def stream(self, payload: dict, api: Api = CHAT) -> AsyncIterator[Delta]:
        """Deltas until `[DONE]`; a stream that ends before it is an error, never a silently short answer."""
        parser = OpenAIStream(api)
        try:
            async with self._post(api.path, payload) as response:
                await self.raise_for_status(response)
                async for line in http_pool.lines(response):
                    try:
                        chunks = parser.feed_line(line)
                    except RunnerFailed as exc:
                        raise RunnerFailed(f"{self.where} {exc.message}") from None
                    for chunk in chunks:
                        yield chunk
                    if parser.done:
                        return
        except http_pool.TRANSPORT_ERRORS as exc:
            raise self.unreachable(exc) from None
        raise RunnerFailed(f"{self.where} ended the stream without [DONE]; the answer may be incomplete, retry the request")
