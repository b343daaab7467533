"""Chronosphere target: config changes become change events, through the real pipeline, against
a fake Chronosphere that enforces the documented field limits and the ±24 h window."""

from __future__ import annotations

import logging
from datetime import datetime

import orjson
import pytest

from relay.app import Relay
from relay.config import parse_config
from relay.events import now_ms
from relay.schema import ConfigError
from relay.targets.chronosphere import (
    ChronosphereConfig,
    ChronosphereTarget,
    change_event,
    rfc3339,
)
from tests.conftest import RelayFactory, fixture_json, metric, post_export
from tests.fakes import Answer, FakeTarget, RecordedRequest, poll_until

TOKEN = "chrono-token-do-not-log"
PATH = "/api/v1/data/events"
CATEGORIES = {
    "alerts",
    "broadcasts",
    "chronosphere",
    "deploys",
    "feature_flags",
    "infrastructure",
    "third_party",
}
EVENT_KEYS = {"category", "type", "source", "title", "happened_at", "labels"}
DAY_MS = 24 * 3600 * 1000


def parse_rfc3339_ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def chronosphere_check(req: RecordedRequest) -> None:
    """Chronosphere's CreateEvent API and its documented limits (docs: change event limits)."""
    assert (req.method, req.path) == ("POST", PATH), f"{req.method} {req.path}"
    assert req.headers.get("API-Token") == TOKEN, "API-Token header missing or wrong"
    assert req.headers.get("Content-Type", "").startswith("application/json")
    assert len(req.raw) < 1024 * 1024, "request must be under 1 MB"
    assert isinstance(req.json, dict) and set(req.json) == {"event"}, "body is {event: {...}}"
    event = req.json["event"]
    assert set(event) <= EVENT_KEYS and {"category", "type", "source", "title"} <= set(event)
    assert event["category"] in CATEGORIES, event["category"]
    assert 0 < len(event["title"]) <= 100, f"title of {len(event['title'])} chars"
    assert 0 < len(event["source"]) <= 50 and 0 < len(event["type"]) <= 50
    labels = event.get("labels", {})
    assert len(labels) <= 200
    for key, value in labels.items():
        assert isinstance(value, str) and len(key) <= 500 and len(value) <= 5000, key[:40]
    happened = parse_rfc3339_ms(event["happened_at"])
    assert abs(happened - now_ms()) <= DAY_MS, f"happened_at {event['happened_at']} out of ±24 h"


def config(url: str, target: str = "", route: str = "") -> str:
    return f"""
sources:
  statsig: {{type: statsig_webhook}}
targets:
  chrono: {{type: chronosphere, url: "{url}", api_token: "{TOKEN}", linger: 0s{target}}}
routes:
  - {{name: changes, from: statsig, to: chrono{route}}}
"""


async def settled(relay: Relay, delivered: int, dead: int = 0) -> None:
    """Wait until the target delivered and dead-lettered these many events."""

    def done() -> bool:
        ok = metric(relay, "relay_events_delivered_total", target="chrono")
        dlq = sum(
            s.value
            for m in relay.metrics.registry.collect()
            if m.name == "relay_events_dead_lettered"
            for s in m.samples
            if s.name.endswith("_total") and s.labels.get("target") == "chrono"
        )
        return ok >= delivered and dlq >= dead

    await poll_until(done, message="delivered/dead-lettered counts not reached")


def config_change(
    name: str, action: str = "updated", at_ms: int | None = None, **meta: str
) -> dict:
    return {
        "eventName": "statsig::config_change",
        "timestamp": now_ms() if at_ms is None else at_ms,
        "user": {"name": "Test User", "email": "testuser@email.com"},
        "metadata": {"type": "Gate", "name": name, "action": action, **meta},
    }


# -- the mapping -----------------------------------------------------------------------------


def test_fixture_config_changes_map_exactly() -> None:
    changes = fixture_json("statsig_config_changes.json")["data"]
    expected = fixture_json("expected_chronosphere_events.json")
    assert [{"event": change_event(c)} for c in changes] == expected


def test_rfc3339_keeps_milliseconds_only_when_there_are_any() -> None:
    assert rfc3339(1709660061095) == "2024-03-05T17:34:21.095Z"
    assert rfc3339(1709660062000) == "2024-03-05T17:34:22Z"


