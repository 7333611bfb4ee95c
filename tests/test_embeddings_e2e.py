"""POST /v1/embeddings through the real server with real embedding models (MiniLM from its wheel, SmolLM2's GGUF in
llama.cpp's embedding mode, and an OpenAI-protocol upstream), driven by the openai SDK; bodies validated against
OpenAI's OpenAPI document; rows in the ledger, tokens in the metrics."""

from __future__ import annotations

import base64
import sys

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hardware.errors import ConfigError
from hardware.profile import load_profile
from tests.conftest import ChildProcess, free_port
from tests.ledger_reader import ledger_rows
from tests.openai_schema import validate
from tiers.embedding_models import EmbeddingModels

PORT = free_port()
PROFILE = f"""devices: {{cpu: {{kind: cpu}}}}
tiers:
  3: {{runner: llamacpp, device: cpu, model: smollm2-135m-instruct-q4_1}}
embeddings:
  3: {{runner: minilm, price: {{input_per_m: 2.0}}}}
  2: {{runner: llamacpp, model: smollm2-135m-instruct-q4_1}}
  1: {{runner: hosted, model: "tier:3", base_url: "http://127.0.0.1:{PORT}/v1", api_key_env: null}}
"""
ROUTING = """features:
  search: {tier: 3, value: internal, owner: t, failure_cost_usd: 0}
  archive: {tier: 1, value: internal, owner: t, failure_cost_usd: 0}
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """Tier 1's hosted embeddings are this same gateway's Tier 3 (MiniLM), reached over HTTP as any upstream."""
    root = tmp_path_factory.mktemp("embeddings")
    (root / "profile.yaml").write_text(PROFILE)
    (root / "routing.yaml").write_text(ROUTING)
    proc = ChildProcess([sys.executable, "-m", "tiers", "serve", "--port", str(PORT), "--data-dir", str(root / "data"),
                         "--profile", str(root / "profile.yaml"), "--routing", str(root / "routing.yaml")],
                        port=PORT, log_path=root / "server.log")
    proc.data_dir = root / "data"
    proc.wait_ready()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(gateway):
    from openai import OpenAI

    return OpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused-on-loopback", max_retries=0)


def post(server, body) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/embeddings", json=body, timeout=120)


def cosine(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_minilm_vectors_tokens_and_the_openapi_shape(gateway, client):
    raw = client.embeddings.with_raw_response.create(model="feature:search", input="hello world",
                                                     encoding_format="float")
    body = raw.http_response.json()
    validate(body, "CreateEmbeddingResponse")
    assert raw.headers["x-tier"] == "3" and raw.headers["x-model"] == "all-minilm-l6-v2"
    vector = body["data"][0]["embedding"]
    assert len(vector) == 384 and abs(np.linalg.norm(vector) - 1) < 1e-4
    assert body["usage"] == {"prompt_tokens": 4, "total_tokens": 4}  # [CLS] hello world [SEP]
    row = next(r for r in ledger_rows(gateway) if r["request_id"] == raw.headers["x-request-id"])
    assert row["api"] == "embeddings" and row["feature"] == "search" and row["prompt_tokens"] == 4
    assert row["cost_usd"] == pytest.approx(4 * 2.0 / 1e6)
    metrics = httpx.get(f"{gateway.base_url}/metrics").text
    tokens = {tuple(s.labels.get(k) for k in ("feature", "kind")): s.value
              for f in text_string_to_metric_families(metrics) for s in f.samples if s.name == "tier_tokens_total"}
    assert tokens[("search", "prompt")] >= 4


def test_the_x_feature_header_routes_any_model_name(gateway):
    response = httpx.post(f"{gateway.base_url}/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"},
                          headers={"x-feature": "archive"}, timeout=60)
    assert response.status_code == 200 and response.headers["x-feature"] == "feature:archive"
    assert response.headers["x-tier"] == "1"


def test_a_batch_keeps_its_order_and_its_meaning(client):
    answer = client.embeddings.create(model="feature:search", input=["a cat", "a kitten", "the stock market fell"])
    cat, kitten, stocks = (d.embedding for d in sorted(answer.data, key=lambda d: d.index))
    assert cosine(cat, kitten) > cosine(cat, stocks) + 0.2
    assert answer.usage.prompt_tokens == 4 + 4 + 6


def test_base64_is_the_same_float32_vector(gateway, client):
    floats = post(gateway, {"model": "tier:3", "input": "hello world"}).json()["data"][0]["embedding"]
    encoded = post(gateway, {"model": "tier:3", "input": "hello world", "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(encoded["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, floats, atol=1e-6)
    sdk = client.embeddings.create(model="tier:3", input="hello world")  # the SDK asks for base64 and decodes it
    assert np.allclose(sdk.data[0].embedding, floats, atol=1e-6)


def test_token_arrays_are_the_models_own_tokens(gateway):
    text = post(gateway, {"model": "tier:3", "input": "hello world"}).json()
    ids = post(gateway, {"model": "tier:3", "input": [101, 7592, 2088, 102]}).json()  # bert-base-uncased ids
    assert np.allclose(ids["data"][0]["embedding"], text["data"][0]["embedding"], atol=1e-5)
    both = post(gateway, {"model": "tier:3", "input": [[101, 7592, 102], [101, 2088, 102]]}).json()
    assert len(both["data"]) == 2 and both["usage"]["prompt_tokens"] == 6


def test_a_gguf_in_llama_cpp_embedding_mode(gateway):
    body = post(gateway, {"model": "tier:2", "input": ["a cat", "a kitten"]}).json()
    assert body["model"] == "smollm2-135m-instruct-q4_1"
    assert [len(d["embedding"]) for d in body["data"]] == [576, 576]  # SmolLM2-135M's hidden size
    assert body["usage"]["prompt_tokens"] >= 4


def test_a_hosted_openai_protocol_upstream_gets_texts_tokens_and_dimensions(gateway):
    here = post(gateway, {"model": "tier:3", "input": "hello world"}).json()
    hosted = post(gateway, {"model": "feature:archive", "input": "hello world"})
    assert hosted.headers["x-tier"] == "1"
    assert np.allclose(hosted.json()["data"][0]["embedding"], here["data"][0]["embedding"], atol=1e-6)
    assert hosted.json()["usage"]["prompt_tokens"] == 4  # the upstream's count
    refused = post(gateway, {"model": "feature:archive", "input": "hello world", "dimensions": 64})
    assert refused.status_code == 400 and "cannot shorten" in refused.json()["error"]["message"]


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"model": "tier:3", "input": []}, 400, "input"),
    ({"model": "tier:3", "input": ["ok", ""]}, 400, "input"),
    ({"model": "tier:3", "input": "word " * 300}, 400, "input"),
    ({"model": "tier:3", "input": "x", "dimensions": 128}, 400, "dimensions"),
    ({"model": "tier:3", "input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
    ({"model": "tier:3", "input": "x", "extra": 1}, 400, "extra"),
    ({"input": "x"}, 400, "model"),
    ({"model": "feature:nope", "input": "x"}, 404, "model"),
])
def test_bad_input_is_a_clear_error_and_leaves_only_an_error_row(gateway, body, status, param):
    response = post(gateway, body)
    assert response.status_code == status, response.text
    validate(response.json(), "ErrorResponse")
    assert response.json()["error"]["param"] == param
    assert post(gateway, {"model": "tier:3", "input": "still serving"}).status_code == 200


def test_a_tier_without_an_embedding_model_names_the_profile_key(server):
    response = post(server, {"model": "tier:3", "input": "x"})
    assert response.status_code == 503
    assert "embeddings.3" in response.json()["error"]["message"]


def test_the_profile_section_is_validated_with_file_key_and_fix(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("tiers:\n  3: {runner: llamacpp, model: smollm2-135m-instruct-q4_1}\n"
                    "embeddings:\n  3: {runner: fasttext}\n  2: {runner: vllm, model: m}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: embeddings.3.runner: unknown embedding runner 'fasttext'; use one"):
        EmbeddingModels(*reversed(load_profile(path)))
    path.write_text("tiers:\n  3: {runner: llamacpp, model: smollm2-135m-instruct-q4_1}\n"
                    "embeddings:\n  2: {runner: vllm, model: m, urll: 'http://x'}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: embeddings.2: .*urll: unknown key"):
        EmbeddingModels(*reversed(load_profile(path)))
