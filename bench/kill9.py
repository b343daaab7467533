"""kill -9 under load: every event the relay acknowledged arrives after a restart.

The throughput bench (run.py) counts events but cannot tell them apart (its bodies repeat). This
check gives every event a unique ``timeUUID``, loads the relay with signed Statsig webhook
batches (the bench route: ``statsig::diagnostics`` filtered out), SIGKILLs the relay mid-load,
starts it again on the same spool, and waits (bounded) until a recording sink holds every
acknowledged event the route keeps. Duplicates are allowed (at-least-once) and counted.

    .venv/bin/python bench/kill9.py --load 8 --kill-after 4
    .venv/bin/python bench/kill9.py --shape small --workers 64   # one Segment track call a request

``--shape small`` posts the small-request shape instead (bench/small.py's relay config): one
Segment ``track`` call per request to the ``segment`` source, each with its own ``messageId``
and the same id in ``properties.bench_id``, which the sink reads back from ``metadata.bench_id``.

Exit code 0 when nothing acknowledged is missing, 1 otherwise, 2 when a step failed. Loopback
only; every loop is bounded in count and time; it stops only the processes it started.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import random
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from loadgen import FILTERED_EVENT, MIX, make_event, sign  # noqa: E402
from run import DEFAULT_CONFIG, BenchError, free_port, render_config  # noqa: E402
from small import RELAY_CONFIG as SMALL_CONFIG  # noqa: E402
from small import WRITE_KEY  # noqa: E402

# One request: its body, its headers and the ids of the events the route keeps.
Request = tuple[bytes, dict[str, str], list[str]]


class Recorder:
    """The fake target: answers 200 and remembers every event id it was sent."""

    def __init__(self, event_id: Callable[[dict[str, Any]], str]) -> None:
        self.seen: dict[str, int] = {}
        self.event_id = event_id

    async def handle(self, request: web.Request) -> web.Response:
        for event in orjson.loads(await request.read()):
            key = self.event_id(event)
            self.seen[key] = self.seen.get(key, 0) + 1
        return web.Response(text="ok")


def batch(rng: random.Random, tag: str, size: int) -> tuple[bytes, list[str]]:
    """A body of ``size`` unique events, and the ids of those the bench route keeps."""
    kinds = [kind for kind, n in MIX for _ in range(n)]
    now = int(time.time() * 1000)
    events = []
    for i in range(size):
        event = make_event(rng.choice(kinds), rng, now)
        event["timeUUID"] = f"{tag}-{i}"
        events.append(event)
    kept = [e["timeUUID"] for e in events if e["eventName"] != FILTERED_EVENT]
    return orjson.dumps(events), kept


def signed_batch(secret: bytes, size: int) -> Callable[[random.Random, str], Request]:
    """The batch shape: ``size`` events in a signed Statsig webhook body."""

    def make(rng: random.Random, tag: str) -> Request:
        body, kept = batch(rng, tag, size)
        ts = str(int(time.time() * 1000))
        headers = {
            "Content-Type": "application/json",
            "X-Statsig-Request-Timestamp": ts,
            "X-Statsig-Signature": sign(secret, ts.encode(), body),
        }
        return body, headers, kept

    return make


def track_call(rng: random.Random, tag: str) -> Request:
    """The small shape: one Segment track call (as bench/small-track.lua), its id twice."""
    body = {
        "type": "track",
        "event": "Order Completed",
        "userId": f"user-{rng.randrange(50_000)}",
        "messageId": tag,
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "properties": {"revenue": 24.5, "currency": "EUR", "bench_id": tag},
        "context": {"library": {"name": "analytics.js", "version": "2.11.1"}},
    }
    auth = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    headers = {"Content-Type": "application/json", "Authorization": f"Basic {auth}"}
    return orjson.dumps(body), headers, [tag]


async def load(
    url: str,
    make_request: Callable[[random.Random, str], Request],
    seconds: float,
    workers: int,
    acknowledged: set[str],
    stop: asyncio.Event,
) -> int:
    """Post until ``seconds`` pass or ``stop`` is set; returns requests answered 2xx."""
    ok = 0
    deadline = time.monotonic() + seconds

    async def worker(n: int) -> None:
        nonlocal ok
        rng = random.Random(n)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            for r in range(100_000):  # bounded; the deadline or the kill ends it sooner
                if stop.is_set() or time.monotonic() > deadline:
                    return
                body, headers, kept = make_request(rng, f"w{n}-r{r}")
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        if 200 <= resp.status < 300:
                            acknowledged.update(kept)
                            ok += 1
                except (aiohttp.ClientError, TimeoutError):
                    if stop.is_set():
                        return  # the relay is gone: in-flight requests were not acknowledged
                    await asyncio.sleep(0.05)

    await asyncio.gather(*(worker(n) for n in range(workers)))
    return ok


async def wait_ready(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
    raise BenchError(f"relay not ready at {url} after {timeout:g}s")


async def main(args: argparse.Namespace) -> int:
    small = args.shape == "small"
    recorder = Recorder(
        (lambda e: (e.get("metadata") or {}).get("bench_id", ""))
        if small
        else (lambda e: e.get("timeUUID", ""))
    )
    app = web.Application(client_max_size=64 * 1024**2)
    app.router.add_post("/ingest", recorder.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sink_port, port, admin_port = free_port(), free_port(), free_port()
    await web.TCPSite(runner, "127.0.0.1", sink_port).start()
    secret = secrets.token_hex(16)
    tmp = Path(tempfile.mkdtemp(prefix="relay-kill9-"))
    config = tmp / "relay.yaml"
    values = {
        "listen": f"127.0.0.1:{port}",
        "admin_listen": f"127.0.0.1:{admin_port}",
        "tmpdir": str(tmp),
        "secret": secret,
        "webhook_path": "/webhooks/statsig",
        "sink_url": f"http://127.0.0.1:{sink_port}/ingest",
        "synchronous": "full",  # fsync every commit: what an acknowledgement promises
        "write_key": WRITE_KEY,
        "client_key": "client-bench",
        "origin": "https://shop.example.com",
    }
    config.write_text(render_config(SMALL_CONFIG if small else DEFAULT_CONFIG, values))
    relay_cmd = [sys.executable, "-m", "relay", "run", "-c", str(config)]
    ready = f"http://127.0.0.1:{admin_port}/readyz"
    path = "/segment/v1/track" if small else "/webhooks/statsig"
    url = f"http://127.0.0.1:{port}{path}"
    make_request = track_call if small else signed_batch(secret.encode(), args.events)
    acknowledged: set[str] = set()
    procs: list[asyncio.subprocess.Process] = []

    async def start_relay() -> asyncio.subprocess.Process:
        log = open(tmp / "relay.log", "ab")  # noqa: SIM115 - the child keeps it
        proc = await asyncio.create_subprocess_exec(
            *relay_cmd, cwd=str(BENCH_DIR.parent), stdout=log, stderr=log, start_new_session=True
        )
        log.close()
        procs.append(proc)
        await wait_ready(ready, 30)
        return proc

    try:
        relay = await start_relay()
        stop = asyncio.Event()
        loading = asyncio.create_task(
            load(url, make_request, args.load, args.workers, acknowledged, stop)
        )
        await asyncio.sleep(args.kill_after)
        before = len(acknowledged)
        os.kill(relay.pid, signal.SIGKILL)
        stop.set()
        await relay.wait()
        ok = await loading
        print(
            f"killed the relay with SIGKILL after {args.kill_after:g}s: {ok} requests "
            f"acknowledged, {len(acknowledged)} kept events ({before} when the kill was sent); "
            f"the sink had {len(recorder.seen)} of them"
        )
        relay = await start_relay()
        deadline = time.monotonic() + args.drain_timeout
        while time.monotonic() < deadline and not acknowledged <= recorder.seen.keys():
            await asyncio.sleep(0.2)
        missing = acknowledged - recorder.seen.keys()
        dupes = sum(n - 1 for n in recorder.seen.values() if n > 1)
        print(
            f"after the restart: {len(acknowledged) - len(missing)} of {len(acknowledged)} "
            f"acknowledged events delivered, {len(missing)} missing, {dupes} duplicates"
        )
        return 1 if missing else 0
    finally:
        for proc in procs:
            if proc.returncode is None:
                with_suppress_kill(proc.pid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 15)
                except TimeoutError:
                    with_suppress_kill(proc.pid, signal.SIGKILL)
                    await proc.wait()
        await runner.cleanup()
        if not args.keep_tmp:
            for path in sorted(tmp.rglob("*"), reverse=True):
                path.unlink() if path.is_file() else path.rmdir()
            tmp.rmdir()
        else:
            print(f"kept {tmp}")


def with_suppress_kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--shape",
        choices=("batch", "small"),
        default="batch",
        help="batch: signed webhook batches; small: one Segment track call a request",
    )
    p.add_argument("--load", type=float, default=8.0, help="load seconds (max 60)")
    p.add_argument("--kill-after", type=float, default=4.0, help="SIGKILL after this many s")
    p.add_argument("--workers", type=int, default=16, help="concurrent senders")
    p.add_argument("--events", type=int, default=100, help="events per request (batch shape)")
    p.add_argument("--drain-timeout", type=float, default=60.0)
    p.add_argument("--keep-tmp", action="store_true")
    args = p.parse_args(argv)
    if not 0 < args.kill_after < args.load <= 60:
        p.error("need 0 < --kill-after < --load <= 60")
    return args


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main(parse_args())))
    except BenchError as exc:
        print(f"kill9: {exc}", file=sys.stderr)
        sys.exit(2)
