"""Route transforms with state: first_exposure_only and dedup, through the real pipeline.

The keys live in the spool's ``state`` table, written in the same commit as the rows they let
through, so the window holds across a restart of the relay."""

from __future__ import annotations

import asyncio

from relay.app import Relay
from relay.events import now_ms
from tests.conftest import RelayFactory, metric, post_export, wait_delivered
from tests.fakes import FakeTarget, poll_until


def config(url: str, route: str) -> str:
    return f"""
sources:
  statsig: {{type: statsig_webhook}}
targets:
  sink: {{type: webhook, url: "{url}/sink", linger: 0s}}
routes:
  - {{name: exposures, from: statsig, to: sink{route}}}
"""


def dropped(relay: Relay, reason: str) -> float:
    return metric(relay, "relay_events_dropped_total", route="exposures", reason=reason)


_uuids = iter(range(1_000_000))


def exposure(
    unit: str, name: str, kind: str = "gate", uuid: str | None = None, **custom_ids: str
) -> dict:
    """A gate / experiment exposure for user ``unit`` (or for a custom ID when given)."""
    meta = {"gate": name, "gateValue": "true"} if kind == "gate" else {"config": name}
    if kind == "experiment":
        meta["experimentGroupName"] = "Test"
    event = {
        "eventName": f"statsig::{kind}_exposure",
        "user": {"userID": unit, "customIDs": custom_ids},
        "userID": unit,
        "timestamp": now_ms(),
        "metadata": meta,
        "timeUUID": uuid or f"uuid-{next(_uuids)}",
        "unitID": next(iter(custom_ids), "userID"),
    }
    return event


def seen(fake: FakeTarget) -> list[tuple[str, str, str]]:
    """(unit, category, name) of every exposure the sink received, in order."""
    out = []
    for event in fake.events():
        if not event["eventName"].startswith("statsig::"):
            continue
        meta = event["metadata"]
        unit = event["user"]["customIDs"].get(event["unitID"], event["userID"])
        out.append((unit, event["eventName"].split("::")[1], meta.get("gate") or meta["config"]))
    return out


# -- first exposure ----------------------------------------------------------------------------


async def test_first_exposure_forwards_one_per_unit_and_name_also_within_a_batch(
    relay_factory: RelayFactory,
) -> None:
    first_batch = [
        exposure("alice", "new_nav"),
        exposure("alice", "new_nav"),  # repeat inside the batch
        exposure("bob", "new_nav"),
        exposure("alice", "dark_mode"),
        exposure("alice", "checkout", "experiment"),
        exposure("alice", "checkout", "experiment"),  # repeat inside the batch
        exposure("alice", "new_nav"),  # and again
        {"eventName": "purchase", "userID": "alice", "timestamp": now_ms()},  # not an exposure
    ]
    second_batch = [exposure("alice", "new_nav"), exposure("carol", "new_nav")]
    async with FakeTarget() as fake:
        relay = await relay_factory(
            config(fake.url, ", first_exposure_only: true"), shutdown_grace="2s"
        )
        await post_export(relay, first_batch)
        assert dropped(relay, "first_exposure") == 3
        await post_export(relay, second_batch)
        assert dropped(relay, "first_exposure") == 4
        await wait_delivered(relay, "sink", 6)
    names = [e["eventName"] for e in fake.events()]
    assert names.count("purchase") == 1
    assert seen(fake) == [
        ("alice", "gate_exposure", "new_nav"),
        ("bob", "gate_exposure", "new_nav"),
        ("alice", "gate_exposure", "dark_mode"),
        ("alice", "experiment_exposure", "checkout"),
        ("carol", "gate_exposure", "new_nav"),
    ]


async def test_first_exposure_is_per_unit_id_named_by_unitID(relay_factory: RelayFactory) -> None:
    # One user on two devices, exposed by device (unitID stableID): both are first exposures.
    batch = [
        exposure("alice", "device_gate", stableID="device-1"),
        exposure("alice", "device_gate", stableID="device-2"),
        exposure("alice", "device_gate", stableID="device-1"),
    ]
    async with FakeTarget() as fake:
        relay = await relay_factory(
            config(fake.url, ", first_exposure_only: true"), shutdown_grace="2s"
        )
        await post_export(relay, batch)
        await wait_delivered(relay, "sink", 2)
    assert dropped(relay, "first_exposure") == 1
    assert seen(fake) == [
        ("device-1", "gate_exposure", "device_gate"),
        ("device-2", "gate_exposure", "device_gate"),
    ]


