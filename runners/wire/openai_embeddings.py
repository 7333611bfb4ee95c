"""OpenAI embeddings JSON (`POST /v1/embeddings`) as pydantic models, and the conversions both ways.

Ingress: a client's body -> the texts or token arrays to embed; vectors -> the list answer (float,
or base64 of little-endian float32 as OpenAI sends it). Egress: the body an OpenAI-compatible
embeddings server (vLLM's pooling server, a hosted API) expects, and its answer back.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

MAX_INPUTS = 2048

Inputs = list[str] | list[list[int]]


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, description="feature:<name>, tier:<n>, or any name when X-Feature is sent")
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="a text, texts, or token arrays in the embedding model's own tokens")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, description="where the model can shorten its vectors")
    user: str | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingsUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingsUsage


def inputs(body: EmbeddingsRequest) -> Inputs:
    """Always a list: of texts, or of token arrays (a flat list of ints is one array)."""
    value = body.input
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(v, int) for v in value):
        return [list(value)]
    return list(value)


def to_list(vectors: list[list[float]], model: str, tokens: int, encoding: str) -> EmbeddingList:
    def encode(vector: list[float]) -> list[float] | str:
        if encoding == "float":
            return vector
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()

    return EmbeddingList(data=[Embedding(index=i, embedding=encode(v)) for i, v in enumerate(vectors)], model=model,
                         usage=EmbeddingsUsage(prompt_tokens=tokens, total_tokens=tokens))


def to_payload(batch: Inputs, model: str, dimensions: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "input": batch, "encoding_format": "float"}
    if dimensions is not None:
        body["dimensions"] = dimensions
    return body


def from_list(data: Any) -> tuple[list[list[float]], int]:
    """The vectors, in input order, and the prompt tokens an OpenAI-style server counted."""
    answer = EmbeddingList.model_validate(data)
    vectors = [e.embedding for e in sorted(answer.data, key=lambda e: e.index)]
    if any(isinstance(v, str) for v in vectors):
        raise ValueError("the server sent base64 vectors after being asked for floats")
    return vectors, answer.usage.prompt_tokens
