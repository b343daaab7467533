"""Slow clients as a process, with real sockets: a connection that sends its request head a
byte at a time (slowloris) is closed after ``server.header_timeout``, while well-behaved
requests are answered all along."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiohttp

from tests.daemon import DaemonProcess, free_port
from tests.fakes import poll_until
from tests.test_process import SECRET, batch, send

SLOW_CONNECTIONS = 50
HEAD = b"POST /webhooks/statsig HTTP/1.1\r\nHost: relay\r\nX-Slow: "


def config(port: int, admin: int) -> str:
    return f"""
server: {{listen: "127.0.0.1:{port}", admin_listen: "127.0.0.1:{admin}", header_timeout: 1s}}
spool: {{backend: sqlite, path: ./data/spool.db}}
sources:
  statsig: {{type: statsig_webhook, path: /webhooks/statsig, signing_secret: "${{HOOK_SECRET}}"}}
targets:
  out: {{type: file, path: ./data/out.jsonl}}
routes:
  - {{name: all, from: statsig, to: out}}
"""


async def slowloris(port: int, closed: list[float]) -> None:
    """Send the head one byte every 100 ms (at most 300 bytes, so 30 s at most); record the
    time the relay closed the connection."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    opened = loop.time()
    try:
        writer.write(HEAD[:1])
        for i in range(1, 300):
            byte = HEAD[i : i + 1] or b"a"
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(1), 0.1) == b"":
                    closed.append(loop.time() - opened)
                    return
            writer.write(byte)
            await writer.drain()
    except ConnectionError:
        closed.append(loop.time() - opened)
    finally:
        writer.close()


async def test_slow_request_heads_are_closed_after_header_timeout_and_others_are_served(
    tmp_path: Path,
) -> None:
    port, admin = free_port(), free_port()
    async with DaemonProcess(config(port, admin), tmp_path, env={"HOOK_SECRET": SECRET}) as daemon:
        await daemon.start(f"http://127.0.0.1:{admin}/readyz")
        closed: list[float] = []
        slow = [asyncio.create_task(slowloris(port, closed)) for _ in range(SLOW_CONNECTIONS)]
        try:
            # A fresh connection per request: an idle one is closed after header_timeout too.
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=connector) as session:
                assert await send(session, port, batch("during", 3)) == 200
                await poll_until(
                    lambda: len(closed) == SLOW_CONNECTIONS,
                    timeout=10,
                    message=lambda: f"{len(closed)}/{SLOW_CONNECTIONS} slow connections closed",
                )
                assert await send(session, port, batch("after", 3)) == 200
        finally:
            for task in slow:
                task.cancel()
            await asyncio.gather(*slow, return_exceptions=True)
        assert min(closed) >= 0.9, closed  # not before header_timeout
        assert await daemon.terminate() == 0


HANGUPS = 20


def metric_value(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_client_that_hangs_up_mid_body_is_not_an_internal_error(tmp_path: Path) -> None:
    """A sender that closes its connection before its body is complete was answered 500 (to
    no one), counted in relay_internal_errors_total and logged with a traceback each time:
    a relay bug to alert on, for what a client did."""
    port, admin = free_port(), free_port()
    async with DaemonProcess(config(port, admin), tmp_path, env={"HOOK_SECRET": SECRET}) as daemon:
        await daemon.start(f"http://127.0.0.1:{admin}/readyz")
        head = HEAD.split(b"X-Slow: ")[0] + b"Content-Length: 1000\r\n\r\n"
        for _ in range(HANGUPS):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head + b'[{"eventName":')
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        async with aiohttp.ClientSession() as session:

            async def metrics() -> str:
                async with session.get(f"http://127.0.0.1:{admin}/metrics") as response:
                    return await response.text()

            async def all_answered() -> bool:
                text = await metrics()
                answered = sum(
                    metric_value(text, f'relay_requests_total{{code="{code}",source="statsig"}}')
                    for code in ("400", "500")
                )
                return answered == HANGUPS

            await poll_until(all_answered, timeout=10, message=daemon.log_tail)
            text = await metrics()
            assert metric_value(text, 'relay_internal_errors_total{source="statsig"}') == 0
            rejected = 'relay_events_rejected_total{reason="disconnected",source="statsig"}'
            assert metric_value(text, rejected) == HANGUPS
            assert await send(session, port, batch("after", 3)) == 200
        out = tmp_path / "data" / "out.jsonl"
        await poll_until(lambda: out.exists() and out.read_text().count('"after-') == 3, timeout=10)
        assert "internal error" not in daemon.log_text()
        assert "Traceback" not in daemon.log_text()
        assert await daemon.terminate() == 0
