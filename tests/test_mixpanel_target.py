"""Mixpanel target: the real pipeline (Statsig webhook → router → spool → deliverer) against a
fake Mixpanel /import that enforces the documented auth, limits and strict-mode fields."""

from __future__ import annotations

import base64
import gzip
import logging
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from relay.config import parse_config
from relay.schema import ConfigError
from relay.targets.base import Verdict
from relay.targets.mixpanel import (
    MixpanelConfig,
    MixpanelTarget,
    encode_event,
    insert_id,
    throttle_wait,
)
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
from tests.fake_mixpanel import TOKEN, FakeMixpanel
from tests.fakes import Answer, poll_until

SECRET = "whsec-mp-test"


def config(url: str, target: str = "", token: str = TOKEN) -> str:
    return f"""
sources:
  statsig: {{type: statsig_webhook, signing_secret: {SECRET}}}
targets:
  mp: {{type: mixpanel, project_token: "{token}", base_url: "{url}", linger: 0s{target}}}
routes:
  - {{name: to-mp, from: statsig, to: mp}}
"""


def now_ms() -> int:
    return int(time.time() * 1000)


# -- mapping ---------------------------------------------------------------------------------


async def test_exposures_become_experiment_started_and_custom_events_keep_their_name(
    relay_factory: RelayFactory,
) -> None:
    events = fixture_json("statsig_export_batch.json")
    layer = {
        "eventName": "statsig::layer_exposure",
        "user": {"userID": "user_1"},
        "timestamp": 1_700_000_000_000,
        "metadata": {"config": "a_layer", "ruleID": "r", "allocatedExperiment": "exp"},
        "timeUUID": "c0ffee00-0000-4000-8000-000000000001",
    }
    change = {
        "eventName": "statsig::config_change",
        "timestamp": 1_700_000_000_000,
        "metadata": {"type": "Gate", "name": "g", "action": "updated"},
    }
    async with FakeMixpanel() as mp:
        relay = await relay_factory(config(mp.url), shutdown_grace="2s")
        assert await post_export(relay, [*events, layer, change], SECRET) == 200
        await mp.wait_for(lambda: len(mp.accepted) == 6)
        unsupported = metric(
            relay, "relay_events_dropped_total", route="to-mp", reason="unsupported_by_target"
        )
    assert unsupported == 1 and mp.failures == []
    (request,) = mp.requests
    assert request.query["strict"] == "1"
    assert request.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(request.raw) == request.body
    assert (
        request.headers["Authorization"]
        == "Basic " + base64.b64encode(f"{TOKEN}:".encode()).decode()
    )
    page, gate, config_exp, experiment, other, layer_out = mp.accepted
    assert page == {
        "event": "page_view",
        "properties": {
            "page": "home_page",
            "value": "example_value",
            "time": 1644520566967,
            "distinct_id": "user_1",
            "$insert_id": "f4c414a0-8ab5-11ec-a8a3-0242ac120002",
        },
    }
    assert gate["event"] == "$experiment_started"
    assert (gate["properties"]["Experiment name"], gate["properties"]["Variant name"]) == (
        "test_gate",
        "true",
    )
    assert gate["properties"]["ruleID"] == "default"
    assert config_exp["event"] == "$experiment_started"
    assert config_exp["properties"]["Experiment name"] == "a_config"
    assert config_exp["properties"]["Variant name"] == "default"  # the rule
    assert config_exp["properties"]["time"] == 1655231253265
    assert experiment["properties"]["Experiment name"] == "an_experiment"
    assert experiment["properties"]["Variant name"] == "Control"
    assert other["event"] == "my_custom_event"
    assert (
        other["properties"]["key_b"] == "123" and other["properties"]["value"] == "a_custom_value"
    )
    assert layer_out["event"] == "statsig::layer_exposure"  # not an experiment assignment


def test_distinct_id_is_the_user_id_else_the_stable_id_else_empty() -> None:
    with_both = custom(1)
    with_both["user"]["customIDs"] = {"stableID": "device-1"}
    stable_only = custom(2)
    stable_only["user"] = {"customIDs": {"stableID": "device-2"}}
    nobody = custom(3)
    nobody["user"] = {}
    ids = [encode_event(e)["properties"]["distinct_id"] for e in (with_both, stable_only, nobody)]
    assert ids == ["user-1", "device-2", ""]


