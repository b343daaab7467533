"""A number beyond a double (``1e400``, an integer of 400 digits) is refused with its event alone,
with a reason, on every source and on both the raw and the dict path; the other events of the
request are stored and delivered. Integers beyond 64 bits but within a double, ``-0`` and
``1e-400`` are kept.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from relay.app import Relay
from relay.numbers import NumberScreen
from tests.conftest import RelayFactory, metric, post_json, signed_headers
from tests.fakes import FakeTarget

SECRET = "whsec-numbers"
SEGMENT_KEY = "seg-numbers"
SDK_KEY = "client-numbers"
JSON_KEY = "json-numbers"
GOOD_MS = 1_717_628_400_000  # 2024-06-05
HUGE_INT = "7" + "0" * 399  # 400 digits
BAD_NUMBERS = {"int400": HUGE_INT, "1e400": "1e400", "-1E+0400": "-1E+0400"}
BAD_INDEX = 2  # the bad event sits between good ones


def config(sink: str, forward_raw: bool) -> str:
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
    mapping: {{event_name: type, user_id: uid, timestamp: ts, metadata: props}}
targets:
  out: {{type: webhook, url: "{sink}/in", linger: 0s}}
routes:
  - {{name: all, from: [statsig, web, sdk, app], to: out}}
"""


def with_number(value: Any, number: str) -> bytes:
    """``value`` as JSON with the string "<number>" replaced by ``number`` as a bare literal
    (orjson cannot write one beyond a double)."""
    return orjson.dumps(value).replace(b'"<number>"', number.encode())


def request(source: str, tag: str, number: str) -> tuple[str, bytes, dict[str, str]]:
    """Path, body and headers of four events in the source's own shape: three good ones
    (``{tag}_0``, ``_1``, ``_3``) and, at BAD_INDEX, one holding ``number`` in its metadata."""
    names = [f"{tag}_{i}" for i in range(4)]
    if source == "statsig":
        events = [
            {
                "eventName": name,
                "userID": "u1",
                "timestamp": GOOD_MS,
                "metadata": {"n": "<number>" if i == BAD_INDEX else "1", "page": "/x"},
                "timeUUID": f"3e412-{tag}-{i}",  # hex-like ids, as Statsig sends
            }
            for i, name in enumerate(names)
        ]
        body = with_number(events, number)
        return "/webhooks/statsig", body, signed_headers(SECRET, body)
    if source == "web":
        batch = [
            {
                "type": "track",
                "event": name,
                "userId": "u1",
                "messageId": f"m-{name}",
                "properties": {"n": "<number>" if i == BAD_INDEX else 1},
            }
            for i, name in enumerate(names)
        ]
        body = with_number({"batch": batch, "writeKey": SEGMENT_KEY}, number)
        return "/segment/v1/batch", body, {"Content-Type": "application/json"}
    if source == "sdk":
        events = [
            {
                "eventName": name,
                "user": {"userID": "u1"},
                "time": GOOD_MS,
                "metadata": {"n": "<number>" if i == BAD_INDEX else "1"},
            }
            for i, name in enumerate(names)
        ]
        body = with_number({"events": events}, number)
        return "/statsig/v1/rgstr", body, {"statsig-api-key": SDK_KEY}
    items = [
        {"type": name, "uid": "u1", "ts": GOOD_MS, "props": {"n": "<number>" if i == 2 else 1}}
        for i, name in enumerate(names)
    ]
    return "/ingest/app", with_number(items, number), {"X-API-Key": JSON_KEY}


@pytest.fixture
async def sink() -> Any:
    fake = FakeTarget()
    await fake.start()
    yield fake
    await fake.close()


async def send_each(
    relay: Relay, sink: FakeTarget, run: str = ""
) -> dict[tuple[str, str], tuple[int, Any]]:
    """Every source and bad number: the answers, once the good events have arrived."""
    answers: dict[tuple[str, str], tuple[int, Any]] = {}
    for source in ("statsig", "web", "sdk", "app"):
        for label, number in BAD_NUMBERS.items():
            tag = f"{run}{source}_{label.replace('-', 'm').replace('+', 'p')}"
            path, body, headers = request(source, tag, number)
            status, answer = await post_json(relay, path, body, headers)
            answers[(source, label)] = (status, answer)
            good = {f"{tag}_{i}" for i in (0, 1, 3)}
            await sink.wait_for(lambda good=good: good <= {e["eventName"] for e in sink.events()})
    return answers


@pytest.mark.parametrize("forward_raw", [True, False], ids=["raw", "dict"])
async def test_a_number_beyond_a_double_is_refused_with_its_event_alone(
    relay_factory: RelayFactory, sink: FakeTarget, forward_raw: bool
) -> None:
    relay = await relay_factory(config(sink.url, forward_raw))
    answers = await send_each(relay, sink)
    for (source, label), (status, answer) in answers.items():
        assert status in (200, 202), (source, label, status, answer)
        assert answer["rejected"] == 1, (source, label, answer)
        (error,) = answer["errors"]
        assert error.startswith(f"event {BAD_INDEX}: "), (source, label, error)
        assert "beyond the range of a double" in error, (source, label, error)
    # the reason names the field and shows the number (or its size when it is long)
    statsig_errors = answers[("statsig", "1e400")][1]["errors"]
    assert statsig_errors == [
        f"event {BAD_INDEX}: metadata.n: 1e400 is beyond the range of a double (about ±1.8e308)"
    ]
    assert "an integer of 400 digits" in answers[("statsig", "int400")][1]["errors"][0]
    names = [e["eventName"] for e in sink.events()]
    assert len(names) == 4 * 3 * 3 and not any(n.endswith(f"_{BAD_INDEX}") for n in names)
    for source in ("statsig", "web", "sdk", "app"):
        refused = metric(
            relay, "relay_events_rejected_total", source=source, reason="malformed_event"
        )
        assert refused == len(BAD_NUMBERS), source
    assert metric(relay, "relay_spool_commit_errors_total") == 0


