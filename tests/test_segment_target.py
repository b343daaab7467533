"""Segment target: the real pipeline (Statsig webhook → router → spool → deliverer) against a
fake Segment / RudderStack that enforces the tracking API's auth, limits and required fields
(tests/fake_segment.py)."""

from __future__ import annotations

import base64
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.app import Relay
from relay.config import parse_config
from relay.schema import ConfigError
from relay.targets.base import Verdict
from relay.targets.segment import (
    MAX_MESSAGES,
    SegmentConfig,
    SegmentTarget,
    pack,
    track_message,
)
from tests.conftest import (
    RelayFactory,
    admin_url,
    fixture_bytes,
    fixture_json,
    get,
    metric,
    post,
    post_export,
    relay_yaml,
    signed_headers,
    spool_empty,
    wait_delivered,
)
from tests.daemon import REPO_ROOT, DaemonProcess, free_port
from tests.fake_segment import FakeSegment
from tests.fakes import Answer, RecordedRequest, poll_until

KEY = "wk-9fQx2LmZ7rT4"
LIBRARY = {"name": "statsig-relay", "version": __import__("relay").__version__}


def config(url: str, key: str = KEY, target: str = "", source: str = "") -> str:
    return f"""
sources:
  statsig: {{type: statsig_webhook{source}}}
targets:
  seg: {{type: segment, write_key: "{key}", base_url: "{url}", linger: 0s{target}}}
routes:
  - {{name: to-segment, from: statsig, to: seg}}
"""


def event(i: int | str, name: str = "purchase", **extra: Any) -> dict[str, Any]:
    return {
        "eventName": name,
        "user": {"userID": f"u{i}"},
        "userID": f"u{i}",
        "timestamp": 1_700_000_000_000,
        "value": str(i),
        "metadata": {"n": str(i)},
        "timeUUID": f"uuid-{i}",
        **extra,
    }


async def settled(relay: Relay) -> None:
    await poll_until(lambda: spool_empty(relay), timeout=15)


# -- mapping ---------------------------------------------------------------------------------


async def test_export_fixture_becomes_track_calls_in_statsigs_export_shape(
    relay_factory: RelayFactory,
) -> None:
    secret = "hook-secret"
    async with FakeSegment(KEY) as segment:
        relay = await relay_factory(
            config(segment.url, source=f", signing_secret: {secret}"), shutdown_grace="2s"
        )
        assert await post_export(relay, fixture_bytes("statsig_export_batch.json"), secret) == 200
        await wait_delivered(relay, "seg", 5)
    assert segment.failures == [] and segment.dropped == []
    (request,) = segment.requests
    assert (
        request.headers["Authorization"] == "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()
    )
    assert set(request.json) == {"batch"}
    custom, gate, config_exp, experiment, other = segment.accepted
    assert custom == {
        "type": "track",
        "event": "page_view",
        "userId": "user_1",
        "messageId": "f4c414a0-8ab5-11ec-a8a3-0242ac120002",
        "timestamp": "2022-02-10T19:16:06.967Z",
        "properties": {"value": "example_value", "metadata": {"page": "home_page"}},
        "context": {"library": LIBRARY, "user": {"userID": "user_1", "country": "US"}},
    }
    assert gate["event"] == "statsig::gate_exposure"
    assert gate["properties"] == {
        "value": "",
        "metadata": {"gate": "test_gate", "gateValue": "true", "ruleID": "default"},
    }
    assert config_exp["event"] == "statsig::config_exposure"
    assert config_exp["timestamp"] == "2022-06-14T18:27:33.265Z"  # from a string timestamp
    assert config_exp["properties"]["metadata"]["config"] == "a_config"
    assert config_exp["properties"]["metadata"]["ruleID"] == "default"
    assert experiment["event"] == "statsig::experiment_exposure"
    assert experiment["properties"]["metadata"] == {
        "config": "an_experiment",
        "ruleID": "4SauZJcM1T7zNvh1igBjwE",
        "reason": "Network",
        "time": "1655231249644",
        "experimentGroupName": "Control",
    }
    assert other["properties"] == {
        "value": "a_custom_value",
        "metadata": {"key_a": "value_a", "key_b": "123"},
    }
    assert other["context"]["user"]["email"] == "a.user@email.com"


