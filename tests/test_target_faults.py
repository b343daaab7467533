"""Faults every target shares, enforced once in relay/deliver.py, not per target.

* An event a target cannot encode is permanent for that event alone: it is isolated, dead-
  lettered with reason ``encode_error`` and counted; the events batched with it are delivered.
  The rows go straight into the spool (the ingest path may reject such events first; a row
  stored by an older version, or spliced raw, still reaches the target).
* 401/403 is the target's problem, not the events': no bisection, the target is marked failing
  (on /status and the metrics; ``/readyz`` stays 200: the relay still accepts and commits), the
  events are held and delivered once the credential works.
* An answer is read up to a bound, never whole: a 2xx that is huge or endless is delivered, an
  error answer past the bound is read by its status with a reason saying it was cut, and the
  per-event answers of Mixpanel (2000 failed records) still parse.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest

from relay.app import Relay
from relay.events import now_ms
from relay.spool.records import NewRow
from relay.targets.base import Batch, Outcome, Target, Verdict
from relay.targets.mixpanel import MixpanelConfig, MixpanelTarget
from relay.targets.webhook import WebhookConfig, WebhookTarget
from tests.conftest import RelayFactory, admin_url, custom, get, metric, spool_empty
from tests.fake_statsig import FakeStatsig
from tests.fakes import Answer, FakeTarget, FakeTargetFactory, poll_until

FAST = "linger: 0s, retry_initial: 50ms, retry_max: 300ms, retries_in_process: 1, timeout: 2s"
KEY = "secret-faults-key"
# Timestamps ingest now refuses, still found in rows stored before: epoch ms in year 318857 (no
# date type holds it: Heap's and Chronosphere's date formatting fail) and a number over 64 bits
# (Statsig's integer time cannot be written).
YEAR_318857 = 10**16
TOO_BIG = 1e22


def deep(levels: int = 300) -> Any:
    """A value nested deeper than orjson writes (254): readable from the spool, not encodable."""
    value: Any = "bottom"
    for _ in range(levels):
        value = {"n": value}
    return value


def event(tag: str, name: str = "purchase", **extra: Any) -> dict[str, Any]:
    return {
        "eventName": name,
        "timeUUID": tag,
        "value": tag,
        "timestamp": 1700000000000,
        "user": {"userID": f"user-{tag}"},
        "metadata": {"name": tag, "type": "gate", "action": "updated"},
        **extra,
    }


def change(tag: str, **extra: Any) -> dict[str, Any]:
    return event(tag, "statsig::config_change", **extra)


async def spool_row(relay: Relay, target: str, *rows: list[dict[str, Any]]) -> None:
    """Stored rows (one commit), as ingest (or the raw path, relay/raw.py) would have written
    them; the stdlib writes what orjson will not (nesting past 254)."""
    await relay.spool.enqueue(
        [
            NewRow(
                target,
                "all",
                json.dumps(events, separators=(",", ":")).encode(),
                len(events),
                now_ms(),
            )
            for events in rows
        ]
    )


def config(heap: FakeTarget, chrono: FakeTarget, statsig: FakeStatsig, hook: FakeTarget) -> str:
    return f"""
sources:
  statsig: {{type: statsig_webhook}}
targets:
  heap: {{type: heap, app_id: "42", base_url: "{heap.url}", user_properties: false, {FAST}}}
  chrono: {{type: chronosphere, url: "{chrono.url}", api_token: tok-abc, {FAST}}}
  statsig: {{type: statsig, server_secret: "{KEY}", url: "{statsig.log_event_url}", {FAST}}}
  hook: {{type: webhook, url: "{hook.url}/in", batch_max_events: 2, {FAST}}}
routes:
  - {{name: all, from: statsig, to: heap}}
  - {{name: c, from: statsig, to: chrono}}
  - {{name: s, from: statsig, to: statsig}}
  - {{name: h, from: statsig, to: hook}}
