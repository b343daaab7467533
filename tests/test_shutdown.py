"""Shutdown as a process: no send starts once stop begins, sends in flight get
``shutdown_grace`` and are then cancelled with their rows left in the spool, a second signal
stops at once, and the next start delivers what was left (at-least-once)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import aiohttp

from tests.daemon import DaemonProcess, free_port
from tests.fakes import Answer, FakeTarget, FakeTargetFactory, poll_until
from tests.test_process import SECRET, batch, delivered, send

HANG = Answer(200, delay=float("inf"))


def config(fake: FakeTarget, port: int, admin: int, grace: str, timeout: str) -> str:
    return f"""
server: {{listen: "127.0.0.1:{port}", admin_listen: "127.0.0.1:{admin}", shutdown_grace: {grace}}}
spool: {{backend: sqlite, path: ./data/spool.db}}
sources:
  statsig: {{type: statsig_webhook, path: /webhooks/statsig, signing_secret: "${{HOOK_SECRET}}"}}
targets:
  out: {{type: webhook, url: "{fake.url}/in", linger: 0s, concurrency: 1, batch_max_events: 5,
         retries_in_process: 3, retry_initial: 50ms, retry_max: 300ms, timeout: {timeout}}}
routes:
  - {{name: all, from: statsig, to: out}}
"""


async def spool_two_batches(daemon: DaemonProcess, fake: FakeTarget, port: int) -> None:
    """Batch a is in flight (the target hangs), batch b waits in the spool for a slot."""
    async with aiohttp.ClientSession() as session:
        assert await send(session, port, batch("a", 5)) == 200
        await fake.wait_for_requests(1)
        assert await send(session, port, batch("b", 5)) == 200


async def restart_delivers_both(daemon: DaemonProcess, fake: FakeTarget, admin: int) -> None:
    fake.default = 200
    await daemon.start(f"http://127.0.0.1:{admin}/readyz")
    wanted = {f"{t}-{i}" for t in "ab" for i in range(5)}
    await poll_until(
        lambda: wanted <= delivered(fake),
        timeout=15,
        message=lambda: f"missing {sorted(wanted - delivered(fake))}",
    )
    assert await daemon.terminate() == 0


async def test_sigterm_starts_no_new_send_and_cancels_a_hung_one_after_the_grace(
    tmp_path: Path, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets(default=HANG)
    port, admin = free_port(), free_port()
    # The target's timeout (4 s) is longer than the grace (2 s): the hung send is cancelled,
    # and a slot freed by its timeout must not start batch b.
    text = config(fake, port, admin, grace="2s", timeout="4s")
    async with DaemonProcess(text, tmp_path, env={"HOOK_SECRET": SECRET}) as daemon:
        await daemon.start(f"http://127.0.0.1:{admin}/readyz")
        await spool_two_batches(daemon, fake, port)
        stop_began = time.monotonic()
        assert await daemon.terminate(timeout=2 + 2.5) == 0  # the grace and a small margin
        late = [r.summary() for r in fake.requests if r.received_at >= stop_began]
        assert not late, f"sends started after SIGTERM: {late}"
        assert len(fake.requests) == 1
        log = daemon.log_text()
        assert "waiting up to 2.0s for 1 sends (5 events) to target out" in log, log
        assert "cancelled 1 sends (5 events) to target out" in log, log
        assert "Traceback" not in log, log

        await restart_delivers_both(daemon, fake, admin)


async def test_a_second_sigterm_stops_at_once_and_loses_nothing(
    tmp_path: Path, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets(default=HANG)
    port, admin = free_port(), free_port()
    text = config(fake, port, admin, grace="60s", timeout="120s")
    async with DaemonProcess(text, tmp_path, env={"HOOK_SECRET": SECRET}) as daemon:
        await daemon.start(f"http://127.0.0.1:{admin}/readyz")
        await spool_two_batches(daemon, fake, port)
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        await poll_until(
            lambda: "stopping:" in daemon.log_text(), timeout=10, message=daemon.log_tail
        )
        assert await daemon.terminate(timeout=5) == 0  # the second SIGTERM
        log = daemon.log_text()
        assert "second signal: stopping now; 1 sends in flight cancelled" in log, log
        assert "Traceback" not in log, log
        assert len(fake.requests) == 1

        await restart_delivers_both(daemon, fake, admin)
