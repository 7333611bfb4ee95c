"""Simultaneous requests on one model instance never corrupt each other."""

from __future__ import annotations

import asyncio

from openai import AsyncOpenAI

CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Germany": "Berlin",
    "China": "Beijing", "Greece": "Athens", "Portugal": "Lisbon", "Austria": "Vienna",
}


def ask(country: str) -> list[dict]:
    return [{"role": "user", "content": f"What is the capital of {country}? Answer in one word."}]


def test_eight_simultaneous_requests_get_their_own_answers(server):
    client = AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)

    async def one(country: str, stream: bool) -> str:
        kwargs = dict(model="tier:3", messages=ask(country), temperature=0, max_tokens=12)
        if not stream:
            return (await client.chat.completions.create(**kwargs)).choices[0].message.content
        parts = []
        async for chunk in await client.chat.completions.create(stream=True, **kwargs):
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")
        return "".join(parts)

    async def run() -> list[str]:
        return await asyncio.gather(*(one(c, i % 2 == 0) for i, c in enumerate(CAPITALS)))

    answers = asyncio.run(run())
    for (country, capital), answer in zip(CAPITALS.items(), answers):
        assert capital in answer, (country, answer)
        others = [c for c in CAPITALS.values() if c != capital and c in answer]
        assert not others, (country, answer)