"""


def heap_tags(fake: FakeTarget) -> set[str]:
    return {
        e["idempotency_key"]
        for r in fake.requests
        if r.status == 200 and r.path == "/api/track"
        for e in r.json["events"]
    }


def chrono_tags(fake: FakeTarget) -> set[str]:
    return {r.json["event"]["labels"]["name"] for r in fake.requests if r.status == 200}


def statsig_tags(fake: FakeStatsig) -> set[str]:
    return {e["value"] for e in fake.delivered()}


def hook_tags(fake: FakeTarget) -> set[str]:
    return {e["timeUUID"] for r in fake.requests if r.status == 200 for e in r.events()}


async def test_an_event_a_target_cannot_encode_is_dead_lettered_alone_and_the_rest_delivered(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    heap, chrono, hook = await fake_targets(), await fake_targets(), await fake_targets()
    async with FakeStatsig(KEY) as statsig:
        relay = await relay_factory(config(heap, chrono, statsig, hook))
        good = [f"g{i}" for i in range(4)]
        bad = {"timestamp": YEAR_318857}
        rows = {
            "heap": [event(t) for t in good[:2]]
            + [event("bad", **bad)]
            + [event(t) for t in good[2:]],
            "chrono": [change(t) for t in good[:2]]
            + [change("bad", **bad)]
            + [change(t) for t in good[2:]],
            "statsig": [event(t) for t in good[:2]]
            + [event("bad", timestamp=TOO_BIG)]
            + [event(t) for t in good[2:]],
            # The webhook forwards the stored bytes, even when a row is cut to its limit: an
            # event the relay could not re-encode still goes out as it was received.
            "hook": [event(t) for t in good[:2]]
            + [event("bad", nested=deep())]
            + [event(t) for t in good[2:]],
        }
        for target, events in rows.items():
            await spool_row(relay, target, events)
        await poll_until(lambda: spool_empty(relay), timeout=15)

        delivered = {
            "heap": heap_tags(heap),
            "chrono": chrono_tags(chrono),
            "statsig": statsig_tags(statsig),
            "hook": hook_tags(hook),
        }
        assert delivered.pop("hook") == {*good, "bad"}
        assert await relay.spool.dead_rows("hook") == []
        for target in delivered:
            assert delivered[target] == set(good), target
            dead = await relay.spool.dead_rows(target)
            assert [e["timeUUID"] for row in dead for e in orjson.loads(row.body)] == ["bad"]
            assert dead[0].reason.startswith("encode_error: "), dead[0].reason
            assert (
                metric(
                    relay, "relay_events_dead_lettered_total", target=target, reason="encode_error"
                )
                == 1
            )
        assert statsig.failures == []


@pytest.mark.parametrize("kind", ["webhook", "fivetran", "heap"])
@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_credential_holds_the_events_fails_the_target_then_recovers(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory, kind: str, status: int
) -> None:
    fake = await fake_targets(status, status)  # refused twice, then the key works (200)
    target = {
        "webhook": f'{{type: webhook, url: "{fake.url}/in", headers: {{Authorization: "Bearer k"}}',
        "fivetran": f'{{type: fivetran, url: "{fake.url}/hook", hmac_secret: hm-secret',
        "heap": f'{{type: heap, app_id: "42", base_url: "{fake.url}", user_properties: false',
    }[kind]
    relay = await relay_factory(
        f"""
sources:
  statsig: {{type: statsig_webhook}}
targets:
  out: {target}, {FAST}, retry_initial: 100ms}}
routes:
  - {{name: all, from: statsig, to: out}}
"""
    )
    events = [event(f"e{i}") for i in range(6)]
    await spool_row(relay, "out", events[:3], events[3:])

    async def readyz() -> tuple[int, str]:
        return await get(admin_url(relay, "/readyz"))

    await poll_until(lambda: relay.targets["out"].health.failing)
    code, body = await readyz()
    assert code == 200  # the relay still accepts and commits; the target's state is elsewhere
    detail = orjson.loads(body)["targets"]["out"]
    assert detail["state"] == "failing" and f"HTTP {status}" in detail["reason"]
    assert metric(relay, "relay_target_failing", target="out") == 1

    await poll_until(lambda: spool_empty(relay), timeout=15)
    sent = [r for r in fake.requests if r.path != "/api/add_user_properties"]
    assert [r.status for r in sent] == [status, status, 200]  # one probe at a time
    assert all(len(r.events()) == 6 for r in sent)  # never bisected
    assert await relay.spool.dead_rows("out") == []
    assert metric(relay, "relay_events_delivered_total", target="out") == 6
    assert metric(relay, "relay_target_failing", target="out") == 0
    assert (await readyz())[0] == 200


async def test_a_refusal_held_past_max_age_is_dead_lettered_as_unauthorized(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets(default=Answer(401))
    relay = await relay_factory(
        f"""
