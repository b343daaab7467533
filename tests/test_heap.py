"""Heap target: the real pipeline (Statsig webhook → router → spool → deliverer) against a fake
Heap that checks Heap's documented request shapes and limits."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from relay.config import parse_config
from relay.schema import ConfigError
from relay.targets.heap import HeapConfig, HeapTarget
from relay.targets.ratelimit import TokenBucket
from tests.conftest import RelayFactory, fixture_bytes, metric, post_export, wait_delivered
from tests.fakes import Answer, FakeTarget, RecordedRequest

APP_ID = "4242424242"
TRACK = "/api/track"
USERS = "/api/add_user_properties"
TRACK_KEYS = {"identity", "event", "timestamp", "properties", "idempotency_key"}


# -- helpers ---------------------------------------------------------------------------------


def check_properties(props: Any) -> None:
    assert isinstance(props, dict), f"properties must be an object, got {props!r}"
    for key, value in props.items():
        assert isinstance(key, str) and 0 < len(key) < 1024, f"bad property key {key[:40]!r}"
        if isinstance(value, str):
            assert len(value) < 1024, f"property {key[:40]!r} value is {len(value)} chars"
        else:
            assert isinstance(value, int | float) and not isinstance(value, bool), (
                f"property {key[:40]!r} must be a string or a number, got {value!r}"
            )


def heap_check(req: RecordedRequest) -> None:
    """What Heap's server-side API documents for bulk track and add_user_properties."""
    assert req.method == "POST", req.method
    assert req.headers.get("Content-Type", "").startswith("application/json")
    body = req.json
    assert isinstance(body, dict) and body.get("app_id") == APP_ID, "app_id missing or wrong"
    if req.path == TRACK:
        assert set(body) == {"app_id", "events"}, sorted(body)
        assert 1 <= len(body["events"]) <= 1000, f"{len(body['events'])} events"
        for event in body["events"]:
            assert set(event) <= TRACK_KEYS and {"identity", "event"} <= set(event), sorted(event)
            assert isinstance(event["identity"], str) and 0 < len(event["identity"]) <= 255
            assert isinstance(event["event"], str) and 0 < len(event["event"]) < 1024
            datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
            assert isinstance(event["idempotency_key"], str) and event["idempotency_key"]
            check_properties(event["properties"])
    elif req.path == USERS:
        assert set(body) == {"app_id", "users"}, sorted(body)
        assert 1 <= len(body["users"]) <= 1000, f"{len(body['users'])} users"
        for user in body["users"]:
            assert set(user) == {"identity", "properties"}, sorted(user)
            assert isinstance(user["identity"], str) and 0 < len(user["identity"]) <= 255
            check_properties(user["properties"])
            assert "id" not in {k.lower() for k in user["properties"]}, "no property named id"
    else:
        raise AssertionError(f"unexpected path {req.path}")


def config(heap_url: str, heap: str = "", route: str = "", source: str = "") -> str:
    return f"""
sources:
  statsig: {{type: statsig_webhook{source}}}
targets:
  heap: {{type: heap, app_id: "{APP_ID}", base_url: "{heap_url}", linger: 0s{heap}}}
routes:
  - {{name: to-heap, from: statsig, to: heap{route}}}
"""


def requests_to(fake: FakeTarget, path: str) -> list[RecordedRequest]:
    return [r for r in fake.requests if r.path == path]


def gate_exposure(
    user: str, gate: str, passed: bool, uuid: str, ts: int = 1_700_000_000_000
) -> dict:
    return {
        "eventName": "statsig::gate_exposure",
        "user": {"userID": user},
        "userID": user,
        "timestamp": ts,
        "value": "",
        "metadata": {"gate": gate, "gateValue": "true" if passed else "false", "ruleID": "r"},
        "timeUUID": uuid,
        "unitID": "userID",
    }


# -- mapping ---------------------------------------------------------------------------------


