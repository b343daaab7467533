"""Load generator: signed Statsig Generic Webhook batches against a loopback relay.

It plays Statsig's webhook sender: POSTs JSON arrays of Statsig events (default 100 per body,
~400 B each; 25 % ``statsig::diagnostics``, which the bench route filters out), signed with
``X-Statsig-Request-Timestamp`` (epoch ms) and ``X-Statsig-Signature`` = ``v0=`` + hex
HMAC-SHA256(secret, ``v0:{ts}:{body}``). It shares two cores with the relay, so it spends as
little CPU per request as it can: a pool of distinct bodies is built up front, each body's whole
request head (signature included) is cached and re-signed only once a minute, and requests go
out on a minimal HTTP/1.1 keep-alive client over asyncio streams rather than a full client.

Safety rules: loopback targets only; every loop is bounded by ``--duration`` (≤ 900 s) and
``--max-requests``; each request by ``--timeout``.

    python bench/loadgen.py --url http://127.0.0.1:8080/webhooks/statsig --secret s --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import random
import resource
import sys
import time
import uuid
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
FILTERED_EVENT = "statsig::diagnostics"
MAX_DURATION_S = 900.0
RESIGN_AFTER_S = 60.0  # the relay accepts timestamps within 5 minutes
MAX_RESPONSE_BYTES = 1 << 20

# Event mix per 100 events; the filtered share is what the bench route drops.
MIX = (("diagnostics", 25), ("gate", 30), ("experiment", 20), ("custom", 25))
CUSTOM_NAMES = ("add_to_cart", "purchase", "page_view", "search", "sign_up", "view_item")
GATES = ("new_checkout_flow", "dark_mode", "recs_v2", "fast_search", "promo_banner")
EXPERIMENTS = ("pricing_page_test", "onboarding_copy", "ranking_model_v3", "cta_color")
COUNTRIES = ("US", "DE", "GB", "FR", "BR", "IN", "JP", "CA")


def check_loopback_url(url: str) -> tuple[str, int, str]:
    """Return (connect host, port, path) for an http URL on loopback, or raise ValueError."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"only http:// URLs are supported, got {url!r}")
    host = parts.hostname or ""
    if host not in LOOPBACK_HOSTS:
        raise ValueError(f"refusing non-loopback target {host!r}: use 127.0.0.1, ::1 or localhost")
    port = parts.port or 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return ("127.0.0.1" if host == "localhost" else host), port, path


# --------------------------------------------------------------------------- event pool


def _user(rng: random.Random) -> tuple[str, dict[str, Any]]:
    uid = f"u_{rng.randrange(10**7):07d}"
    user: dict[str, Any] = {"userID": uid, "country": rng.choice(COUNTRIES)}
    if rng.random() < 0.5:  # half the users also carry a device-level ID
        user["customIDs"] = {"stableID": str(uuid.UUID(int=rng.getrandbits(128), version=4))}
    return uid, user


def make_event(kind: str, rng: random.Random, now_ms: int) -> dict[str, Any]:
    """One realistic Statsig export event of the given kind (~400 B serialised)."""
    uid, user = _user(rng)
    ts = now_ms - rng.randrange(60_000)
    sdk = {"sdkType": "js-client", "sdkVersion": "5.11.0"}
    if kind == "gate":
        gate = rng.choice(GATES)
        name = "statsig::gate_exposure"
        value: str | None = None
        metadata: dict[str, Any] = {
            "gate": gate,
            "gateValue": rng.choice(("true", "false")),
            "ruleID": f"{rng.getrandbits(64):016x}",
            "reason": "Network",
            "time": str(ts),
        }
    elif kind == "experiment":
        name = "statsig::experiment_exposure"
        value = None
        metadata = {
            "config": rng.choice(EXPERIMENTS),
            "ruleID": f"{rng.getrandbits(64):016x}",
            "reason": "Network",
            "time": str(ts),
            "experimentGroupName": rng.choice(("Control", "Test", "Test B")),
        }
    elif kind == "diagnostics":
        name = FILTERED_EVENT
        value = None
        metadata = {
            "context": "initialize",
            "markers": f'[{{"key":"overall","action":"end","timestamp":{ts},"success":true}}]',
        }
    else:
        name = rng.choice(CUSTOM_NAMES)
        value = f"SKU-{rng.randrange(10**5):05d}"
        metadata = {
            "price": f"{rng.randrange(100, 20000) / 100:.2f}",
            "currency": "USD",
            "page": f"/products/{rng.randrange(10**5)}",
        }
    event: dict[str, Any] = {"eventName": name, "user": user, "userID": uid, "timestamp": ts}
    if value is not None:
        event["value"] = value
    event |= {
        "metadata": metadata,
        "statsigMetadata": sdk,
        "timeUUID": str(uuid.uuid1(node=rng.getrandbits(48), clock_seq=rng.getrandbits(14))),
        "unitID": "userID",
    }
    return event


