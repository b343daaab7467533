"""Mapping third-party events to Statsig: the shared helpers and the Segment message mapping."""

from __future__ import annotations

from typing import Any

import pytest

from relay.config import parse_config
from relay.events import to_epoch_ms
from relay.mapping import (
    apply_user_mapping,
    compile_user_mapping,
    has_user_id,
    numeric_value,
    skew_corrected_ms,
    string_map,
)
from relay.rename import compile_rename
from relay.router import CompiledRoute
from relay.schema import ConfigError, build
from relay.sources.segment import SegmentConfig, SegmentSource
from tests.conftest import fixture_json

RECEIVED = 1_717_628_500_000  # 2024-06-05T23:01:40Z


def segment(**config: Any) -> SegmentSource:
    return SegmentSource("segment", build(SegmentConfig, {"type": "segment", **config}))


def test_fixture_track_with_the_retail_route_is_exactly_the_expected_statsig_event() -> None:
    batch = fixture_json("segment_batch.json")
    expected = fixture_json("expected_statsig_log_event.json")["events"][0]
    parsed = segment().parse_document(batch, "batch", RECEIVED)
    assert parsed.error_count == 0
    assert parsed.dropped == {"identify": 1}
    # The route's rename (rename: retail) is what names it "purchase".
    config = parse_config(
        "sources: {web: {type: segment}}\n"
        "targets: {out: {type: webhook, url: 'http://127.0.0.1:1/x'}}\n"
        "routes: [{name: web, from: web, to: out, rename: retail}]\n",
        env={},
    )
    route = CompiledRoute(config.routes[0], lambda category: True)
    selected, filtered, _ = route.select(parsed.events)
    assert filtered == 0
    track = selected[0]
    # The statsig target writes `timestamp` as `time`; everything else is the internal event.
    internal = {k: v for k, v in expected.items() if k != "time"}
    internal["timestamp"] = expected["time"]
    internal["userID"] = "user-123"
    assert track == internal
    assert track["value"] == 89.99
    assert track["timestamp"] == 1717628400000
    assert "revenue" not in track["metadata"]


def test_fixture_page_becomes_page_view_with_its_name_in_metadata() -> None:
    parsed = segment().parse_document(fixture_json("segment_batch.json"), "batch", RECEIVED)
    page = parsed.events[1]
    assert page["eventName"] == "page"
    retail = compile_rename("retail")
    assert retail is not None and retail(page["eventName"]) == "page_view"
    assert page["metadata"] == {"path": "/", "title": "Home", "name": "Home"}
    assert page["user"] == {"customIDs": {"stableID": "a1b2c3d4-0000-4000-8000-000000000001"}}
    assert "userID" not in page
    assert page["timestamp"] == to_epoch_ms("2024-06-05T22:59:58.500Z")
    assert parsed.dedup_keys == ["msg-0001", "msg-0002"]


def test_properties_become_string_metadata() -> None:
    props = {
        "n": 3,
        "f": 2.5,
        "whole": 4.0,
        "yes": True,
        "no": False,
        "nested": {"a": [1, "x"]},
        "list": [1, 2],
        "text": "t",
        "gone": None,
        "revenue": 9,
    }
    assert string_map(props, skip="revenue") == {
        "n": "3",
        "f": "2.5",
        "whole": "4",
        "yes": "true",
        "no": "false",
        "nested": '{"a":[1,"x"]}',
        "list": "[1,2]",
        "text": "t",
    }