async def test_the_raw_path_and_the_dict_path_answer_the_same(
    relay_factory: RelayFactory, sink: FakeTarget
) -> None:
    raw = await relay_factory(config(sink.url, True))
    raw_answers = await send_each(raw, sink, "raw_")
    await raw.stop()
    dict_path = await relay_factory(config(sink.url, False))
    assert await send_each(dict_path, sink, "dict_") == raw_answers


@pytest.mark.parametrize("forward_raw", [True, False], ids=["raw", "dict"])
async def test_numbers_a_double_holds_are_kept(
    relay_factory: RelayFactory, sink: FakeTarget, forward_raw: bool
) -> None:
    relay = await relay_factory(config(sink.url, forward_raw))
    numbers = ["-0", "1e-400", "1.7976931348623157e308", "18446744073709551616", "9" * 300]
    events = [
        {"eventName": f"kept_{i}", "userID": "u1", "timestamp": GOOD_MS, "value": "<number>"}
        for i in range(len(numbers))
    ]
    body = orjson.dumps(events)
    for number in numbers:
        body = body.replace(b'"<number>"', number.encode(), 1)
    status, answer = await post_json(relay, "/webhooks/statsig", body, signed_headers(SECRET, body))
    assert status == 200 and answer == {"accepted": len(numbers), "rejected": 0}, answer
    await sink.wait_for(lambda: len(sink.events()) == len(numbers))


def test_the_raw_screen_passes_export_bodies_and_flags_every_spelling() -> None:
    screen = NumberScreen()
    ids = b'[{"timeUUID":"3e412a9e-1e40-4e99-9e123-8e5551234567","n":1e308,"m":-1e-400,"z":-0}]'
    assert not screen.may_hold_unrepresentable(ids)
    for number in (
        b"1e400",
        b"1E400",
        b"2e+308",
        b"1e0000400",
        b"-7e400",
        HUGE_INT.encode(),
        b"1" + b"0" * 250 + b"e99",
        b"1" + b"0" * 400 + b".5",
    ):
        for body in (
            b'[{"a":' + number + b"}]",
            b"[" + number + b", 1]",
            b'[{"a": ' + number + b" }]",
        ):
            assert screen.may_hold_unrepresentable(body), body


async def test_a_request_level_part_beyond_a_double_refuses_the_request(
    relay_factory: RelayFactory, sink: FakeTarget
) -> None:
    """A Segment batch's ``context`` and a log_event request's ``user`` are every event's: a
    number in them no target can carry is a 400 naming it, as for a malformed body."""
    relay = await relay_factory(config(sink.url, True))
    events = [
        {"eventName": "own_user", "user": {"userID": "u1"}, "time": GOOD_MS},
        {"eventName": "shared_user", "time": GOOD_MS},
    ]
    shared = {"userID": "u2", "custom": {"n": "<number>"}}
    body = with_number({"events": events, "user": shared}, "1e400")
    status, answer = await post_json(relay, "/statsig/v1/rgstr", body, {"statsig-api-key": SDK_KEY})
    assert status == 400, answer
    assert answer["error"] == (
        "user.custom.n: 1e400 is beyond the range of a double (about ±1.8e308)"
    )
    message = {"type": "track", "event": "e", "userId": "u"}
    body = with_number(
        {"batch": [message], "context": {"n": "<number>"}, "writeKey": SEGMENT_KEY}, HUGE_INT
    )
    status, answer = await post_json(relay, "/segment/v1/batch", body)
    assert status == 400 and answer["error"].startswith("context.n: an integer of 400"), answer
    assert metric(relay, "relay_internal_errors_total", source="sdk") == 0
    assert not sink.events()


async def test_a_lone_surrogate_in_a_segment_batch_context_refuses_the_request(
    relay_factory: RelayFactory, sink: FakeTarget
) -> None:
    """orjson refuses a lone surrogate; the parser that reads a body holding a number beyond
    a double lets it by. In the batch's ``context`` it would fail every message, and the
    request was answered 200 with each message rejected: now a 400 naming ``context``."""
    relay = await relay_factory(config(sink.url, True))
    message = {"type": "track", "event": "e", "userId": "u", "messageId": "m1"}
    other = {"type": "track", "event": "far", "userId": "u", "messageId": "m2", "n": "<number>"}
    body = with_number(
        {"batch": [other, message], "context": {"k": "<surrogate>"}, "writeKey": SEGMENT_KEY},
        "1e400",
    ).replace(b'"<surrogate>"', b'"\\ud800"')
    status, answer = await post_json(relay, "/segment/v1/batch", body)
    assert status == 400, answer
    assert answer["error"].startswith("context: cannot be encoded as JSON"), answer
    assert not sink.events()