def test_missing_fields_still_make_a_valid_change_event() -> None:
    event = {"eventName": "statsig::config_change", "timestamp": "1709660062000", "metadata": {}}
    change = change_event(event)
    assert change["type"] == "config_changed" and change["title"] == "(unnamed) changed"
    assert change["happened_at"] == "2024-03-05T17:34:22Z"
    assert "description" not in change["labels"]


# -- end to end ------------------------------------------------------------------------------


async def test_fixture_config_changes_arrive_as_expected_change_events(
    relay_factory: RelayFactory,
) -> None:
    changes = fixture_json("statsig_config_changes.json")
    expected = fixture_json("expected_chronosphere_events.json")
    # Shift to the present (whole seconds, so the millisecond formatting is the fixture's).
    shift = (now_ms() - changes["data"][0]["timestamp"]) // 1000 * 1000
    for change in changes["data"]:
        change["timestamp"] += shift
    for item in expected:
        item["event"]["happened_at"] = rfc3339(
            parse_rfc3339_ms(item["event"]["happened_at"]) + shift
        )
    async with FakeTarget(check=chronosphere_check) as fake:
        relay = await relay_factory(config(fake.url), shutdown_grace="2s")
        assert await post_export(relay, changes) == 200
        await settled(relay, 2)
    assert fake.failures == []
    assert [r.json for r in fake.requests] == expected


async def test_27_hour_old_change_is_sent_clamped_with_its_real_time_in_a_label(
    relay_factory: RelayFactory,
) -> None:
    old_ms = now_ms() - 27 * 3600 * 1000
    async with FakeTarget(check=chronosphere_check) as fake:
        relay = await relay_factory(config(fake.url), shutdown_grace="2s")
        await post_export(relay, [config_change("old_gate", at_ms=old_ms)])
        await settled(relay, 1)
    assert fake.failures == []  # inside the window, so Chronosphere takes it
    (req,) = fake.requests
    event = req.json["event"]
    assert event["labels"]["original_happened_at"] == rfc3339(old_ms)
    age = now_ms() - parse_rfc3339_ms(event["happened_at"])
    assert 23 * 3600 * 1000 < age < DAY_MS  # clamped near the start of the window
    assert event["title"] == "old_gate updated"


async def test_other_categories_are_never_sent_even_without_a_filter(
    relay_factory: RelayFactory,
) -> None:
    exports = fixture_json("statsig_export_batch.json")  # 5 events, none a config change
    mixed = [*exports[:3], config_change("mixed_gate", "created"), *exports[3:]]
    async with FakeTarget(check=chronosphere_check) as fake:
        relay = await relay_factory(
            config(fake.url), shutdown_grace="2s"
        )  # the route has no filter
        assert await post_export(relay, mixed) == 200
        dropped = metric(
            relay, "relay_events_dropped_total", route="changes", reason="unsupported_by_target"
        )
        await settled(relay, 1)
    assert dropped == 5
    assert [r.json["event"]["title"] for r in fake.requests] == ["mixed_gate created"]
    target = ChronosphereTarget("c", ChronosphereConfig(tenant="acme", api_token="t"))
    assert target.accepts("config_change")
    assert not any(
        target.accepts(c)
        for c in ("gate_exposure", "experiment_exposure", "custom", "statsig_internal")
    )


async def test_long_fields_are_cut_with_a_marker_not_rejected(relay_factory: RelayFactory) -> None:
    change = config_change(
        "n" * 300, action="updated", description="d" * 6000, type="VeryLongConfigType" * 5
    )
    async with FakeTarget(check=chronosphere_check) as fake:
        relay = await relay_factory(config(fake.url), shutdown_grace="2s")
        await post_export(relay, [change])
        await settled(relay, 1)
    assert fake.failures == []
    event = fake.requests[0].json["event"]
    assert len(event["title"]) == 100 and event["title"].endswith("…")
    assert len(event["type"]) == 50 and event["type"].endswith("…")
    assert event["labels"]["description"] == "d" * 4999 + "…"
    assert event["labels"]["name"] == "n" * 300  # within the label limit: whole


