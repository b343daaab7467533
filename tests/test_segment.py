"""The segment source end to end: HTTP in through a real relay, out to a real fake target.

The last tests drive it with the real segment-analytics-python client (its own URL building,
gzip, Basic auth and batching), so compatibility is proven against code we did not write.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from segment.analytics.client import Client
from segment.analytics.request import APIError

from relay.app import Relay
from relay.config import parse_config
from relay.sources.segment import SegmentSource
from tests.conftest import RelayFactory, fixture_bytes, fixture_json, metric, post, public_url
from tests.fakes import FakeTarget, FakeTargetFactory

KEY, OLD_KEY = "wk-new", "wk-old"
ANON = "a1b2c3d4-0000-4000-8000-000000000001"


def config(fake: FakeTarget, extra: str = "", rename: str = "retail") -> str:
    return f"""
sources:
  web:
    type: segment
    write_key: {OLD_KEY}
    write_keys: [{KEY}]
    {extra}
targets:
  out: {{type: webhook, url: "{fake.url}/in", linger: 0s}}
routes:
  - {{name: web, from: web, to: out, rename: {rename}}}
"""


def basic(key: str) -> dict[str, str]:
    token = base64.b64encode(f"{key}:".encode()).decode()
    return {"Content-Type": "application/json", "Authorization": f"Basic {token}"}


def url(relay: Relay, call: str) -> str:
    return public_url(relay, f"/segment/v1/{call}")


def track(event: str, message_id: str, **extra: Any) -> dict[str, Any]:
    return {"type": "track", "event": event, "userId": "u1", "messageId": message_id, **extra}


async def send_marker(relay: Relay, fake: FakeTarget, name: str = "Marker") -> None:
    """Send one good event and wait for it: what was sent before it has had its chance too."""
    body = orjson.dumps({"batch": [track(name, f"marker-{name}")]})
    status, _, _ = await post(url(relay, "batch"), body, basic(KEY))
    assert status == 200
    await fake.wait_for(lambda: any(e["eventName"] == name for e in fake.events()))


async def test_fixture_batch_is_mapped_renamed_by_the_route_and_identify_counted(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake))
    status, payload, _ = await post(
        url(relay, "batch"), fixture_bytes("segment_batch.json"), basic(KEY)
    )
    assert (status, payload) == (200, {"success": True})
    await fake.wait_for(lambda: len(fake.events()) == 2)
    purchase, page = fake.events()
    expected = fixture_json("expected_statsig_log_event.json")["events"][0]
    assert purchase["eventName"] == "purchase"
    assert purchase["user"] == expected["user"]
    assert purchase["metadata"] == expected["metadata"]
    assert (purchase["value"], purchase["timestamp"]) == (89.99, expected["time"])
    assert page["eventName"] == "page_view"
    assert page["metadata"] == {"path": "/", "title": "Home", "name": "Home"}
    assert page["user"] == {"customIDs": {"stableID": ANON}}
    assert metric(relay, "relay_events_dropped_total", route="source:web", reason="identify") == 1


async def test_fixture_batch_through_the_statsig_target_is_the_documented_log_event(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    def check(request: Any) -> None:
        assert request.path == "/v1/log_event"
        assert request.headers["statsig-api-key"] == "secret-test"

    fake = await fake_targets(202, check=check)
    relay = await relay_factory(f"""
sources:
  web: {{type: segment, write_keys: [{KEY}]}}
targets:
  statsig: {{type: statsig, server_secret: secret-test, url: "{fake.url}/v1/log_event",
            linger: 0s}}
routes:
  - {{name: web, from: web, to: statsig, rename: retail,
     filter: {{events: ["Order Completed"]}}}}