async def test_legacy_exposures_read_their_keys_from_statsig_metadata(
    relay_factory: RelayFactory,
) -> None:
    async with FakeSegment(KEY) as segment:
        relay = await relay_factory(config(segment.url), shutdown_grace="2s")
        body = fixture_bytes("statsig_export_batch_legacy_wrapped.json")
        assert await post_export(relay, body) == 200
        count = len(orjson.loads(body)["data"])
        await wait_delivered(relay, "seg", count)
    assert segment.failures == []
    gates = [m for m in segment.accepted if m["event"] == "statsig::gate_exposure"]
    assert gates and all("gate" in m["properties"]["metadata"] for m in gates)
    assert all("gateValue" in m["properties"]["metadata"] for m in gates)


def test_config_change_maps_like_statsigs_export() -> None:
    change = fixture_json("statsig_config_changes.json")["data"][0]
    message = track_message(change)
    meta = change["metadata"]
    assert message["type"] == "track" and message["event"] == "statsig::config_change"
    props = message["properties"]
    assert props["configName"] == meta["name"] and props["action"] == meta["action"]
    assert props["type"] == meta["type"] and props["metadata"] == meta
    assert props["author"] == (change.get("user") or {}).get("name")
    # The console user is not a Segment user: no context.user, but still an identity.
    assert "user" not in message["context"]
    assert message.get("userId") or message.get("anonymousId")


def test_identities_stable_id_other_custom_id_or_a_digest() -> None:
    with_stable = track_message(
        {"eventName": "e", "user": {"userID": "u1", "customIDs": {"stableID": "dev-1"}}}
    )
    assert with_stable["userId"] == "u1" and with_stable["anonymousId"] == "dev-1"
    assert with_stable["context"]["stableID"] == "dev-1"
    only_stable = track_message({"eventName": "e", "user": {"customIDs": {"stableID": "dev-2"}}})
    assert "userId" not in only_stable and only_stable["anonymousId"] == "dev-2"
    user_only = track_message({"eventName": "e", "userID": "u3"})
    assert user_only["userId"] == "u3" and "anonymousId" not in user_only
    company = track_message(
        {"eventName": "e", "unitID": "companyID", "user": {"customIDs": {"companyID": "c9"}}}
    )
    assert company["anonymousId"] == "companyID:c9"
    anonymous = {"eventName": "e", "user": {"country": "FR"}, "timestamp": 1_700_000_000_000}
    first, again = track_message(anonymous), track_message(dict(anonymous, value="x"))
    assert (
        first["anonymousId"].startswith("relay-") and first["anonymousId"] == again["anonymousId"]
    )
    assert track_message({"eventName": "e"})["anonymousId"].startswith("relay-")
    # Without a timeUUID the messageId is a digest: the same event keeps it on redelivery.
    assert first["messageId"] == track_message(dict(anonymous))["messageId"] != again["messageId"]


def test_private_attributes_are_never_sent_and_user_fields_fill_context() -> None:
    message = track_message(
        {
            "eventName": "e",
            "userID": "u",
            "user": {
                "userID": "u",
                "ip": "203.0.113.9",
                "userAgent": "Mozilla/5.0",
                "locale": "fr-FR",
                "privateAttributes": {"email": "hidden@example.com"},
            },
        }
    )
    assert "privateAttributes" not in message["context"]["user"]
    assert "hidden@example.com" not in orjson.dumps(message).decode()
    assert message["context"]["ip"] == "203.0.113.9"
    assert message["context"]["userAgent"] == "Mozilla/5.0"
    assert message["context"]["locale"] == "fr-FR"