@pytest.mark.parametrize(
    ("raw", "number"),
    [
        (89.99, 89.99),
        (3, 3),
        ("12.5", 12.5),
        (" 7 ", 7),
        ("abc", None),
        (True, None),
        (None, None),
        ({"x": 1}, None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_numeric_value(raw: Any, number: Any) -> None:
    assert numeric_value(raw) == number


@pytest.mark.parametrize(
    ("raw", "ms"),
    [
        ("2024-06-05T23:00:00.000Z", 1717628400000),
        ("2024-06-05T23:00:00Z", 1717628400000),
        ("2024-06-06T01:00:00+02:00", 1717628400000),
        ("2024-06-05T17:30:00.000-05:30", 1717628400000),
        ("2024-06-05T23:00:00", 1717628400000),  # no offset: UTC
        (1717628400, 1717628400000),  # seconds
        (1717628400.25, 1717628400250),
        (1717628400000, 1717628400000),  # ms
        ("1717628400000", 1717628400000),
        (1717628400000000, 1717628400000),  # µs
        (1717628400000000000, 1717628400000),  # ns
    ],
)
def test_timestamps_in_every_documented_form(raw: Any, ms: int) -> None:
    assert to_epoch_ms(raw) == ms


def test_skew_correction_takes_the_clients_delay_back_from_our_clock() -> None:
    # The client's clock is an hour fast: it says it sent at 13:00:05 an event of 13:00:00.
    original, sent_at = "2024-06-05T13:00:00Z", "2024-06-05T13:00:05Z"
    received = to_epoch_ms("2024-06-05T12:00:07Z")
    assert skew_corrected_ms(original, sent_at, received) == to_epoch_ms("2024-06-05T12:00:02Z")
    assert skew_corrected_ms(original, None, received) == to_epoch_ms(original)
    assert skew_corrected_ms(original, "garbage", received) == to_epoch_ms(original)
    with pytest.raises(ValueError):
        skew_corrected_ms("yesterday", sent_at, received)


def test_segment_timestamp_rules() -> None:
    source = segment()
    received = to_epoch_ms("2024-06-05T12:00:07Z")
    base = {"type": "track", "event": "E", "userId": "u"}
    batch = {
        "sentAt": "2024-06-05T13:00:05Z",  # batch-level sentAt
        "batch": [
            {
                **base,
                "timestamp": "2024-06-05T13:00:00Z",
                "originalTimestamp": "2024-01-01T00:00:00Z",
            },  # explicit timestamp wins
            {**base, "originalTimestamp": "2024-06-05T13:00:00Z"},  # skew from batch sentAt
            {
                **base,
                "originalTimestamp": "2024-06-05T13:00:00Z",
                "sentAt": "2024-06-05T13:00:01Z",
            },  # the message's own sentAt wins
            base,  # neither: the receive time
            {**base, "timestamp": 1717589000},  # epoch seconds
            {**base, "timestamp": "not a time"},
        ],
    }
    parsed = source.parse_document(batch, "batch", received)
    assert [e["timestamp"] for e in parsed.events] == [
        to_epoch_ms("2024-06-05T13:00:00Z"),
        to_epoch_ms("2024-06-05T12:00:02Z"),
        to_epoch_ms("2024-06-05T12:00:06Z"),
        received,
        1717589000000,
    ]
    assert parsed.error_count == 1
    assert "not epoch time or ISO 8601" in parsed.errors[0]


def test_user_identity_consent_and_extra_user_mapping() -> None:
    source = segment(
        user_mapping={
            "custom.plan": "context.traits.plan",
            "customIDs.companyID": "properties.company_id",
        }
    )
    message = {
        "type": "track",
        "event": "Signed Up",
        "userId": 42,
        "anonymousId": "anon",
        "properties": {"company_id": 7, "revenue": "n/a"},
        "context": {
            "traits": {"plan": "pro", "email": "a@example.com"},
            "consent": {"categoryPreferences": {"marketing": False}},
        },
    }
    event = source.to_event(message, "track", None, RECEIVED)
    assert isinstance(event, dict)
    assert event["userID"] == "42"
    assert event["user"] == {
        "userID": "42",
        "email": "a@example.com",
        "customIDs": {"stableID": "anon", "companyID": "7"},
        "custom": {"marketing_consent": "denied", "plan": "pro"},
    }
    assert "value" not in event  # "n/a" is no number: it stays in metadata
    assert event["metadata"] == {"company_id": "7", "revenue": "n/a"}


def test_source_level_rename_accepts_the_route_forms() -> None:
    message = {"type": "track", "event": "Order Completed", "userId": "u"}
    for setting, name in [
        ("retail", "purchase"),
        ({"preset": "default", "snake_case": True}, "order_completed"),
        ({"Order Completed": "checkout_done"}, "checkout_done"),
    ]:
        event = segment(rename=setting).to_event(message, "track", None, RECEIVED)
        assert isinstance(event, dict)
        assert event["eventName"] == name
    with pytest.raises(ConfigError) as err:
        parse_config("sources: {web: {type: segment, rename: retial}}\n", env={})
    assert err.value.path == "sources.web.rename"


def test_user_mapping_targets_are_checked_at_load() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(
            "sources: {web: {type: segment, user_mapping: {customID.x: traits.x}}}\n", env={}
        )
    assert err.value.path == "sources.web.user_mapping.customID.x"
    assert "not a Statsig user field" in str(err.value)


def test_apply_user_mapping_skips_missing_and_stringifies_ids() -> None:
    compiled = compile_user_mapping(
        {"userID": "id", "email": "mail", "customIDs.org": "org", "custom.tags": "tags"}, "m"
    )
    user: dict[str, Any] = {}
    apply_user_mapping(user, {"id": 12.0, "org": True, "tags": ["a"], "mail": ""}, compiled)
    assert user == {"userID": "12", "custom": {"tags": ["a"]}}
    assert has_user_id({"user": user})
    assert not has_user_id({"user": {"customIDs": {"stableID": ""}}})
    assert has_user_id({"user": {"customIDs": {"stableID": "s"}}})


def test_compile_rename_of_nothing_is_none() -> None:
    assert compile_rename(None) is None
