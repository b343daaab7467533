"""Shared fixtures: a real Relay in the test's loop, started from YAML, stopped at teardown."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from relay.app import Relay
from relay.config import parse_config
from relay.sources.statsig_webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from tests.fakes import fake_targets_fixture, poll_until  # noqa: F401  (fixture `fake_targets`)

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
if not FIXTURES.is_dir():  # a clone without shared/ beside it: the copies kept in tests/
    FIXTURES = Path(__file__).resolve().parent / "fixtures"

RelayFactory = Callable[..., Awaitable[Relay]]


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture_json(name: str) -> Any:
    return json.loads(fixture_bytes(name))


def relay_yaml(
    body: str, tmp_path: Path, server: str = "", spool: str = "", shutdown_grace: str = "5s"
) -> str:
    """A config with loopback listeners on free ports and a spool in ``tmp_path``."""
    server = f", {server}" if server else ""
    spool = f", {spool}" if spool else ""
    return (
        f"server: {{listen: '127.0.0.1:0', admin_listen: '127.0.0.1:0', "
        f"shutdown_grace: {shutdown_grace}{server}}}\n"
        f"spool: {{backend: sqlite, path: '{tmp_path}/spool.db', synchronous: normal{spool}}}\n"
        + body
    )


@pytest.fixture
async def relay_factory(tmp_path: Path) -> AsyncIterator[RelayFactory]:
    """``await relay_factory(yaml_without_server_and_spool)`` → a started Relay, stopped at
    teardown unless the test stopped it itself. Each call shares the test's spool file, so a
    second Relay from the same YAML is a restart."""
    started: list[Relay] = []

    async def make(
        body: str,
        env: dict[str, str] | None = None,
        full: bool = False,
        server: str = "",
        spool: str = "",
        shutdown_grace: str = "5s",
    ) -> Relay:
        text = body if full else relay_yaml(body, tmp_path, server, spool, shutdown_grace)
        relay = Relay(parse_config(text, env or {}))
        await relay.start()
        started.append(relay)
        return relay

    yield make
    for relay in started:
        await relay.stop()  # a no-op when the test stopped it itself


def signed_headers(secret: str, body: bytes, at_ms: int | None = None) -> dict[str, str]:
    timestamp = str(at_ms if at_ms is not None else int(time.time() * 1000))
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret.encode(), timestamp, body),
    }


async def post(
    url: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, Any, dict[str, str]]:
    """POST and return (status, parsed JSON or text, headers)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url, data=body, headers=headers or {"Content-Type": "application/json"}
        ) as response,
    ):
        text = await response.text()
        try:
            payload: Any = json.loads(text)
        except ValueError:
            payload = text
        return response.status, payload, dict(response.headers)


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


# -- talking to a started Relay ----------------------------------------------------------------

WEBHOOK_PATH = "/webhooks/statsig"  # the statsig_webhook source's default path


def public_url(relay: Relay, path: str) -> str:
    return f"http://127.0.0.1:{relay.public_port}{path}"


def admin_url(relay: Relay, path: str) -> str:
    return f"http://127.0.0.1:{relay.admin_port}{path}"


def webhook_url(relay: Relay) -> str:
    return public_url(relay, WEBHOOK_PATH)


async def post_json(
    relay: Relay, path: str, payload: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """POST ``payload`` (bytes as they are, anything else as JSON) to the relay's public
    listener; return (status, parsed JSON answer or its text)."""
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    status, answer, _ = await post(public_url(relay, path), body, headers)
    return status, answer


async def post_export(relay: Relay, payload: Any, secret: str | None = None) -> int:
    """POST a Statsig export batch to the statsig_webhook source, signed when ``secret`` is
    given as Statsig signs it; return the status."""
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    headers = signed_headers(secret, body) if secret else None
    status, _ = await post_json(relay, WEBHOOK_PATH, body, headers)
    return status


# -- metrics and the spool ---------------------------------------------------------------------


def metric(relay: Relay, name: str, **labels: str) -> float:
    """A sample from the relay's own registry; 0.0 for a labelled child never touched."""
    return relay.metrics.registry.get_sample_value(name, labels) or 0.0


def custom(i: int, user: str | None = None, **extra: Any) -> dict[str, Any]:
    """Custom event number ``i`` of a Statsig export, with a timeUUID (the target tests')."""
    event: dict[str, Any] = {
        "eventName": "add_to_cart",
        "user": {"userID": user if user is not None else f"user-{i}"},
        "timestamp": 1_700_000_000_000 + i,
        "value": "sku-1",
        "metadata": {"qty": "2"},
        "timeUUID": f"00000000-0000-4000-8000-{i:012d}",
    }
    event.update(extra)
    return event


async def dead_count(relay: Relay, target: str) -> int:
    """Events of ``target`` in the dead-letter queue."""
    return sum(row.count for row in await relay.spool.dead_rows(target))


async def settled(relay: Relay, target: str, delivered: int, dead: int = 0) -> None:
    """Wait until ``target`` has at least ``delivered`` events delivered and ``dead``
    dead-lettered."""

    async def done() -> bool:
        ok = metric(relay, "relay_events_delivered_total", target=target)
        return ok >= delivered and await dead_count(relay, target) >= dead

    await poll_until(done, message="delivered/dead-lettered counts not reached")


async def metrics_text(relay: Relay) -> str:
    """The Prometheus exposition the admin listener serves, as a scraper sees it."""
    _, text = await get(admin_url(relay, "/metrics"))
    return text


def sample(text: str, line_start: str) -> float:
    """The value on the first exposition line starting with ``line_start``; 0.0 if none."""
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def scraped_metric(relay: Relay, line_start: str) -> float:
    """``sample`` of a fresh scrape of /metrics, e.g. ``'relay_x_total{target="out"}'``."""
    return sample(await metrics_text(relay), line_start)


async def spool_empty(relay: Relay) -> bool:
    """Nothing queued for any target (dead letters do not count): a poll_until condition."""
    return not (await relay.spool.stats()).queued


async def wait_delivered(relay: Relay, target: str, n: int) -> None:
    """Wait until ``target`` has delivered at least ``n`` events."""

    def delivered() -> float:
        return metric(relay, "relay_events_delivered_total", target=target)

    await poll_until(lambda: delivered() >= n, message=lambda: f"delivered {delivered()} of {n}")
