"""Counting fake HTTP target for benchmarks.

It stands in for the relay's downstream target: it answers 200 to a POST on any path, counts the
events in each JSON body and serves the totals on ``GET /stats``. It shares the machine with the
relay under test, so it does as little as possible per request: aiohttp's low-level server (no
router, no middlewares, no access log), one orjson parse per body, uvloop when importable.

    python bench/sink.py --port 18080
    curl -s http://127.0.0.1:18080/stats
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from typing import Any

import orjson
from aiohttp import web

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
# Keys under which a JSON object may carry its event list (generic webhook, Statsig, Segment).
EVENT_LIST_KEYS = ("events", "data", "batch")


class Stats:
    """Running totals; plain attributes so the per-request update is a few additions."""

    __slots__ = ("bad_requests", "bytes", "events", "first_ts", "last_ts", "requests", "started")

    def __init__(self) -> None:
        self.requests = 0
        self.events = 0
        self.bytes = 0
        self.bad_requests = 0
        self.first_ts: float | None = None
        self.last_ts: float | None = None
        self.started = time.time()

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "events": self.events,
            "bytes": self.bytes,
            "bad_requests": self.bad_requests,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "started_ts": self.started,
            "now_ts": time.time(),
        }


def count_events(doc: Any, inner: bool = False) -> int:
    """Events in one parsed body: a bare array, an object with an event list, or one event.

    ``inner``: an array's records that hold an event list count as its events (Fluent Bit
    forwards each @statsig/js-client request, ``{"events": [...]}``, as one record)."""
    if isinstance(doc, list):
        if inner:
            return sum(count_events(record) for record in doc)
        return len(doc)
    if isinstance(doc, dict):
        for key in EVENT_LIST_KEYS:
            inner = doc.get(key)
            if isinstance(inner, list):
                return len(inner)
        return 1
    return 0


_OK = b'{"success":true}'


def make_handler(stats: Stats, inner: bool = False) -> Any:
    """Build the single request handler (closure over ``stats``: no attribute look-ups)."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        method = request.method
        if method == "POST":
            # Not request.read(): its 1 MiB limit would refuse a peer's larger batches (Fluent
            # Bit flushes ~2 MB chunks); the sink takes whatever a pipeline sends.
            body = await request.content.read()
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                stats.bad_requests += 1
                return web.Response(
                    status=400, body=b'{"error":"invalid json"}', content_type="application/json"
                )
            now = time.time()
            stats.requests += 1
            stats.events += count_events(doc, inner)
            stats.bytes += len(body)
            if stats.first_ts is None:
                stats.first_ts = now
            stats.last_ts = now
            return web.Response(body=_OK, content_type="application/json")
        if method == "GET" and request.path == "/stats":
            return web.Response(body=orjson.dumps(stats.as_dict()), content_type="application/json")
        if method == "GET" and request.path in ("/healthz", "/readyz"):
            return web.Response(body=b"ok")
        return web.Response(status=404 if method == "GET" else 405)

    return handle


async def serve(host: str, port: int, inner: bool = False) -> None:
    """Serve until SIGTERM or SIGINT."""
    stats = Stats()
    server = web.Server(make_handler(stats, inner), access_log=None)
    runner = web.ServerRunner(server, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    print(f"sink listening on http://{host}:{port}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        print(
            f"sink stopping: {orjson.dumps(stats.as_dict()).decode()}", file=sys.stderr, flush=True
        )
        await runner.cleanup()


def run(coro: Any) -> None:
    """Run a coroutine on uvloop when it is installed, else on the stock asyncio loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--count-inner-events",
        action="store_true",
        help='in an array body, count a record holding {"events": [...]} as its events',
    )
    args = parser.parse_args(argv)
    if args.host not in LOOPBACK_HOSTS:
        parser.error(f"--host must be loopback ({', '.join(sorted(LOOPBACK_HOSTS))})")
    with contextlib.suppress(KeyboardInterrupt):
        run(serve(args.host, args.port, args.count_inner_events))
    return 0


if __name__ == "__main__":
    sys.exit(main())
