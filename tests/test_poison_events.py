"""One poison event never gets a 5xx or holds the others: times outside 2000-2100, nesting deeper
than the encoder writes and numbers over 64 bits are refused alone, with a reason, before the
spool commit (they used to fail the commit: a 503 that told the sender to resend them forever).
A bug anywhere in the handler is a 500 with a JSON answer, logged with its traceback and counted.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson
import pytest

from relay.app import Relay
from relay.sources.base import MAX_NESTING
from tests.conftest import RelayFactory, metric, post_json, signed_headers
from tests.fakes import FakeTarget

SECRET = "whsec-poison"
SEGMENT_KEY = "seg-poison"
SDK_KEY = "client-poison"
JSON_KEY = "json-poison"
GOOD_MS = 1_717_628_400_000  # 2024-06-05


def config(sink: str, forward_raw: bool = True) -> str:
    raw = "" if forward_raw else ", forward_raw: false"
    return f"""
sources:
  statsig: {{type: statsig_webhook, path: /webhooks/statsig, signing_secret: {SECRET}{raw}}}
  web: {{type: segment, path_prefix: /segment, write_keys: [{SEGMENT_KEY}]}}
  sdk: {{type: statsig_events, path_prefix: /statsig, api_keys: [{SDK_KEY}]}}
  app:
    type: json
    path: /ingest/app
    api_keys: [{JSON_KEY}]
    mapping: {{event_name: type, user_id: uid, timestamp: ts, value: amount, metadata: props}}
targets:
  out: {{type: webhook, url: "{sink}/in", linger: 0s}}
routes:
  - {{name: all, from: [statsig, web, sdk, app], to: out}}
"""


def nested(levels: int) -> str:
    """A stand-in that :func:`encode` writes as a value ``levels`` containers deep (orjson
    cannot write one that deep)."""
    return f"<deep {levels}>"


def deep_json(levels: int) -> bytes:
    opening = b"".join(b"[" if i % 2 else b'{"k":' for i in range(levels))
    closing = b"".join(b"]" if i % 2 else b"}" for i in reversed(range(levels)))
    return opening + b'"bottom"' + closing


def encode(value: Any) -> bytes:
    return re.sub(rb'"<deep (\d+)>"', lambda m: deep_json(int(m[1])), orjson.dumps(value))


async def send(relay: Relay, source: str, good: str, bad: dict[str, Any]) -> tuple[int, Any]:
    """POST one good event named ``good`` and the ``bad`` fields in a second one, in the
    source's own shape; returns (status, answer)."""
    if source == "statsig":
        events = [
            {"eventName": good, "userID": "u1", "timestamp": GOOD_MS},
            {"eventName": "poison", "userID": "u2", "timestamp": GOOD_MS, **bad},
        ]
        body = encode(events)
        return await post_json(relay, "/webhooks/statsig", body, signed_headers(SECRET, body))
    if source == "web":
        batch = [
            {"type": "track", "event": good, "userId": "u1", "messageId": f"m-{good}"},
            {"type": "track", "event": "poison", "userId": "u2", "messageId": "m-bad", **bad},
        ]
        return await post_json(
            relay, "/segment/v1/batch", encode({"batch": batch, "writeKey": SEGMENT_KEY})
        )
    if source == "sdk":
        events = [
            {"eventName": good, "user": {"userID": "u1"}, "time": GOOD_MS},
            {"eventName": "poison", "user": {"userID": "u2"}, "time": GOOD_MS, **bad},
        ]
        return await post_json(
            relay, "/statsig/v1/rgstr", encode({"events": events}), {"statsig-api-key": SDK_KEY}
        )
    events = [
        {"type": good, "uid": "u1", "ts": GOOD_MS},
        {"type": "poison", "uid": "u2", "ts": GOOD_MS, **bad},
    ]
    return await post_json(relay, "/ingest/app", encode(events), {"X-API-Key": JSON_KEY})


def rejected_count(answer: Any) -> int:
    return answer.get("rejected", 0) if isinstance(answer, dict) else 0


async def assert_alone_refused(
    relay: Relay, fake: FakeTarget, source: str, good: str, bad: dict[str, Any], reason: str
) -> None:
    status, answer = await send(relay, source, good, bad)
    assert status in (200, 202), (source, bad, status, answer)
    assert rejected_count(answer) == 1, answer
    assert reason in " ".join(answer["errors"]), answer
    await fake.wait_for(lambda: good in [e["eventName"] for e in fake.events()])
    assert "poison" not in [e["eventName"] for e in fake.events()]


@pytest.fixture
async def sink() -> Any:
    fake = FakeTarget()
    await fake.start()
    yield fake
    await fake.close()


