"""Real client libraries drive tool-call round trips (call, tool result, final answer) through the gateway on
Tier 3, streaming and not: the official openai SDK, the OpenAI Agents SDK, LangChain's bind_tools and
pydantic-ai's structured output. Every body and chunk they receive is checked against OpenAI's OpenAPI
document on the way in (tests/validating_transport.py).

The models are tiny, so each library is pointed where it can finish: SmolLM2 (tier:2 in the tool gateway)
answers in text once a result is in, so it runs the loops that force the first call and then go back to
`auto`; Qwen2.5-Coder-0.5B (tier:3) keeps calling tools, which is what pydantic-ai's output tool needs.
"""

from __future__ import annotations

import json

import httpx
import pytest
from pydantic import BaseModel

from tests.test_tools_tier3_e2e import ASK, QWEN, SMOL, WEATHER
from tests.validating_transport import AsyncValidating, Validating

QUESTION = ASK[0]["content"]
RESULT = "Sunny, 21 degrees Celsius"


@pytest.fixture
def seen() -> list[dict]:
    return []


def sync_client(gateway, seen):
    from openai import OpenAI

    return OpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0,
                  http_client=httpx.Client(transport=Validating(seen), timeout=300))


def async_client(gateway, seen):
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", max_retries=0,
                       http_client=httpx.AsyncClient(transport=AsyncValidating(seen), timeout=300))


def called(seen: list[dict]) -> list[str]:
    """Names of the functions the gateway's answers called, whole or streamed."""
    names = []
    for body in seen:
        for choice in body.get("choices", []):
            for call in (choice.get("message") or choice.get("delta") or {}).get("tool_calls") or []:
                if call.get("function", {}).get("name"):
                    names.append(call["function"]["name"])
    return names


# -- the official openai SDK ------------------------------------------------------------------------
@pytest.mark.parametrize(("model", "first", "second"), [(QWEN, "auto", "none"), (SMOL, "required", "auto")])
def test_openai_sdk_round_trip(tool_gateway, seen, model, first, second):
    client = sync_client(tool_gateway, seen)
    messages = list(ASK)
    reply = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER], tool_choice=first,
                                           temperature=0, max_tokens=80)
    call = reply.choices[0].message.tool_calls[0]
    assert reply.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] == "Oslo"
    messages += [reply.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": RESULT}]
    final = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER], tool_choice=second,
                                           temperature=0, max_tokens=60)
    assert final.choices[0].message.tool_calls is None and final.choices[0].message.content
    assert len(seen) == 2


@pytest.mark.parametrize(("model", "first"), [(QWEN, "auto"), (SMOL, "required")])
def test_openai_sdk_streaming_round_trip(tool_gateway, seen, model, first):
    client = sync_client(tool_gateway, seen)
    with client.chat.completions.stream(model=model, messages=ASK, tools=[WEATHER], tool_choice=first,
                                        temperature=0, max_tokens=80) as events:
        completion = events.get_final_completion()
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "tool_calls"
    call = message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"] == "Oslo"
    messages = ASK + [{"role": "assistant", "tool_calls": [call.model_dump(exclude_none=True)]},
                      {"role": "tool", "tool_call_id": call.id, "content": RESULT}]
    chunks = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER],
                                            tool_choice="none" if model == QWEN else "auto", temperature=0,
                                            max_tokens=60, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(seen) > 4


# -- the OpenAI Agents SDK ----------------------------------------------------------------------------
def weather_agent(gateway, seen):
    from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, function_tool, set_tracing_disabled

    set_tracing_disabled(True)
    looked_up: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        looked_up.append(city)
        return RESULT

    model = OpenAIChatCompletionsModel(model=SMOL, openai_client=async_client(gateway, seen))
    # the first turn must call; the SDK resets tool_choice after a tool ran (reset_tool_choice), so the next is auto
    agent = Agent(name="weather", instructions="Answer questions about the weather.", tools=[get_weather], model=model,
                  model_settings=ModelSettings(tool_choice="required", temperature=0, max_tokens=80))
    return agent, looked_up


async def test_openai_agents_round_trip(tool_gateway, seen):
    from agents import Runner

    agent, looked_up = weather_agent(tool_gateway, seen)
    result = await Runner.run(agent, QUESTION, max_turns=3)
    assert looked_up == ["Oslo"] and isinstance(result.final_output, str) and result.final_output
    assert called(seen) == ["get_weather"]


async def test_openai_agents_streaming_round_trip(tool_gateway, seen):
    from agents import Runner

    agent, looked_up = weather_agent(tool_gateway, seen)
    result = Runner.run_streamed(agent, QUESTION, max_turns=3)
    kinds = [event.type async for event in result.stream_events()]
    assert "raw_response_event" in kinds and looked_up == ["Oslo"] and result.final_output
    assert called(seen) == ["get_weather"]


# -- LangChain ----------------------------------------------------------------------------------------
def langchain_model(gateway, seen):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model=SMOL, base_url=f"{gateway.base_url}/v1", api_key="unused", temperature=0, max_tokens=80,
                      max_retries=0, http_client=httpx.Client(transport=Validating(seen), timeout=300))


def lc_get_weather(city: str) -> str:
    """Current weather for a city."""
    return RESULT


@pytest.mark.parametrize("streaming", [False, True])
def test_langchain_bind_tools_round_trip(tool_gateway, seen, streaming):
    from functools import reduce

    from langchain_core.messages import HumanMessage, ToolMessage

    llm = langchain_model(tool_gateway, seen)
    forced, free = llm.bind_tools([lc_get_weather], tool_choice="required"), llm.bind_tools([lc_get_weather])
    messages = [HumanMessage(QUESTION)]
    reply = reduce(lambda a, b: a + b, forced.stream(messages)) if streaming else forced.invoke(messages)
    (call,) = reply.tool_calls
    assert call["name"] == "lc_get_weather" and call["args"]["city"] == "Oslo"
    messages += [reply, ToolMessage(lc_get_weather(**call["args"]), tool_call_id=call["id"])]
    final = reduce(lambda a, b: a + b, free.stream(messages)) if streaming else free.invoke(messages)
    assert not final.tool_calls and final.content
    assert called(seen) == ["lc_get_weather"]


# -- pydantic-ai --------------------------------------------------------------------------------------
class Weather(BaseModel):
    city: str
    summary: str


def weather_report_agent(gateway, seen):
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    model = OpenAIChatModel(QWEN, provider=OpenAIProvider(openai_client=async_client(gateway, seen)))
    agent = Agent(model, output_type=Weather, instructions="Look up the weather with get_weather, then report it.",
                  model_settings={"temperature": 0, "max_tokens": 80})
    looked_up: list[str] = []

    @agent.tool_plain
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        looked_up.append(city)
        return RESULT

    return agent, looked_up


async def test_pydantic_ai_structured_output_after_a_tool(tool_gateway, seen):
    """pydantic-ai asks for its answer as a call of its own output tool (final_result), with tool_choice required."""
    agent, looked_up = weather_report_agent(tool_gateway, seen)
    result = await agent.run(QUESTION)
    assert looked_up == ["Oslo"] and result.output.city == "Oslo"
    assert called(seen) == ["get_weather", "final_result"]


async def test_pydantic_ai_streaming_structured_output_after_a_tool(tool_gateway, seen):
    agent, looked_up = weather_report_agent(tool_gateway, seen)
    async with agent.run_stream(QUESTION) as run:
        output = await run.get_output()
    assert looked_up == ["Oslo"] and output.city == "Oslo"
    assert any("delta" in c["choices"][0] for c in seen if c.get("choices"))
