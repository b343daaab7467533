"""Routes: the fixtures filtered into the right routes, each event to every route it matches."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from relay.events import category_of
from relay.rename import snake_case
from relay.router import CompiledRoute, RouteConfig
from relay.schema import build
from relay.sources.statsig_webhook import normalise_export
from tests.conftest import fixture_json


def route(to_statsig: bool = True, **spec: Any) -> CompiledRoute:
    data = {"name": "r", "from": ["statsig"], "to": "t", **spec}
    return CompiledRoute(build(RouteConfig, data, "routes[0]"), lambda _: True, to_statsig)


def export_batch() -> list[dict[str, Any]]:
    events = fixture_json("statsig_export_batch.json")
    events += fixture_json("statsig_config_changes.json")["data"]
    events += [{"eventName": "statsig::diagnostics", "metadata": {"x": {"nested": 1}}}]
    for event in events:
        assert normalise_export(event, 0) is None
    return events


def names(events: list[dict[str, Any]]) -> list[str]:
    return [e["eventName"] for e in events]


@pytest.mark.parametrize(
    ("name", "category"),
    [
        ("statsig::gate_exposure", "gate_exposure"),
        ("statsig::config_exposure", "config_exposure"),
        ("statsig::experiment_exposure", "experiment_exposure"),
        ("statsig::layer_exposure", "layer_exposure"),
        ("statsig::config_change", "config_change"),
        ("statsig::diagnostics", "statsig_internal"),
        ("page_view", "custom"),
    ],
)
def test_category_table(name: str, category: str) -> None:
    assert category_of(name) == category


def test_categories_filter() -> None:
    selected, filtered, _ = route(
        filter={"categories": ["gate_exposure", "experiment_exposure"]}
    ).select(export_batch())
    assert names(selected) == ["statsig::gate_exposure", "statsig::experiment_exposure"]
    assert filtered == 6


def test_event_globs_include_and_exclude() -> None:
    selected, _, _ = route(
        filter={"events": ["statsig::*"], "exclude_events": ["statsig::config_*", "*diagnostics"]}
    ).select(export_batch())
    assert names(selected) == ["statsig::gate_exposure", "statsig::experiment_exposure"]
    selected, _, _ = route(
        filter={"exclude_categories": ["statsig_internal", "config_change"]}
    ).select(export_batch())
    assert names(selected) == [
        "page_view",
        "statsig::gate_exposure",
        "statsig::config_exposure",
        "statsig::experiment_exposure",
        "my_custom_event",
    ]


def test_where_equality_and_membership_on_dotted_fields() -> None:
    events = export_batch()
    selected, _, _ = route(filter={"where": {"metadata.config": "an_experiment"}}).select(events)
    assert names(selected) == ["statsig::experiment_exposure"]
    selected, _, _ = route(filter={"where": {"user.country": ["US", "CA"]}}).select(events)
    assert names(selected) == [
        "page_view",
        "statsig::gate_exposure",
        "statsig::experiment_exposure",
    ]
    # YAML booleans match the string values Statsig sends.
    selected, _, _ = route(filter={"where": {"metadata.gateValue": True}}).select(events)
    assert names(selected) == ["statsig::gate_exposure"]
    selected, _, _ = route(
        filter={"where": {"metadata.type": "Gate", "metadata.action": "created"}}
    ).select(events)
    assert [e["metadata"]["name"] for e in selected] == ["layout_v2"]


def test_an_event_goes_to_every_route_it_matches_and_renames_stay_per_route() -> None:
    events = export_batch()
    everything = route()
    exposures = route(
        filter={"categories": ["gate_exposure"]}, rename={"statsig::gate_exposure": "gate_seen"}
    )
    all_events, _, _ = everything.select(events)
    gates, _, _ = exposures.select(events)
    assert len(all_events) == len(events)
    assert names(gates) == ["gate_seen"]
    # The rename is a copy: the other route still sees the original name.
    assert "statsig::gate_exposure" in names(all_events)
    assert orjson.dumps(all_events)  # still plain, serialisable dicts


def test_rename_presets_and_snake_case() -> None:
    events = [{"eventName": n} for n in ["Order Completed", "page", "Cart Viewed", "checkoutStep"]]
    selected, _, _ = route(rename="retail").select(events)
    assert names(selected) == ["purchase", "page_view", "Cart Viewed", "checkoutStep"]
    selected, _, _ = route(
        rename={"preset": "default", "snake_case": True, "map": {"Cart Viewed": "view_cart"}}
    ).select(events)
    assert names(selected) == ["order_completed", "page_view", "view_cart", "checkout_step"]
    assert snake_case("Products  Searched!") == "products_searched"


def test_target_that_refuses_a_category_gets_none_of_it() -> None:
    config = build(RouteConfig, {"name": "r", "from": ["s"], "to": "t"}, "routes[0]")
    only_changes = CompiledRoute(config, lambda category: category == "config_change")
    selected, filtered, unsupported = only_changes.select(export_batch())
    assert {e["eventName"] for e in selected} == {"statsig::config_change"}
    assert (filtered, unsupported) == (0, 6)


def test_internal_events_go_to_other_targets_only_when_the_route_names_them() -> None:
    events = export_batch()
    internal = [n for n in names(events) if category_of(n) == "statsig_internal"]
    assert internal == ["statsig::diagnostics"]
    everything, _, dropped = route(to_statsig=False).select(events)
    assert "statsig::diagnostics" not in names(everything) and dropped == 1
    assert len(everything) == len(events) - 1
    for named in (
        {"categories": ["statsig_internal"]},
        {"events": ["statsig::diagnostics", "page_view"]},
    ):
        chosen, _, dropped = route(to_statsig=False, filter=named).select(events)
        assert "statsig::diagnostics" in names(chosen) and dropped == 0, named
    # a glob names no internal event: "statsig::*" means the exposures
    globbed, _, dropped = route(to_statsig=False, filter={"events": ["statsig::*"]}).select(events)
    assert "statsig::diagnostics" not in names(globbed) and dropped == 1
    assert "statsig::gate_exposure" in names(globbed)
