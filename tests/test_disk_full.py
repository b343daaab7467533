"""A full disk under the SQLite spool, for real: a 16 MiB tmpfs mounted by the test (CI and the
developers' machines run the tests as root), the daemon as a process, the target down until
ingest answers 503, then back.

What must hold: ingest answers 503 + Retry-After while the disk is full and /readyz says so
(with relay_spool_writable and relay_spool_refusing{reason="disk_full"}); the deliverer still
records its acks, so every acknowledged event is delivered exactly once; and ingest takes
events again once deliveries have made room.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import sample, signed_headers
from tests.daemon import DaemonProcess, free_port
from tests.fakes import FakeTarget, FakeTargetFactory, poll_until

SECRET = "disk-secret"
PAD = "x" * 300  # ~400 bytes an event, as Statsig's exports


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs at ``tmp_path/disk``, unmounted at the end."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.fail(
            f"mounting a 16 MiB tmpfs needs root (CI runs as root; uid here {os.getuid()}):"
            f" {mounted.stderr.strip()}"
        )
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def config(fake: FakeTarget, port: int, admin: int, spool: Path) -> str:
    return f"""
server: {{listen: "127.0.0.1:{port}", admin_listen: "127.0.0.1:{admin}", shutdown_grace: 5s,
          retry_after: 1s}}
spool: {{backend: sqlite, path: "{spool}", max_size: 1GiB}}
sources:
  statsig: {{type: statsig_webhook, path: /webhooks/statsig, signing_secret: "${{HOOK_SECRET}}"}}
targets:
  out: {{type: webhook, url: "{fake.url}/in", linger: 0s, retry_initial: 50ms,
         retry_max: 300ms, retries_in_process: 1, timeout: 3s, failing_after: 10m,
         max_attempts: 100000}}
routes:
  - {{name: all, from: statsig, to: out}}
"""


def batch(tag: str, n: int = 100) -> list[dict[str, Any]]:
    return [
        {
            "eventName": "custom",
            "timeUUID": f"{tag}-{i}",
            "timestamp": 1700000000000,
            "user": {"userID": f"u{i}"},
            "metadata": {"pad": PAD},
        }
        for i in range(n)
    ]


async def send(session: aiohttp.ClientSession, port: int, events: list[dict[str, Any]]) -> int:
    body = orjson.dumps(events)
    async with session.post(
        f"http://127.0.0.1:{port}/webhooks/statsig", data=body, headers=signed_headers(SECRET, body)
    ) as response:
        await response.read()
        if response.status == 503:
            assert response.headers.get("Retry-After"), "a 503 says when to come back"
        return response.status


def delivered(fake: FakeTarget) -> Counter[str]:
    return Counter(e["timeUUID"] for r in fake.requests if r.status == 200 for e in r.events())


async def admin_get(admin: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{admin}{path}") as response,
    ):
        return response.status, await response.text()


async def test_full_disk_refuses_new_events_delivers_the_acknowledged_once_and_recovers(
    tmp_path: Path, small_disk: Path, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets(default=503)
    port, admin = free_port(), free_port()
    acknowledged: set[str] = set()
    spool = small_disk / "spool.db"
    async with DaemonProcess(
        config(fake, port, admin, spool), tmp_path, env={"HOOK_SECRET": SECRET}
    ) as daemon:
        await daemon.start(f"http://127.0.0.1:{admin}/readyz")
        assert Path(str(spool) + ".reserve").is_file(), "room is set aside at start"

        # The target is down: fill the disk until ingest answers 503 (bounded: 16 MiB holds
        # ~400 such batches).
        refused = 0
        async with aiohttp.ClientSession() as session:
            for i in range(2000):
                events = batch(f"fill{i}")
                status = await send(session, port, events)
                if status == 200:
                    acknowledged.update(e["timeUUID"] for e in events)
                    continue
                assert status == 503, status
                refused += 1
                if refused >= 3:
                    break
        assert refused >= 3, "the disk never filled"
        assert len(acknowledged) >= 5000

        ready, text = await admin_get(admin, "/readyz")
        assert ready == 503, text
        assert "disk" in orjson.loads(text)["problems"][0]
        _, metrics = await admin_get(admin, "/metrics")
        assert sample(metrics, "relay_spool_writable ") == 0
        assert sample(metrics, 'relay_spool_refusing{reason="disk_full"}') == 1
        assert sample(metrics, 'relay_spool_refusing{reason="size_limit"}') == 0

        # The target comes back: every acknowledged event is delivered, each exactly once.
        fake.default = 200
        await poll_until(
            lambda: acknowledged <= set(delivered(fake)),
            timeout=60,
            message=lambda: (
                f"{len(acknowledged - set(delivered(fake)))} not delivered; log:\n"
                f"{daemon.log_tail()}"
            ),
        )
        twice = {k: n for k, n in delivered(fake).items() if n > 1}
        assert not twice, f"{len(twice)} events delivered more than once"

        # Deliveries made room: ingest takes events again, and readiness follows.
        async with aiohttp.ClientSession() as session:

            async def accepted() -> bool:
                events = batch(f"after{len(acknowledged)}", 10)
                if await send(session, port, events) != 200:
                    return False
                acknowledged.update(e["timeUUID"] for e in events)
                return True

            await poll_until(accepted, timeout=20, interval=0.2, message=daemon.log_tail)
        assert (await admin_get(admin, "/readyz"))[0] == 200
        _, metrics = await admin_get(admin, "/metrics")
        assert sample(metrics, "relay_spool_writable ") == 1
        assert sample(metrics, 'relay_spool_refusing{reason="disk_full"}') == 0
        await poll_until(lambda: acknowledged <= set(delivered(fake)), timeout=20)
        assert max(delivered(fake).values()) == 1

        log = daemon.log_text()
        assert "delivery task failed" not in log
        assert "is full" in log and "has room again" in log
        with contextlib.suppress(asyncio.CancelledError):
            assert await daemon.terminate() == 0
