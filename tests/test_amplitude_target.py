"""Amplitude target: the real pipeline (Statsig webhook → router → spool → deliverer) against a
fake Amplitude HTTP V2 API that enforces the documented key, limits and event fields."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from relay.config import parse_config
from relay.schema import ConfigError
from relay.targets.amplitude import AmplitudeConfig, AmplitudeTarget, named_events
from relay.targets.base import Verdict
from tests.conftest import (
    RelayFactory,
    custom,
    dead_count,
    fixture_json,
    get,
    metric,
    post,
    post_export,
    relay_yaml,
    settled,
    signed_headers,
)
from tests.daemon import REPO_ROOT, DaemonProcess, free_port
from tests.fake_amplitude import API_KEY, FakeAmplitude, too_large
from tests.fakes import Answer, poll_until

SECRET = "whsec-amp-test"


def config(url: str, target: str = "", route: str = "", key: str = API_KEY) -> str:
    return f"""
sources:
  statsig: {{type: statsig_webhook, signing_secret: {SECRET}}}
targets:
  amp: {{type: amplitude, api_key: "{key}", base_url: "{url}", linger: 0s{target}}}
routes:
  - {{name: to-amp, from: statsig, to: amp{route}}}
"""


# -- mapping ---------------------------------------------------------------------------------


async def test_each_statsig_event_kind_maps_to_http_v2_fields(relay_factory: RelayFactory) -> None:
    events = fixture_json("statsig_export_batch.json")
    change = {
        "eventName": "statsig::config_change",
        "timestamp": 1_700_000_000_000,
        "user": {"name": "Editor", "email": "e@example.com"},
        "metadata": {"type": "Gate", "name": "g", "action": "updated"},
    }
    async with FakeAmplitude() as amp:
        relay = await relay_factory(config(amp.url), shutdown_grace="2s")
        assert await post_export(relay, [*events, change], SECRET) == 200
        await amp.wait_for(lambda: len(amp.accepted) == 5)
        unsupported = metric(
            relay, "relay_events_dropped_total", route="to-amp", reason="unsupported_by_target"
        )
    assert unsupported == 1  # a config change is a console edit, not a user's event
    (request,) = amp.requests
    assert request.json["api_key"] == API_KEY
    assert request.json["options"] == {"min_id_length": 1}
    custom_event, gate, config_exp, experiment, other = amp.accepted
    assert custom_event == {
        "event_type": "page_view",
        "user_id": "user_1",
        "time": 1644520566967,
        "insert_id": "f4c414a0-8ab5-11ec-a8a3-0242ac120002",
        "event_properties": {"page": "home_page", "value": "example_value"},
    }
    assert gate["event_type"] == "statsig::gate_exposure"
    assert gate["event_properties"] == {
        "gate": "test_gate",
        "gateValue": "true",
        "ruleID": "default",
    }
    assert gate["user_properties"] == {"Statsig Gate: test_gate": "true"}
    assert config_exp["time"] == 1655231253265  # a numeric string becomes epoch ms
    assert "user_properties" not in config_exp  # a config says nothing about its user
    assert experiment["user_properties"] == {"Statsig Experiment: an_experiment": "Control"}
    assert experiment["event_properties"]["experimentGroupName"] == "Control"
    assert other["event_properties"] == {
        "key_a": "value_a",
        "key_b": "123",
        "value": "a_custom_value",
    }


async def test_stable_id_is_the_device_id_without_a_user_id_and_no_id_is_dropped(
    relay_factory: RelayFactory,
) -> None:
    device = custom(1)
    device["user"] = {"customIDs": {"stableID": "dev1"}}  # shorter than Amplitude's default 5
    both = custom(2)
    both["user"]["customIDs"] = {"stableID": "dev-2"}
    nobody = custom(3)
    nobody["user"] = {"country": "NZ"}
    async with FakeAmplitude() as amp:
        relay = await relay_factory(config(amp.url), shutdown_grace="2s")
        await post_export(relay, [device, both, nobody], SECRET)
        await settled(relay, "amp", 3)
        dropped = metric(
            relay, "relay_events_dropped_total", route="target:amp", reason="no_identity"
        )
    assert dropped == 1 and amp.failures == []
    first, second = amp.accepted
    assert first["device_id"] == "dev1" and "user_id" not in first
    assert second["user_id"] == "user-2" and "device_id" not in second


async def test_an_event_without_time_uuid_gets_the_same_insert_id_when_redelivered(
    relay_factory: RelayFactory,
) -> None:
    event = custom(7)
    del event["timeUUID"]
    async with FakeAmplitude() as amp:
        relay = await relay_factory(config(amp.url), shutdown_grace="2s")
        await post_export(relay, [event], SECRET)
        await post_export(relay, [dict(event)], SECRET)
        await amp.wait_for(lambda: len(amp.accepted) == 2)
    first, second = amp.insert_ids()
    assert first == second and first.startswith("relay-")


async def test_unicode_names_and_properties_arrive_unchanged(relay_factory: RelayFactory) -> None:
    event = custom(1, user="ユーザー-🦄")
    event["eventName"] = "カートに追加 🛒"
    event["metadata"] = {"città": "Zürich ✓", "emoji": "👩‍👩‍👧", "long": "é" * 3000}
    async with FakeAmplitude() as amp:
        relay = await relay_factory(config(amp.url), shutdown_grace="2s")
        await post_export(relay, [event], SECRET)
        await amp.wait_for(lambda: len(amp.accepted) == 1)
    (sent,) = amp.accepted
    assert sent["event_type"] == "カートに追加 🛒" and sent["user_id"] == "ユーザー-🦄"
    props = sent["event_properties"]
    assert props["città"] == "Zürich ✓" and props["emoji"] == "👩‍👩‍👧"
    assert props["long"] == "é" * 1024  # Amplitude's string limit


# -- partial failure by index ----------------------------------------------------------------


async def test_500_events_two_named_bad_dead_letters_exactly_those_and_delivers_498_once(
    relay_factory: RelayFactory,
) -> None:
    events = [custom(i) for i in range(500)]
    events[17]["user"]["userID"] = "anonymous"  # placeholders Amplitude refuses
    events[411]["user"]["userID"] = "null"
    async with FakeAmplitude() as amp:
        relay = await relay_factory(config(amp.url), shutdown_grace="2s")
        await post_export(relay, events, SECRET)
        await settled(relay, "amp", 498, dead=2)
        dead = await relay.spool.dead_rows("amp")
        bisections = metric(relay, "relay_delivery_requests_total", target="amp", outcome="reject")
    # One refused request naming the two, one with the other 498: no bisection.
    assert [r.status for r in amp.requests] == [400, 200]
    assert amp.requests[0].json["events"] and len(amp.requests[1].json["events"]) == 498
    assert bisections == 0
    assert sorted(amp.insert_ids()) == sorted(
        e["timeUUID"] for i, e in enumerate(events) if i not in (17, 411)
    )
    assert len(set(amp.insert_ids())) == 498  # each once
    bad = sorted(orjson.loads(row.body)[0]["timeUUID"] for row in dead)
    assert bad == [events[17]["timeUUID"], events[411]["timeUUID"]]
    assert all(row.reason == "HTTP 400: invalid field user_id" for row in dead)


async def test_silenced_device_events_are_dead_lettered_and_the_rest_resent(
    relay_factory: RelayFactory,
) -> None:
    events = [custom(i, user="") for i in range(4)]
    for i, event in enumerate(events):
        event["user"] = {"customIDs": {"stableID": f"device-{i}"}}
    async with FakeAmplitude() as amp:
        amp.silence("device-2")
        relay = await relay_factory(config(amp.url), shutdown_grace="2s")
        await post_export(relay, events, SECRET)
        await settled(relay, "amp", 3, dead=1)
        (dead,) = await relay.spool.dead_rows("amp")
    assert [e["device_id"] for e in amp.accepted] == ["device-0", "device-1", "device-3"]
    assert dead.reason == "HTTP 400: silenced device"


def test_a_400_with_a_single_index_per_field_is_read_too() -> None:
    answer = {
        "code": 400,
        "events_with_invalid_fields": {"time": 3, "user_id": [1, 3]},
        "events_with_missing_fields": {"event_type": [0]},
        "silenced_events": [5],
    }
    assert named_events(answer) == {
        3: "invalid field time",
        1: "invalid field user_id",
        0: "missing field event_type",
        5: "silenced device",
    }
    target = AmplitudeTarget("amp", AmplitudeConfig(api_key="k" * 32))
    outcome = target.classify(400, {}, orjson.dumps(answer).decode())
    assert outcome.verdict is Verdict.PARTIAL and not outcome.others_delivered
    assert outcome.events is not None and sorted(outcome.events) == [0, 1, 3, 5]
    plain = target.classify(400, {}, '{"code": 400, "error": "Invalid JSON request body"}')
    assert plain.verdict is Verdict.REJECT  # nothing named: the deliverer bisects


# -- limits ----------------------------------------------------------------------------------


async def test_2500_events_go_as_2000_and_500(relay_factory: RelayFactory) -> None:
    events = [custom(i) for i in range(2500)]
    async with FakeAmplitude() as amp:
        relay = await relay_factory(
            config(amp.url, target=", batch_max_events: 2000, batch_max_bytes: 64MiB"),
            shutdown_grace="2s",
        )
        await post_export(relay, events, SECRET)
        await amp.wait_for(lambda: len(amp.accepted) == 2500)
    assert sorted(len(r.json["events"]) for r in amp.requests) == [500, 2000]
    assert all(r.status == 200 for r in amp.requests)
    assert len(set(amp.insert_ids())) == 2500


async def test_a_request_that_would_reach_1_mb_is_split_before_it_is_sent(
    relay_factory: RelayFactory,
) -> None:
    events = [custom(i, metadata={"blob": f"{i:04d}" + "x" * 1000}) for i in range(1500)]
    async with FakeAmplitude() as amp:
        relay = await relay_factory(
            config(amp.url, target=", batch_max_events: 2000, batch_max_bytes: 64MiB"),
            shutdown_grace="2s",
        )
        await post_export(relay, events, SECRET)
        await amp.wait_for(lambda: len(amp.accepted) == 1500)
    assert all(r.status == 200 and len(r.body) < 1_000_000 for r in amp.requests)
    assert len(amp.requests) >= 2 and len(set(amp.insert_ids())) == 1500


async def test_413_splits_and_delivers_each_event_once(relay_factory: RelayFactory) -> None:
    async with FakeAmplitude() as amp:
        amp.script(too_large())
        relay = await relay_factory(config(amp.url), shutdown_grace="2s")
        await post_export(relay, [custom(i) for i in range(10)], SECRET)
        await settled(relay, "amp", 10)
    assert [len(r.json["events"]) for r in amp.requests] == [10, 5, 5]
    assert sorted(amp.insert_ids()) == sorted(custom(i)["timeUUID"] for i in range(10))


def test_batch_max_events_is_capped_at_2000_and_the_key_is_required() -> None:
    assert AmplitudeConfig(api_key="k").batch_max_events == 1000
    with pytest.raises(ConfigError, match="batch_max_events: at most 2000"):
        AmplitudeConfig(api_key="k", batch_max_events=2001)
    with pytest.raises(ConfigError, match=r"targets\.a\.api_key: required"):
        parse_config("targets: {a: {type: amplitude}}\nroutes: []\n", {})


def test_region_picks_the_host_and_base_url_overrides_it() -> None:
    us = AmplitudeTarget("a", AmplitudeConfig(api_key="k"))
    assert us.url == "https://api2.amplitude.com/2/httpapi"
    eu = AmplitudeTarget("a", AmplitudeConfig(api_key="k", region="eu"))
    assert eu.url == "https://api.eu.amplitude.com/2/httpapi"
    local = AmplitudeConfig(api_key="k", region="eu", base_url="http://127.0.0.1:9/")
    assert AmplitudeTarget("a", local).url == "http://127.0.0.1:9/2/httpapi"
    with pytest.raises(ConfigError, match="region"):
        parse_config("targets: {a: {type: amplitude, api_key: k, region: in}}\nroutes: []\n", {})


# -- retries and credentials -----------------------------------------------------------------


async def test_429_waits_at_least_30_seconds_in_the_spool(relay_factory: RelayFactory) -> None:
    throttled = {"code": 429, "error": "Too many requests for some devices and users"}
    async with FakeAmplitude() as amp:
        amp.script(Answer(429, json={**throttled, "throttled_events": [0], "eps_threshold": 30}))
        relay = await relay_factory(config(amp.url), shutdown_grace="2s")
        await post_export(relay, [custom(1)], SECRET)
        deliverer = relay.deliverers["amp"]
        await poll_until(lambda: deliverer.backoff_s(time.time()) > 0)
        assert deliverer.backoff_s(time.time()) >= 29
        assert [r.status for r in amp.requests] == [429]  # no quick retry within the 30 s
        assert await dead_count(relay, "amp") == 0
    outcome = AmplitudeTarget("a", AmplitudeConfig(api_key="k")).classify(
        429, {"Retry-After": "45"}, ""
    )
    assert outcome.verdict is Verdict.RETRY and outcome.retry_after == 45


async def test_500_then_accepted_delivers_each_event_once(relay_factory: RelayFactory) -> None:
    async with FakeAmplitude() as amp:
        amp.script(Answer(500, json={"code": 500}), Answer(503, json={"code": 503}))
        relay = await relay_factory(config(amp.url), shutdown_grace="2s")
        await post_export(relay, [custom(i) for i in range(3)], SECRET)
        await settled(relay, "amp", 3)
    assert [r.status for r in amp.requests] == [500, 503, 200]
    assert amp.insert_ids() == [custom(i)["timeUUID"] for i in range(3)]


async def test_invalid_api_key_holds_events_until_a_reload_fixes_the_key(
    relay_factory: RelayFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "amp-key-WRONG-1c2d3e4f5a6b"
    async with FakeAmplitude() as amp:
        body = config(amp.url, target=", retry_initial: 50ms, retry_max: 200ms", key=wrong)
        relay = await relay_factory(body, shutdown_grace="2s")
        await post_export(relay, [custom(i) for i in range(3)], SECRET)
        target = relay.targets["amp"]
        await poll_until(lambda: target.health.failing)
        ready, detail = relay.readiness()
        assert ready  # a refused key does not take the relay out of a load balancer
        assert "api_key" in detail["targets"]["amp"]["reason"]
        assert await dead_count(relay, "amp") == 0 and amp.accepted == []
        status, _ = await get(f"http://127.0.0.1:{relay.admin_port}/readyz")
        assert status == 200
        fixed = tmp_path / "fixed.yaml"
        fixed.write_text(relay_yaml(config(amp.url, target=", retry_initial: 50ms"), tmp_path))
        assert await relay.reload(str(fixed))
        await amp.wait_for(lambda: len(amp.accepted) == 3)
        assert await dead_count(relay, "amp") == 0
    assert amp.insert_ids() == [custom(i)["timeUUID"] for i in range(3)]
    assert all(r.json["api_key"] == wrong for r in amp.requests if r.status == 400)
    assert wrong not in caplog.text and API_KEY not in caplog.text
    assert wrong not in target.describe()


# -- the daemon as a process -----------------------------------------------------------------


async def test_daemon_delivers_a_signed_statsig_export_to_amplitude(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    async with FakeAmplitude() as amp:
        text = f"""
