"""The raw path (relay/raw.py) and the dict path deliver the same JSON.

Two relays run side by side, one with the Statsig webhook's ``forward_raw`` on (events kept as
their bytes where they can be) and one with it off (every event decoded to a dict, the
reference). Both get the same randomised batches; every target must receive the same events,
in the same order, with the same keys in the same order and the same values, and the senders
the same answers.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import orjson

from relay.app import Relay
from relay.config import parse_config
from relay.events import MAX_NESTING
from relay.raw import _BODY, MAX_MS, MIN_MS, RawEvents, _shallow, decode_exports
from relay.sources.base import event_problem
from relay.sources.statsig_webhook import normalise_export
from relay.spool.rows import build_row
from relay.targets.base import Batch
from tests.conftest import metric, post_json, relay_yaml, spool_empty
from tests.fakes import FakeTarget, FakeTargetFactory, poll_until

NOW = 1_760_000_000_000
NAMES = ["add_to_cart", "purchase", "Product Viewed", "page", "Order Completed", "café ☕ 日本"]
GATES = ["new_checkout", "dark_mode", 'gate "quoted" \\ slash']
TEXT = ["plain", "é ü ß", "日本語", "emoji 😀🎉", 'quote " and \\ back', "tab\tnew\nline", "\u2028"]


def _timestamp(rng: random.Random, plain: bool) -> Any:
    roll = 0.0 if plain else rng.random()
    ms = NOW - rng.randrange(10**7)
    if roll < 0.6:
        return ms
    if roll < 0.7:
        return str(ms)  # numeric string
    if roll < 0.78:
        return ms / 1000  # seconds as a float
    if roll < 0.84:
        return ms // 1000  # seconds as an int
    if roll < 0.88:
        return "2025-10-09T08:53:20.123Z"
    if roll < 0.92:
        return None  # dropped below: the receive time
    if roll < 0.95:
        return True  # not a time: rejected
    return rng.choice([MIN_MS - 1, MIN_MS, MAX_MS, MAX_MS + 1, 1, 10**18])  # at or out of range


def _user(rng: random.Random) -> dict[str, Any]:
    user: dict[str, Any] = {"userID": f"u{rng.randrange(20)}", "country": rng.choice(["US", "DE"])}
    if rng.random() < 0.4:
        user["customIDs"] = {"stableID": f"s{rng.randrange(20)}"}
    if rng.random() < 0.3:
        user["custom"] = {"note": rng.choice(TEXT), "n": rng.randrange(-5, 5) / 4}
    return user


def _exposure_metadata(rng: random.Random, name: str, plain: bool) -> tuple[dict[str, Any], Any]:
    subject = (
        {"gate": rng.choice(GATES)}
        if "gate" in name
        else {"config": "exp_" + str(rng.randrange(3))}
    )
    keys: dict[str, Any] = {
        **subject,
        "ruleID": f"r{rng.randrange(9)}",
        "gateValue": rng.choice(["true", "false", *([] if plain else [True, False])])
        if "gate" in name
        else None,
    }
    keys = {k: v for k, v in keys.items() if v is not None}
    form = 0.0 if plain else rng.random()
    if form < 0.6:
        return keys, None  # the current place: metadata
    if form < 0.8:
        return {}, {**keys, "sdkType": "py"}  # legacy: statsigMetadata holds the keys
    if form < 0.9:
        return None, {"sdkType": "py"}  # no metadata at all
    return {"reason": "x"}, rng.choice([None, "not an object", [1, 2]])


def _event(rng: random.Random, plain: bool) -> Any:
    """A random export event; ``plain``: one that needs no normalisation (the raw path's
    common case, where a whole body is checked at once)."""
    roll = 1.0 if plain else rng.random()
    if roll < 0.03:
        return rng.choice(["not an object", 7, None, [], {"timestamp": NOW}, {"eventName": ""}])
    kind = rng.choice(["custom", "custom", "diag", "gate", "experiment", "config", "layer", "cc"])
    name = {
        "custom": rng.choice(NAMES),
        "diag": "statsig::diagnostics",
        "gate": "statsig::gate_exposure",
        "experiment": "statsig::experiment_exposure",
        "config": "statsig::config_exposure",
        "layer": "statsig::layer_exposure",
        "cc": "statsig::config_change",
    }[kind]
    event: dict[str, Any] = {"eventName": name, "user": _user(rng)}
    if rng.random() < 0.7:
        event["userID"] = event["user"]["userID"]
    timestamp = _timestamp(rng, plain)
    if timestamp is not None:
        event["timestamp"] = timestamp
    if kind in ("gate", "experiment", "config", "layer"):
        metadata, legacy = _exposure_metadata(rng, name, plain)
        if metadata is not None:
            event["metadata"] = metadata
        if legacy is not None:
            event["statsigMetadata"] = legacy
    else:
        event["metadata"] = {"text": rng.choice(TEXT), "price": f"{rng.randrange(999) / 100}"}
        event["statsigMetadata"] = {"sdkType": "js", "sdkVersion": "5.0"}
        if rng.random() < 0.2:
            event["value"] = rng.choice([rng.choice(TEXT), rng.randrange(100), 1.5, -0.25, 1e21])
    if rng.random() < 0.9:
        event["timeUUID"] = f"t{rng.randrange(200)}"  # repeats: the dedup route drops them
    if rng.random() < 0.3:
        event["unitID"] = rng.choice(["userID", "stableID"])
    if rng.random() < 0.08 and not plain:
        deep: Any = "bottom"
        objects = rng.choice([0.0, 0.5])  # 0.0: only lists, the fewest bytes per level
        for _ in range(rng.choice([30, 120, 198, 199, 220, 300])):
            deep = {"d": deep} if rng.random() < objects else [deep]
        event["metadata"] = {"deep": deep}
    if rng.random() < 0.08 and not plain:  # not an object: refused alone; null: as if absent
        field = rng.choice(["user", "metadata"])
        event[field] = rng.choice(["not an object", 7, 1.5, [], [{"a": 1}], True, False, None])
    if rng.random() < 0.3:  # key order is part of what must survive
        items = list(event.items())
        rng.shuffle(items)
        event = dict(items)
    return event


def _body(rng: random.Random) -> bytes:
    plain = rng.random() < 0.4
    events = [_event(rng, plain) for _ in range(rng.randrange(1, 40))]
    if rng.random() < 0.1 and events:
        events.append(events[0])  # a duplicate within the batch
    document: Any = {"data": events} if rng.random() < 0.2 else events
    style = rng.random()
    if style < 0.5:
        try:
            return orjson.dumps(document)
        except orjson.JSONEncodeError:  # nested deeper than orjson writes
            return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    if style < 0.7:
        return json.dumps(document).encode()  # ASCII with \\u escapes, spaces after , and :
    if style < 0.85:
        return json.dumps(document, indent=2, ensure_ascii=False).encode()  # line breaks
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def _ordered(value: Any) -> Any:
    """JSON with key order made part of equality; an event's receive time (the timestamp of
    events sent without one, later than any generated time) is the same for both relays."""
    if isinstance(value, dict):
        return [
            (key, "received" if key == "timestamp" and item == _received(item) else _ordered(item))
            for key, item in value.items()
        ]
    if isinstance(value, list):
        return [_ordered(item) for item in value]
    return value


def _received(timestamp: Any) -> Any:
    return timestamp if isinstance(timestamp, int) and NOW < timestamp < MAX_MS else None


def _config(tmp_path: Path, raw: bool, fakes: dict[str, FakeTarget]) -> str:
    tmp_path.mkdir()
    target = "linger: 0s, concurrency: 1, batch_max_events: 7"
    body = f"""