def test_insert_id_is_the_time_uuid_only_when_mixpanel_takes_it() -> None:
    assert insert_id(custom(1)) == "00000000-0000-4000-8000-000000000001"
    for bad in ("x" * 37, "has space", "semi;colon", 12345):
        event = custom(1, timeUUID=bad)
        made = insert_id(event)
        assert len(made) == 32 and made.isalnum() and made == insert_id(dict(event))
    missing = custom(1)
    del missing["timeUUID"]
    assert insert_id(missing) == insert_id(dict(missing)) != insert_id(custom(2, timeUUID=None))


def test_metadata_that_would_break_mixpanel_limits_is_shaped_not_refused() -> None:
    event = custom(1)
    event["metadata"] = {f"k{i}": i for i in range(400)}
    event["metadata"]["k0"] = {"a": {"b": {"c": {"d": 1}}}}
    event["metadata"]["k1"] = list(range(300))
    event["metadata"]["time"] = "not a time"  # never replaces the required fields
    props = encode_event(event)["properties"]
    assert len(props) < 255
    assert props["k0"] == {"a": {"b": {"c": '{"d":1}'}}}  # three levels of objects
    assert len(props["k1"]) == 254
    assert props["time"] == 1_700_000_000_001


async def test_unicode_names_and_properties_arrive_unchanged(relay_factory: RelayFactory) -> None:
    event = custom(1, user="ユーザー-🦄")
    event["eventName"] = "カートに追加 🛒"
    event["metadata"] = {"città": "Zürich ✓", "emoji": "👩‍👩‍👧"}
    async with FakeMixpanel() as mp:
        relay = await relay_factory(config(mp.url), shutdown_grace="2s")
        await post_export(relay, [event], SECRET)
        await mp.wait_for(lambda: len(mp.accepted) == 1)
    (sent,) = mp.accepted
    assert sent["event"] == "カートに追加 🛒"
    assert sent["properties"]["distinct_id"] == "ユーザー-🦄"
    assert sent["properties"]["città"] == "Zürich ✓" and sent["properties"]["emoji"] == "👩‍👩‍👧"


# -- partial failure by index ----------------------------------------------------------------


async def test_500_events_two_failed_records_dead_letters_those_and_never_resends_the_rest(
    relay_factory: RelayFactory,
) -> None:
    events = [custom(i) for i in range(500)]
    events[3]["user"]["userID"] = "null"  # a placeholder strict mode refuses
    events[250]["timestamp"] = now_ms() + 3 * 3600 * 1000  # more than an hour ahead
    async with FakeMixpanel() as mp:
        relay = await relay_factory(config(mp.url), shutdown_grace="2s")
        await post_export(relay, events, SECRET)
        await settled(relay, "mp", 498, dead=2)
        dead = await relay.spool.dead_rows("mp")
        bisections = metric(relay, "relay_delivery_requests_total", target="mp", outcome="reject")
        queued = (await relay.spool.stats()).queued
    assert [r.status for r in mp.requests] == [400]  # one request: nothing resent, no bisection
    assert bisections == 0 and not queued
    assert mp.requests[0].json and len(mp.requests[0].json) == 500
    expected = [e["timeUUID"] for i, e in enumerate(events) if i not in (3, 250)]
    assert mp.insert_ids() == expected  # each once
    reasons = {orjson.loads(row.body)[0]["timeUUID"]: row.reason for row in dead}
    assert set(reasons) == {events[3]["timeUUID"], events[250]["timeUUID"]}
    assert reasons[events[3]["timeUUID"]].startswith("HTTP 400: properties.distinct_id:")
    assert reasons[events[250]["timeUUID"]].startswith("HTTP 400: properties.time:")


