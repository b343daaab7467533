"""Shared fixtures: a real Relay in the test's loop, started from YAML, stopped at teardown."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.app import Relay
from relay.config import parse_config
from relay.sources.statsig_webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from tests.fakes import fake_targets_fixture  # noqa: F401  (fixture `fake_targets`)

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
if not FIXTURES.is_dir():  # a clone without shared/ beside it: the copies kept in tests/
    FIXTURES = Path(__file__).resolve().parent / "fixtures"

RelayFactory = Callable[..., Awaitable[Relay]]


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture_json(name: str) -> Any:
    return json.loads(fixture_bytes(name))


def relay_yaml(body: str, tmp_path: Path, server: str = "", spool: str = "") -> str:
    """A config with loopback listeners on free ports and a spool in ``tmp_path``."""
    server = f", {server}" if server else ""
    spool = f", {spool}" if spool else ""
    return (
        f"server: {{listen: '127.0.0.1:0', admin_listen: '127.0.0.1:0', shutdown_grace: 5s"
        f"{server}}}\n"
        f"spool: {{backend: sqlite, path: '{tmp_path}/spool.db', synchronous: normal{spool}}}\n"
        + body
    )


@pytest.fixture
async def relay_factory(tmp_path: Path) -> AsyncIterator[RelayFactory]:
    """``await relay_factory(yaml_without_server_and_spool)`` → a started Relay."""
    started: list[Relay] = []

    async def make(
        body: str,
        env: dict[str, str] | None = None,
        full: bool = False,
        server: str = "",
        spool: str = "",
    ) -> Relay:
        text = body if full else relay_yaml(body, tmp_path, server, spool)
        relay = Relay(parse_config(text, env or {}))
        await relay.start()
        started.append(relay)
        return relay

    yield make
    for relay in started:
        if relay._started:
            await relay.stop()


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