sources: {{statsig: {{type: statsig_webhook, forward_raw: {str(raw).lower()}}}}}
targets:
  array: {{type: webhook, url: "{fakes["array"].url}", {target}}}
  lines: {{type: webhook, format: ndjson, url: "{fakes["lines"].url}", {target}}}
  warehouse: {{type: fivetran, url: "{fakes["warehouse"].url}", hmac_secret: s, {target}}}
  renamed: {{type: webhook, url: "{fakes["renamed"].url}", {target}}}
  once: {{type: webhook, url: "{fakes["once"].url}", {target}}}
  local: {{type: file, path: "{tmp_path}/events.ndjson", {target}}}
routes:
  - {{name: all, from: statsig, to: array}}
  - {{name: lines, from: statsig, to: lines, filter: {{exclude_categories: [statsig_internal]}}}}
  - {{name: warehouse, from: statsig, to: warehouse, filter: {{events: ["statsig::*"]}}}}
  - {{name: renamed, from: statsig, to: renamed, rename: {{preset: retail, snake_case: true}},
      filter: {{where: {{user.country: US}}}}}}
  - {{name: once, from: statsig, to: once, dedup: true, first_exposure_only: true}}
  - {{name: local, from: statsig, to: local}}
"""
    return relay_yaml(body, tmp_path)


def _delivered(fake: FakeTarget) -> list[Any]:
    events: list[Any] = []
    for request in fake.requests:
        if request.headers.get("Content-Type") == "application/x-ndjson":
            events += [orjson.loads(line) for line in request.body.splitlines()]
        else:
            events += request.json
    return _ordered(events)


async def test_raw_and_dict_paths_deliver_the_same_json(
    tmp_path: Path, fake_targets: FakeTargetFactory
) -> None:
    names = ["array", "lines", "warehouse", "renamed", "once"]
    relays: list[Relay] = []
    fakes: list[dict[str, FakeTarget]] = []
    for raw in (True, False):
        fake = {name: await fake_targets() for name in names}
        relay = Relay(parse_config(_config(tmp_path / f"raw-{raw}", raw, fake), {}))
        await relay.start()
        relays.append(relay)
        fakes.append(fake)
    try:
        rng = random.Random(20251203)
        for _ in range(60):
            body = _body(rng)
            answers = [await post_json(relay, "/webhooks/statsig", body) for relay in relays]
            assert answers[0] == answers[1], body[:300]
        for relay in relays:
            await poll_until(lambda relay=relay: spool_empty(relay), timeout=20)
        for name in names:
            raw_events, dict_events = (_delivered(fake[name]) for fake in fakes)
            assert raw_events == dict_events, name
            assert raw_events, name  # the comparison compared something
        files = [
            [
                _ordered(orjson.loads(line))
                for line in (tmp_path / f"raw-{raw}" / "events.ndjson").read_bytes().splitlines()
            ]
            for raw in (True, False)
        ]
        assert files[0] == files[1] == _delivered(fakes[1]["array"])
        for sample in (
            ("relay_events_received_total", {"source": "statsig"}),
            ("relay_events_rejected_total", {"source": "statsig", "reason": "malformed_event"}),
            ("relay_events_dropped_total", {"route": "once", "reason": "dedup"}),
            ("relay_events_dropped_total", {"route": "once", "reason": "first_exposure"}),
            ("relay_events_filtered_total", {"route": "renamed"}),
        ):
            counts = [metric(relay, sample[0], **sample[1]) for relay in relays]
            assert counts[0] == counts[1] > 0, sample
    finally:
        for relay in relays:
            await relay.stop()


def test_most_events_of_a_plain_batch_stay_as_their_bytes() -> None:
    """The raw path is taken, not only correct: a batch that needs no normalisation is
    spliced, and only the event that needs normalising is decoded."""
    events = [
        {"eventName": "add_to_cart", "timestamp": NOW, "metadata": {"a": "é"}},
        {"eventName": "statsig::gate_exposure", "timestamp": NOW, "metadata": {"gate": "g"}},
        {"eventName": "add_to_cart", "timestamp": str(NOW)},
    ]
    rejected: list[tuple[int, str]] = []
    raw = decode_exports(
        orjson.dumps(events),
        lambda e: normalise_export(e, NOW),
        lambda i, r: rejected.append((i, r)),
    )
    assert raw is not None and not rejected
    assert [r is not None for r in raw.raws] == [True, True, False]
    assert raw.dicts[2] == {"eventName": "add_to_cart", "timestamp": NOW}


def test_a_user_or_metadata_that_is_not_an_object_is_refused_alone_on_the_raw_path() -> None:
    """The views check the type without building the object; the refused event takes the
    dict path's reason, the others stay as their bytes."""
    good = {"eventName": "a", "timestamp": NOW, "user": {"userID": "u"}, "metadata": None}
    events = [good, {**good, "user": "u"}, {**good, "metadata": [1]}, {**good, "user": None}]
    rejected: list[tuple[int, str]] = []
    raw = decode_exports(
        orjson.dumps(events),
        lambda e: normalise_export(e, NOW),
        lambda i, r: rejected.append((i, r)),
    )
    assert rejected == [
        (1, "user: expected an object, got str"),
        (2, "metadata: expected an object, got list"),
    ]
    assert raw is not None and raw.names == ["a", "a"]
    assert all(r is not None for r in raw.raws)


