"""Stand-in relay: a minimal, NON-durable forwarder that reads the bench config.

Two uses: checking the harness's plumbing without the real relay, and measuring the harness's
own ceiling (loadgen + sink + the least work a relay can do: verify, parse, filter, batch, POST)
on this machine, so a real-relay number can be read against it. It keeps events in memory only;
never use it for anything but benchmarks.

    python bench/run.py --relay-cmd "{python} bench/standin_relay.py -c {config}" --relay-cwd .
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import signal
import sys
import time
from typing import Any

import aiohttp
import orjson
import yaml
from aiohttp import web

MAX_BUFFERED = 20_000  # events held in memory before ingest answers 503


def split_hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


class Standin:
    """Ingest handler, in-memory batcher and forwarder for one source, one route, one target."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        source = next(iter(cfg["sources"].values()))
        target = next(iter(cfg["targets"].values()))
        route = cfg["routes"][0]
        self.path = source["path"]
        secret = source["signing_secret"]
        self.secret = secret.encode()
        self.url = target["url"]
        self.batch_max = int(target.get("batch_max_events", 1000))
        self.linger = float(str(target.get("linger", "200ms")).removesuffix("ms")) / 1000.0
        self.concurrency = int(target.get("concurrency", 4))
        self.exclude = frozenset(route.get("filter", {}).get("exclude_events", ()))
        self.buffer: list[Any] = []
        self.wake = asyncio.Event()
        self.counts = {
            "received": 0,
            "filtered": 0,
            "delivered": 0,
            "rejected": 0,
            "failed": 0,
            "pushed_back": 0,
        }

    def verify(self, request: web.BaseRequest, body: bytes) -> bool:
        ts = request.headers.get("X-Statsig-Request-Timestamp", "")
        sig = request.headers.get("X-Statsig-Signature", "")
        if not ts.isdigit() or abs(time.time() * 1000 - int(ts)) > 300_000:
            return False
        mac = hmac.new(self.secret, b"v0:" + ts.encode() + b":" + body, hashlib.sha256)
        return hmac.compare_digest("v0=" + mac.hexdigest(), sig)

    async def ingest(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method != "POST" or request.path != self.path:
            return web.Response(status=404)
        if len(self.buffer) >= MAX_BUFFERED:  # bounded memory: push back like a full spool
            self.counts["pushed_back"] += 1
            return web.Response(status=503, headers={"Retry-After": "1"})
        body = await request.read()
        if not self.verify(request, body):
            self.counts["rejected"] += 1
            return web.Response(status=401)
        doc = orjson.loads(body)
        events = doc["data"] if isinstance(doc, dict) else doc
        kept = [e for e in events if e.get("eventName") not in self.exclude]
        self.counts["received"] += len(events)
        self.counts["filtered"] += len(events) - len(kept)
        self.buffer += kept
        if len(self.buffer) >= self.batch_max:
            self.wake.set()
        return web.Response(body=b'{"ok":true}', content_type="application/json")

    async def admin(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path in ("/healthz", "/readyz"):
            return web.Response(body=b"ok")
        if request.path == "/metrics":
            lines = [f'standin_events_total{{outcome="{k}"}} {v}' for k, v in self.counts.items()]
            lines.append(f"standin_buffered_events {len(self.buffer)}")
            return web.Response(text="\n".join(lines) + "\n")
        return web.Response(status=404)

    async def deliver(self, stop: asyncio.Event) -> None:
        """Cut batches on size or linger; POST with bounded concurrency; stop when drained."""
        sem = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession() as session:

            async def post(batch: list[Any]) -> None:
                try:
                    async with session.post(
                        self.url,
                        data=orjson.dumps(batch),
                        headers={"Content-Type": "application/json"},
                    ) as r:
                        await r.read()
                        key = "delivered" if r.status < 300 else "failed"
                except (aiohttp.ClientError, TimeoutError):
                    key = "failed"
                finally:
                    sem.release()
                self.counts[key] += len(batch)

            while not (stop.is_set() and not self.buffer):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self.linger)
                self.wake.clear()
                pending, self.buffer = self.buffer, []
                for i in range(0, len(pending), self.batch_max):
                    await sem.acquire()
                    task = asyncio.create_task(post(pending[i : i + self.batch_max]))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks, timeout=10)


async def serve(cfg: dict[str, Any]) -> None:
    app = Standin(cfg)
    runners = []
    for key, handler in (("listen", app.ingest), ("admin_listen", app.admin)):
        host, port = split_hostport(cfg["server"][key])
        runner = web.ServerRunner(web.Server(handler, access_log=None), handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, host, port, backlog=1024).start()
        runners.append(runner)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    deliverer = asyncio.create_task(app.deliver(stop))
    await stop.wait()
    for runner in runners:
        await runner.cleanup()
    app.wake.set()
    await asyncio.wait_for(deliverer, 15)
    print(f"standin stopped: {app.counts}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", required=True)
    args = parser.parse_args(argv)
    with open(args.config, encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(cfg))
    else:
        uvloop.run(serve(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
