"""Two real relays sharing one Redis spool: each event delivered once, a dead replica's claims
taken over by the other after the lease (``spool.lease``) runs out.

Both relays run in the test's event loop with a ``statsig_webhook`` source and a ``webhook``
target named ``sink`` that points at one FakeTarget; each relay's target sends an ``X-Relay``
header so the fake can tell who delivered what.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from relay.app import Relay
from tests.conftest import RelayFactory, post_export, spool_empty
from tests.fakes import Answer, FakeTarget, RecordedRequest, poll_until
from tests.test_spool_contract import delete_prefix, redis_url  # noqa: F401  (fixture)

LEASE = 2.0
StartRelay = Callable[[str, str], Awaitable[Relay]]


@pytest.fixture
async def start_relay(
    redis_url: str,  # noqa: F811
    relay_factory: RelayFactory,
) -> AsyncIterator[StartRelay]:
    """``await start_relay(name, sink_url)``: a started Relay on this test's shared Redis queue;
    stopped here, before the queue's keys are deleted."""
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    started: list[Relay] = []

    async def start(name: str, sink_url: str) -> Relay:
        yaml = f"""
server: {{listen: '127.0.0.1:0', admin_listen: '127.0.0.1:0', shutdown_grace: 2s}}
spool: {{backend: redis, url: '{redis_url}', prefix: '{prefix}', lease: {LEASE:g}s}}
sources:
  statsig: {{type: statsig_webhook, path: /webhooks/statsig}}
targets:
  sink: {{type: webhook, url: '{sink_url}/ingest', headers: {{X-Relay: {name}}}, linger: 0,
          batch_max_events: 50, concurrency: 4}}
routes:
  - {{name: all, from: statsig, to: sink}}
"""
        relay = await relay_factory(yaml, full=True)
        started.append(relay)
        return relay

    yield start
    for relay in started:
        await relay.stop()
    await delete_prefix(redis_url, prefix)


def make_batch(n: int) -> list[dict[str, Any]]:
    now = int(time.time() * 1000)
    return [
        {
            "eventName": "page_view",
            "user": {"userID": f"user_{i}"},
            "userID": f"user_{i}",
            "timestamp": now,
            "metadata": {"page": "home"},
            "timeUUID": str(uuid.uuid4()),
        }
        for i in range(n)
    ]


async def post_batches(relays: list[Relay], batches: list[list[dict[str, Any]]]) -> None:
    """POST each batch to the relays in turn, all at once; every answer must be a 2xx."""
    statuses = await asyncio.gather(
        *(post_export(relays[i % len(relays)], batch) for i, batch in enumerate(batches))
    )
    assert all(200 <= s < 300 for s in statuses), statuses


def delivered_by(fake: FakeTarget, relay: str) -> list[str]:
    return [
        event["timeUUID"]
        for req in fake.requests
        if req.headers.get("X-Relay") == relay and req.status == 200
        for event in req.events()
    ]


def check_shape(req: RecordedRequest) -> None:
    assert req.path == "/ingest", req.path
    assert req.headers.get("X-Relay") in ("a", "b"), "request without the relay's header"
    assert req.is_json and isinstance(req.json, list) and req.json, "expected a JSON array"
    assert all("timeUUID" in e for e in req.json), "event without timeUUID"


async def test_two_relays_on_one_queue_deliver_every_event_exactly_once(
    start_relay: StartRelay,
) -> None:
    async with FakeTarget(check=check_shape) as fake:
        relay_a = await start_relay("a", fake.url)
        relay_b = await start_relay("b", fake.url)
        batches = [make_batch(10) for _ in range(40)]
        sent = [e["timeUUID"] for batch in batches for e in batch]

        await post_batches([relay_a, relay_b], batches)

        def all_delivered() -> bool:
            return set(delivered_by(fake, "a") + delivered_by(fake, "b")) == set(sent)

        await fake.wait_for(all_delivered, timeout=15)
        await poll_until(lambda: spool_empty(relay_a), timeout=10)  # every row acked
        counts = Counter(delivered_by(fake, "a") + delivered_by(fake, "b"))
        assert [uid for uid, n in counts.items() if n != 1] == []
        assert len(counts) == len(sent) == 400
        assert delivered_by(fake, "a") and delivered_by(fake, "b"), "one replica did nothing"
        assert fake.failures == []


async def test_rows_leased_by_a_stopped_relay_are_delivered_by_the_other_after_the_lease(
    start_relay: StartRelay,
) -> None:
    seen_at: dict[str, list[float]] = {"a": [], "b": []}

    def answer(req: RecordedRequest) -> Answer:
        relay = req.headers.get("X-Relay", "")
        seen_at[relay].append(time.monotonic())
        # Relay a's sends hang: its rows stay leased while it "dies".
        return Answer(504, delay=float("inf")) if relay == "a" else Answer(200)

    async with FakeTarget(default=answer, check=check_shape) as fake:
        relay_a = await start_relay("a", fake.url)
        batches = [make_batch(10) for _ in range(3)]
        sent = {e["timeUUID"] for batch in batches for e in batch}
        await post_batches([relay_a], batches)

        def a_holds_everything() -> bool:
            held = [e["timeUUID"] for r in fake.requests for e in r.events()]
            return set(held) == sent

        await fake.wait_for(a_holds_everything, timeout=10)
        await relay_a.deliverers["sink"].stop(grace=0.1)  # a's delivery dies mid-send
        stats = await relay_a.spool.stats()
        assert stats.queued["sink"].events == 30  # still spooled, still leased by a

        relay_b = await start_relay("b", fake.url)
        await fake.wait_for(lambda: set(delivered_by(fake, "b")) == sent, timeout=LEASE + 10)
        await poll_until(lambda: spool_empty(relay_b), timeout=10)

        counts = Counter(delivered_by(fake, "b"))
        assert sorted(counts.values()) == [1] * 30
        # b took the rows over only once a's lease had run out, not before.
        assert min(seen_at["b"]) - max(seen_at["a"]) >= LEASE - 0.5
        assert fake.failures == []