async def test_unicode_names_ids_and_values_arrive_intact(relay_factory: RelayFactory) -> None:
    sent = event("Zoë", name="購入 ✓", metadata={"emoji": "🎉", "città": "Torino"})
    async with FakeSegment(KEY) as segment:
        relay = await relay_factory(config(segment.url), shutdown_grace="2s")
        await post_export(relay, [sent])
        await wait_delivered(relay, "seg", 1)
    assert segment.failures == []
    (message,) = segment.accepted
    assert message["event"] == "購入 ✓" and message["userId"] == "uZoë"
    assert message["properties"]["metadata"] == {"emoji": "🎉", "città": "Torino"}


# -- limits and splitting --------------------------------------------------------------------


def test_pack_cuts_by_count_and_by_bytes() -> None:
    small = [(i, b'{"m":1}') for i in range(6000)]
    assert [len(p) for p in pack(small)] == [MAX_MESSAGES, MAX_MESSAGES, 1000]
    big = [(i, b"x" * 30_000) for i in range(40)]
    parts = pack(big)
    assert len(parts) > 1 and sum(len(p) for p in parts) == 40
    assert all(len(b'{"batch":[]}') + sum(len(d) + 1 for _, d in p) <= 500_000 for p in parts)
    assert [i for p in parts for i, _ in p] == list(range(40))  # order kept


async def test_3000_events_go_out_as_2500_and_500(relay_factory: RelayFactory) -> None:
    # ~180 bytes each as messages: 2500 fit in 500 KB, so the count is what cuts.
    events = [
        {"eventName": "e", "userID": f"u{i}", "timestamp": 1_700_000_000_000, "timeUUID": f"t{i}"}
        for i in range(3000)
    ]
    async with FakeSegment(KEY) as segment:
        relay = await relay_factory(
            config(segment.url, target=", batch_max_events: 2500, batch_max_bytes: 8MiB"),
            shutdown_grace="2s",
        )
        await post_export(relay, events)
        await wait_delivered(relay, "seg", 3000)
    assert segment.failures == [] and segment.dropped == []
    assert sorted(len(r.json["batch"]) for r in segment.requests) == [500, 2500]
    assert sorted(segment.message_ids()) == sorted(f"t{i}" for i in range(3000))


async def test_large_events_are_split_under_500_kb_per_request(
    relay_factory: RelayFactory,
) -> None:
    events = [event(i, metadata={"blob": "é" * 6000}) for i in range(100)]  # ~12 KB each
    async with FakeSegment(KEY) as segment:
        relay = await relay_factory(
            config(segment.url, target=", batch_max_bytes: 8MiB"), shutdown_grace="2s"
        )
        await post_export(relay, events)
        await wait_delivered(relay, "seg", 100)
    assert segment.failures == [] and segment.dropped == []
    assert len(segment.requests) >= 3
    assert all(len(r.body) <= 500_000 for r in segment.requests)
    assert sorted(segment.message_ids()) == sorted(f"uuid-{i}" for i in range(100))


async def test_an_event_over_32_kb_is_dead_lettered_alone_and_the_rest_sent(
    relay_factory: RelayFactory,
) -> None:
    events = [event(i) for i in range(5)]
    # 12,000 characters but 36,000 bytes: the limit is in bytes.
    events[2]["metadata"] = {"blob": "語" * 12_000}
    async with FakeSegment(KEY) as segment:
        relay = await relay_factory(config(segment.url), shutdown_grace="2s")
        await post_export(relay, events)
        await settled(relay)
        dead = await relay.spool.dead_rows("seg")
        counted = metric(
            relay, "relay_events_dead_lettered_total", target="seg", reason="message_too_large"
        )
    assert segment.failures == [] and counted == 1
    (request,) = segment.requests  # no bisection: one request with the other four
    assert [m["messageId"] for m in request.json["batch"]] == [
        "uuid-0",
        "uuid-1",
        "uuid-3",
        "uuid-4",
    ]
    (row,) = dead
    assert [e["timeUUID"] for e in orjson.loads(row.body)] == ["uuid-2"]
    assert "message_too_large" in row.reason and "32 KB" in row.reason


