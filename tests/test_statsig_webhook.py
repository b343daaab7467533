"""The statsig_webhook source, driven over HTTP through a real relay to a real fake target."""

from __future__ import annotations

import gzip
import time
from typing import Any

import orjson
import pytest

from tests.conftest import (
    RelayFactory,
    fixture_bytes,
    get,
    metrics_text,
    post,
    public_url,
    signed_headers,
    webhook_url,
)
from tests.fakes import FakeTarget, FakeTargetFactory

SECRETS = ["old-secret", "new-secret"]


def config(fake: FakeTarget, extra: str = "") -> str:
    return f"""
sources:
  statsig:
    type: statsig_webhook
    path: /webhooks/statsig
    signing_secret: old-secret
    signing_secrets: [new-secret]
    {extra}
targets:
  out: {{type: webhook, url: "{fake.url}/in", linger: 0s}}
routes:
  - {{name: all, from: statsig, to: out}}
"""


async def test_signed_bare_array_is_acknowledged_and_delivered(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake))
    body = fixture_bytes("statsig_export_batch.json")
    url = webhook_url(relay)
    status, payload, _ = await post(url, body, signed_headers("old-secret", body))
    assert (status, payload) == (200, {"accepted": 5, "rejected": 0})
    await fake.wait_for(lambda: len(fake.events()) == 5)
    events = fake.events()
    # Numeric-string timestamps are normalised to int epoch ms.
    assert [e["timestamp"] for e in events] == [
        1644520566967,
        1644520566968,
        1655231253265,
        1644520566969,
        1655231253265,
    ]
    assert events[1]["metadata"] == {"gate": "test_gate", "gateValue": "true", "ruleID": "default"}


async def test_legacy_wrapped_form_lifts_exposure_keys_into_metadata(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake))
    body = fixture_bytes("statsig_export_batch_legacy_wrapped.json")
    url = webhook_url(relay)
    status, payload, _ = await post(url, body, signed_headers("new-secret", body))  # rotated
    assert (status, payload["accepted"]) == (200, 3)
    await fake.wait_for(lambda: len(fake.events()) == 3)
    gate, experiment = fake.events()[1], fake.events()[2]
    assert gate["metadata"]["gate"] == "test_gate"
    assert gate["metadata"]["gateValue"] == "true"  # a boolean in the legacy form
    assert experiment["metadata"]["experimentGroupName"] == "Control"


async def test_bad_missing_and_stale_signatures_are_401_and_nothing_is_spooled(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake))
    body = fixture_bytes("statsig_export_batch.json")
    url = webhook_url(relay)
    ten_minutes_ago = int(time.time() * 1000) - 600_000
    cases = [
        (signed_headers("wrong-secret", body), "signature does not match"),
        ({"Content-Type": "application/json"}, "missing X-Statsig-Signature"),
        (signed_headers("old-secret", body, at_ms=ten_minutes_ago), "tolerance"),
        (
            {**signed_headers("old-secret", body), "X-Statsig-Request-Timestamp": "soon"},
            "not epoch milliseconds",
        ),
    ]
    for headers, reason in cases:
        status, payload, _ = await post(url, body, headers)
        assert status == 401
        assert reason in payload["error"]
        assert "old-secret" not in payload["error"]
    # The signature covers the exact bytes: a changed body does not verify.
    headers = signed_headers("old-secret", body)
    status, _, _ = await post(url, body.replace(b"user_1", b"user_2"), headers)
    assert status == 401
    stats = await relay.spool.stats()
    assert stats.queued == {} and fake.requests == []


async def test_clock_tolerance_is_configurable(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake, extra="tolerance: 1h"))
    body = fixture_bytes("statsig_export_batch.json")
    url = webhook_url(relay)
    ten_minutes_ago = int(time.time() * 1000) - 600_000
    status, _, _ = await post(url, body, signed_headers("old-secret", body, at_ms=ten_minutes_ago))
    assert status == 200


async def test_a_timestamp_in_seconds_is_refused_with_a_hint_that_milliseconds_are_expected(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake))
    body = fixture_bytes("statsig_export_batch.json")
    seconds = int(time.time())
    headers = signed_headers("old-secret", body, at_ms=seconds)  # the clock in s, not ms
    status, payload, _ = await post(webhook_url(relay), body, headers)
    assert status == 401
    assert "milliseconds" in payload["error"] and "looks like seconds" in payload["error"]
    ten_minutes_ago = int(time.time() * 1000) - 600_000
    stale = signed_headers("old-secret", body, at_ms=ten_minutes_ago)
    status, payload, _ = await post(webhook_url(relay), body, stale)
    assert status == 401 and "seconds" not in payload["error"].split(")")[-1]


