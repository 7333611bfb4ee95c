"""How a request names its feature: model=feature:<name>, model=tier:<n>, X-Feature, default."""

import pytest

from runners.errors import InvalidRequest
from tiers.errors import NotFound
from tiers.routing import RoutingTable, resolve_route

TABLE = {
    "features": {
        "triage": {"tier": 3, "value": "retention", "owner": "support", "failure_cost_usd": 1},
        "contracts": {"tier": 1, "value": "risk", "owner": "legal", "failure_cost_usd": 500},
    }
}


def table(**extra) -> RoutingTable:
    return RoutingTable.model_validate({**TABLE, **extra})


def test_feature_in_model_field_picks_its_tier():
    route = resolve_route(table(), "feature:contracts", None)
    assert (route.tier, route.feature, route.label) == (1, "contracts", "feature:contracts")


def test_direct_tier_use_has_no_feature():
    route = resolve_route(table(), "tier:2", None)
    assert (route.tier, route.feature, route.label) == (2, None, "tier:2")


def test_header_names_the_feature_when_model_is_any_name():
    assert resolve_route(table(), "gpt-4o", "triage").feature == "triage"


def test_conflicting_model_and_header_is_a_client_error():
    with pytest.raises(InvalidRequest, match="X-Feature header names 'contracts'"):
        resolve_route(table(), "feature:triage", "contracts")


@pytest.mark.parametrize("model", ["feature:nope", "gpt-4o", "tier:7"])
def test_unknown_names_are_404_without_a_default(model):
    with pytest.raises(NotFound):
        resolve_route(table(), model, None)


def test_default_feature_serves_only_requests_that_name_no_feature():
    route = resolve_route(table(default_feature="triage"), "gpt-4o", None)
    assert (route.tier, route.feature) == (3, "triage")


@pytest.mark.parametrize(("model", "header"), [("feature:contrcts", None), ("gpt-4o", "contrcts")])
def test_a_misspelt_feature_is_a_404_naming_close_names_even_with_a_default(model, header):
    with pytest.raises(NotFound, match="did you mean feature:contracts"):
        resolve_route(table(default_feature="triage"), model, header)


def test_models_list_has_every_feature_and_tier():
    assert table().routable_names() == ["feature:triage", "feature:contracts", "tier:1", "tier:2", "tier:3"]


@pytest.mark.parametrize(("feature", "message"), [
    ({"tier": 2, "escalate_to": 1}, "escalate_to needs a gate"),
    ({"tier": 2, "escalate_to": 3, "gate": {"regex": "x"}}, "escalate_to must be a stronger tier"),
    ({"tier": 1, "fallback": [1]}, "fallback lists other tiers"),
])
def test_cascade_settings_are_checked_at_load(feature, message):
    base = {"value": "revenue", "owner": "ops", "failure_cost_usd": 1}
    with pytest.raises(ValueError, match=message):
        RoutingTable.model_validate({"features": {"f": {**base, **feature}}})


def test_gated_tier2_feature_escalates_to_tier1_by_default():
    base = {"value": "revenue", "owner": "ops", "failure_cost_usd": 1, "gate": {"regex": "x"}}
    table = RoutingTable.model_validate({"features": {"t2": {**base, "tier": 2}, "t3": {**base, "tier": 3,
                                                                                       "escalate_to": 2}}})
    assert table.features["t2"].escalation_tier() == 1
    assert table.features["t3"].escalation_tier() == 2