async def test_413_from_a_collector_with_a_smaller_limit_splits_until_it_fits(
    relay_factory: RelayFactory,
) -> None:
    events = [event(i, metadata={"pad": "p" * 300}) for i in range(8)]
    async with FakeSegment(KEY, flavor="rudderstack", max_request_bytes=1500) as rudder:
        relay = await relay_factory(config(rudder.url), shutdown_grace="2s")
        await post_export(relay, events)
        await settled(relay)
        assert await relay.spool.dead_rows("seg") == []
    statuses = [r.status for r in rudder.requests]
    assert statuses[0] == 413 and statuses[-1] == 200
    assert sorted(rudder.message_ids()) == sorted(f"uuid-{i}" for i in range(8))


async def test_a_400_is_bisected_to_the_one_event_refused(relay_factory: RelayFactory) -> None:
    def refuse_poison(rec: RecordedRequest) -> Answer | None:
        if any(m.get("event") == "poison" for m in rec.json["batch"]):
            return Answer(400, body=b"Invalid JSON\n", headers={"Content-Type": "text/plain"})
        return None

    events = [event(i) for i in range(6)]
    events[4]["eventName"] = "poison"
    async with FakeSegment(KEY, flavor="rudderstack") as rudder:
        enforce = rudder.default
        rudder.default = lambda rec: refuse_poison(rec) or enforce(rec)  # type: ignore[operator]
        relay = await relay_factory(config(rudder.url), shutdown_grace="2s")
        await post_export(relay, events)
        await settled(relay)
        dead = await relay.spool.dead_rows("seg")
    assert rudder.failures == []
    assert sorted(rudder.message_ids()) == [f"uuid-{i}" for i in (0, 1, 2, 3, 5)]
    assert [e["timeUUID"] for row in dead for e in orjson.loads(row.body)] == ["uuid-4"]


def test_batch_max_events_is_capped_at_2500_and_the_key_required() -> None:
    assert SegmentConfig(write_key="k").batch_max_events == 500
    with pytest.raises(ConfigError, match="batch_max_events: at most 2500"):
        SegmentConfig(write_key="k", batch_max_events=2501)
    with pytest.raises(ConfigError, match="write_key"):
        SegmentConfig(write_key=" ")
    with pytest.raises(ConfigError, match="base_url"):
        SegmentConfig(write_key="k", base_url="api.segment.io")


def test_base_url_defaults_to_segment_us_and_the_key_is_never_shown() -> None:
    target = SegmentTarget("s", SegmentConfig(write_key=KEY))
    assert target.url == "https://api.segment.io/v1/batch"
    assert KEY not in target.describe() and KEY not in repr(target.config)
    rudder = SegmentTarget(
        "r", SegmentConfig(write_key=KEY, base_url="https://x.dataplane.rudderstack.com/")
    )
    assert rudder.url == "https://x.dataplane.rudderstack.com/v1/batch"
    with pytest.raises(ConfigError) as caught:
        parse_config(f"targets: {{s: {{type: segment, write_key: [{KEY}]}}}}\nroutes: []\n", {})
    assert KEY not in str(caught.value)


@pytest.mark.parametrize(
    ("status", "body", "verdict"),
    [
        (200, "OK", Verdict.OK),
        (400, '{"success":false,"message":"Exceed payload limit"}', Verdict.TOO_LARGE),
        (400, "Invalid JSON\n", Verdict.REJECT),
        (400, "Request neither has anonymousId nor userId\n", Verdict.REJECT),
        (400, "Invalid Write Key\n", Verdict.UNAUTHORIZED),  # older RudderStack
        (401, "Invalid Write Key\n", Verdict.UNAUTHORIZED),
        (401, "Failed to read writeKey from header\n", Verdict.UNAUTHORIZED),
        (403, "", Verdict.UNAUTHORIZED),
        (404, "Source is disabled\n", Verdict.UNAUTHORIZED),
        (404, "404 page not found\n", Verdict.FATAL),
        (413, "Request size exceeds max limit\n", Verdict.TOO_LARGE),
        (429, "Max Requests Limit reached\n", Verdict.RETRY),
        (500, "Failed to read body from request\n", Verdict.RETRY),
        (503, "", Verdict.RETRY),
    ],
)
def test_answers_are_read_as_documented(status: int, body: str, verdict: Verdict) -> None:
    target = SegmentTarget("s", SegmentConfig(write_key=KEY))
    assert target.classify(status, {}, body).verdict is verdict


