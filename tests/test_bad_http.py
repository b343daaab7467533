"""Malformed HTTP on the listeners: aiohttp's 400, counted, and no log flood or traceback."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, InvalidHeader
from prometheus_client import CollectorRegistry

from relay.httplog import ProtocolLog
from relay.metrics import RelayMetrics
from tests.conftest import RelayFactory, metric, metrics_text

CONFIG = """
sources:
  statsig: {type: statsig_webhook, path: /webhooks/statsig, signing_secret: s3cret}
targets:
  out: {type: webhook, url: "http://127.0.0.1:9/in", linger: 0s}
routes:
  - {name: all, from: statsig, to: out}
"""

SECRET = b"Bearer sk-very-secret-token"
MALFORMED = [
    b"GARBAGE\r\n\r\n",  # not a request line
    b"GET / HTTP/1.1\r\nHost: x\r\nBad\x01Header: y\r\n\r\n",  # invalid header bytes
    b"POST /webhooks/statsig HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /webhooks/statsig HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nabc",  # both framings
    b"POST /webhooks/statsig HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\nabc\r\n0\r\n\r\n",  # bad chunk size
    b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: " + SECRET + b"\x00\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
]


async def raw_exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` on a fresh connection and return the status line of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()


@pytest.mark.parametrize("listener", ["public", "admin"])
async def test_malformed_requests_get_400_are_counted_and_log_one_short_warning(
    relay_factory: RelayFactory, caplog: pytest.LogCaptureFixture, listener: str
) -> None:
    relay = await relay_factory(CONFIG)
    text = await metrics_text(relay)
    for name in ("public", "admin"):  # exported at 0 from start-up
        assert f'relay_bad_http_requests_total{{listener="{name}"}} 0.0' in text.splitlines()
    port = relay.public_port if listener == "public" else relay.admin_port
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        for request in MALFORMED:
            status_line = await raw_exchange(port, request)
            assert status_line.startswith(b"HTTP/1.0 400") or status_line.startswith(
                b"HTTP/1.1 400"
            ), (request[:40], status_line)
    assert metric(relay, "relay_bad_http_requests_total", listener=listener) == len(MALFORMED)
    records = [r for r in caplog.records if r.name.startswith(("aiohttp", "relay"))]
    assert not [r for r in records if r.exc_info], "a traceback was logged"
    assert not [r for r in records if r.levelno >= logging.ERROR]
    warnings = [r for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert warnings[0].getMessage().startswith(f"{listener} listener: malformed HTTP request")
    assert not [r for r in caplog.records if SECRET.decode() in r.getMessage()]
    # the listener still serves well-formed requests
    ok = await raw_exchange(relay.admin_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b" 200 " in ok


def test_one_warning_per_interval_with_the_count_suppressed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [1000.0]
    metrics = RelayMetrics(CollectorRegistry())
    log = ProtocolLog("public", metrics.bad_http_requests, interval_s=60, clock=lambda: now[0])
    with caplog.at_level(logging.DEBUG, logger="relay.httplog"):
        for _ in range(5):
            log.exception(
                "Error handling request from %s", "127.0.0.1", exc_info=InvalidHeader(b"x")
            )
            now[0] += 1
        now[0] += 60
        log.debug("Error handling request from %s", "127.0.0.1", exc_info=BadHttpMessage("y"))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "(InvalidHeader); 0 more" in messages[0]
    assert "(BadHttpMessage); 4 more" in messages[1]
    sampled = metrics.registry.get_sample_value(
        "relay_bad_http_requests_total", {"listener": "public"}
    )
    assert sampled == 6


async def test_a_handler_bug_is_still_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("handler bug")

    metrics = RelayMetrics(CollectorRegistry())
    app = web.Application()
    app.router.add_get("/", broken)
    runner = web.AppRunner(
        app, access_log=None, logger=ProtocolLog("admin", metrics.bad_http_requests)
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = int(runner.addresses[0][1])
        with caplog.at_level(logging.DEBUG):
            status_line = await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        await runner.cleanup()
    assert b" 500 " in status_line
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert errors and isinstance(errors[0].exc_info[1], RuntimeError)
    sampled = metrics.registry.get_sample_value(
        "relay_bad_http_requests_total", {"listener": "admin"}
    )
    assert sampled == 0


SEGMENT_TOO = CONFIG.replace(
    "sources:\n", "sources:\n  segment: {type: segment, write_keys: [wk]}\n"
).replace("routes:\n", "routes:\n  - {name: seg, from: segment, to: out}\n")


async def answer_to(port: int, parts: list[bytes]) -> bytes:
    """Send ``parts`` as separate writes on a fresh connection; the answer's head and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for part in parts:
            writer.write(part)
            await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        size = int(length.group(1)) if length else 0
        return head + await asyncio.wait_for(reader.readexactly(size), 10)
    finally:
        writer.close()


def request_head(path: str, framing: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
    ).encode()


STALLED = {  # the headers, then part of the body, then nothing
    "length": ("Content-Length: 100", b'[{"eventName":'),
    "chunked": ("Transfer-Encoding: chunked", b"5\r\nhello\r\n"),
}


@pytest.mark.parametrize("path", ["/webhooks/statsig", "/segment/v1/batch"])
@pytest.mark.parametrize("framing", list(STALLED))
async def test_a_body_that_stops_arriving_gets_408_and_the_connection_closes(
    relay_factory: RelayFactory, path: str, framing: str
) -> None:
    relay = await relay_factory(SEGMENT_TOO, server="body_timeout: 300ms")
    header, part = STALLED[framing]
    answer = await answer_to(relay.public_port, [request_head(path, header), part])
    status, _, rest = answer.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"\r\nConnection: close\r\n" in rest  # what is left of the body is not read
    assert rest.endswith(b'{"error":"the body did not arrive within 0.3s"}')
    source = "statsig" if path.startswith("/webhooks") else "segment"
    assert metric(relay, "relay_events_rejected_total", source=source, reason="timeout") == 1


BROKEN_CHUNKS = [
    b"zz\r\nabc\r\n0\r\n\r\n",  # a bad chunk size after a good chunk
    b"3\r\nabcdef\r\n0\r\n\r\n",  # a chunk longer than its size says
]


@pytest.mark.parametrize("path", ["/webhooks/statsig", "/segment/v1/batch"])
@pytest.mark.parametrize("tail", BROKEN_CHUNKS, ids=["bad-size", "overlong-chunk"])
async def test_chunked_framing_that_breaks_after_a_good_chunk_is_answered_not_held(
    relay_factory: RelayFactory, path: str, tail: bytes
) -> None:
    """Arriving with the headers, aiohttp answers 400 itself; arriving after them, its parser
    stops feeding the body it handed the handler and never ends it, and the read is bounded
    by ``server.body_timeout`` (408). Either way an answer, and the connection is closed."""
    relay = await relay_factory(SEGMENT_TOO, server="body_timeout: 300ms")
    head = request_head(path, "Transfer-Encoding: chunked") + b"5\r\nhello\r\n"
    answer = await answer_to(relay.public_port, [head, tail])
    assert answer.split(b" ", 2)[1] in (b"400", b"408"), answer[:200]
