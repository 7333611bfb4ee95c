"""POST /v1/embeddings end to end, beside the generation path: the same route, keys and budgets, and one
ledger row (api=embeddings) per request through the same recorder, so metrics and spend see it too.

There is no cache, gate, cascade or fallback: an embedding is not checked, and a vector from another
model would not be comparable with the ones the client already has.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from hardware.errors import TierRunnerError
from runners.errors import InvalidRequest
from runners.wire import openai_embeddings as wire
from tiers.auth import Access
from tiers.embedding_models import EmbeddingModel, EmbeddingModels
from tiers.ledger.rows import rows_for_attempts
from tiers.live_config import LiveConfig
from tiers.recorder import Recorder
from tiers.routing import resolve_route
from tiers.serving import records
from tiers.serving.records import Call, Summary


@dataclass
class Embedded:
    vectors: list[list[float]]
    tokens: int
    model: EmbeddingModel
    headers: dict[str, str]


class EmbeddingService:
    def __init__(self, config: LiveConfig, recorder: Recorder, access: Access, models: EmbeddingModels):
        self.config, self.recorder, self.access, self.models = config, recorder, access, models

    async def embed(self, call: Call, batch: wire.Inputs, dimensions: int | None, summary: Summary) -> Embedded:
        started = time.perf_counter()
        routing = self.config.routing
        try:
            if not batch or len(batch) > wire.MAX_INPUTS or any(len(item) == 0 for item in batch):
                raise InvalidRequest(f"input: give 1 to {wire.MAX_INPUTS} non-empty texts or token arrays",
                                     param="input")
            route = resolve_route(routing, call.model, call.header_feature)
            summary.fields["feature"] = route.label
            model = self.models.get(route.tier)
            await self.access.admit(call.client_key, route)
            most = sum(len(item) for item in batch)  # a token is at least one character: an upper bound
            await self.recorder.admit(route, call.client_key, call.request_id, model.placement.price.cost_usd(most, 0))
            vectors, tokens = await model.embed(batch, dimensions)
        except TierRunnerError as exc:
            row = records.failure_row(call, routing, summary.fields.get("feature"), exc,
                                      (time.perf_counter() - started) * 1000)
            self.recorder.record([row])
            summary.fields["error"] = row.error_type
            raise
        latency_ms = (time.perf_counter() - started) * 1000
        cost = model.placement.price.cost_usd(tokens, 0)
        fields = {"serving_tier": model.tier, "runner": model.kind, "model": model.model_name, "api": call.api,
                  "prompt_tokens": tokens, "completion_tokens": 0, "latency_ms": latency_ms, "cost_usd": cost,
                  "feature_spec": route.spec.spec_hash if route.spec is not None else None}
        self.recorder.record(rows_for_attempts(call.request_id, route.label, route.feature,
                                               route.tier if route.feature else None, [fields],
                                               client_key_id=call.client_key_id))
        self.access.charge(call.client_key, tokens)
        summary.fields.update(tier=model.tier, model=model.model_name, prompt_tokens=tokens,
                              runner_ms=round(latency_ms, 3))
        headers = {"x-tier": str(model.tier), "x-model": model.model_name, "x-feature": route.label,
                   "x-cost-usd": f"{cost:.8f}", "x-cache": "off"}
        return Embedded(vectors, tokens, model, headers)
