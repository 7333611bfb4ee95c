"""HTTP transports for client libraries under test: every chat-completions body and SSE chunk the gateway sends
them is checked against OpenAI's OpenAPI document before the library sees it."""

from __future__ import annotations

import json

import httpx

from tests.openai_schema import validate


def check_body(request: httpx.Request, response: httpx.Response, seen: list[dict]) -> None:
    if request.url.path.endswith("/chat/completions"):
        check_text(response.status_code, response.headers.get("content-type", ""), response.content.decode(), seen)


def check_text(status: int, content_type: str, text: str, seen: list[dict]) -> None:
    """One chat-completions response (a whole body or a whole SSE stream) against OpenAI's document; into `seen`."""
    if status != 200:
        validate(json.loads(text), "ErrorResponse")
        seen.append(json.loads(text))
        return
    if content_type.startswith("text/event-stream"):
        data = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
        assert data and data[-1] == "[DONE]", text[-300:]
        for chunk in data[:-1]:
            validate(json.loads(chunk), "CreateChatCompletionStreamResponse")
            seen.append(json.loads(chunk))
        return
    validate(json.loads(text), "CreateChatCompletionResponse")
    seen.append(json.loads(text))


class Validating(httpx.HTTPTransport):
    """Reads each response whole (a stream too), validates it, and hands the library the same bytes."""

    def __init__(self, seen: list[dict]):
        super().__init__()
        self.seen = seen

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        response.read()
        check_body(request, response, self.seen)
        return httpx.Response(response.status_code, headers=response.headers, content=response.content,
                              request=request)


class AsyncValidating(httpx.AsyncHTTPTransport):
    def __init__(self, seen: list[dict]):
        super().__init__()
        self.seen = seen

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        await response.aread()
        check_body(request, response, self.seen)
        return httpx.Response(response.status_code, headers=response.headers, content=response.content,
                              request=request)
