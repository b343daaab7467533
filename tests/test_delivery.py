"""Delivery: retries, Retry-After, bisection to the bad event, dead letters, isolation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from relay.app import Relay
from tests.conftest import (
    RelayFactory,
    admin_url,
    get,
    post,
    post_export,
    relay_yaml,
    scraped_metric,
    spool_empty,
    webhook_url,
)
from tests.fakes import Answer, FakeTarget, FakeTargetFactory, RecordedRequest, poll_until

FAST_RETRY = "retry_initial: 50ms, retry_max: 200ms, timeout: 2s"


def config(fake: FakeTarget, target_extra: str = "", route_extra: str = "") -> str:
    return f"""
sources:
  statsig: {{type: statsig_webhook}}
targets:
  out: {{type: webhook, url: "{fake.url}/in", linger: 0s, {FAST_RETRY}{target_extra}}}
routes:
  - {{name: all, from: statsig, to: out{route_extra}}}
"""


def events(n: int, prefix: str = "e") -> list[dict[str, Any]]:
    return [
        {
            "eventName": "custom",
            "timeUUID": f"{prefix}{i}",
            "timestamp": 1700000000000 + i,
            "user": {"userID": f"u{i}"},
        }
        for i in range(n)
    ]


def uuids(evts: list[dict[str, Any]]) -> list[str]:
    return [e["timeUUID"] for e in evts]


async def test_500_500_200_delivers_once(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets(500, 500, 200)
    relay = await relay_factory(config(fake))
    status = await post_export(relay, events(5))
    assert status == 200
    await fake.wait_for(lambda: any(r.status == 200 for r in fake.requests))
    assert [r.status for r in fake.requests] == [500, 500, 200]
    assert all(uuids(r.events()) == uuids(events(5)) for r in fake.requests)
    await poll_until(lambda: spool_empty(relay))
    assert await scraped_metric(relay, 'relay_events_delivered_total{target="out"}') == 5
    # Each event counted once for the claim that needed retries; the requests separately.
    assert await scraped_metric(relay, 'relay_events_retried_total{target="out"}') == 5
    retried_requests = 'relay_delivery_requests_total{outcome="retry",target="out"}'
    assert await scraped_metric(relay, retried_requests) == 2


async def test_failures_past_in_process_retries_go_back_to_the_spool_then_deliver(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets(503, 503, 503, 200)
    relay = await relay_factory(config(fake, ", retries_in_process: 1"))
    await post_export(relay, events(3))
    await fake.wait_for(lambda: any(r.status == 200 for r in fake.requests))
    await poll_until(lambda: spool_empty(relay))
    assert [r.status for r in fake.requests] == [503, 503, 503, 200]
    assert await scraped_metric(relay, 'relay_events_delivered_total{target="out"}') == 3


async def test_retry_after_is_honoured(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets(Answer(429, headers={"Retry-After": "1"}), 200)
    relay = await relay_factory(config(fake))
    await post_export(relay, events(2))
    await fake.wait_for_requests(2)
    first, second = fake.requests
    assert (first.status, second.status) == (429, 200)
    assert second.received_at - first.received_at >= 0.9


async def test_400_on_one_event_dead_letters_only_that_event(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    def reject_poison(request: RecordedRequest) -> int:
        return 400 if "e7" in uuids(request.events()) else 200

    fake = await fake_targets(default=reject_poison)
    relay = await relay_factory(config(fake))
    await post_export(relay, events(10))
    await poll_until(lambda: spool_empty(relay))
    delivered = [u for r in fake.requests if r.status == 200 for u in uuids(r.events())]
    assert sorted(delivered) == sorted(f"e{i}" for i in range(10) if i != 7)
    dead = await relay.spool.dead_rows()
    assert len(dead) == 1
    assert uuids(orjson.loads(dead[0].body)) == ["e7"]
    assert dead[0].reason.startswith("HTTP 400")
    assert (
        await scraped_metric(
            relay, 'relay_events_dead_lettered_total{reason="http_400",target="out"}'
        )
        == 1
    )


async def test_max_attempts_dead_letters_with_the_last_error(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets(default=500)
    relay = await relay_factory(config(fake, ", retries_in_process: 1, max_attempts: 2"))
    await post_export(relay, events(4))
    await poll_until(lambda: spool_empty(relay))
    dead = await relay.spool.dead_rows()
    assert [d.count for d in dead] == [4]
    assert "gave up after 2 attempts" in dead[0].reason and "HTTP 500" in dead[0].reason
    assert len(fake.requests) == 2


async def test_501_and_404_are_permanent_not_retried(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    # The target has taken an event, so refusing the next one is that event's fault.
    fake = await fake_targets(200, default=501)
    relay = await relay_factory(config(fake))
    await post_export(relay, events(1, prefix="good"))
    await fake.wait_for_requests(1)
    await post_export(relay, events(1))
    await poll_until(lambda: spool_empty(relay))
    assert len(fake.requests) == 2
    assert (await relay.spool.dead_rows())[0].reason.startswith("HTTP 501")


async def test_a_hanging_target_does_not_block_another_target_or_ingest(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    hanging = await fake_targets(default=Answer(200, delay=float("inf")))
    healthy = await fake_targets()
    relay = await relay_factory(f"""