def test_a_row_with_a_number_orjson_refuses_still_decodes_for_re_encoding_targets() -> None:
    """``1e400`` is valid JSON that orjson refuses. Ingest refuses it now (the raw path leaves
    such a body to the dict path), but rows stored before may hold it, so a target that
    decodes rows (heap, statsig, chronosphere) must not fail the whole row on it."""
    body = orjson.dumps([{"eventName": "a", "timestamp": NOW}])[:-2] + b',"v":1e400}]'
    assert decode_exports(body, lambda e: normalise_export(e, NOW), lambda i, r: None) is None
    raw = RawEvents([body[1:-1]], [None], ["a"])  # the event as an older version kept it
    row = build_row("t", "r", raw, [0], NOW)
    batch = Batch([row.body], 1, counts=[1])
    assert batch.events() == [{"eventName": "a", "timestamp": NOW, "v": float("inf")}]
    # A route's `where` or rename decodes the event the same way instead of failing the request.
    assert raw.event(0) == batch.events()[0]
    assert raw.key_fields(0)["eventName"] == "a"


def test_a_body_of_plain_events_is_kept_whole_and_matches_the_dict_path() -> None:
    rng = random.Random(7)
    events = [_event(rng, plain=True) for _ in range(50)]
    body = orjson.dumps(events)
    raw = decode_exports(body, lambda e: normalise_export(e, NOW), lambda i, r: None)
    assert raw is not None and all(r is not None for r in raw.raws)
    indices = list(range(len(events)))
    assert build_row("t", "r", raw, indices, NOW).body == body  # spliced, byte for byte
    expected = [e for e in events if normalise_export(e, NOW) is None]
    assert expected == events  # plain means the dict path would not change them either


