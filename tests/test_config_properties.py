"""Property tests: any YAML at all either loads into a valid configuration or fails with a ConfigError."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardware.config import load_yaml_model
from hardware.errors import ConfigError
from hardware.profile import Profile
from tiers.auth import KeysFile
from tiers.routing import RoutingTable

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10), st.floats(allow_nan=False, width=32),
                    st.sampled_from(["1", "risk", "revenue", "llamacpp", "cpu", "*", "a" * 70]), st.text(max_size=8))
keys = st.sampled_from(["features", "tier", "value", "owner", "failure_cost_usd", "gate", "fallback", "escalate_to",
                        "tiers", "devices", "runner", "model", "kind", "keys", "id", "sha256", "cache", "budget",
                        "default_feature", "x", "3", "1"])
documents = st.recursive(scalars, lambda children: st.one_of(st.lists(children, max_size=4),
                                                             st.dictionaries(st.one_of(keys, st.integers(1, 3)),
                                                                             children, max_size=5)), max_leaves=25)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=documents)
def test_any_yaml_loads_or_raises_a_config_error_naming_the_file(tmp_path, document):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    for model in (RoutingTable, Profile, KeysFile):
        try:
            load_yaml_model(path, model)
        except ConfigError as exc:
            assert str(path) in str(exc)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_any_text_file_loads_or_raises_a_config_error(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    try:
        load_yaml_model(path, RoutingTable)
    except ConfigError as exc:
        assert str(path) in str(exc)