sources:
  statsig: {{type: statsig_webhook}}
targets:
  slow: {{type: webhook, url: "{hanging.url}/in", linger: 0s, timeout: 300ms, concurrency: 1,
          {FAST_RETRY.replace("timeout: 2s", "retries_in_process: 1")}}}
  fast: {{type: webhook, url: "{healthy.url}/in", linger: 0s}}
routes:
  - {{name: to-slow, from: statsig, to: slow}}
  - {{name: to-fast, from: statsig, to: fast}}
""")
    for i in range(5):
        status = await post_export(relay, events(2, prefix=f"b{i}-"))
        assert status == 200
    await healthy.wait_for(lambda: len(healthy.events()) == 10, timeout=5)
    await hanging.wait_for_requests(2)  # timed out and retried, holding only its own slot
    stats = await relay.spool.stats()
    assert stats.queued["slow"].events == 10 and "fast" not in stats.queued


async def test_rows_are_merged_into_batches_within_the_target_limits(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(
        config(fake, ", batch_max_events: 10, concurrency: 1").replace("linger: 0s", "linger: 1s")
    )
    for i in range(6):
        await post_export(relay, events(4, prefix=f"b{i}-"))
    await fake.wait_for(lambda: len(fake.events()) == 24)
    sizes = [len(r.events()) for r in fake.requests]
    assert max(sizes) <= 10
    assert len(sizes) < 6  # merged: fewer requests than ingest requests
    assert sorted(uuids(fake.events())) == sorted(f"b{i}-{j}" for i in range(6) for j in range(4))


async def test_a_row_larger_than_the_batch_limit_is_split(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake, ", batch_max_events: 7"))
    await post_export(relay, events(20))
    await fake.wait_for(lambda: len(fake.events()) == 20)
    assert [len(r.events()) for r in fake.requests] == [7, 7, 6]


async def test_spool_full_answers_503_with_retry_after(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets(default=Answer(503, delay=0.05))
    relay = await relay_factory(config(fake), spool="max_size: 2KB", server="retry_after: 7s")
    statuses = []
    for i in range(10):
        status, payload, headers = await post(
            webhook_url(relay), orjson.dumps(events(5, prefix=f"b{i}-"))
        )
        statuses.append(status)
        if status == 503:
            assert headers["Retry-After"] == "7"
            assert "spool is full" in payload["error"]
            break
    assert statuses[0] == 200 and statuses[-1] == 503
    _, ready = await get(admin_url(relay, "/readyz"))
    assert "spool is full" in ready


async def test_dead_letters_can_be_replayed(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets(200, 400)  # takes one event, refuses the next, then takes all
    relay = await relay_factory(config(fake))
    await post_export(relay, events(1, prefix="good"))
    await fake.wait_for_requests(1)
    await post_export(relay, events(1))
    await poll_until(lambda: _dead_count(relay, 1))
    moved = await relay.spool.replay_dead("out")
    assert moved == 1
    await fake.wait_for(lambda: sum(r.status == 200 for r in fake.requests) == 2)
    await poll_until(lambda: spool_empty(relay))
    assert await relay.spool.dead_rows() == []


async def _dead_count(relay: Relay, n: int) -> bool:
    return sum(d.count for d in await relay.spool.dead_rows()) == n


async def test_a_reload_while_a_batch_lingers_gives_its_rows_to_the_new_deliverer_at_once(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory, tmp_path: Path
) -> None:
    """The old deliverer, stopped while lingering on a claim, gives the rows back rather than
    leaving them leased for the lease's length (minutes) before the new one may claim them."""
    fake = await fake_targets()
    text = relay_yaml(
        config(fake, ", batch_max_events: 100").replace("linger: 0s", "linger: 60s"), tmp_path
    )
    relay = await relay_factory(text, full=True)
    assert await post_export(relay, events(3)) == 200
    # The deliverer has claimed the row and lingers for more (60 s): its lease is held.
    await poll_until(lambda: relay.spool._due._leased == 1)  # type: ignore[attr-defined]
    changed = tmp_path / "changed.yaml"
    changed.write_text(text.replace("linger: 60s", "linger: 0s"))
    assert await relay.reload(str(changed))
    await fake.wait_for(lambda: len(fake.requests) == 1, timeout=5)
    assert uuids(fake.requests[0].events()) == uuids(events(3))