HANDSHAKE = {"event": "url_verification", "verification_code": "c0de"}


@pytest.mark.parametrize(
    "document",
    [{"data": HANDSHAKE}, HANDSHAKE, {"data": [HANDSHAKE]}],
    ids=["under-data", "top-level", "data-list"],
)
async def test_unsigned_url_verification_is_answered_with_its_code(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory, document: Any
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake))
    url = webhook_url(relay)
    status, payload, _ = await post(url, orjson.dumps(document))
    assert (status, payload) == (200, {"verification_code": "c0de"})
    assert (await relay.spool.stats()).queued == {}
    # without a code it is a 400, not an answer echoing null
    bad = orjson.dumps({"data": {"event": "url_verification"}})
    status, payload, _ = await post(url, bad)
    assert status == 400 and "verification_code" in payload["error"]


async def test_a_signed_url_verification_over_4_kb_is_answered_on_the_raw_path_too(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake))
    body = orjson.dumps({"data": [{**HANDSHAKE, "padding": "x" * 5000}]})
    status, payload, _ = await post(webhook_url(relay), body, signed_headers("old-secret", body))
    assert (status, payload) == (200, {"verification_code": "c0de"})
    assert (await relay.spool.stats()).queued == {}


async def test_malformed_json_is_400_with_the_reason(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake))
    url = webhook_url(relay)
    for body, reason in [
        (b'[{"eventName": "x",', "malformed JSON"),
        (b"", "empty body"),
        (b'{"events": []}', 'expected a JSON array of events or {"data": [...]}'),
    ]:
        status, payload, _ = await post(url, body, signed_headers("old-secret", body))
        assert status == 400
        assert reason in payload["error"]


async def test_body_over_max_body_is_413_also_when_gzip_inflates_past_it(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake), server="max_body: 64KiB")
    url = webhook_url(relay)
    big = orjson.dumps([{"eventName": "e", "metadata": {"pad": "x" * 70_000}}])
    status, payload, _ = await post(url, big, signed_headers("old-secret", big))
    assert status == 413 and "limit" in payload["error"]
    # A small gzip body that inflates past the limit is refused the same way (no zip bombs).
    bomb = gzip.compress(big)
    assert len(bomb) < 64 * 1024
    headers = {**signed_headers("old-secret", big), "Content-Encoding": "gzip"}
    status, _, _ = await post(url, bomb, headers)
    assert status == 413
    assert fake.requests == []


async def test_one_malformed_event_is_skipped_and_reported_the_rest_delivered(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake))
    events = orjson.loads(fixture_bytes("statsig_export_batch.json"))
    events.insert(2, {"user": {"userID": "u"}})  # no eventName
    events.insert(3, "not an object")
    events.insert(4, {"eventName": "bad_time", "timestamp": "yesterday"})
    body = orjson.dumps(events)
    url = webhook_url(relay)
    status, payload, _ = await post(url, body, signed_headers("old-secret", body))
    assert status == 200
    assert payload["accepted"] == 5 and payload["rejected"] == 3
    assert payload["errors"][0] == "event 2: missing eventName"
    assert "event 4: timestamp 'yesterday'" in payload["errors"][2]
    await fake.wait_for(lambda: len(fake.events()) == 5)
    metrics = await metrics_text(relay)
    assert 'relay_events_rejected_total{reason="malformed_event",source="statsig"} 3.0' in metrics


async def test_gzip_is_refused_because_the_signature_covers_the_sent_bytes(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake))
    body = gzip.compress(fixture_bytes("statsig_export_batch.json"))
    headers = {**signed_headers("old-secret", body), "Content-Encoding": "gzip"}
    url = webhook_url(relay)
    status, payload, _ = await post(url, body, headers)
    assert status == 415 and "compressed" in payload["error"]
    assert fake.requests == []


async def test_unknown_path_is_404_and_wrong_method_405(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake))
    status, payload, _ = await post(public_url(relay, "/nope"), b"[]")
    assert status == 404 and "no source serves /nope" in payload["error"]
    status, _ = await get(webhook_url(relay))
    assert status == 405
