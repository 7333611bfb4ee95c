"""The chat stream's spliced text chunk writes exactly the bytes its pydantic models write.

`ChunkWriter.json_chunks` writes a choice's next piece of text by splicing it into a sample chunk rather
than building three models per token; any difference in escaping, key order or fields would change what
clients parse, so every kind of text a tokenizer can produce is compared byte for byte with the models.
"""

from __future__ import annotations

import json

import pytest

from runners.answer import ChoiceDelta, Delta, TokenLogprob, ToolCallDelta, Usage
from runners.wire.openai_chat import ChunkWriter

TEXTS = ["", " tok", 'a "quoted" word', "back\\slash", "\n\t\r\b\f", "\x00\x01\x1f\x7f", "é 中文 🙂",
         "\u2028\u2029", "</script>", "\ufffd", "x" * 5000, "{\"index\":0,\"delta\":{\"content\":\"\"}"]
MODELS = ["tier:3", 'odd "model" \\ name', "modèle-中"]


def model_path(writer: ChunkWriter, delta: Delta) -> list[str]:
    return [c.model_dump_json() for c in writer.chunks(delta)]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("index", [0, 3])
def test_a_text_piece_is_the_bytes_the_models_write(model: str, text: str, index: int):
    spliced, modelled = ChunkWriter(model, include_usage=True), ChunkWriter(model, include_usage=True)
    modelled.id, modelled.created = spliced.id, spliced.created
    first = Delta(choices=[ChoiceDelta(index=index, text="Hi")])
    assert spliced.json_chunks(first) == model_path(modelled, first)
    piece = Delta(choices=[ChoiceDelta(index=index, text=text)])
    out = spliced.json_chunks(piece)
    assert out == model_path(modelled, piece)
    assert json.loads(out[0])["choices"][0]["delta"] == {"content": text}


@pytest.mark.parametrize("delta", [
    Delta(choices=[ChoiceDelta(index=0, text="a", finish_reason="stop")]),
    Delta(choices=[ChoiceDelta(index=0, finish_reason="length")]),
    Delta(choices=[ChoiceDelta(index=0, text="a", logprobs=[TokenLogprob(token="a", logprob=-0.5, bytes=[97])])]),
    Delta(choices=[ChoiceDelta(index=0, tool_calls=[ToolCallDelta(index=0, id="call_1", name="f")])]),
    Delta(choices=[ChoiceDelta(index=0, text="a"), ChoiceDelta(index=1, text="b")]),
    Delta(choices=[ChoiceDelta(index=5, text="a role chunk first")]),
    Delta(usage=Usage(prompt_tokens=3, completion_tokens=2), cost_usd=0.001),
    Delta(choices=[ChoiceDelta(index=0, text="a")], usage=Usage(prompt_tokens=3, completion_tokens=1)),
])
def test_every_other_delta_goes_through_the_models(delta: Delta):
    spliced, modelled = ChunkWriter("m", include_usage=True), ChunkWriter("m", include_usage=True)
    modelled.id, modelled.created = spliced.id, spliced.created
    started = Delta(choices=[ChoiceDelta(index=0, text="Hi"), ChoiceDelta(index=1, text="Hi")])
    assert spliced.json_chunks(started) == model_path(modelled, started)
    assert spliced.json_chunks(delta) == model_path(modelled, delta)