sources:
  statsig: {{type: statsig_webhook}}
targets:
  out: {{type: webhook, url: "{fake.url}/in", max_age: 300ms, {FAST}}}
routes:
  - {{name: all, from: statsig, to: out}}
"""
    )
    await spool_row(relay, "out", [event("old")])
    await poll_until(lambda: spool_empty(relay), timeout=15)
    dead = await relay.spool.dead_rows("out")
    assert [row.count for row in dead] == [1]
    assert dead[0].reason.startswith("unauthorized: held past max_age")
    assert (
        metric(relay, "relay_events_dead_lettered_total", target="out", reason="unauthorized") == 1
    )
    assert relay.targets["out"].health.failing


MiB = 1024 * 1024


def endless(chunk: int = 64 * 1024, most: int = 64 * MiB) -> Iterator[bytes]:
    """An answer body no one should read whole: ``most`` bytes, in ``chunk``-sized writes."""
    return itertools.repeat(b"x" * chunk, most // chunk)


async def timed_send(target: Target, batch: Batch) -> tuple[Outcome, float]:
    await target.open()
    try:
        start = time.monotonic()
        outcome = await target.send(batch)
        return outcome, time.monotonic() - start
    finally:
        await target.close()


@pytest.mark.parametrize(
    ("status", "verdict"), [(200, Verdict.OK), (400, Verdict.REJECT), (503, Verdict.RETRY)]
)
async def test_an_endless_answer_is_cut_and_read_by_its_status(
    fake_targets: FakeTargetFactory, status: int, verdict: Verdict
) -> None:
    fake = await fake_targets(Answer(status, stream=endless()))
    hook = WebhookTarget("hook", WebhookConfig(url=f"{fake.url}/in", timeout=5.0))
    outcome, took = await timed_send(hook, Batch.of_events([event("a")]))
    assert outcome.verdict is verdict, outcome
    assert took < 5.0  # answered on the bound, not on the timeout
    if status != 200:
        assert outcome.reason.startswith(f"HTTP {status}: xxx")
        assert outcome.reason.endswith("(answer cut at 64 KiB)")
    # The relay hung up after the bound: the fake wrote far less than it had to give.
    await poll_until(lambda: fake.requests[0].status == status)
    assert fake.requests[0].streamed < 16 * MiB


@pytest.mark.parametrize(
    ("status", "verdict"), [(200, Verdict.OK), (400, Verdict.REJECT), (503, Verdict.RETRY)]
)
async def test_an_answer_that_stops_arriving_is_read_by_its_status_at_the_timeout(
    fake_targets: FakeTargetFactory, status: int, verdict: Verdict
) -> None:
    stalled = asyncio.Event()
    release = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield b'{"error": "part'
        stalled.set()
        await release.wait()  # set when the test ends, so the fake's handler ends too

    fake = await fake_targets(Answer(status, stream=stalls()))
    hook = WebhookTarget("hook", WebhookConfig(url=f"{fake.url}/in", timeout=0.5))
    try:
        outcome, _ = await timed_send(hook, Batch.of_events([event("a")]))
    finally:
        release.set()
    assert stalled.is_set()
    assert outcome.verdict is verdict, outcome  # a 2xx is never resent for its body
    if status != 200:
        assert outcome.reason == f'HTTP {status}: {{"error": "part (answer cut by the timeout)'


async def test_mixpanels_2000_failed_records_parse_from_an_answer_past_the_common_bound(
    fake_targets: FakeTargetFactory,
) -> None:
    records = [
        {
            "index": i,
            "$insert_id": f"00000000-0000-4000-8000-{i:012d}",
            "field": "properties.time",
            "message": "'properties.time' is before 1971 or more than 1h in the future",
        }
        for i in range(2000)
    ]
    answer = orjson.dumps({"code": 400, "status": "Bad Request", "failed_records": records})
    assert len(answer) > 256 * 1024
    chunks = [answer[i : i + 4096] for i in range(0, len(answer), 4096)]  # as a network gives it
    fake = await fake_targets(Answer(400, stream=chunks))
    mp = MixpanelTarget("mp", MixpanelConfig(project_token="t", base_url=fake.url))
    outcome, _ = await timed_send(mp, Batch.of_events([custom(i) for i in range(2000)]))
    assert outcome.verdict is Verdict.PARTIAL, outcome.reason
    assert outcome.events is not None and sorted(outcome.events) == list(range(2000))
