"""A chat request as the prompt text a GGUF model expects: its own chat template, given the tools.

As in llama.cpp's `--jinja` mode, the template in the GGUF metadata is rendered with the messages and the
tools (OpenAI's function objects), assistant tool calls (arguments as objects, the way HF templates read
them) and tool results. A template that shows no tools when given some (SmolLM2's) gets them in a generic
system prompt instead, in the `<tool_call>` syntax runners/llama_tools.py reads and constrains; its past
calls are written into the assistant turns in that syntax and tool results go in as user turns.
"""

from __future__ import annotations

import json
from typing import Any

from runners.llama_tools import CLOSE, OPEN, tool_mode
from runners.request import Message, Request, Tool, ToolCall

GENERIC_TOOLS = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    f"{OPEN}{CLOSE} XML tags:\n{OPEN}\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n'
    f"{CLOSE}"
)
_PROBE = Tool(name="probe_fn_7f3a", description="probe", parameters={"type": "object", "properties": {}})


def openai_tool(tool: Tool) -> dict[str, Any]:
    return {"type": "function", "function": tool.model_dump(exclude_none=True)}


class ChatPrompt:
    """Renders requests with one model's template; `native_tools` says whether that template lists tools itself."""

    def __init__(self, template: str, bos: str, eos: str):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self._formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        probe = self._formatter(messages=[{"role": "user", "content": "hi"}], tools=[openai_tool(_PROBE)]).prompt
        self.native_tools = _PROBE.name in probe and OPEN in probe

    def render(self, request: Request) -> str:
        offered = request.tools if tool_mode(request) != "none" else []
        if self.native_tools:
            messages = [_native(m) for m in request.messages]
            tools = [openai_tool(t) for t in offered] or None
            return self._formatter(messages=messages, tools=tools).prompt
        messages = [_generic(m) for m in request.messages]
        if offered:
            listing = "\n".join(json.dumps(openai_tool(t), ensure_ascii=False) for t in offered)
            system = GENERIC_TOOLS.format(tools=listing)
            if messages and messages[0]["role"] == "system":
                messages[0] = {"role": "system", "content": f"{messages[0]['content']}\n\n{system}"}
            else:
                messages.insert(0, {"role": "system", "content": system})
        return self._formatter(messages=messages).prompt


def _role(message: Message) -> str:
    return "system" if message.role == "developer" else message.role


def _arguments(call: ToolCall) -> Any:
    """HF templates write `arguments | tojson`: an object, as the model generated it (text only if it never parsed)."""
    try:
        return json.loads(call.arguments)
    except ValueError:
        return call.arguments


def _native(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": _role(message), "content": message.text()}
    if message.tool_calls:
        out["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": _arguments(c)}}
                             for c in message.tool_calls]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    return out


def _generic(message: Message) -> dict[str, str]:
    if message.role == "tool":
        return {"role": "user", "content": f"<tool_response>\n{message.text()}\n</tool_response>"}
    calls = [f'{OPEN}\n{json.dumps({"name": c.name, "arguments": _arguments(c)}, ensure_ascii=False)}\n{CLOSE}'
             for c in message.tool_calls]
    return {"role": _role(message), "content": "\n".join(([message.text()] if message.text() else []) + calls)}
