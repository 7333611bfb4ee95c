"""Tool calls on llama.cpp: the grammar that constrains a call, and the parser that reads calls out of the text.

The syntax is Hermes 2 Pro's, which Qwen2.5's chat template teaches (and the generic tool prompt of
runners/llama_prompt.py asks for): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`. Small
models also write the same JSON in a ```json fence or bare; as in llama.cpp's common/chat.cpp, under
`auto` those forms trigger the lazy grammar too (the bare and fenced ones only with an offered
function's name), and the grammar accepts them from the trigger on. `required` and a named function
get the grammar from the first token: one `<tool_call>` form, the chosen function(s) only.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import regex

from runners.answer import new_id
from runners.errors import InvalidRequest
from runners.request import Request, Tool, ToolCall

OPEN, CLOSE = "<tool_call>", "</tool_call>"
# llama.cpp's JSON whitespace (json-schema-to-grammar.cpp SPACE_RULE): what a model writes between tokens
SPACE_RULE = r'| " " | "\n"{1,2} [ \t]{0,20}'
SPACE_RE = r"(?: |\n{1,2}[ \t]{0,20})?"  # the same, as a trigger pattern: a trigger never outruns the grammar
# and its string characters: no raw control characters, which JSON forbids (the Python converter allows them)
CHAR_RULE = r'[^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'


@dataclass(frozen=True)
class ToolPlan:
    """How one request's tools are generated: the grammar, and for `auto` the patterns that switch it on."""

    tools: list[Tool]
    grammar: str
    lazy: bool
    triggers: tuple[str, ...] = ()


def tool_mode(request: Request) -> str:
    """OpenAI's defaults: `auto` when tools are offered, `none` when not."""
    if request.tool_choice is not None:
        return request.tool_choice.mode
    return "auto" if request.tools else "none"


def plan_tools(request: Request) -> ToolPlan | None:
    """The grammar for a request that may call tools; None when it may not (no tools, or tool_choice none)."""
    mode = tool_mode(request)
    if mode == "none":
        return None
    chosen = [request.tool(request.tool_choice.name)] if mode == "function" else request.tools
    parallel = mode != "function" and request.parallel_tool_calls is True  # small models loop: one call unless asked
    lazy = mode == "auto"
    grammar = call_grammar(request.tools, chosen, parallel=parallel, loose_forms=lazy)
    return ToolPlan(chosen, grammar, lazy, trigger_patterns(chosen) if lazy else ())


def call_grammar(offered: list[Tool], chosen: list[Tool], *, parallel: bool, loose_forms: bool) -> str:
    """GBNF for one call (or several, when parallel) of the chosen tools, each argument object held to its schema."""
    from llama_cpp.llama_grammar import SchemaConverter

    converter = SchemaConverter(prop_order={"name": 0, "arguments": 1}, allow_fetch=False, dotall=False,
                                raw_pattern=False)
    names = []
    for tool in chosen:
        i = offered.index(tool)
        try:
            parameters = converter.resolve_refs(json.loads(json.dumps(tool.parameters)), f"tool{i}")
            wrapper = {"type": "object", "properties": {"name": {"const": tool.name}, "arguments": parameters},
                       "required": ["name", "arguments"]}
            names.append(converter.visit(wrapper, f"call{i}"))
        except Exception as exc:  # the converter raises plain exceptions for schemas it cannot express
            raise InvalidRequest(f"tools[{i}].function.parameters cannot be enforced by a grammar: {exc}",
                                 param=f"tools[{i}]") from None
    converter._rules["space"] = SPACE_RULE
    if "char" in converter._rules:
        converter._rules["char"] = CHAR_RULE
    forms = [f'"{OPEN}" space call space "{CLOSE}"']
    if loose_forms:
        forms += ['"```" "json"? "\\n" space call space "```"', "call"]
    rules = [converter.format_grammar(),
             "root ::= tool-call" + (" ( space tool-call )*" if parallel else ""),
             "tool-call ::= " + " | ".join(f"( {f} )" for f in forms),
             "call ::= " + " | ".join(names)]
    return "\n".join(rules)


def _name_pattern(tools: list[Tool]) -> str:
    return "(?:" + "|".join(re.escape(t.name) for t in tools) + ")"


def trigger_patterns(tools: list[Tool]) -> tuple[str, ...]:
    """Where a call starts under `auto`: the tag, or the JSON of a call of an offered function, fenced or bare."""
    head = rf'\{{{SPACE_RE}"name"{SPACE_RE}:{SPACE_RE}"{_name_pattern(tools)}"'
    return (re.escape(OPEN), rf"```(?:json)?\n{SPACE_RE}{head}", head)


@dataclass
class _Call:
    call: ToolCall
    form: str  # tag, fence or bare: which closing text ends it
    complete: bool = False


@dataclass
class ParsedChoice:
    text: str
    calls: list[ToolCall]
    incomplete: bool  # generation ended inside a call (its arguments are cut short)