def test_a_400_without_failed_records_is_left_to_the_deliverer_to_bisect() -> None:
    target = MixpanelTarget("mp", MixpanelConfig(project_token="t"))
    outcome = target.classify(400, {}, '{"code": 400, "error": "unable to parse body"}')
    assert outcome.verdict is Verdict.REJECT
    partial = target.classify(
        400, {}, '{"failed_records": [{"index": 1, "field": "event", "message": "m"}, {"x": 1}]}'
    )
    assert partial.verdict is Verdict.PARTIAL and partial.others_delivered
    assert partial.events is not None and list(partial.events) == [1]


# -- limits ----------------------------------------------------------------------------------


async def test_2500_events_go_as_2000_and_500(relay_factory: RelayFactory) -> None:
    events = [custom(i) for i in range(2500)]
    async with FakeMixpanel() as mp:
        relay = await relay_factory(
            config(mp.url, target=", batch_max_bytes: 64MiB"), shutdown_grace="2s"
        )
        assert relay.targets["mp"].config.batch_max_events == 2000
        await post_export(relay, events, SECRET)
        await mp.wait_for(lambda: len(mp.accepted) == 2500)
    assert sorted(len(r.json) for r in mp.requests) == [500, 2000]
    assert len(set(mp.insert_ids())) == 2500


async def test_a_request_over_2_mb_is_split_before_it_is_sent(relay_factory: RelayFactory) -> None:
    events = [custom(i, metadata={"blob": "x" * 2000}) for i in range(1500)]
    async with FakeMixpanel() as mp:
        relay = await relay_factory(
            config(mp.url, target=", batch_max_bytes: 64MiB"), shutdown_grace="2s"
        )
        await post_export(relay, events, SECRET)
        await mp.wait_for(lambda: len(mp.accepted) == 1500)
    assert all(r.status == 200 and len(r.body) <= 2_000_000 for r in mp.requests)
    assert len(mp.requests) >= 2 and len(set(mp.insert_ids())) == 1500


async def test_413_splits_and_delivers_each_event_once(relay_factory: RelayFactory) -> None:
    too_large = Answer(413, json={"code": 413, "error": "request too large", "status": "x"})
    async with FakeMixpanel() as mp:
        mp.script(too_large)
        relay = await relay_factory(config(mp.url), shutdown_grace="2s")
        await post_export(relay, [custom(i) for i in range(10)], SECRET)
        await settled(relay, "mp", 10)
    assert [len(r.json) for r in mp.requests] == [10, 5, 5]
    assert sorted(mp.insert_ids()) == sorted(custom(i)["timeUUID"] for i in range(10))


def test_config_limits_regions_and_required_token() -> None:
    with pytest.raises(ConfigError, match="batch_max_events: at most 2000"):
        MixpanelConfig(project_token="t", batch_max_events=2001)
    with pytest.raises(ConfigError, match=r"targets\.m\.project_token: required"):
        parse_config("targets: {m: {type: mixpanel}}\nroutes: []\n", {})
    urls = {
        region: MixpanelTarget("m", MixpanelConfig(project_token="t", region=region)).url
        for region in ("us", "eu", "in")
    }
    assert urls == {
        "us": "https://api.mixpanel.com/import?strict=1",
        "eu": "https://api-eu.mixpanel.com/import?strict=1",
        "in": "https://api-in.mixpanel.com/import?strict=1",
    }
    local = MixpanelConfig(project_token="t", region="eu", base_url="http://127.0.0.1:9/")
    assert MixpanelTarget("m", local).url == "http://127.0.0.1:9/import?strict=1"


# -- retries and credentials -----------------------------------------------------------------


def test_429_backoff_starts_at_2s_doubles_to_60s_with_1_to_5s_jitter() -> None:
    low = [throttle_wait(n, rng=lambda a, b: a) for n in range(1, 8)]
    assert low == [3, 5, 9, 17, 33, 61, 61]
    assert throttle_wait(1, rng=lambda a, b: b) == 7
    target = MixpanelTarget("m", MixpanelConfig(project_token="t"))
    waits = [target.classify(429, {}, "").retry_after for _ in range(7)]
    assert all(w is not None for w in waits)
    assert 3 <= waits[0] <= 7 and 5 <= waits[1] <= 9 and 61 <= waits[6] <= 65  # type: ignore[operator]
    assert target.classify(200, {}, "").ok
    again = target.classify(429, {}, "").retry_after
    assert again is not None and again <= 7  # the streak ends with an accepted request


