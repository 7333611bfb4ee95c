"""Server settings: where the configuration lives and the limits the HTTP layer enforces."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hardware.extras import require_extra
from tiers.routing import DEFAULT_ROUTING


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")  # --workers passes it on as JSON
    host: str = Field(default="127.0.0.1", description="address to bind")
    port: int = Field(default=8080, ge=0, le=65535, description="0 picks a free port")
    profile: str = Field(default="workstation", description="hardware profile name or path")
    routing: Path = Field(default=DEFAULT_ROUTING, description="routing table YAML")
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="larger request bodies get 413")
    log_level: str = Field(default="info")
    data_dir: Path = Field(default=Path(".data"), description="ledger database and spool live here")
    ledger_url: str | None = Field(
        default=None, description="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db; default SQLite in data_dir"
    )
    cache_backend: Literal["memory", "redis"] | None = Field(
        default=None, description="redis: shared by replicas; default redis when redis_url is given, else memory")
    redis_url: str | None = Field(default=None, description=(
        "redis://host:port/db shared by gateway replicas: client keys' rate limits and spend caps, feature budgets, "
        "reload announcements and (by default) the semantic cache"))
    cache_embedder: str = Field(default="minilm", description="minilm or llamacpp")
    cache_embedder_model: str | None = Field(
        default=None, description="llamacpp embedder: a catalog GGUF; default the model Tier 3 serves at start")
    cache_max_entries: int = Field(default=100_000, ge=1, description="entries over the whole cache, every feature")
    cache_max_bytes: int = Field(default=256 << 20, ge=1 << 20, description="bytes over the whole cache, every feature")
    keys: Path | None = Field(default=None, description="client keys YAML; none means keyless, loopback only")
    max_messages: int = Field(default=256, ge=1, description="longer conversations get 400")
    default_max_tokens: int = Field(
        default=512, ge=1, le=32_768,
        description="max_tokens for requests that set none and whose feature sets none; no answer runs to the end "
                    "of the context by surprise")
    reload_interval_s: float = Field(default=1.0, ge=0,
                                     description="how often to check the routing and profile files; 0 = never")
    workers: int = Field(default=1, ge=1, le=64, description=(
        "gateway processes on one port (tiers/workers.py): every tier out of process and redis_url needed"))

    @model_validator(mode="after")
    def _redis_needs_url(self) -> Settings:
        if self.cache_backend == "redis" and not self.redis_url:
            raise ValueError("cache_backend redis needs redis_url (e.g. redis://127.0.0.1:6379/0)")
        if self.cache_backend is None:
            self.cache_backend = "redis" if self.redis_url else "memory"
        if self.cache_backend == "redis" or self.redis_url:
            require_extra("redis", "redis", "--cache-backend redis" if self.cache_backend == "redis" else "--redis-url")
        if self.cache_embedder_model and self.cache_embedder != "llamacpp":
            raise ValueError("cache_embedder_model is for cache_embedder llamacpp; minilm ships its own model")
        return self

    def ledger_database_url(self) -> str:
        return self.ledger_url or f"sqlite:///{(self.data_dir / 'ledger.db').resolve()}"