@dataclass
class ToolCallParser:
    """Reads generated text incrementally: plain text until a call starts, then the call's name and its
    argument text as it arrives. Text that may still turn out to be a call's start is held back."""

    tools: list[Tool]
    events: list[tuple] = field(default_factory=list)
    _buffer: str = ""
    _state: str = "text"  # text, args, tail
    _calls: list[_Call] = field(default_factory=list)
    _depth: int = 0
    _in_string: bool = False
    _escaped: bool = False
    _text: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = _name_pattern(self.tools)
        args = r'\s*,\s*"arguments"\s*:\s*'
        self._head = regex.compile(
            rf'(?P<tag>{re.escape(OPEN)}\s*\{{\s*"name"\s*:\s*"(?P<n1>(?:[^"\\]|\\.)*)"{args})'
            rf'|(?P<fence>```(?:json)?\n\s*\{{\s*"name"\s*:\s*"(?P<n2>{names})"{args})'
            rf'|(?P<bare>\{{\s*"name"\s*:\s*"(?P<n3>{names})"{args})')
        self._tails = {"tag": regex.compile(rf"\s*\}}\s*{re.escape(CLOSE)}"), "fence": regex.compile(r"\s*\}\s*```"),
                       "bare": regex.compile(r"\s*\}")}

    def feed(self, piece: str) -> list[tuple]:
        """Events for this piece: ("text", s), ("call", index, id, name), ("args", index, fragment)."""
        self.events = []
        self._buffer += piece
        progress = True
        while progress and self._buffer:
            progress = {"text": self._scan_text, "args": self._scan_args, "tail": self._scan_tail}[self._state]()
        return self.events

    def finish(self) -> list[tuple]:
        """Events for what was held back, once generation ended."""
        self.events = []
        if self._state == "text":  # whitespace after the last call is no answer text
            self._emit_text(self._buffer.rstrip() if self._calls else self._buffer)
        self._buffer = ""
        return self.events

    def result(self) -> ParsedChoice:
        calls = [c.call for c in self._calls]
        text = "".join(self._text)
        incomplete = bool(self._calls) and self._state == "args"
        return ParsedChoice(text.rstrip() if calls else text, calls, incomplete)

    # -- states ---------------------------------------------------------------------------------
    def _scan_text(self) -> bool:
        buffer = self._buffer
        for start in (m.start() for m in re.finditer(r"[<`{]", buffer)):
            m = self._head.match(buffer, start, partial=True)
            if m is None:
                continue
            before = buffer[:start].rstrip()  # whitespace between text and a call belongs to neither
            self._emit_text(before)
            if m.partial:
                self._buffer = buffer[len(before):]
                return False
            form = next(f for f in self._tails if m.group(f))
            name = json.loads('"' + (m.group("n1") or m.group("n2") or m.group("n3")) + '"')
            call = ToolCall(id=f"call_{new_id()[:24]}", name=name, arguments="")
            self._calls.append(_Call(call, form))
            self.events.append(("call", len(self._calls) - 1, call.id, name))
            self._buffer = buffer[m.end():]
            self._state, self._depth, self._in_string, self._escaped = "args", 0, False, False
            return True
        held = len(buffer) - len(buffer.rstrip())  # trailing whitespace waits: it may precede a call
        self._emit_text(buffer[: len(buffer) - held])
        self._buffer = buffer[len(buffer) - held:]
        return False

    def _scan_args(self) -> bool:
        if not self._calls[-1].call.arguments:  # the whitespace before the arguments is not part of them
            self._buffer = self._buffer.lstrip()
        end = None
        for i, ch in enumerate(self._buffer):
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif ch == "\\":
                    self._escaped = True
                elif ch == '"':
                    self._in_string = False
                continue
            if ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
            if self._depth == 0 and not ch.isspace():
                end = i + 1
                break
        taken = self._buffer[:end] if end is not None else self._buffer
        if taken:
            current = self._calls[-1]
            current.call.arguments += taken
            self.events.append(("args", len(self._calls) - 1, taken))
        self._buffer = self._buffer[len(taken):]
        if end is not None:
            self._state = "tail"
        return end is not None

    def _scan_tail(self) -> bool:
        current = self._calls[-1]
        m = self._tails[current.form].match(self._buffer, partial=True)
        if m is None or m.partial:
            if m is None:  # not the closing we expected: what follows is text
                self._state = "text"
                return True
            return False
        current.complete = True
        self._buffer = self._buffer[m.end():]
        self._state = "text"
        return True

    def _emit_text(self, text: str) -> None:
        if text:
            self._text.append(text)
            self.events.append(("text", text))


def parse(tools: list[Tool], text: str) -> ParsedChoice:
    """The calls in a whole generated text (the non-streaming answer)."""
    parser = ToolCallParser(tools)
    parser.feed(text)
    parser.finish()
    return parser.result()
