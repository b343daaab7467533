"""The daemon as a process: kill -9 loses nothing acknowledged; SIGTERM drains; SIGHUP reloads."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tests.conftest import get, signed_headers
from tests.daemon import DaemonProcess, free_port
from tests.fakes import Answer, FakeTarget, FakeTargetFactory, poll_until

SECRET = "proc-secret"


def daemon_config(
    fake: FakeTarget, port: int, admin: int, categories: str = "[]", target_extra: str = ""
) -> str:
    return f"""
server: {{listen: "127.0.0.1:{port}", admin_listen: "127.0.0.1:{admin}", shutdown_grace: 5s}}
spool: {{backend: sqlite, path: ./data/spool.db}}
sources:
  statsig: {{type: statsig_webhook, path: /webhooks/statsig, signing_secret: "${{HOOK_SECRET}}"}}
targets:
  out: {{type: webhook, url: "{fake.url}/in", linger: 0s, retry_initial: 50ms,
         retry_max: 300ms, retries_in_process: 1, timeout: 3s{target_extra}}}
routes:
  - {{name: all, from: statsig, to: out, filter: {{categories: {categories}}}}}
"""


def batch(tag: str, n: int = 10, name: str = "custom") -> list[dict[str, Any]]:
    return [
        {
            "eventName": name,
            "timeUUID": f"{tag}-{i}",
            "timestamp": 1700000000000,
            "user": {"userID": f"u{i}"},
        }
        for i in range(n)
    ]


async def send(session: aiohttp.ClientSession, port: int, events: list[dict[str, Any]]) -> int:
    body = orjson.dumps(events)
    async with session.post(
        f"http://127.0.0.1:{port}/webhooks/statsig", data=body, headers=signed_headers(SECRET, body)
    ) as response:
        await response.read()
        return response.status


def delivered(fake: FakeTarget) -> set[str]:
    return {e["timeUUID"] for r in fake.requests if r.status == 200 for e in r.events()}


async def test_kill_9_while_the_target_is_down_then_restart_delivers_every_acknowledged_event(
    tmp_path: Path, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets(default=503)
    port, admin = free_port(), free_port()
    acknowledged: set[str] = set()
    async with DaemonProcess(
        daemon_config(fake, port, admin), tmp_path, env={"HOOK_SECRET": SECRET}
    ) as daemon:
        await daemon.start(f"http://127.0.0.1:{admin}/readyz")

        async def sender(worker: int) -> None:
            async with aiohttp.ClientSession() as session:
                for i in range(200):  # bounded; the kill ends it sooner
                    events = batch(f"w{worker}-b{i}")
                    try:
                        status = await send(session, port, events)
                    except aiohttp.ClientError:
                        return  # the daemon died mid-request: not acknowledged
                    if status == 200:
                        acknowledged.update(e["timeUUID"] for e in events)

        senders = [asyncio.create_task(sender(w)) for w in range(4)]
        await poll_until(lambda: len(acknowledged) >= 300, timeout=20)
        daemon.kill()  # SIGKILL with requests in flight
        await asyncio.gather(*senders)
        assert fake.requests, "the target was tried (and refused) before the crash"

        fake.default = 200
        await daemon.start(f"http://127.0.0.1:{admin}/readyz")
        await poll_until(
            lambda: acknowledged <= delivered(fake),
            timeout=30,
            message=lambda: f"missing {len(acknowledged - delivered(fake))}",
        )
        assert await daemon.terminate() == 0


async def test_sigterm_finishes_in_flight_sends_keeps_the_rest_and_exits_0(
    tmp_path: Path, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets(default=Answer(200, delay=1.0))
    port, admin = free_port(), free_port()
    config = daemon_config(fake, port, admin, target_extra=", concurrency: 1, batch_max_events: 5")
    async with DaemonProcess(config, tmp_path, env={"HOOK_SECRET": SECRET}) as daemon:
        await daemon.start(f"http://127.0.0.1:{admin}/readyz")
        async with aiohttp.ClientSession() as session:
            assert await send(session, port, batch("a", 5)) == 200
            assert await send(session, port, batch("b", 5)) == 200
        await fake.wait_for_requests(1)  # first batch is in flight (the fake takes 1 s)
        assert await daemon.terminate() == 0
        # The in-flight batch finished; the waiting one stayed in the spool.
        assert fake.requests[0].status == 200
        assert "stopped" in daemon.log_text()

        fake.default = 200
        await daemon.start(f"http://127.0.0.1:{admin}/readyz")
        wanted = {f"{t}-{i}" for t in "ab" for i in range(5)}
        await poll_until(lambda: wanted <= delivered(fake), timeout=15)
        assert await daemon.terminate() == 0


async def test_sighup_reloads_a_good_config_and_keeps_the_old_one_on_a_bad_file(
    tmp_path: Path, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    port, admin = free_port(), free_port()
    async with DaemonProcess(
        daemon_config(fake, port, admin, "[custom]"), tmp_path, env={"HOOK_SECRET": SECRET}
    ) as daemon:
        await daemon.start(f"http://127.0.0.1:{admin}/readyz")
        async with aiohttp.ClientSession() as session:
            assert await send(session, port, batch("gate1", 2, "statsig::gate_exposure")) == 200
            assert await send(session, port, batch("c1", 2)) == 200
            await poll_until(lambda: {"c1-0", "c1-1"} <= delivered(fake))
            assert not any(u.startswith("gate1") for u in delivered(fake))

            daemon.config_path.write_text(daemon_config(fake, port, admin, "[gate_exposure]"))
            os.kill(daemon.pid, signal.SIGHUP)  # type: ignore[arg-type]
            await poll_until(lambda: _reloads(admin, "ok"), timeout=10)
            assert await send(session, port, batch("gate2", 2, "statsig::gate_exposure")) == 200
            await poll_until(lambda: {"gate2-0", "gate2-1"} <= delivered(fake))

            daemon.config_path.write_text("routes: [\n")
            os.kill(daemon.pid, signal.SIGHUP)  # type: ignore[arg-type]
            await poll_until(lambda: _reloads(admin, "error"), timeout=10)
            assert await send(session, port, batch("gate3", 1, "statsig::gate_exposure")) == 200
            await poll_until(lambda: "gate3-0" in delivered(fake))
        assert "reload refused, keeping the running config" in daemon.log_text()
        assert await daemon.terminate() == 0


async def test_a_reload_whose_new_target_cannot_open_is_refused_and_keeps_the_old_config(
    tmp_path: Path, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    port, admin = free_port(), free_port()
    (tmp_path / "blocker").write_text("a file where the new target wants a folder")
    text = daemon_config(fake, port, admin)
    async with DaemonProcess(text, tmp_path, env={"HOOK_SECRET": SECRET}) as daemon:
        await daemon.start(f"http://127.0.0.1:{admin}/readyz")
        daemon.config_path.write_text(
            text.replace("routes:", "  copy: {type: file, path: ./blocker/out.jsonl}\nroutes:")
            + "  - {name: copy, from: statsig, to: copy}\n"
        )
        os.kill(daemon.pid, signal.SIGHUP)  # type: ignore[arg-type]
        await poll_until(lambda: _reloads(admin, "error"), timeout=10)
        _, status = await get(f"http://127.0.0.1:{admin}/status.json")
        error = orjson.loads(status)["config"]["last_reload"]["error"]
        assert error.startswith("targets.copy: could not open"), error
        async with aiohttp.ClientSession() as session:
            assert await send(session, port, batch("after", 2)) == 200
        await poll_until(lambda: {"after-0", "after-1"} <= delivered(fake))
        assert "reload refused, keeping the running config: targets.copy" in daemon.log_text()
        assert await daemon.terminate() == 0


async def _reloads(admin: int, result: str) -> bool:
    _, text = await get(f"http://127.0.0.1:{admin}/metrics")
    return f'relay_config_reloads_total{{result="{result}"}} 1.0' in text


def events_received(metrics_text: str) -> float:
    """``relay_events_received_total`` of the statsig source, from a /metrics page."""
    for line in metrics_text.splitlines():
        if line.startswith('relay_events_received_total{source="statsig"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_two_relays_with_reuse_port_share_one_port_and_deliver_every_event_once(
    tmp_path: Path, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    port = free_port()
    admins = [free_port(), free_port()]
    daemons = []
    for name, admin in zip("ab", admins, strict=True):
        home = tmp_path / name  # each relay its own ./data/spool.db
        home.mkdir()
        config = daemon_config(fake, port, admin).replace(
            "server: {", "server: {reuse_port: true, "
        )
        daemons.append(DaemonProcess(config, home, env={"HOOK_SECRET": SECRET}))
    async with daemons[0] as first, daemons[1] as second:
        await first.start(f"http://127.0.0.1:{admins[0]}/readyz")
        await second.start(f"http://127.0.0.1:{admins[1]}/readyz")
        sent: set[str] = set()
        # A new connection per request: the kernel picks a listener per connection.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            for i in range(40):
                events = batch(f"c{i}", n=5)
                assert await send(s, port, events) == 200
                sent.update(e["timeUUID"] for e in events)
        await poll_until(lambda: delivered(fake) == sent, timeout=15)
        per_relay = [
            events_received((await get(f"http://127.0.0.1:{a}/metrics"))[1]) for a in admins
        ]
        assert sum(per_relay) == len(sent)
        assert all(n > 0 for n in per_relay), f"one relay took every connection: {per_relay}"
        deliveries = [e["timeUUID"] for r in fake.requests if r.status == 200 for e in r.events()]
        assert len(deliveries) == len(sent), "an event was delivered twice"
        assert await first.terminate() == 0
        assert await second.terminate() == 0


async def test_without_reuse_port_a_second_relay_on_a_taken_port_exits_naming_the_address(
    tmp_path: Path, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    port = free_port()
    admins = [free_port(), free_port()]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = DaemonProcess(
        daemon_config(fake, port, admins[0]), tmp_path / "a", {"HOOK_SECRET": SECRET}
    )
    second = DaemonProcess(
        daemon_config(fake, port, admins[1]), tmp_path / "b", {"HOOK_SECRET": SECRET}
    )
    async with first, second:
        await first.start(f"http://127.0.0.1:{admins[0]}/readyz")
        try:
            await second.start(f"http://127.0.0.1:{admins[1]}/readyz", timeout=10)
        except AssertionError as exc:
            assert "exited with" in str(exc), str(exc)
        else:
            raise AssertionError("a second relay started on a port another relay listens on")
        assert f"server.listen 127.0.0.1:{port}: Address already in use" in second.log_text()
        assert await first.terminate() == 0


async def test_sighup_with_a_config_that_is_not_utf8_is_refused_and_keeps_the_running_one(
    tmp_path: Path, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    port, admin = free_port(), free_port()
    good = daemon_config(fake, port, admin)
    async with DaemonProcess(good, tmp_path, env={"HOOK_SECRET": SECRET}) as daemon:
        await daemon.start(f"http://127.0.0.1:{admin}/readyz")
        daemon.config_path.write_bytes(b"# \xe9\n" + good.encode())
        os.kill(daemon.pid, signal.SIGHUP)  # type: ignore[arg-type]
        await poll_until(lambda: _reloads(admin, "error"), timeout=10, message=daemon.log_tail)
        async with aiohttp.ClientSession() as session:
            assert await send(session, port, batch("kept", 2)) == 200
        await poll_until(lambda: {"kept-0", "kept-1"} <= delivered(fake))
        assert "not UTF-8 text" in daemon.log_text()
        assert "Traceback" not in daemon.log_text()
        assert await daemon.terminate() == 0