""")
    body = fixture_bytes("segment_batch.json")
    assert (await post(url(relay, "batch"), body, basic(KEY)))[0] == 200
    (request,) = await fake.wait_for_requests(1)
    assert fake.failures == []
    expected = fixture_json("expected_statsig_log_event.json")
    assert request.json["events"] == expected["events"]


async def test_write_key_in_the_body_and_a_rotated_key_are_accepted(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake))
    in_body = orjson.dumps({"writeKey": OLD_KEY, "batch": [track("A", "m-a")]})
    single = orjson.dumps({**track("B", "m-b"), "writeKey": KEY})
    assert (await post(url(relay, "batch"), in_body))[0] == 200
    assert (await post(url(relay, "track"), single))[0] == 200
    await fake.wait_for(lambda: {e["eventName"] for e in fake.events()} == {"A", "B"})


async def test_bad_or_missing_write_key_is_401_and_nothing_is_delivered(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake))
    good = orjson.dumps({"batch": [track("Sneaky", "m-1")]})
    cases = [
        (good, basic("wrong-key")),
        (orjson.dumps({"writeKey": "wrong-key", "batch": [track("Sneaky", "m-2")]}), None),
        (good, None),
        # A right key in the body does not rescue a wrong Basic header.
        (orjson.dumps({"writeKey": KEY, "batch": [track("Sneaky", "m-3")]}), basic("bad")),
        (good, {"Authorization": "Basic %%%not-base64"}),
    ]
    for body, headers in cases:
        status, payload, _ = await post(url(relay, "batch"), body, headers)
        assert status == 401, payload
        assert "wrong-key" not in str(payload)  # never echo what was presented
    await send_marker(relay, fake)
    assert [e["eventName"] for e in fake.events()] == ["Marker"]
    rejected = metric(relay, "relay_events_rejected_total", source="web", reason="unauthorized")
    assert rejected == len(cases)


async def test_bad_json_and_wrong_shapes_are_400(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake))
    for call, body, words in [
        ("batch", b'{"batch": [', "malformed JSON"),
        ("batch", b"", "empty body"),
        ("batch", b"[1, 2]", "expected a JSON object"),
        ("batch", b'{"batch": {"type": "track"}}', 'expected {"batch": [...]}'),
        ("track", orjson.dumps({"userId": "u"}), "without an event name"),
    ]:
        status, payload, _ = await post(url(relay, call), body, basic(KEY))
        assert status == 400, (call, body)
        assert words in payload["error"]
    await send_marker(relay, fake)
    assert len(fake.events()) == 1


async def test_gzip_body_is_accepted(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake))
    body = gzip.compress(fixture_bytes("segment_batch.json"))
    headers = {**basic(KEY), "Content-Encoding": "gzip"}
    status, payload, _ = await post(url(relay, "batch"), body, headers)
    assert (status, payload) == (200, {"success": True})
    await fake.wait_for(
        lambda: [e["eventName"] for e in fake.events()] == ["purchase", "page_view"]
    )


async def test_one_broken_message_is_rejected_alone_and_the_rest_delivered(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake))
    batch = [
        track("Good 1", "g1"),
        "not an object",
        {"type": "track", "event": "No ID", "messageId": "x1"},  # delivered, counted
        {"type": "teleport", "userId": "u1", "messageId": "x2"},
        track("Too Large", "x3", properties={"blob": "x" * 40_000}),
        track("Bad Time", "x4", timestamp="last tuesday"),
        track("Good 2", "g2", properties={"blob": "y" * 1000}),
    ]
    status, payload, _ = await post(url(relay, "batch"), orjson.dumps({"batch": batch}), basic(KEY))
    assert status == 200
    assert payload["success"] is True and payload["rejected"] == 4
    reasons = " | ".join(payload["errors"])
    for words in [
        "event 1: expected an object",
        "event 3: unknown type 'teleport'",
        "event 4: message is over the 32768",
        "event 5: timestamp 'last tuesday'",
    ]:
        assert words in reasons
    await fake.wait_for(lambda: len(fake.events()) == 3)
    assert [e["eventName"] for e in fake.events()] == ["Good 1", "No ID", "Good 2"]
    assert metric(relay, "relay_events_rejected_total", source="web", reason="malformed_event") == 4
    # Like Segment, a message without userId/anonymousId is accepted; it is counted.
    assert metric(relay, "relay_events_without_user_total", source="web") == 1


async def test_concurrent_retries_of_one_message_id_are_delivered_once(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake))
    body = orjson.dumps({"batch": [track("Racing", "race-1")]})
    answers = await asyncio.gather(*(post(url(relay, "batch"), body, basic(KEY)) for _ in range(8)))
    assert [status for status, _, _ in answers] == [200] * 8
    await send_marker(relay, fake)
    assert [e["eventName"] for e in fake.events()] == ["Racing", "Marker"]


async def test_a_retry_does_not_hold_the_first_exposure_of_another_call_while_it_commits(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    """A resent call is found out as a duplicate before a route claims its first-exposure key:
    a new call for the same user and gate that arrives meanwhile is that user's first exposure
    again once the route's window has passed, and must be kept."""
    fake = await fake_targets()
    relay = await relay_factory(
        f"""
sources:
  web: {{type: segment, write_keys: [{KEY}]}}
targets:
  out: {{type: webhook, url: "{fake.url}/in", linger: 0s}}
routes:
  - {{name: web, from: web, to: out, first_exposure_only: {{window: 300ms}}}}
"""
    )

    def exposure(message_id: str, user: str) -> bytes:
        props = {"gate": "new_checkout", "gateValue": "true"}
        call = track("statsig::gate_exposure", message_id, userId=user, properties=props)
        return orjson.dumps(call)

    users = [f"u{i}" for i in range(10)]
    for user in users:
        assert (await post(url(relay, "track"), exposure(f"a-{user}", user), basic(KEY)))[0] == 200
    await fake.wait_for(lambda: len(fake.events()) == len(users))
    # Not a wait for work: the route's first-exposure window (300 ms) lapses, the dedup one not.
    await asyncio.sleep(0.35)
    answers = await asyncio.gather(
        *(
            post(url(relay, "track"), exposure(message_id, user), basic(KEY))
            for user in users
            for message_id in (f"a-{user}", f"c-{user}")  # a retry, and a new call
        )
    )
    assert [status for status, _, _ in answers] == [200] * 2 * len(users)
    await send_marker(relay, fake)
    ids = sorted(e["user"]["userID"] for e in fake.events() if e["eventName"] != "Marker")
    assert ids == sorted(users * 2)  # the first calls and the new ones; no retry
    assert metric(relay, "relay_events_dropped_total", route="source:web", reason="dedup") == 10
    assert metric(relay, "relay_events_dropped_total", route="web", reason="first_exposure") == 0