def test_long_events_take_the_whole_body_path_unless_they_may_nest_too_deep() -> None:
    """Events longer than 2 * MAX_NESTING bytes (most real ones) must not send the body to the
    per-event loop by their length alone: that cost twice the parse while nobody noticed."""
    padding = "x" * 600
    plain = [{"eventName": f"e{i}", "timestamp": NOW, "user": {"note": padding}} for i in range(3)]
    assert _shallow(_BODY.decode(orjson.dumps(plain)))
    brackets = [{**plain[0], "metadata": {"text": "[" * (MAX_NESTING + 1)}}]
    assert not _shallow(_BODY.decode(orjson.dumps(brackets)))  # counted, strings or not
    nested = b'{"eventName":"deep","timestamp":%d,"note":"%s","m":%s}' % (
        NOW,
        padding.encode(),
        b'{"a":' * (MAX_NESTING + 10) + b"1" + b"}" * (MAX_NESTING + 10),
    )
    body = b"[" + nested + b"," + orjson.dumps(plain)[1:]
    rejected: list[tuple[int, str]] = []
    raw = decode_exports(  # the source's check, as in StatsigWebhookSource.parse_raw
        body,
        lambda e: event_problem(e) or normalise_export(e, NOW),
        lambda i, r: rejected.append((i, r)),
    )
    assert raw is not None and [i for i, _ in rejected] == [0]
    assert raw.names == ["e0", "e1", "e2"] and all(r is not None for r in raw.raws)
