"""Checks on a request's tools that no wire format can make alone, run once for every API before routing.

A tool whose parameters are not a JSON Schema, a `tool_choice` that names a function nobody offered, or
a tool result that answers no call earlier in the conversation would reach a model as nonsense; each is
a 400 that names the field instead.
"""

from __future__ import annotations

import jsonschema

from runners.errors import InvalidRequest
from runners.request import Request


def check_request(request: Request) -> None:
    """InvalidRequest naming the first tool, tool_choice or tool message that cannot be right."""
    _check_tools(request)
    _check_tool_choice(request)
    _check_tool_results(request)


def _check_tools(request: Request) -> None:
    seen: set[str] = set()
    for i, tool in enumerate(request.tools):
        where = f"tools[{i}]"
        if tool.name in seen:
            raise InvalidRequest(f"{where}: a second function named {tool.name!r}; each tool needs its own name",
                                 param=where)
        seen.add(tool.name)
        try:
            jsonschema.Draft202012Validator.check_schema(tool.parameters)
        except jsonschema.exceptions.SchemaError as exc:
            path = "/".join(str(p) for p in exc.absolute_path) or "root"
            raise InvalidRequest(f"{where}.function.parameters is not a valid JSON Schema (at {path}: {exc.message}); "
                                 "describe the arguments as a JSON Schema object", param=where) from None
        declared = tool.parameters.get("type")
        if declared is not None and declared != "object":
            raise InvalidRequest(f"{where}.function.parameters has type {declared!r}; a function's arguments are a JSON "
                                 "object, so its schema must have type 'object'", param=where)


def _check_tool_choice(request: Request) -> None:
    choice = request.tool_choice
    if choice is None or choice.mode in ("none", "auto"):
        return
    if not request.tools:
        raise InvalidRequest(f"tool_choice {choice.name or choice.mode!r} needs `tools`: no function was offered",
                             param="tool_choice")
    if choice.mode == "function" and request.tool(choice.name or "") is None:
        offered = ", ".join(t.name for t in request.tools)
        raise InvalidRequest(f"tool_choice names function {choice.name!r}, which is not among the tools offered "
                             f"({offered})", param="tool_choice")


def _check_tool_results(request: Request) -> None:
    called: set[str] = set()
    for i, message in enumerate(request.messages):
        called.update(call.id for call in message.tool_calls)
        if message.role == "tool" and message.tool_call_id not in called:
            raise InvalidRequest(f"messages[{i}] is a tool result for call {message.tool_call_id!r}, but no earlier "
                                 "assistant message made a call with that id; send the assistant message with its "
                                 "tool_calls before the results", param=f"messages[{i}].tool_call_id")