async def test_redelivered_message_id_is_delivered_once(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake))
    body = orjson.dumps({"batch": [track("Once", "dup-1"), track("Once", "dup-1")]})
    for _ in range(2):  # a client retrying after a lost answer
        assert (await post(url(relay, "batch"), body, basic(KEY)))[0] == 200
    await send_marker(relay, fake)
    assert [e["eventName"] for e in fake.events()] == ["Once", "Marker"]
    assert metric(relay, "relay_events_dropped_total", route="source:web", reason="dedup") == 3


async def test_a_resent_one_event_call_is_dropped_and_not_counted_as_received(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake))
    body = orjson.dumps(track("Single", "one-1"))
    for _ in range(3):  # the SDK retrying after lost answers, each after the commit
        assert (await post(url(relay, "track"), body, basic(KEY)))[0] == 200
    await send_marker(relay, fake)
    assert [e["eventName"] for e in fake.events()] == ["Single", "Marker"]
    assert metric(relay, "relay_events_dropped_total", route="source:web", reason="dedup") == 2
    assert metric(relay, "relay_events_received_total", source="web") == 2  # + the marker
    assert metric(relay, "relay_events_routed_total", route="web") == 2


async def test_dedup_can_be_turned_off(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake, "dedup: false"))
    body = orjson.dumps({"batch": [track("Twice", "dup-1"), track("Twice", "dup-1")]})
    assert (await post(url(relay, "batch"), body, basic(KEY)))[0] == 200
    await fake.wait_for(lambda: len(fake.events()) == 2)


async def test_single_call_endpoints(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake))
    calls = [
        ("track", {"event": "Product Viewed", "userId": "u", "properties": {"sku": "S1"}}),
        ("page", {"anonymousId": "a", "name": "Pricing", "category": "Docs"}),
        ("screen", {"userId": "u", "name": "Settings", "properties": {"revenue": "2.5"}}),
        ("identify", {"userId": "u", "traits": {"email": "x@example.com"}}),
    ]
    for call, message in calls:
        status, payload, _ = await post(url(relay, call), orjson.dumps(message), basic(KEY))
        assert (status, payload) == (200, {"success": True}), call
    await fake.wait_for(lambda: len(fake.events()) == 3)
    viewed, page, screen = fake.events()
    assert (viewed["eventName"], viewed["metadata"]) == ("view_item", {"sku": "S1"})
    assert (page["eventName"], page["metadata"]) == (
        "page_view",
        {"name": "Pricing", "category": "Docs"},
    )
    assert (screen["eventName"], screen["value"], screen["metadata"]) == (
        "screen",
        2.5,
        {"name": "Settings"},
    )


async def test_identify_group_alias_as_events_when_configured(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake, "identify: event\n    group: event\n    alias: event"))
    batch = [
        {"type": "identify", "userId": "u", "traits": {"email": "x@example.com", "age": 30}},
        {"type": "group", "userId": "u", "groupId": 99, "traits": {"name": "Acme"}},
        {"type": "alias", "userId": "u", "previousId": "anon-1"},
    ]
    assert (await post(url(relay, "batch"), orjson.dumps({"batch": batch}), basic(KEY)))[0] == 200
    await fake.wait_for(lambda: len(fake.events()) == 3)
    identify, group, alias = fake.events()
    assert identify["eventName"] == "identify"
    assert identify["metadata"] == {"email": "x@example.com", "age": "30"}
    assert identify["user"] == {"userID": "u", "email": "x@example.com"}
    assert group["metadata"] == {"name": "Acme", "groupId": "99"}
    assert "email" not in group["user"]  # group traits describe the group, not the user
    assert alias["metadata"] == {"previousId": "anon-1"}