async def test_export_fixture_becomes_bulk_track_and_user_properties(
    relay_factory: RelayFactory,
) -> None:
    secret = "webhook-secret"
    async with FakeTarget(check=heap_check) as fake:
        relay = await relay_factory(
            config(fake.url, source=f", signing_secret: {secret}"), shutdown_grace="2s"
        )
        assert await post_export(relay, fixture_bytes("statsig_export_batch.json"), secret) == 200
        await wait_delivered(relay, "heap", 5)

    assert fake.failures == []
    (track,) = requests_to(fake, TRACK)
    events = track.json["events"]
    assert [e["event"] for e in events] == [
        "page_view",
        "statsig::gate_exposure",
        "statsig::config_exposure",
        "statsig::experiment_exposure",
        "my_custom_event",
    ]
    assert events[0] == {
        "identity": "user_1",
        "event": "page_view",
        "timestamp": "2022-02-10T19:16:06.967Z",
        "properties": {"page": "home_page", "value": "example_value"},
        "idempotency_key": "f4c414a0-8ab5-11ec-a8a3-0242ac120002",
    }
    # String timestamps in the export become the same ISO 8601 instant.
    assert events[2]["timestamp"] == "2022-06-14T18:27:33.265Z"
    assert events[3]["properties"]["experimentGroupName"] == "Control"
    assert events[4]["properties"] == {
        "key_a": "value_a",
        "key_b": "123",
        "value": "a_custom_value",
    }
    (users,) = requests_to(fake, USERS)
    assert users.json["users"] == [
        {
            "identity": "user_1",
            "properties": {
                "Statsig Gate: test_gate": "true",
                "Statsig Experiment: an_experiment": "Control",
            },
        }
    ]


async def test_signed_request_with_wrong_secret_sends_nothing(relay_factory: RelayFactory) -> None:
    async with FakeTarget(check=heap_check) as fake:
        relay = await relay_factory(
            config(fake.url, source=", signing_secret: right"), shutdown_grace="2s"
        )
        status = await post_export(relay, [gate_exposure("u", "g", True, "t1")], secret="wrong")
        assert status == 401
        assert metric(relay, "relay_events_routed_total", route="to-heap") == 0
    assert fake.requests == []


async def test_unit_id_picks_the_custom_id_named_by_unitID(relay_factory: RelayFactory) -> None:
    event = gate_exposure("user_9", "device_gate", False, "t-unit")
    event["unitID"] = "stableID"
    event["user"]["customIDs"] = {"stableID": "device-77"}
    async with FakeTarget(check=heap_check) as fake:
        relay = await relay_factory(config(fake.url), shutdown_grace="2s")
        await post_export(relay, [event])
        await wait_delivered(relay, "heap", 1)
    assert fake.failures == []
    assert requests_to(fake, TRACK)[0].json["events"][0]["identity"] == "device-77"
    assert requests_to(fake, USERS)[0].json["users"] == [
        {"identity": "device-77", "properties": {"Statsig Gate: device_gate": "false"}}
    ]


async def test_properties_are_flattened_and_cut_to_heap_limits(relay_factory: RelayFactory) -> None:
    event = {
        "eventName": "checkout",
        "userID": "u1",
        "timestamp": 1_700_000_000_123,
        "value": 12.5,
        "metadata": {
            "long": "x" * 5000,
            "k" * 2000: "long key",
            "nested": {"plan": "pro", "seats": 3},
            "items": ["a", "b"],
            "flag": True,
            "missing": None,
        },
        "timeUUID": "t-props",
    }
    async with FakeTarget(check=heap_check) as fake:
        relay = await relay_factory(config(fake.url), shutdown_grace="2s")
        await post_export(relay, [event])
        await wait_delivered(relay, "heap", 1)
    assert fake.failures == []
    props = requests_to(fake, TRACK)[0].json["events"][0]["properties"]
    assert props["long"] == "x" * 1023
    assert props["k" * 1023] == "long key"
    assert props["nested.plan"] == "pro" and props["nested.seats"] == 3  # numbers stay numbers
    assert props["items"] == "a||b" and props["flag"] == "true"
    assert props["value"] == 12.5 and "missing" not in props
    assert requests_to(fake, USERS) == []  # not an exposure: no user properties


async def test_events_without_any_id_are_dropped_and_counted_not_rejected(
    relay_factory: RelayFactory,
) -> None:
    anonymous = {"eventName": "view", "timestamp": 1_700_000_000_000, "user": {"country": "US"}}
    async with FakeTarget(check=heap_check) as fake:
        relay = await relay_factory(config(fake.url), shutdown_grace="2s")
        await post_export(
            relay, [anonymous, gate_exposure("u2", "g", True, "t-ok"), dict(anonymous)]
        )
        await wait_delivered(relay, "heap", 3)
        dropped = metric(
            relay, "relay_events_dropped_total", route="target:heap", reason="no_identity"
        )
        dead = metric(relay, "relay_dlq_events", target="heap")
    assert fake.failures == []
    assert dropped == 2 and dead == 0
    (track,) = requests_to(fake, TRACK)  # one request: no 4xx, no bisection
    assert [e["identity"] for e in track.json["events"]] == ["u2"]