async def test_429_is_retried_after_mixpanels_backoff_and_delivered_once(
    relay_factory: RelayFactory,
) -> None:
    limited = {"code": 429, "error": "Project exceeded rate limits.", "status": "Too Many Requests"}
    async with FakeMixpanel() as mp:
        mp.script(Answer(429, json=limited))
        relay = await relay_factory(config(mp.url), shutdown_grace="2s")
        await post_export(relay, [custom(i) for i in range(3)], SECRET)
        await poll_until(lambda: len(mp.accepted) == 3, timeout=15)
    first, second = mp.requests
    assert (first.status, second.status) == (429, 200)
    assert second.received_at - first.received_at >= 2.9  # 2 s + at least 1 s of jitter
    assert mp.insert_ids() == [custom(i)["timeUUID"] for i in range(3)]


async def test_401_holds_events_marks_the_target_failing_then_delivers_them(
    relay_factory: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "mp-token-REVOKED-9a8b7c6d"
    async with FakeMixpanel(token=TOKEN) as mp:
        relay = await relay_factory(
            config(mp.url, target=", retry_initial: 50ms, retry_max: 200ms", token=wrong),
            shutdown_grace="2s",
        )
        await post_export(relay, [custom(i) for i in range(3)], SECRET)
        target = relay.targets["mp"]
        await poll_until(lambda: target.health.failing)
        ready, detail = relay.readiness()
        assert ready and "project_token" in detail["targets"]["mp"]["reason"]
        status, _ = await get(f"http://127.0.0.1:{relay.admin_port}/readyz")
        assert status == 200
        await poll_until(lambda: len(mp.requests) >= 2)  # probed again, still refused
        assert await dead_count(relay, "mp") == 0 and mp.accepted == []
        mp.token = wrong  # the project now takes this token
        await poll_until(lambda: len(mp.accepted) == 3)
        await poll_until(lambda: not target.health.failing)
        assert await dead_count(relay, "mp") == 0
    assert mp.insert_ids() == [custom(i)["timeUUID"] for i in range(3)]
    assert wrong not in caplog.text and wrong not in target.describe()


# -- the daemon as a process -----------------------------------------------------------------


async def test_daemon_delivers_a_signed_statsig_export_to_mixpanel(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    async with FakeMixpanel() as mp:
        text = f"""
server: {{listen: '127.0.0.1:{port}', admin_listen: '127.0.0.1:{admin}', shutdown_grace: 2s}}
spool: {{path: ./spool.db}}
sources:
  statsig: {{type: statsig_webhook, signing_secret: "${{HOOK_SECRET}}"}}
targets:
  mp: {{type: mixpanel, project_token: "${{MP_TOKEN}}", base_url: "{mp.url}", linger: 0s}}
routes:
  - {{name: to-mp, from: statsig, to: mp}}
"""
        env = {"HOOK_SECRET": SECRET, "MP_TOKEN": TOKEN}
        async with DaemonProcess(text, tmp_path, env=env) as daemon:
            await daemon.start(f"http://127.0.0.1:{admin}/readyz")
            body = orjson.dumps(fixture_json("statsig_export_batch.json"))
            url = f"http://127.0.0.1:{port}/webhooks/statsig"
            status, _, _ = await post(url, body, signed_headers(SECRET, body))
            assert status == 200
            await mp.wait_for(lambda: len(mp.accepted) == 5)
            assert await daemon.terminate() == 0
        assert TOKEN not in daemon.log_text()
    assert [e["event"] for e in mp.accepted] == [
        "page_view",
        "$experiment_started",
        "$experiment_started",
        "$experiment_started",
        "my_custom_event",
    ]


def test_check_output_never_shows_the_token(tmp_path: Path) -> None:
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
    assert "mp: mixpanel /import (strict) at http://127.0.0.1:9/import?strict=1" in result.stdout
    assert TOKEN not in result.stdout + result.stderr