def build_pool(n_bodies: int, per_body: int, seed: int, wrap: bool) -> list[tuple[bytes, int, int]]:
    """Distinct bodies up front: (body, events, events the bench route keeps)."""
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000)
    total = sum(n for _, n in MIX)
    kinds: list[str] = []
    for kind, n in MIX:
        kinds += [kind] * round(n * per_body / total)
    kinds = (kinds + ["custom"] * per_body)[:per_body]
    pool = []
    for _ in range(n_bodies):
        rng.shuffle(kinds)
        events = [make_event(k, rng, now_ms) for k in kinds]
        body = orjson.dumps({"data": events} if wrap else events)
        kept = sum(1 for e in events if e["eventName"] != FILTERED_EVENT)
        pool.append((body, len(events), kept))
    return pool


def sign(secret: bytes, ts: bytes, body: bytes) -> str:
    """Statsig's v0 signature: hex HMAC-SHA256 over ``v0:{ts}:{raw body}``."""
    mac = hmac.new(secret, b"v0:", hashlib.sha256)
    mac.update(ts)
    mac.update(b":")
    mac.update(body)
    return "v0=" + mac.hexdigest()


class SignedPool:
    """Bodies with cached, signed request heads; a head is re-signed when its timestamp ages."""

    def __init__(
        self, pool: list[tuple[bytes, int, int]], secret: str, host_header: str, path: str
    ) -> None:
        self.pool = pool
        self.secret = secret.encode()
        self.prefix = (
            f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\n"
            "User-Agent: statsig-relay-bench/1\r\n"
            "Content-Type: application/json\r\n"
        ).encode()
        self.heads: list[bytes] = [b""] * len(pool)
        self.signed_at = [float("-inf")] * len(pool)
        self.next = 0

    def take(self, now: float) -> tuple[bytes, bytes, int, int]:
        i = self.next
        self.next = (i + 1) % len(self.pool)
        body, n, kept = self.pool[i]
        if now - self.signed_at[i] > RESIGN_AFTER_S:
            ts = str(int(time.time() * 1000)).encode()
            self.heads[i] = b"".join(
                (
                    self.prefix,
                    b"Content-Length: %d\r\n" % len(body),
                    b"X-Statsig-Request-Timestamp: " + ts + b"\r\n",
                    b"X-Statsig-Signature: " + sign(self.secret, ts, body).encode() + b"\r\n\r\n",
                )
            )
            self.signed_at[i] = now
        return self.heads[i], body, n, kept


# --------------------------------------------------------------------------- HTTP client


class HttpError(Exception):
    """The peer's answer was not HTTP/1.1 we understand."""


