"""The llamacpp cache embedder embeds with the GGUF the profile's Tier 3 serves (or the catalog model named by
--cache-embedder-model), as the app builds it; a Tier 3 without a GGUF is a configuration error naming the fix."""

from __future__ import annotations

import numpy as np
import pytest

from hardware.catalog import load_catalog, resolve_model_file
from hardware.errors import ConfigError
from tiers.server import create_app
from tiers.settings import Settings

QWEN, SMOLLM = "qwen2.5-coder-0.5b-instruct-q4_k_m", "smollm2-135m-instruct-q4_1"


def profile(tmp_path, tier3: str) -> str:
    path = tmp_path / "profile.yaml"
    path.write_text(f"devices: {{cpu: {{kind: cpu}}}}\ntiers:\n  3: {tier3}\n")
    return str(path)


def test_the_llamacpp_embedder_uses_the_model_tier3_serves(tmp_path):
    """docs/cache.md: `llamacpp` embeds with the GGUF the profile's Tier 3 serves at start."""
    settings = Settings(profile=profile(tmp_path, f"{{runner: llamacpp, device: cpu, model: {QWEN}}}"),
                        cache_embedder="llamacpp", data_dir=tmp_path / "data")
    cache = create_app(settings).state.cache
    assert cache.embedder_model == resolve_model_file(QWEN, load_catalog())
    embedder = cache.embedder
    assert embedder.dim == 896  # Qwen2.5-0.5B's width; SmolLM2-135M's is 576
    reset, paraphrase, weather = embedder.embed(["How do I reset my password?", "How can I reset my password?",
                                                 "What is the weather in Paris?"])
    assert np.isclose(np.linalg.norm(reset), 1) and reset @ paraphrase > reset @ weather


def test_a_catalog_model_can_be_named_instead(tmp_path):
    settings = Settings(profile=profile(tmp_path, f"{{runner: llamacpp, device: cpu, model: {QWEN}}}"),
                        cache_embedder="llamacpp", cache_embedder_model=SMOLLM, data_dir=tmp_path / "data")
    assert create_app(settings).state.cache.embedder_model == resolve_model_file(SMOLLM, load_catalog())


def test_a_tier3_without_a_gguf_needs_a_named_model(tmp_path):
    hosted = "{runner: hosted, provider: openai, model: gpt-4o-mini, api_key_env: OPENAI_API_KEY}"
    settings = Settings(profile=profile(tmp_path, hosted), cache_embedder="llamacpp", data_dir=tmp_path / "data")
    with pytest.raises(ConfigError, match="--cache-embedder-model"):
        create_app(settings)
    with pytest.raises(ValueError, match="cache_embedder_model is for cache_embedder llamacpp"):
        Settings(cache_embedder_model=SMOLLM)
