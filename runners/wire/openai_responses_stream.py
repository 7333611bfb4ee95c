"""Internal deltas -> the Responses API's stream events, in OpenAI's order.

response.created, response.in_progress; for a text: response.output_item.added (a message),
response.content_part.added, response.output_text.delta..., response.output_text.done,
response.content_part.done, response.output_item.done; for each tool call: response.output_item.added
(a function_call), response.function_call_arguments.delta..., response.function_call_arguments.done,
response.output_item.done; last, response.completed (or response.incomplete) with the whole Response.
Every event carries a `sequence_number`, counting from 0.
"""

from __future__ import annotations

import time

from runners.answer import Delta, Usage, new_id
from runners.wire import openai_responses_protocol as wire
from runners.wire.openai_responses import item_id, response

Event = tuple[str, dict]


class EventWriter:
    def __init__(self, body: wire.ResponsesRequest, model: str):
        self.body, self.model = body, model
        self.id, self.created = f"resp_{new_id()}", int(time.time())
        self.sequence = 0
        self.items: list[wire.OutMessage | wire.OutFunctionCall] = []
        self.open: wire.OutMessage | wire.OutFunctionCall | None = None
        self.open_call: int | None = None  # the internal index of the open tool call
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.started = False

    def _event(self, kind: str, **fields) -> Event:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return kind, event

    def _response(self, finish: str | None) -> dict:
        return response(self.body, self.model, self.id, self.created, self.items, finish,
                        self.usage if finish else None).model_dump(by_alias=True)

    def _start(self) -> list[Event]:
        if self.started:
            return []
        self.started = True
        return [self._event("response.created", response=self._response(None)),
                self._event("response.in_progress", response=self._response(None))]

    def events(self, delta: Delta) -> list[Event]:
        out = self._start()
        for c in delta.choices:
            if c.text:
                if not isinstance(self.open, wire.OutMessage):
                    out += self._open(wire.OutMessage(id=item_id("msg"), status="in_progress", content=[]))
                    part = wire.OutputTextPart(text="")
                    out.append(self._event("response.content_part.added", item_id=self.open.id,
                                           output_index=len(self.items) - 1, content_index=0, part=part.model_dump()))
                    self.open.content.append(part)
                self.open.content[0].text += c.text
                out.append(self._event("response.output_text.delta", item_id=self.open.id,
                                       output_index=len(self.items) - 1, content_index=0, delta=c.text, logprobs=[]))
            for piece in c.tool_calls:
                if self.open_call != piece.index:
                    out += self._open(wire.OutFunctionCall(id=item_id("fc"), call_id=piece.id or item_id("call"),
                                                           name=piece.name or "", arguments="", status="in_progress"))
                    self.open_call = piece.index
                if piece.arguments:
                    self.open.arguments += piece.arguments
                    out.append(self._event("response.function_call_arguments.delta", item_id=self.open.id,
                                           output_index=len(self.items) - 1, delta=piece.arguments))
            if c.finish_reason is not None:
                out += self._close()
                self.finish_reason = c.finish_reason
        if delta.usage is not None:
            self.usage = delta.usage
        return out

    def error(self, error: dict) -> Event:
        """A failure mid-stream, from an OpenAI error body's `error` object."""
        return self._event("error", code=error.get("code"), message=error.get("message", ""), param=error.get("param"))

    def finish(self) -> list[Event]:
        out = self._start() + self._close()
        whole = self._response(self.finish_reason or "stop")
        kind = "response.incomplete" if whole["status"] == "incomplete" else "response.completed"
        out.append(self._event(kind, response=whole))
        return out

    def _open(self, item: wire.OutMessage | wire.OutFunctionCall) -> list[Event]:
        out = self._close()
        self.open = item
        self.items.append(item)
        out.append(self._event("response.output_item.added", output_index=len(self.items) - 1,
                               item=item.model_dump()))
        return out

    def _close(self) -> list[Event]:
        item, index = self.open, len(self.items) - 1
        if item is None:
            return []
        self.open, self.open_call = None, None
        out = []
        if isinstance(item, wire.OutMessage):
            text = item.content[0].text
            out.append(self._event("response.output_text.done", item_id=item.id, output_index=index, content_index=0,
                                   text=text, logprobs=[]))
            out.append(self._event("response.content_part.done", item_id=item.id, output_index=index, content_index=0,
                                   part=item.content[0].model_dump()))
        else:
            out.append(self._event("response.function_call_arguments.done", item_id=item.id, output_index=index,
                                   name=item.name, arguments=item.arguments))
        item.status = "completed"
        out.append(self._event("response.output_item.done", output_index=index, item=item.model_dump()))
        return out
