"""The embedding models a profile places (its `embeddings` section, one per tier) for POST /v1/embeddings.

Four backends, by `runner`:
- `minilm`: all-MiniLM-L6-v2 from its wheel, in process (the semantic cache's embedder);
- `llamacpp`: a GGUF in llama.cpp's embedding mode, in process, mean-pooled (the cache's too);
- `vllm`: a vLLM server running a pooling model, attached by `url`;
- `hosted`: an OpenAI-compatible embeddings API (`base_url`, key from `api_key_env`).
In-process models load on first use and count tokens with their own tokenizer; a token-array input is
read as that model's token ids. The HTTP ones forward texts or token arrays and report the server's
count. `dimensions` is honoured only where the model can shorten its vectors: the HTTP ones pass it on
(the server refuses what it cannot), the in-process ones accept only their own size.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from hardware.catalog import load_catalog, resolve_model_file
from hardware.config import validate_model
from hardware.errors import ConfigError
from hardware.profile import EmbeddingPlacement, Profile
from runners.errors import InvalidRequest, TierUnavailable
from runners.openai_http import OpenAIEndpoint
from runners.wire import openai_embeddings as wire
from tiers.cache.embedders import Embedder, LlamaCppEmbedding, MiniLM


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbeddingModel:
    kind: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = _Options
    default_model: ClassVar[str | None] = None

    def __init__(self, tier: int, placement: EmbeddingPlacement, options: BaseModel, source: str):
        self.tier, self.placement, self.options = tier, placement, options
        if placement.model is None and self.default_model is None:
            raise ConfigError(f"{source}: embeddings.{tier}.model: a {self.kind} embedding model needs `model`")
        self.model_name = placement.model or self.default_model

    @property
    def where(self) -> str:
        return f"tier {self.tier} embeddings ({self.model_name} on {self.kind})"

    async def embed(self, batch: wire.Inputs, dimensions: int | None) -> tuple[list[list[float]], int]:
        """Vectors in input order, and the tokens read."""
        raise NotImplementedError


class _InProcess(EmbeddingModel):
    def __init__(self, *args):
        super().__init__(*args)
        self._embedder: Embedder | None = None
        self._loading = asyncio.Lock()

    def load(self) -> Embedder:
        raise NotImplementedError

    async def embed(self, batch: wire.Inputs, dimensions: int | None) -> tuple[list[list[float]], int]:
        async with self._loading:
            if self._embedder is None:
                self._embedder = await asyncio.to_thread(self.load)
        embedder = self._embedder
        if dimensions is not None and dimensions != embedder.dim:
            raise InvalidRequest(f"dimensions: {self.where} makes {embedder.dim}-dimensional vectors and cannot shorten "
                                 f"them; remove dimensions, or route to a model that can", param="dimensions")
        texts, tokens = [], 0
        for i, item in enumerate(batch):
            ids = item if isinstance(item, list) else embedder.token_ids(item)
            if len(ids) > embedder.max_tokens:
                raise InvalidRequest(f"input[{i}]: {len(ids)} tokens is more than the {embedder.max_tokens} that "
                                     f"{self.where} reads; shorten or split it", param="input")
            texts.append(embedder.text_of(ids) if isinstance(item, list) else item)
            tokens += len(ids)
        vectors = await asyncio.to_thread(embedder.embed, texts)
        return vectors.tolist(), tokens


class MiniLMEmbedding(_InProcess):
    kind, default_model = "minilm", "all-minilm-l6-v2"

    def load(self) -> Embedder:
        return MiniLM()


class LlamaCppEmbeddingModel(_InProcess):
    kind = "llamacpp"

    def __init__(self, *args):
        super().__init__(*args)
        name = self.model_name
        self.path = Path(name) if name.endswith(".gguf") else resolve_model_file(name, load_catalog())
        if not self.path.is_file():
            raise ConfigError(f"embeddings.{self.tier}.model: {self.path} does not exist; give a GGUF file or a "
                              "catalog name")

    def load(self) -> Embedder:
        return LlamaCppEmbedding(self.path)


class VllmEmbeddingOptions(_Options):
    url: str = Field(pattern=r"^https?://", description="the vLLM pooling server's root, e.g. http://gpu1:8000")
    timeout_s: float = Field(default=60.0, gt=0, description="longest wait for an answer")


class HostedEmbeddingOptions(_Options):
    base_url: str = Field(default="https://api.openai.com/v1", pattern=r"^https?://", description="API root, ending in /v1")
    api_key_env: str | None = Field(default="OPENAI_API_KEY", description="environment variable holding the key")
    timeout_s: float = Field(default=60.0, gt=0, description="longest wait for an answer")


class _OpenAIProtocol(EmbeddingModel):
    """An OpenAI-compatible /v1/embeddings server; the key (if any) is read at each request, never logged."""

    def root(self) -> str:
        raise NotImplementedError

    def key(self) -> str | None:
        return None

    async def embed(self, batch: wire.Inputs, dimensions: int | None) -> tuple[list[list[float]], int]:
        key = self.key()
        headers = {"authorization": f"Bearer {key}"} if key else {}
        endpoint = OpenAIEndpoint(self.root(), where=self.where, headers=headers, read_timeout_s=self.options.timeout_s,
                                  unreachable_hint="check the embeddings server and the profile's embeddings section")
        try:
            return await endpoint.post("/embeddings", wire.to_payload(batch, self.model_name, dimensions),
                                       wire.from_list, "an embedding list")
        finally:
            await endpoint.aclose()


class VllmEmbedding(_OpenAIProtocol):
    kind, Options = "vllm", VllmEmbeddingOptions

    def root(self) -> str:
        return self.options.url.rstrip("/").removesuffix("/v1") + "/v1"


class HostedEmbedding(_OpenAIProtocol):
    kind, Options = "hosted", HostedEmbeddingOptions

    def root(self) -> str:
        return self.options.base_url

    def key(self) -> str | None:
        env = self.options.api_key_env
        if env and not os.environ.get(env):
            raise TierUnavailable(f"{self.where} is not configured: export {env}=<your key> and restart the gateway")
        return os.environ.get(env) if env else None


BACKENDS: dict[str, type[EmbeddingModel]] = {cls.kind: cls for cls in
                                             (MiniLMEmbedding, LlamaCppEmbeddingModel, VllmEmbedding, HostedEmbedding)}


class EmbeddingModels:
    """The profile's embedding models by tier, each validated at start (errors name the file, key and fix)."""

    def __init__(self, profile: Profile, path: Path):
        self.profile_name = path.stem
        self.models: dict[int, EmbeddingModel] = {}
        for tier, placement in profile.embeddings.items():
            cls = BACKENDS.get(placement.runner)
            if cls is None:
                raise ConfigError(f"{path}: embeddings.{tier}.runner: unknown embedding runner {placement.runner!r}; "
                                  f"use one of: {', '.join(sorted(BACKENDS))}")
            options = validate_model(placement.options, cls.Options, source=f"{path}: embeddings.{tier}")
            self.models[tier] = cls(tier, placement, options, str(path))

    def get(self, tier: int) -> EmbeddingModel:
        model = self.models.get(tier)
        if model is None:
            raise TierUnavailable(f"tier {tier} has no embedding model in profile {self.profile_name!r}; add an "
                                  f"`embeddings.{tier}` entry (runner: minilm, llamacpp, vllm or hosted) to the profile")
        return model