async def test_user_properties_can_be_turned_off(relay_factory: RelayFactory) -> None:
    async with FakeTarget(check=heap_check) as fake:
        relay = await relay_factory(
            config(fake.url, heap=", user_properties: false"), shutdown_grace="2s"
        )
        await post_export(relay, [gate_exposure("u3", "g", True, "t-off")])
        await wait_delivered(relay, "heap", 1)
    assert [r.path for r in fake.requests] == [TRACK]


# -- batching, redelivery, retries -----------------------------------------------------------


async def test_1500_exposures_become_two_bulk_requests(relay_factory: RelayFactory) -> None:
    exposures = [gate_exposure(f"user-{i}", "big_gate", i % 2 == 0, f"t-{i}") for i in range(1500)]
    async with FakeTarget(check=heap_check) as fake:
        relay = await relay_factory(
            config(fake.url, heap=", rate_limit_per_minute: 1000000"), shutdown_grace="2s"
        )
        assert relay.targets["heap"].config.batch_max_events == 1000
        await post_export(relay, exposures)
        await wait_delivered(relay, "heap", 1500)
    assert fake.failures == []
    tracks = requests_to(fake, TRACK)
    assert [len(r.json["events"]) for r in tracks] == [1000, 500]
    keys = [e["idempotency_key"] for r in tracks for e in r.json["events"]]
    assert keys == [f"t-{i}" for i in range(1500)]
    users = requests_to(fake, USERS)
    assert [len(r.json["users"]) for r in users] == [1000, 500]
    assert users[1].json["users"][-1] == {
        "identity": "user-1499",
        "properties": {"Statsig Gate: big_gate": "false"},
    }


def test_batch_max_events_defaults_to_and_is_capped_at_1000() -> None:
    assert HeapConfig(app_id="1").batch_max_events == 1000
    with pytest.raises(ConfigError, match="batch_max_events: at most 1000"):
        HeapConfig(app_id="1", batch_max_events=1001)
    with pytest.raises(ConfigError, match="app_id"):
        HeapConfig(app_id=" ")


def test_region_picks_the_base_url() -> None:
    assert (
        HeapTarget("h", HeapConfig(app_id="1")).track_url == "https://heapanalytics.com/api/track"
    )
    eu = HeapTarget("h", HeapConfig(app_id="1", region="eu"))
    assert eu.track_url == "https://c.eu.heap-api.com/api/track"
    assert eu.users_url == "https://c.eu.heap-api.com/api/add_user_properties"
    local = HeapTarget("h", HeapConfig(app_id="1", region="eu", base_url="http://127.0.0.1:9/"))
    assert local.track_url == "http://127.0.0.1:9/api/track"
    with pytest.raises(ConfigError, match="region"):
        parse_config("targets: {h: {type: heap, app_id: '1', region: mars}}\nroutes: []\n", {})


async def test_redelivered_batch_repeats_the_idempotency_keys(relay_factory: RelayFactory) -> None:
    batch = [gate_exposure(f"u{i}", "g", True, f"redeliver-{i}") for i in range(3)]
    async with FakeTarget(check=heap_check) as fake:
        relay = await relay_factory(config(fake.url), shutdown_grace="2s")
        await post_export(relay, batch)
        await wait_delivered(relay, "heap", 3)
        await post_export(relay, batch)  # Statsig sends the same batch again
        await wait_delivered(relay, "heap", 6)
    first, second = (
        [e["idempotency_key"] for e in r.json["events"]] for r in requests_to(fake, TRACK)
    )
    assert first == second == ["redeliver-0", "redeliver-1", "redeliver-2"]


async def test_event_without_time_uuid_gets_a_stable_idempotency_key(
    relay_factory: RelayFactory,
) -> None:
    event = {"eventName": "signup", "userID": "u5", "timestamp": 1_700_000_000_000}
    async with FakeTarget(check=heap_check) as fake:
        relay = await relay_factory(config(fake.url), shutdown_grace="2s")
        await post_export(relay, [event])
        await post_export(relay, [dict(event)])
        await wait_delivered(relay, "heap", 2)
    first, second = (r.json["events"][0]["idempotency_key"] for r in requests_to(fake, TRACK))
    assert first == second and first.startswith("relay-")


