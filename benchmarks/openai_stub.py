"""A fixed-answer OpenAI chat server: the upstream for measuring what a proxy in front of it adds.

It answers every chat completion at once with the same one-token reply, so the time a client sees
through a proxy, minus the time it sees here directly, is the proxy's own cost (LiteLLM measures its
proxy overhead the same way, against a fake OpenAI endpoint). Raw ASGI on uvicorn: no framework cost.
With `"stream": true` the reply is server-sent events: the token's chunk, the finish chunk, a usage chunk
when `stream_options.include_usage` asks for one, and `[DONE]`.
"""

from __future__ import annotations

import argparse
import json
import time

COMPLETION = {
    "id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": "stub",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "yes"}, "finish_reason": "length"}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
}
MODELS = {"object": "list", "data": [{"id": "stub", "object": "model", "created": 0, "owned_by": "stub"}]}


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    parts, more = [], True
    while more:
        message = await receive()
        parts.append(message.get("body", b""))
        more = message.get("more_body", False)
    if scope["path"].endswith("/chat/completions"):
        request = json.loads(b"".join(parts) or b"{}")
        if request.get("stream"):
            await stream(send, bool((request.get("stream_options") or {}).get("include_usage")))
            return
        body = json.dumps({**COMPLETION, "created": int(time.time())}).encode()
    else:
        body = json.dumps(MODELS).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def stream(send, include_usage: bool) -> None:
    chunk = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": int(time.time()), "model": "stub"}
    events = [{**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "yes"},
                                     "finish_reason": None}]},
              {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}]
    if include_usage:
        events.append({**chunk, "choices": [], "usage": COMPLETION["usage"]})
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
    for event in events:
        await send({"type": "http.response.body", "body": f"data: {json.dumps(event)}\n\n".encode(), "more_body": True})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


if __name__ == "__main__":
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