async def test_after_the_window_an_exposure_is_forwarded_again(relay_factory: RelayFactory) -> None:
    async with FakeTarget() as fake:
        relay = await relay_factory(
            config(fake.url, ", first_exposure_only: {window: 400ms}"), shutdown_grace="2s"
        )
        await post_export(relay, [exposure("dave", "promo")])
        first_at = now_ms()
        await post_export(relay, [exposure("dave", "promo")])  # inside the window
        assert dropped(relay, "first_exposure") == 1
        # Waiting for the clock, not for work: the window has to pass.
        await poll_until(lambda: now_ms() > first_at + 450, timeout=5)
        await post_export(relay, [exposure("dave", "promo")])
        assert dropped(relay, "first_exposure") == 1
        await wait_delivered(relay, "sink", 2)
    assert seen(fake) == [("dave", "gate_exposure", "promo")] * 2


async def test_the_first_exposure_window_survives_a_restart(relay_factory: RelayFactory) -> None:
    async with FakeTarget() as fake:
        text = config(fake.url, ", first_exposure_only: {window: 24h}")
        before = await relay_factory(text, shutdown_grace="2s")
        await post_export(before, [exposure("erin", "beta")])
        await wait_delivered(before, "sink", 1)
        await before.stop()

        after = await relay_factory(text, shutdown_grace="2s")  # same spool file, a new Relay
        await post_export(after, [exposure("erin", "beta"), exposure("frank", "beta")])
        assert dropped(after, "first_exposure") == 1
        await wait_delivered(after, "sink", 1)
    assert seen(fake) == [("erin", "gate_exposure", "beta"), ("frank", "gate_exposure", "beta")]


async def test_concurrent_requests_forward_a_first_exposure_once(
    relay_factory: RelayFactory,
) -> None:
    async with FakeTarget() as fake:
        relay = await relay_factory(
            config(fake.url, ", first_exposure_only: true"), shutdown_grace="2s"
        )
        statuses = await asyncio.gather(
            *(post_export(relay, [exposure("gina", "race_gate")]) for _ in range(8))
        )
        assert statuses == [200] * 8
        assert dropped(relay, "first_exposure") == 7
        await post_export(relay, [exposure("marker", "race_gate")])
        await wait_delivered(relay, "sink", 2)
    assert seen(fake) == [
        ("gina", "gate_exposure", "race_gate"),
        ("marker", "gate_exposure", "race_gate"),
    ]


# -- dedup ---------------------------------------------------------------------------------------


async def test_dedup_drops_a_redelivered_batch(relay_factory: RelayFactory) -> None:
    batch = [exposure(f"user{i}", "g", uuid=f"redelivered-{i}") for i in range(5)]
    async with FakeTarget() as fake:
        relay = await relay_factory(config(fake.url, ", dedup: {window: 1h}"), shutdown_grace="2s")
        await post_export(relay, batch)
        await wait_delivered(relay, "sink", 5)
        await post_export(relay, batch)  # the same timeUUIDs again
        assert dropped(relay, "dedup") == 5
        await post_export(relay, [exposure("user0", "g", uuid="fresh")])  # same user, new event
        await wait_delivered(relay, "sink", 6)
    assert [e["timeUUID"] for e in fake.events()] == [
        *(f"redelivered-{i}" for i in range(5)),
        "fresh",
    ]


async def test_dedup_also_drops_repeats_inside_one_batch_and_survives_a_restart(
    relay_factory: RelayFactory,
) -> None:
    async with FakeTarget() as fake:
        text = config(fake.url, ", dedup: true")
        before = await relay_factory(text, shutdown_grace="2s")
        await post_export(before, [exposure("h", "g", uuid="dup"), exposure("h", "g", uuid="dup")])
        assert dropped(before, "dedup") == 1
        await wait_delivered(before, "sink", 1)
        await before.stop()
        after = await relay_factory(text, shutdown_grace="2s")
        await post_export(after, [exposure("h", "g", uuid="dup"), exposure("h", "g", uuid="new")])
        assert dropped(after, "dedup") == 1
        await wait_delivered(after, "sink", 1)
    assert [e["timeUUID"] for e in fake.events()] == ["dup", "new"]