# -- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize("flavor", ["segment", "rudderstack-400"])
async def test_refused_write_key_holds_events_until_the_key_is_fixed_by_reload(
    relay_factory: RelayFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    flavor: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wk-WRONGkey0000"
    fake = (
        FakeSegment(KEY)
        if flavor == "segment"
        else FakeSegment(KEY, flavor="rudderstack", invalid_key_status=400)
    )
    async with fake as segment:
        body = config(segment.url, key=wrong, target=", retry_initial: 50ms, retry_max: 200ms")
        text = relay_yaml(body, tmp_path, shutdown_grace="2s")
        relay = await relay_factory(text, full=True)
        await post_export(relay, [event(i) for i in range(10)])
        await poll_until(lambda: relay.targets["seg"].health.failing)
        assert (await get(admin_url(relay, "/readyz")))[0] == 200
        _, status = await get(admin_url(relay, "/status.json"))
        await poll_until(lambda: segment.refused_keys >= 2)  # probed, not given up
        assert await relay.spool.dead_rows("seg") == []
        assert segment.accepted == []

        fixed = tmp_path / "relay.yaml"
        fixed.write_text(text.replace(wrong, KEY))
        assert await relay.reload(str(fixed))
        await segment.wait_for(lambda: len(segment.accepted) == 10, timeout=15)
        await settled(relay)
        assert await relay.spool.dead_rows("seg") == []
        await poll_until(lambda: not relay.targets["seg"].health.failing)
        metrics = (await get(admin_url(relay, "/metrics")))[1]
    assert segment.failures == []
    # Never bisected: every request carried all ten events.
    assert {len(r.json["batch"]) for r in segment.requests} == {10}
    for text_seen in (caplog.text, status, metrics):
        assert wrong not in text_seen and KEY not in text_seen


async def test_429_waits_for_retry_after_then_delivers_once(relay_factory: RelayFactory) -> None:
    async with FakeSegment(KEY) as segment:
        segment.script(
            Answer(429, headers={"Retry-After": "1"}, json={"message": "Too many requests"})
        )
        relay = await relay_factory(config(segment.url), shutdown_grace="2s")
        await post_export(relay, [event(i) for i in range(3)])
        await wait_delivered(relay, "seg", 3)
    first, second = segment.requests
    assert (first.status, second.status) == (429, 200)
    assert second.received_at - first.received_at >= 0.95
    assert first.json == second.json  # the same messageIds: Segment deduplicates
    assert segment.message_ids() == ["uuid-0", "uuid-1", "uuid-2"]
    assert metric(relay, "relay_delivery_requests_total", target="seg", outcome="retry") == 1


async def test_a_later_request_failing_resends_only_what_it_carried(
    relay_factory: RelayFactory,
) -> None:
    """A batch cut into several requests: the first taken, the second refused with 503; only
    the second's events are sent again."""
    events = [event(i, metadata={"blob": "b" * 20_000}) for i in range(40)]  # ~800 KB
    async with FakeSegment(KEY) as segment:
        segment.script(segment.default, Answer(503, json={"message": "unavailable"}))
        relay = await relay_factory(
            config(segment.url, target=", batch_max_bytes: 8MiB, retry_initial: 50ms"),
            shutdown_grace="2s",
        )
        await post_export(relay, events)
        await settled(relay)
    assert segment.failures == []
    first, refused, again = segment.requests
    assert (first.status, refused.status, again.status) == (200, 503, 200)
    assert again.json == refused.json  # just what the refused request carried
    ids = segment.message_ids()
    assert sorted(ids) == sorted(f"uuid-{i}" for i in range(40)) and len(ids) == 40


async def test_a_later_request_refusing_the_key_holds_its_events_and_fails_the_target(
    relay_factory: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The first request taken, the second answered 401: the target fails at once and the
    second request's events are held (not retried as if transient), then delivered once."""
    events = [event(i, metadata={"blob": "b" * 20_000}) for i in range(40)]  # ~800 KB
    async with FakeSegment(KEY) as segment:
        segment.script(segment.default, Answer(401, json={"message": "Invalid Write Key"}))
        relay = await relay_factory(
            config(segment.url, target=", batch_max_bytes: 8MiB, retry_initial: 200ms"),
            shutdown_grace="2s",
        )
        caplog.set_level(logging.INFO)
        await post_export(relay, events)
        await settled(relay)
        assert await relay.spool.dead_rows("seg") == []
    messages = [r.getMessage() for r in caplog.records if r.name == "relay.health"]
    assert [m for m in messages if "failing, holding" in m and "HTTP 401" in m], messages
    assert [m for m in messages if "recovered" in m], messages
    first, refused, again = segment.requests
    assert (first.status, refused.status, again.status) == (200, 401, 200)
    assert again.json == refused.json
    ids = segment.message_ids()
    assert sorted(ids) == sorted(f"uuid-{i}" for i in range(40)) and len(ids) == 40


# -- the daemon, end to end ------------------------------------------------------------------


async def test_daemon_forwards_a_signed_statsig_webhook_to_segment(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    secret = "signing-s3cret"
    async with FakeSegment(KEY) as segment:
        text = f"""
server: {{listen: "127.0.0.1:{port}", admin_listen: "127.0.0.1:{admin}", shutdown_grace: 3s}}
spool: {{backend: sqlite, path: ./data/spool.db}}
sources:
  statsig: {{type: statsig_webhook, signing_secret: "${{HOOK_SECRET}}"}}
targets:
  segment: {{type: segment, write_key: "${{SEGMENT_WRITE_KEY}}", base_url: "{segment.url}"}}
routes:
  - {{name: statsig-to-segment, from: statsig, to: segment}}
"""
        env = {"HOOK_SECRET": secret, "SEGMENT_WRITE_KEY": KEY}
        async with DaemonProcess(text, tmp_path, env=env) as daemon:
            await daemon.start(f"http://127.0.0.1:{admin}/readyz")
            body = fixture_bytes("statsig_export_batch.json")
            url = f"http://127.0.0.1:{port}/webhooks/statsig"
            unsigned, _, _ = await post(url, body)
            assert unsigned == 401
            status, _, _ = await post(
                url, body, signed_headers(secret, body, int(time.time() * 1000))
            )
            assert status == 200
            await segment.wait_for(lambda: len(segment.accepted) == 5, timeout=15)
            assert await daemon.terminate() == 0
            log = daemon.log_text()
    assert segment.failures == [] and segment.dropped == []
    assert [m["event"] for m in segment.accepted] == [
        "page_view",
        "statsig::gate_exposure",
        "statsig::config_exposure",
        "statsig::experiment_exposure",
        "my_custom_event",
    ]
    assert KEY not in log and secret not in log


def test_check_accepts_the_example_and_never_prints_the_write_key() -> None:
    example = REPO_ROOT / "examples" / "statsig-to-segment.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "relay", "check", "-c", str(example)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(REPO_ROOT),
            "SEGMENT_WRITE_KEY": KEY,
            "STATSIG_WEBHOOK_SECRET": "hook-s3cret",
        },
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "segment track calls to https://api.segment.io/v1/batch" in result.stdout
    assert KEY not in result.stdout + result.stderr