# (source, poison fields): times that do not fit 64 bits, before 2000 or after 2100
TIMES = [
    ("statsig", {"timestamp": 1e25}),
    ("statsig", {"timestamp": 10**19}),  # an int over 64 bits once stored
    ("statsig", {"timestamp": -5}),
    ("statsig", {"timestamp": "9999-12-31T00:00:00Z"}),
    ("sdk", {"time": 1e25}),
    ("sdk", {"time": 4_200_000_000_000}),  # 2103: fits 64 bits, still refused
    ("web", {"timestamp": 1e25}),
    ("web", {"originalTimestamp": "1970-01-01T00:00:00Z"}),
    # skew correction (received - (sentAt - originalTimestamp)) lands in 2125
    ("web", {"originalTimestamp": "2099-06-05T12:00:00Z", "sentAt": "2000-06-05T12:00:00Z"}),
    ("app", {"ts": 1e30}),
    ("app", {"ts": "1e25"}),
]


@pytest.mark.parametrize("forward_raw", [True, False], ids=["raw", "dict"])
async def test_times_outside_2000_to_2100_are_refused_alone(
    relay_factory: RelayFactory, sink: FakeTarget, forward_raw: bool
) -> None:
    relay = await relay_factory(config(sink.url, forward_raw))
    for i, (source, bad) in enumerate(TIMES):
        await assert_alone_refused(relay, sink, source, f"good_{i}", bad, "outside the years")
    assert metric(relay, "relay_spool_commit_errors_total") == 0


async def test_a_segment_sent_at_out_of_range_is_ignored(
    relay_factory: RelayFactory, sink: FakeTarget
) -> None:
    relay = await relay_factory(config(sink.url))
    batch = [{"type": "track", "event": "e", "userId": "u", "originalTimestamp": GOOD_MS}]
    status, answer = await post_json(
        relay,
        "/segment/v1/batch",
        {"batch": batch, "sentAt": 1e25, "writeKey": SEGMENT_KEY},
    )
    # an unusable sentAt is no skew correction: the client's time is used as given
    assert status == 200 and rejected_count(answer) == 0, answer
    await sink.wait_for(lambda: len(sink.events()) == 1)
    assert sink.events()[0]["timestamp"] == GOOD_MS


@pytest.mark.parametrize("forward_raw", [True, False], ids=["raw", "dict"])
async def test_nesting_deeper_than_the_limit_is_refused_alone(
    relay_factory: RelayFactory, sink: FakeTarget, forward_raw: bool
) -> None:
    relay = await relay_factory(config(sink.url, forward_raw))
    cases = [
        ("statsig", {"metadata": nested(300)}),
        ("statsig", {"user": nested(1000)}),  # as deep as the parser goes
        ("sdk", {"metadata": nested(MAX_NESTING)}),
        ("web", {"properties": nested(600)}),
        ("web", {"context": nested(400)}),
        ("app", {"props": nested(300)}),
        ("app", {"amount": nested(900)}),
    ]
    for i, (source, bad) in enumerate(cases):
        await assert_alone_refused(relay, sink, source, f"deep_{i}", bad, "nested deeper")
    # one level less is relayed
    status, answer = await send(relay, "statsig", "ok", {"metadata": nested(MAX_NESTING - 1)})
    assert status == 200 and rejected_count(answer) == 0, answer
    assert metric(relay, "relay_spool_commit_errors_total") == 0


async def test_a_body_that_is_one_too_deep_event_is_400(
    relay_factory: RelayFactory, sink: FakeTarget
) -> None:
    relay = await relay_factory(config(sink.url))
    message = {"type": "track", "event": "e", "userId": "u", "properties": nested(500)}
    status, answer = await post_json(
        relay, "/segment/v1/track", encode({**message, "writeKey": SEGMENT_KEY})
    )
    assert status == 400 and "nested deeper" in answer["error"], answer


async def test_segment_type_that_is_not_a_string_is_refused_alone(
    relay_factory: RelayFactory, sink: FakeTarget
) -> None:
    relay = await relay_factory(config(sink.url))
    for i, call in enumerate([["track"], {"t": "track"}, nested(150)]):
        await assert_alone_refused(
            relay, sink, "web", f"typed_{i}", {"type": call}, "type must be a string"
        )


async def test_a_value_over_64_bits_is_relayed_as_a_float(
    relay_factory: RelayFactory, sink: FakeTarget
) -> None:
    relay = await relay_factory(config(sink.url))
    digits = "123456789012345678901234567890"
    status, answer = await send(relay, "app", "big", {"amount": digits})
    assert status == 200 and rejected_count(answer) == 0, answer
    await sink.wait_for(lambda: "poison" in [e["eventName"] for e in sink.events()])
    poison = next(e for e in sink.events() if e["eventName"] == "poison")
    assert poison["value"] == pytest.approx(float(digits))