async def test_oversize_batch_is_400(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake, "max_batch_size: 2KiB"))
    batch = [track(f"E{i}", f"m{i}", properties={"pad": "p" * 100}) for i in range(20)]
    status, payload, _ = await post(url(relay, "batch"), orjson.dumps({"batch": batch}), basic(KEY))
    assert status == 400
    assert "over the 2048 byte limit" in payload["error"]


# -- the real segment-analytics-python client -------------------------------------------------


async def in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """The client is blocking (requests): run it off the loop that serves the relay."""
    return await asyncio.wait_for(asyncio.to_thread(fn, *args, **kwargs), timeout=20)


async def test_real_client_in_sync_mode_with_gzip(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake))
    host = public_url(relay, "/segment")  # the client appends /v1/batch
    client = Client(KEY, host=host, sync_mode=True, gzip=True, max_retries=0, timeout=5)
    await in_thread(
        client.track,
        user_id="user-123",
        event="Order Completed",
        properties={"order_id": "ORD-1", "revenue": 89.99, "items": 2, "gift": False},
        context={"ip": "203.0.113.10", "locale": "en-US", "traits": {"email": "j@example.com"}},
        timestamp=datetime(2024, 6, 5, 23, 0, tzinfo=UTC),
        anonymous_id=ANON,
        message_id="sdk-1",
    )
    await in_thread(client.page, anonymous_id=ANON, name="Home", properties={"path": "/"})
    await in_thread(client.identify, user_id="user-123", traits={"plan": "pro"})
    await fake.wait_for(lambda: len(fake.events()) == 2)
    purchase, page = fake.events()
    assert purchase == {
        "eventName": "purchase",
        "user": {
            "userID": "user-123",
            "email": "j@example.com",
            "ip": "203.0.113.10",
            "locale": "en-US",
            "customIDs": {"stableID": ANON},
        },
        "userID": "user-123",
        "timestamp": 1717628400000,
        "value": 89.99,
        "metadata": {"order_id": "ORD-1", "items": "2", "gift": "false"},
    }
    assert (page["eventName"], page["metadata"]) == ("page_view", {"path": "/", "name": "Home"})
    assert metric(relay, "relay_events_dropped_total", route="source:web", reason="identify") == 1


async def test_real_client_batches_in_its_consumer_thread_and_flushes(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake))
    host = public_url(relay, "/segment/")  # trailing slash: the client trims
    errors: list[Any] = []
    client = Client(
        OLD_KEY,
        host=host,
        gzip=True,
        upload_interval=0.05,
        max_retries=0,
        timeout=5,
        on_error=lambda exc, batch: errors.append(exc),
    )
    try:
        for i in range(25):
            client.track(user_id=f"u{i}", event="Checkout Started", properties={"step": i})
        await in_thread(client.flush)
    finally:
        await in_thread(client.join)
    assert errors == []
    await fake.wait_for(lambda: len(fake.events()) == 25)
    assert {e["eventName"] for e in fake.events()} == {"begin_checkout"}
    assert sorted(int(e["metadata"]["step"]) for e in fake.events()) == list(range(25))


async def test_real_client_with_a_wrong_key_gets_401(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake))
    host = public_url(relay, "/segment")
    client = Client("not-the-key", host=host, sync_mode=True, max_retries=0, timeout=5)
    with pytest.raises(APIError) as err:
        await in_thread(client.track, user_id="u", event="Nope")
    assert err.value.status == 401
    await send_marker(relay, fake)
    assert [e["eventName"] for e in fake.events()] == ["Marker"]


def test_without_write_keys_the_source_is_open_and_says_so() -> None:
    cfg = parse_config("sources: {web: {type: segment, write_key: ''}}\n", env={})
    source = SegmentSource("web", cfg.sources["web"])
    assert source.warnings() == ["source 'web' accepts any write key: set write_keys"]
    keyed = parse_config(f"sources: {{web: {{type: segment, write_keys: [{KEY}]}}}}\n", env={})
    described = SegmentSource("web", keyed.sources["web"]).describe()
    assert KEY not in described and "1 write key" in described
    assert KEY not in repr(keyed.sources["web"])
