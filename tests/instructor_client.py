"""instructor, as its users call it, against the gateway; run by tests/test_instructor_e2e.py under `.venv-instructor`.

instructor pins jiter below what the openai SDK of the main test environment needs, so it lives in its own
environment (`make instructor-setup`) with the openai SDK it resolves to, and this script imports nothing of
the project. Usage: `python instructor_client.py BASE_URL MODEL MODE [--stream]`. It prints one JSON object:
the validated answer's fields (the last partial when streaming) and the raw body of every chat-completions
response, so the caller can check each one against OpenAI's OpenAPI document.
"""

from __future__ import annotations

import json
import sys

import httpx2  # the HTTP client this openai SDK is built on
import instructor
from openai import OpenAI
from pydantic import BaseModel, Field


class CityWeather(BaseModel):
    """The weather report the text gives."""

    city: str = Field(description="the city the report is for")
    celsius: int = Field(description="the temperature in degrees Celsius")


class Recording(httpx2.HTTPTransport):
    """Keeps every chat-completions response as the gateway sent it; the library gets the same bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[dict] = []

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = super().handle_request(request)
        response.read()
        if request.url.path.endswith("/chat/completions"):
            self.bodies.append({"status": response.status_code, "content_type": response.headers.get("content-type", ""),
                                "text": response.text})
        return httpx2.Response(response.status_code, headers=response.headers, content=response.content, request=request)


def main(base_url: str, model: str, mode: str, stream: bool) -> None:
    recording = Recording()
    openai = OpenAI(base_url=base_url, api_key="unused", max_retries=0,
                    http_client=httpx2.Client(transport=recording, timeout=300))
    client = instructor.from_openai(openai, mode=instructor.Mode[mode])
    ask = dict(model=model, response_model=CityWeather, temperature=0, max_tokens=80, max_retries=1,
               messages=[{"role": "user", "content": "Report: in Oslo it is sunny and 21 degrees Celsius today."}])
    if stream:
        partials = list(client.chat.completions.create_partial(**ask))
        answer = partials[-1].model_dump()
        extra = {"partials": len(partials)}
    else:
        answer, extra = client.chat.completions.create(**ask).model_dump(), {}
    print(json.dumps({"answer": answer, "bodies": recording.bodies, **extra}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], "--stream" in sys.argv[4:])