server: {{listen: '127.0.0.1:{port}', admin_listen: '127.0.0.1:{admin}', shutdown_grace: 2s}}
spool: {{path: ./spool.db}}
sources:
  statsig: {{type: statsig_webhook, signing_secret: "${{HOOK_SECRET}}"}}
targets:
  amp: {{type: amplitude, api_key: "${{AMP_KEY}}", base_url: "{amp.url}", linger: 0s}}
routes:
  - {{name: to-amp, from: statsig, to: amp}}
"""
        env = {"HOOK_SECRET": SECRET, "AMP_KEY": API_KEY}
        async with DaemonProcess(text, tmp_path, env=env) as daemon:
            await daemon.start(f"http://127.0.0.1:{admin}/readyz")
            body = orjson.dumps(fixture_json("statsig_export_batch.json"))
            url = f"http://127.0.0.1:{port}/webhooks/statsig"
            status, _, _ = await post(url, body, signed_headers(SECRET, body))
            assert status == 200
            await amp.wait_for(lambda: len(amp.accepted) == 5)
            assert await daemon.terminate() == 0
        assert API_KEY not in daemon.log_text()
    assert [e["event_type"] for e in amp.accepted][:2] == ["page_view", "statsig::gate_exposure"]


def test_check_output_never_shows_the_key(tmp_path: Path) -> None:
    path = tmp_path / "relay.yaml"
    path.write_text(relay_yaml(config("http://127.0.0.1:9"), tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "relay", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "amp: amplitude HTTP V2 at http://127.0.0.1:9/2/httpapi" in result.stdout
    assert API_KEY not in result.stdout + result.stderr