class Conn:
    """One keep-alive HTTP/1.1 connection: writes a prebuilt request, reads one response."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, head: bytes, body: bytes) -> int:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.reader, self.writer
        writer.write(head)
        writer.write(body)
        raw = await reader.readuntil(b"\r\n\r\n")
        if not raw.startswith(b"HTTP/1."):
            raise HttpError("bad status line")
        status = int(raw[9:12])
        length = -1
        chunked = close = False
        for line in raw.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
        if chunked:
            await self._read_chunked(reader)
        elif length > MAX_RESPONSE_BYTES:
            raise HttpError("response too large")
        elif length > 0:
            await reader.readexactly(length)
        elif length < 0 and status not in (204, 304):
            close = True  # body runs until EOF: do not reuse
        if close:
            self.close()
        return status

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> None:
        total = 0
        while total <= MAX_RESPONSE_BYTES:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers expected
                return
            total += size
            await reader.readexactly(size + 2)
        raise HttpError("response too large")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


# --------------------------------------------------------------------------- run


@dataclass
class Results:
    requests: int = 0
    ok: int = 0
    events_sent: int = 0
    events_accepted: int = 0
    events_accepted_kept: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies_ms: array = field(default_factory=lambda: array("d"))
    first_send_ts: float | None = None
    last_done_ts: float | None = None
    elapsed_s: float = 0.0
    avg_body_bytes: float = 0.0


async def run_load(args: argparse.Namespace) -> Results:
    host, port, path = check_loopback_url(args.url)
    pool = build_pool(args.pool, args.events_per_batch, args.seed, args.wrap)
    port_part = "" if port == 80 else f":{port}"
    host_header = (f"[{host}]" if ":" in host else host) + port_part
    signed = SignedPool(pool, args.secret, host_header, path)
    res = Results(avg_body_bytes=sum(len(b) for b, _, _ in pool) / len(pool))
    perf = time.perf_counter
    start = perf()
    deadline = start + args.duration
    interval = 1.0 / args.rate if args.rate else 0.0
    started = 0
    backoff = args.backoff_ms / 1000.0
    res.first_send_ts = time.time()

    async def worker() -> None:
        nonlocal started
        conn = Conn(host, port)
        lat = res.latencies_ms
        try:
            while started < args.max_requests:
                slot = started  # claim the slot before sleeping, so workers never share one
                started += 1
                if interval:
                    due = start + slot * interval
                    if due >= deadline:
                        return
                    delay = due - perf()
                    if delay > 0:
                        await asyncio.sleep(delay)
                now = perf()
                if now >= deadline:
                    return
                head, body, n, kept = signed.take(now)
                t0 = perf()
                try:
                    async with asyncio.timeout(args.timeout):
                        status = await conn.request(head, body)
                except (
                    OSError,
                    EOFError,
                    TimeoutError,
                    HttpError,
                    ValueError,
                    asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError,
                ) as exc:
                    res.errors[type(exc).__name__] += 1
                    conn.close()
                    await asyncio.sleep(min(backoff, max(0.0, deadline - perf())))
                    continue
                t1 = perf()
                res.requests += 1
                res.events_sent += n
                if 200 <= status < 300:
                    res.ok += 1
                    res.events_accepted += n
                    res.events_accepted_kept += kept
                    lat.append((t1 - t0) * 1000.0)
                else:
                    res.statuses[str(status)] += 1
                    await asyncio.sleep(min(backoff, max(0.0, deadline - perf())))
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    res.elapsed_s = perf() - start
    res.last_done_ts = time.time()
    return res


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(0, min(len(sorted_values) - 1, int(q / 100.0 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def summarise(res: Results, args: argparse.Namespace) -> dict[str, Any]:
    lat = sorted(res.latencies_ms)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    elapsed = res.elapsed_s or 1e-9

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v, 3)

    return {
        "url": args.url,
        "duration_s": round(res.elapsed_s, 3),
        "concurrency": args.concurrency,
        "rate_cap": args.rate,
        "events_per_batch": args.events_per_batch,
        "requests": res.requests,
        "ok": res.ok,
        "non_2xx": dict(res.statuses),
        "errors": dict(res.errors),
        "events_sent": res.events_sent,
        "events_accepted": res.events_accepted,
        "events_accepted_kept": res.events_accepted_kept,
        "requests_per_s": round(res.ok / elapsed, 1),
        "events_per_s": round(res.events_accepted / elapsed, 1),
        "latency_ms": {
            "p50": ms(percentile(lat, 50)),
            "p95": ms(percentile(lat, 95)),
            "p99": ms(percentile(lat, 99)),
            "max": ms(lat[-1] if lat else None),
            "mean": ms(sum(lat) / len(lat) if lat else None),
        },
        "first_send_ts": res.first_send_ts,
        "last_done_ts": res.last_done_ts,
        "cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
        "avg_body_bytes": round(res.avg_body_bytes),
        "avg_event_bytes": round(res.avg_body_bytes / args.events_per_batch),
    }


def human(summary: dict[str, Any]) -> str:
    lat = summary["latency_ms"]
    return "\n".join(
        (
            f"target      {summary['url']}",
            f"duration    {summary['duration_s']} s, concurrency {summary['concurrency']}, "
            f"rate cap {summary['rate_cap'] or 'none'}",
            f"requests    {summary['requests']} ({summary['ok']} 2xx), "
            f"non-2xx {summary['non_2xx'] or 0}, errors {summary['errors'] or 0}",
            f"events      {summary['events_sent']} sent, {summary['events_accepted']} accepted "
            f"({summary['events_accepted_kept']} not filtered)",
            f"rate        {summary['requests_per_s']} req/s, {summary['events_per_s']} events/s",
            f"latency ms  p50 {lat['p50']}  p95 {lat['p95']}  p99 {lat['p99']}  max {lat['max']}",
            f"bodies      {summary['avg_body_bytes']} B avg ({summary['avg_event_bytes']} B/event)",
            f"cpu         {summary['cpu_s']} s (loadgen process)",
        )
    )


def run(coro: Any) -> Any:
    """Run a coroutine on uvloop when it is installed, else on the stock asyncio loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="webhook URL on loopback")
    p.add_argument("--secret", default="bench-signing-secret", help="Statsig signing secret")
    p.add_argument("--duration", type=float, default=20.0, help="seconds (max 900)")
    p.add_argument("--max-requests", type=int, default=1_000_000, help="hard cap on requests")
    p.add_argument("--concurrency", type=int, default=32, help="connections (1..512)")
    p.add_argument("--rate", type=float, default=None, help="cap in requests/s (default none)")
    p.add_argument("--events-per-batch", type=int, default=100)
    p.add_argument("--pool", type=int, default=200, help="distinct bodies to build up front")
    p.add_argument("--wrap", action="store_true", help='send {"data": [...]} not a bare array')
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=10.0, help="per-request timeout, seconds")
    p.add_argument(
        "--backoff-ms",
        type=float,
        default=50.0,
        help="per-connection pause after an error or non-2xx answer",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    args = p.parse_args(argv)
    if not 0 < args.duration <= MAX_DURATION_S:
        p.error(f"--duration must be in (0, {MAX_DURATION_S:g}]")
    if not 1 <= args.concurrency <= 512:
        p.error("--concurrency must be in 1..512")
    if args.max_requests < 1:
        p.error("--max-requests must be >= 1")
    if args.rate is not None and args.rate <= 0:
        p.error("--rate must be > 0")
    if not 1 <= args.events_per_batch <= 10_000 or not 1 <= args.pool <= 10_000:
        p.error("--events-per-batch and --pool must be in 1..10000")
    if not 0 < args.timeout <= 60:
        p.error("--timeout must be in (0, 60]")
    try:
        check_loopback_url(args.url)
    except ValueError as exc:
        p.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        res = run(run_load(args))
        summary = summarise(res, args)
        print(orjson.dumps(summary).decode() if args.json else human(summary), flush=True)
        return 0 if res.ok else 1
    return 130


if __name__ == "__main__":
    sys.exit(main())