async def test_a_bug_is_a_logged_counted_json_500(
    relay_factory: RelayFactory,
    sink: FakeTarget,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    relay = await relay_factory(config(sink.url))
    source = relay.pipeline.sources["app"]

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in the source")

    monkeypatch.setattr(source, "parse", broken)
    with caplog.at_level(logging.ERROR, logger="relay.ingest"):
        status, answer = await post_json(
            relay, "/ingest/app", [{"type": "e"}], {"X-API-Key": JSON_KEY}
        )
    assert status == 500
    assert answer == {"error": "internal error; see the relay's log"}
    assert metric(relay, "relay_internal_errors_total", source="app") == 1
    assert any(r.exc_info and "a bug in the source" in str(r.exc_info[1]) for r in caplog.records)
    assert metric(relay, "relay_requests_total", source="app", code="500") == 1
    # the relay keeps serving
    monkeypatch.undo()
    status, _ = await send(relay, "app", "after", {})
    assert status == 200


# (poison fields, reason): a user or metadata that is present, not null and not an object
NOT_OBJECTS = [
    ({"user": "u2"}, "user: expected an object, got str"),
    ({"user": 7}, "user: expected an object, got int"),
    ({"user": [{"userID": "u2"}]}, "user: expected an object, got list"),
    ({"user": True}, "user: expected an object, got bool"),
    ({"metadata": "x"}, "metadata: expected an object, got str"),
    ({"metadata": 1.5}, "metadata: expected an object, got float"),
    ({"metadata": []}, "metadata: expected an object, got list"),
    ({"metadata": False}, "metadata: expected an object, got bool"),
    # an exposure's missing metadata is created, a non-object one is not replaced
    (
        {"eventName": "statsig::gate_exposure", "metadata": "g", "statsigMetadata": {"gate": "g"}},
        "metadata: expected an object, got str",
    ),
]


@pytest.mark.parametrize("forward_raw", [True, False], ids=["raw", "dict"])
async def test_statsig_user_or_metadata_that_is_not_an_object_is_refused_alone(
    relay_factory: RelayFactory, sink: FakeTarget, forward_raw: bool
) -> None:
    relay = await relay_factory(config(sink.url, forward_raw))
    for i, (bad, reason) in enumerate(NOT_OBJECTS):
        await assert_alone_refused(relay, sink, "statsig", f"not_object_{i}", bad, reason)
        # the rest of the body was kept as it was sent: no user or metadata added to it
        good = [e for e in sink.events() if e["eventName"] == f"not_object_{i}"]
        assert good == [{"eventName": f"not_object_{i}", "userID": "u1", "timestamp": GOOD_MS}]
    # null is absent: relayed, and an exposure still gets its metadata from statsigMetadata
    nulls = {"user": None, "metadata": None}
    status, answer = await send(relay, "statsig", "nulls", nulls)
    assert status == 200 and rejected_count(answer) == 0, answer
    exposure = {**nulls, "eventName": "statsig::gate_exposure", "statsigMetadata": {"gate": "g"}}
    status, answer = await send(relay, "statsig", "nulls_exposure", exposure)
    assert status == 200 and rejected_count(answer) == 0, answer
    await sink.wait_for(lambda: len([e for e in sink.events() if "user" in e]) == 2)
    relayed = {e["eventName"]: e for e in sink.events() if e.get("userID") == "u2"}
    assert relayed["poison"]["metadata"] is None and relayed["poison"]["user"] is None
    assert relayed["statsig::gate_exposure"]["metadata"] == {"gate": "g"}
    rejected = metric(
        relay, "relay_events_rejected_total", source="statsig", reason="malformed_event"
    )
    assert rejected == len(NOT_OBJECTS)


# (poison fields, reason): a unit ID that is an object, an array or a boolean
BAD_IDS = [
    ({"userID": {}}, "userID must be a string or a number, got an object"),
    ({"user": {"userID": ["u"]}}, "user.userID must be a string or a number, got an array"),
    ({"user": {"userID": True}}, "user.userID must be a string or a number, got a boolean"),
    ({"user": {"customIDs": "s"}}, "user.customIDs must be an object, got str"),
    (
        {"user": {"customIDs": {"stableID": {"id": "s"}}}},
        "user.customIDs.stableID must be a string or a number, got an object",
    ),
]


@pytest.mark.parametrize(
    ("source", "forward_raw"),
    [("statsig", True), ("statsig", False), ("sdk", True)],
    ids=["webhook-raw", "webhook-dict", "sdk"],
)
async def test_a_unit_id_that_is_not_a_string_or_number_is_refused_alone(
    relay_factory: RelayFactory, sink: FakeTarget, source: str, forward_raw: bool
) -> None:
    relay = await relay_factory(config(sink.url, forward_raw))
    for i, (bad, reason) in enumerate(BAD_IDS):
        await assert_alone_refused(relay, sink, source, f"bad_id_{i}", bad, reason)
    # IDs that are strings or numbers pass, customIDs included
    fine = {"user": {"userID": 42, "customIDs": {"stableID": "s", "companyID": 7}}}
    status, answer = await send(relay, source, "fine_ids", fine)
    assert status in (200, 202) and rejected_count(answer) == 0, answer
