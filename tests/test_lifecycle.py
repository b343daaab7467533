"""Start-up and shutdown through one exit stack: a failed start closes what it opened."""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.app import Relay
from relay.config import parse_config
from tests.conftest import get
from tests.daemon import free_port


def config_text(tmp_path: Path, port: int, admin: int) -> str:
    return f"""
server: {{listen: "127.0.0.1:{port}", admin_listen: "127.0.0.1:{admin}", shutdown_grace: 1s}}
spool: {{backend: sqlite, path: "{tmp_path}/spool.db"}}
sources:
  hook: {{type: statsig_webhook, signing_secret: s3cret}}
targets:
  out: {{type: webhook, url: "http://127.0.0.1:9/in"}}
  other: {{type: file, path: "{tmp_path}/out.jsonl"}}
routes:
  - {{name: all, from: hook, to: out}}
  - {{name: copy, from: hook, to: other}}
"""


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port held by a listening socket for the whole test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def lock_is_free(tmp_path: Path) -> bool:
    fd = os.open(tmp_path / "spool.db.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def delivery_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("deliver-") and not t.done()]


@pytest.mark.parametrize("which", ["public", "admin"])
async def test_a_start_that_fails_on_a_taken_port_closes_everything_it_opened(
    tmp_path: Path, taken_port: int, which: str
) -> None:
    free = free_port()
    port, admin = (taken_port, free) if which == "public" else (free, taken_port)
    relay = Relay(parse_config(config_text(tmp_path, port, admin), {}))
    with pytest.raises(OSError):
        await relay.start()
    assert not relay.started
    assert delivery_tasks() == [], "a deliverer kept running after the failed start"
    assert relay.deliverers == {} and relay.targets == {}
    assert lock_is_free(tmp_path), "the spool is still locked"
    assert port_is_free(free), f"the {'admin' if which == 'public' else 'public'} port is bound"

    # The same config with the port free starts in this process: nothing was left behind.
    other = free_port()
    port, admin = (other, free) if which == "public" else (free, other)
    again = Relay(parse_config(config_text(tmp_path, port, admin), {}))
    await again.start()
    try:
        assert len(delivery_tasks()) == 2
        status, _ = await get(f"http://127.0.0.1:{again.admin_port}/readyz")
        assert status in (200, 503)  # answered: the admin listener of the new relay is up
    finally:
        await again.stop()
    assert delivery_tasks() == []


async def test_stop_releases_spool_and_ports_and_a_second_stop_is_harmless(
    tmp_path: Path,
) -> None:
    relay = Relay(parse_config(config_text(tmp_path, free_port(), free_port()), {}))
    await relay.start()
    admin, public = relay.admin_port, relay.public_port
    assert admin is not None and public is not None
    assert not lock_is_free(tmp_path)
    await relay.stop()
    await relay.stop()
    assert lock_is_free(tmp_path) and port_is_free(admin) and port_is_free(public)
    assert delivery_tasks() == []
