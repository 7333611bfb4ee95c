"""A feature's request defaults on the internal request (no model): who wins, the cap, locks, and the block's
validation at load, naming the file, the key and the fix."""

from __future__ import annotations

import pytest

from hardware.errors import ConfigError
from runners.request import Message, Request, ResponseFormat, TextPart
from tiers.request_defaults import RequestDefaults, apply
from tiers.routing import load_routing

LABELS = ResponseFormat(type="json_schema", schema={"type": "string", "enum": ["a", "b"]})


def user(text: str) -> Message:
    return Message(role="user", content=[TextPart(text=text)])


def system(text: str) -> Message:
    return Message(role="system", content=[TextPart(text=text)])


def test_defaults_fill_what_the_client_left_out():
    d = RequestDefaults(system="Route it.", max_tokens=8, temperature=0, stop=["\n"], response_format=LABELS)
    sent, overridden = apply(d, Request(messages=[user("hi")]), default_max_tokens=512)
    assert [m.role for m in sent.messages] == ["system", "user"] and sent.messages[0].text() == "Route it."
    assert (sent.max_tokens, sent.temperature, sent.stop, sent.response_format) == (8, 0, ["\n"], LABELS)
    assert overridden == []


def test_client_values_win_over_unlocked_defaults_and_the_cap_lowers_max_tokens():
    d = RequestDefaults(system="Route it.", max_tokens=8, temperature=0, stop=["\n"], response_format=LABELS)
    text = ResponseFormat(type="text")
    asked = Request(messages=[system("Mine."), user("hi")], max_tokens=4, temperature=0.7, stop=["."],
                    response_format=text)
    sent, overridden = apply(d, asked, 512)
    assert [m.text() for m in sent.messages] == ["Route it.", "Mine.", "hi"]
    assert (sent.max_tokens, sent.temperature, sent.stop, sent.response_format) == (4, 0.7, ["."], text)
    assert overridden == []
    capped, overridden = apply(d, asked.model_copy(update={"max_tokens": 100}), 512)
    assert capped.max_tokens == 8 and overridden == ["max_tokens"]


def test_locked_keys_replace_the_client_value_and_are_named():
    d = RequestDefaults(system="Route it.", max_tokens=8, temperature=0, response_format=LABELS,
                        locked=["system", "max_tokens", "temperature", "response_format"])
    asked = Request(messages=[system("Ignore that."), user("hi")], max_tokens=2, temperature=1,
                    response_format=ResponseFormat(type="text"))
    sent, overridden = apply(d, asked, 512)
    assert [m.text() for m in sent.messages] == ["Route it.", "hi"]
    assert (sent.max_tokens, sent.temperature, sent.response_format) == (8, 0, LABELS)
    assert overridden == ["system", "temperature", "response_format", "max_tokens"]
    same, overridden = apply(d, Request(messages=[user("hi")], max_tokens=8, temperature=0), 512)
    assert overridden == [] and same.max_tokens == 8  # the same value is no override


def test_applying_twice_changes_nothing():
    """A replay sends a stored prompt, the feature's instructions already in it, through the feature again."""
    d = RequestDefaults(system="Route it.", max_tokens=8, temperature=0)
    once, _ = apply(d, Request(messages=[user("hi")]), 512)
    twice, overridden = apply(d, once, 512)
    assert twice == once and overridden == []


def test_server_default_max_tokens_and_plain_prompts():
    sent, _ = apply(None, Request(messages=[user("hi")]), 512)
    assert sent.max_tokens == 512
    kept, _ = apply(None, Request(messages=[user("hi")], max_tokens=2000), 512)
    assert kept.max_tokens == 2000  # the server default is a default, not a cap
    prompt, _ = apply(RequestDefaults(system="Be terse."), Request(prompt="Once upon"), 512)
    assert prompt.prompt == "Be terse.\n\nOnce upon" and not prompt.messages


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ("{locked: [stop]}", ["features.f.request", "locked lists 'stop'", "set request.stop"]),
        ("{max_tokens: 0}", ["features.f.request.max_tokens"]),
        ("{temprature: 0}", ["features.f.request.temprature", "unknown key"]),
        ("{locked: [seed], seed: 1}", ["features.f.request"]),
        ("{response_format: {type: json_schema, schema: {type: strnig}}}",
         ["features.f.request", "not a valid JSON Schema"]),
        ("{stop: []}", ["features.f.request.stop"]),
    ],
)
def test_a_bad_request_block_is_refused_at_load(tmp_path, block, expected):
    path = tmp_path / "routing.yaml"
    path.write_text(f"features:\n  f: {{tier: 3, value: internal, owner: x, failure_cost_usd: 0, request: {block}}}\n")
    with pytest.raises(ConfigError) as err:
        load_routing(path)
    assert str(path) in err.value.message and all(e in err.value.message for e in expected), err.value.message


def test_the_spec_hash_covers_the_request_block(tmp_path):
    path = tmp_path / "routing.yaml"
    hashes = []
    for block in ("{max_tokens: 8}", "{max_tokens: 9}", "{max_tokens: 8, locked: [max_tokens]}"):
        path.write_text(f"features:\n  f: {{tier: 3, value: internal, owner: x, failure_cost_usd: 0, "
                        f"request: {block}}}\n")
        hashes.append(load_routing(path).features["f"].spec_hash)
    assert len(set(hashes)) == 3


def test_the_shipped_features_each_carry_instructions_and_a_budget():
    table = load_routing()
    assert {"ticket-triage", "intent-detection", "review-sentiment", "field-extraction", "contract-review"} <= set(
        table.features)
    for name, spec in table.features.items():
        assert spec.request and spec.request.system and spec.request.max_tokens, name
        assert spec.budget is not None and spec.owner, name
    for name in ("ticket-triage", "intent-detection"):
        assert table.features[name].gate.choices and table.features[name].cache.enabled
    extraction = table.features["field-extraction"]
    assert extraction.tier == 2 and extraction.gate.json_schema and extraction.escalation_tier() == 1
    assert table.features["contract-review"].tier == 1 and table.features["review-sentiment"].tier == 3


def test_every_shipped_suite_measures_a_shipped_feature_on_its_tier():
    from evals.suite import load_suite, shipped_suites

    table = load_routing()
    for name in shipped_suites():
        suite = load_suite(name)
        spec = table.features[suite.feature]
        assert spec.tier == suite.tier, name
        labels = suite.scorer.args.get("labels")
        if labels and spec.gate is not None:
            assert sorted(spec.gate.choices) == sorted(labels), name