async def test_a_rejected_change_is_dead_lettered_alone(relay_factory: RelayFactory) -> None:
    changes = [config_change(f"gate_{i}") for i in range(3)]
    async with FakeTarget(check=chronosphere_check) as fake:
        fake.script(200, Answer(400, json={"message": "invalid event"}), 200)
        relay = await relay_factory(config(fake.url), shutdown_grace="2s")
        await post_export(relay, changes)  # one request, one spool row of three events
        await settled(relay, 2, dead=1)
        dead = await relay.spool.dead_rows("chrono")
    assert [r.json["event"]["title"] for r in fake.requests] == [
        "gate_0 updated",
        "gate_1 updated",
        "gate_2 updated",
    ]
    assert [orjson.loads(d.body)[0]["metadata"]["name"] for d in dead] == ["gate_1"]
    assert dead[0].reason.startswith("HTTP 400")


async def test_a_retried_change_does_not_resend_the_ones_already_accepted(
    relay_factory: RelayFactory,
) -> None:
    changes = [config_change(f"flag_{i}") for i in range(3)]
    async with FakeTarget(check=chronosphere_check) as fake:
        fake.script(200, 503, 200)
        relay = await relay_factory(
            config(fake.url, target=", retries_in_process: 1, retry_initial: 100ms"),
            shutdown_grace="2s",
        )
        await post_export(relay, changes)
        await settled(relay, 3)
    titles = [r.json["event"]["title"] for r in fake.requests]
    assert titles == ["flag_0 updated", "flag_1 updated", "flag_2 updated", "flag_1 updated"]
    assert [r.status for r in fake.requests] == [200, 503, 200, 200]


async def test_refused_token_holds_the_change_marks_the_target_failing_without_logging_it(
    relay_factory: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with FakeTarget(check=chronosphere_check) as fake:
        fake.script(Answer(401, json={"message": "unauthenticated"}))
        relay = await relay_factory(
            config(fake.url, target=", retry_initial: 50ms, retry_max: 200ms"),
            shutdown_grace="2s",
        )
        await post_export(relay, [config_change("secret_gate")])
        await poll_until(lambda: relay.targets["chrono"].health.failing)
        ready, detail = relay.readiness()
        assert ready and detail["targets"]["chrono"]["failing"]
        assert "HTTP 401" in detail["targets"]["chrono"]["reason"]
        await settled(relay, 1)  # the token works again (the script ran out): delivered
        assert await relay.spool.dead_rows("chrono") == []
        assert [r.status for r in fake.requests] == [401, 200]
        assert relay.readiness()[0]
    assert TOKEN not in caplog.text
    assert TOKEN not in relay.targets["chrono"].describe()


# -- config ----------------------------------------------------------------------------------


def test_url_or_tenant_and_one_event_per_request() -> None:
    by_tenant = ChronosphereTarget("c", ChronosphereConfig(tenant="acme", api_token="t"))
    assert by_tenant.url == "https://acme.chronosphere.io/api/v1/data/events"
    by_url = ChronosphereConfig(url="https://acme.chronosphere.io/", api_token="t")
    assert by_url.events_url() == "https://acme.chronosphere.io/api/v1/data/events"
    assert by_url.batch_max_events == 1
    with pytest.raises(ConfigError, match="url"):
        ChronosphereConfig(api_token="t")
    with pytest.raises(ConfigError, match="url"):
        ChronosphereConfig(url="https://a.chronosphere.io", tenant="a", api_token="t")
    with pytest.raises(ConfigError, match="batch_max_events: must be 1"):
        ChronosphereConfig(tenant="acme", api_token="t", batch_max_events=10)
    with pytest.raises(ConfigError, match=r"targets\.c\.api_token: required"):
        parse_config("targets: {c: {type: chronosphere, tenant: acme}}\nroutes: []\n", {})


def test_rate_limit_keeps_under_300_a_minute() -> None:
    target = ChronosphereTarget("c", ChronosphereConfig(tenant="acme", api_token="t"))
    bucket = target.bucket
    assert bucket.burst + bucket.rate * 60 <= 300
    burst = int(bucket.burst)
    waits = [bucket.reserve(1) for _ in range(burst + 1)]
    assert waits[:burst] == [0.0] * burst  # a short burst goes at once
    assert waits[burst] == pytest.approx(1 / bucket.rate, rel=0.05)  # then ~4.8 a second