async def test_redelivery_with_dedup_sends_nothing_new(relay_factory: RelayFactory) -> None:
    batch = [gate_exposure(f"u{i}", "g", True, f"dedup-{i}") for i in range(4)]
    async with FakeTarget(check=heap_check) as fake:
        relay = await relay_factory(config(fake.url, route=", dedup: true"), shutdown_grace="2s")
        await post_export(relay, batch)
        await wait_delivered(relay, "heap", 4)
        assert await post_export(relay, batch) == 200
        # Dropped at ingest, before the answer: the metric is already there.
        assert metric(relay, "relay_events_dropped_total", route="to-heap", reason="dedup") == 4
        await post_export(relay, [gate_exposure("marker", "g", True, "dedup-marker")])
        await wait_delivered(relay, "heap", 5)
    tracks = requests_to(fake, TRACK)
    assert [[e["idempotency_key"] for e in r.json["events"]] for r in tracks] == [
        [f"dedup-{i}" for i in range(4)],
        ["dedup-marker"],
    ]


def timed_heap_check(arrivals: list[float]) -> Callable[[RecordedRequest], None]:
    """heap_check, also noting when each request arrived."""

    def check(req: RecordedRequest) -> None:
        arrivals.append(time.monotonic())
        heap_check(req)

    return check


async def test_429_with_retry_after_is_honoured_then_delivered_once(
    relay_factory: RelayFactory,
) -> None:
    batch = [gate_exposure(f"u{i}", "g", True, f"limited-{i}") for i in range(2)]
    arrivals: list[float] = []
    async with FakeTarget(check=timed_heap_check(arrivals)) as fake:
        fake.script(Answer(429, headers={"Retry-After": "1"}, json={"error": "rate limited"}))
        relay = await relay_factory(config(fake.url), shutdown_grace="2s")
        await post_export(relay, batch)
        await wait_delivered(relay, "heap", 2)
    assert fake.failures == []
    statuses = [(r.path, r.status) for r in fake.requests]
    assert statuses == [(TRACK, 429), (TRACK, 200), (USERS, 200)]
    assert arrivals[1] - arrivals[0] >= 0.95  # waited for Retry-After: 1
    assert metric(relay, "relay_events_delivered_total", target="heap") == 2
    first, second = requests_to(fake, TRACK)
    assert first.json == second.json  # same events, same idempotency keys
    assert metric(relay, "relay_delivery_requests_total", target="heap", outcome="retry") == 1


# -- rate limit ------------------------------------------------------------------------------


def test_token_bucket_never_spends_more_than_the_limit_in_a_minute() -> None:
    now = [0.0]
    bucket = TokenBucket.per_minute(15_000, burst=1000, clock=lambda: now[0])
    assert bucket.reserve(1000) == 0.0  # the burst goes at once
    wait = bucket.reserve(1000)  # the next batch waits for the refill
    assert wait == pytest.approx(1000 / ((15_000 - 1000) / 60))
    # Simulate a sender that always sends as soon as it may, for five minutes.
    sent: list[tuple[float, int]] = [(0.0, 1000), (wait, 1000)]
    now[0] = wait
    while now[0] < 300:
        now[0] += bucket.reserve(1000)
        sent.append((now[0], 1000))
    for start_at, _ in sent:
        in_window = sum(n for t, n in sent if start_at <= t < start_at + 60)
        assert in_window <= 15_000


async def test_rate_limit_spaces_bulk_requests(relay_factory: RelayFactory) -> None:
    batch = [gate_exposure(f"u{i}", "g", True, f"rl-{i}") for i in range(300)]
    arrivals: list[float] = []
    async with FakeTarget(check=timed_heap_check(arrivals)) as fake:
        # 6000/min with batches of 100: a burst of 100, then ~98 events a second.
        relay = await relay_factory(
            config(
                fake.url,
                heap=", rate_limit_per_minute: 6000, batch_max_events: 100, user_properties: false",
            ),
            shutdown_grace="2s",
        )
        await post_export(relay, batch)
        await fake.wait_for_requests(3, timeout=15)
    assert fake.failures == []
    assert [len(r.json["events"]) for r in fake.requests] == [100, 100, 100]
    assert arrivals[2] - arrivals[0] >= 1.8  # 200 events at ~98/s
