"""Delivery per target type: events/s and relay CPU per event, each target against its fake.

Delivery only, one target at a time. For each target in ``TARGETS``:

1. Ingest with the target held back. The relay runs as a process (``python -m relay run -c
   CONFIG``: SQLite spool with ``synchronous: full``, a ``statsig_webhook`` source with a signing
   secret, one route to the target, the target's own batch limits). The target's URL points at
   a loopback port that is bound but not listening, so every delivery is refused; with
   ``failing_after: 100ms`` the target turns *failing* at once and its events are held in the
   spool (relay/health.py: no attempt counted, one probe per ``retry_max``). N signed webhook
   bodies of unique events go in; every one must be answered 2xx (committed).
2. The relay is stopped (SIGTERM), the target's fake from tests/ is started on a free loopback
   port, and the relay starts again on the same spool with the URL pointing at the fake. Its
   held rows are all due, so delivery is a cold drain of the backlog, with no retry schedule
   or probe backoff in it. (A relay left running would pick rows put back for a retry only at
   its next poll, up to 1 s later: gaps in the window that are not delivery.)
3. Measured from the fake's first accepted (2xx) request to its last: events/s = events ÷ that
   window; CPU µs/event = CPU seconds of the relay's process tree (the relay and its spool
   writer, sampled from /proc every 20 ms and interpolated at the window's ends) ÷ events.
4. Exactly once: every event carries a unique id (``timeUUID`` and ``metadata.bench_id`` for
   events, ``metadata.name`` for config changes); the fake must have accepted every id once
   and nothing else, and its shape checks must have no failures.

A vendor's rate limit that the relay enforces itself (Heap's 15,000 events/min, Chronosphere's
300/min, Slack's 60 messages/min) is lifted by default so the window measures the relay, not its
token bucket; ``--paced`` keeps it (events/s is then the vendor's limit). The table shows the
vendor's documented limit.

    .venv/bin/python bench/targets.py --targets webhook,heap --events 20000 --changes 1000
    .venv/bin/python bench/targets.py --repeat 3            # A B C, A B C, A B C; ranges

Adding a target is one entry in ``TARGETS`` (see :class:`TargetBench`). Exit code: 0 when
every target got every event exactly once, 1 when one did not, 2 when a step failed. Loopback
only; every wait has a deadline; it stops only the processes it started.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path[:0] = [str(BENCH_DIR), str(ROOT)]

from loadgen import MIX, make_event, sign  # noqa: E402
from run import BenchError, Procs, free_port, git_info, parse_metrics, tail, tree_cpu_s  # noqa: E402

from tests.fake_amplitude import API_KEY as AMPLITUDE_KEY  # noqa: E402
from tests.fake_amplitude import FakeAmplitude  # noqa: E402
from tests.fake_change_targets import SLACK_PATH, FakeDatadog, FakeGrafana, FakeSlack  # noqa: E402
from tests.fake_mixpanel import TOKEN as MIXPANEL_TOKEN  # noqa: E402
from tests.fake_mixpanel import FakeMixpanel  # noqa: E402
from tests.fake_segment import FakeSegment  # noqa: E402
from tests.fake_statsig import FakeStatsig  # noqa: E402
from tests.fakes import FakeTarget, RecordedRequest  # noqa: E402
from tests.test_chronosphere import TOKEN as CHRONOSPHERE_TOKEN  # noqa: E402
from tests.test_chronosphere import chronosphere_check  # noqa: E402
from tests.test_heap import APP_ID as HEAP_APP_ID  # noqa: E402
from tests.test_heap import heap_check  # noqa: E402

RESULTS_DIR = BENCH_DIR / "results"
WEBHOOK_PATH = "/webhooks/statsig"
SAMPLE_S = 0.02  # CPU sampling and fake bookkeeping interval
LIFTED = 1_000_000_000  # a relay-side rate limit nobody reaches
# Delivery settings for both phases: a refused or rate-limited request is retried soon.
RETRY = {"retry_initial": "50ms", "retry_max": "500ms"}
HOLD = {"failing_after": "100ms"}  # ingest phase only: the unreachable target holds its events
FIVETRAN_SECRET = "bench-fivetran-hmac"
SEGMENT_WRITE_KEY = "bench-segment-write-key"
DATADOG_KEY = "bench-datadog-api-key"
GRAFANA_TOKEN = "glsa_bench_token"


# --------------------------------------------------------------------------- what is sent

EVENTS = "events"  # custom events and exposures
CHANGES = "config_changes"  # statsig::config_change, for the change targets


def custom_and_exposures(ids: list[str], rng: random.Random) -> list[dict[str, Any]]:
    """The load generator's events without the diagnostics (gate, experiment, custom)."""
    kinds = [kind for kind, n in MIX if kind != "diagnostics" for _ in range(n)]
    now = int(time.time() * 1000)
    events = []
    for bench_id in ids:
        event = make_event(rng.choice(kinds), rng, now)
        event["timeUUID"] = bench_id
        event["metadata"]["bench_id"] = bench_id  # for targets that drop timeUUID
        events.append(event)
    return events


def config_changes(ids: list[str], rng: random.Random) -> list[dict[str, Any]]:
    """Statsig config changes, as the webhook sends them; the id is the config's name."""
    now = int(time.time() * 1000)
    kinds = ("Gate", "Experiment", "Dynamic Config")
    actions = ("created", "updated", "deleted")
    return [
        {
            "eventName": "statsig::config_change",
            "timestamp": now - rng.randrange(60_000),
            "user": {"name": "Bench User", "email": "bench@example.com"},
            "metadata": {
                "type": rng.choice(kinds),
                "name": bench_id,
                "action": rng.choice(actions),
                "description": "- Updated rules\n - Rollout 50% → 100%",
            },
            "timeUUID": bench_id,
        }
        for bench_id in ids
    ]


# What each kind of load is made of, and the route filter it needs.
SENDS: dict[str, tuple[Callable[[list[str], random.Random], list[dict]], dict | None]] = {
    EVENTS: (custom_and_exposures, None),
    CHANGES: (config_changes, {"categories": ["config_change"]}),
}


# --------------------------------------------------------------------------- the targets


@dataclass(frozen=True)
class TargetBench:
    """How to bench one target type: the one entry to write when adding a target.

    ``target``: the config stanza (a dict, written as YAML); ``"{url}"`` inside a string is
    the fake's base URL (``http://127.0.0.1:PORT``). Leave batch limits at the target's
    defaults (its documented limits) unless the vendor documents otherwise.
    ``fake``: starts the fake on a free loopback port and returns it (a tests.fakes.FakeTarget
    or subclass); ``--fake-arg NAME:KEY=VALUE`` passes keyword arguments (a rate limit).
    ``ids``: the bench ids an accepted (2xx) request carried ([] for side requests).
    ``sends``: EVENTS or CHANGES. ``unpace``: keys that lift a rate limit the relay enforces
    itself (dropped with ``--paced``); ``vendor_limit``: that limit, for the table.
    """

    target: dict[str, Any]
    fake: Callable[..., Awaitable[FakeTarget]]
    ids: Callable[[RecordedRequest], list[str]]
    sends: str = EVENTS
    unpace: dict[str, Any] = field(default_factory=dict)
    vendor_limit: str = ""


def time_uuids(rec: RecordedRequest) -> list[str]:
    return [str(e.get("timeUUID", "")) for e in rec.events()]


def json_array_check(rec: RecordedRequest) -> None:
    assert rec.method == "POST", rec.method
    assert rec.headers.get("Content-Type", "").startswith("application/json"), "not JSON"
    assert isinstance(rec.json, list) and rec.json, "body is not a non-empty JSON array"


def fivetran_check(rec: RecordedRequest) -> None:
    """The Fivetran Webhooks connector's shape: a JSON array, X-Fivetran-Hmac-Sign (base64)."""
    json_array_check(rec)
    digest = hmac.new(FIVETRAN_SECRET.encode(), rec.body, hashlib.sha256).digest()
    assert rec.headers.get("X-Fivetran-Hmac-Sign") == base64.b64encode(digest).decode(), "hmac"


def heap_ids(rec: RecordedRequest) -> list[str]:
    if rec.path != "/api/track":
        return []  # add_user_properties: part of delivering the batch, no events
    return [str(e.get("idempotency_key", "")) for e in rec.json["events"]]


def statsig_ids(rec: RecordedRequest) -> list[str]:
    return [str((e.get("metadata") or {}).get("bench_id", "")) for e in rec.events()]


def chronosphere_ids(rec: RecordedRequest) -> list[str]:
    return [str(rec.json["event"]["labels"].get("name", ""))]


def amplitude_ids(rec: RecordedRequest) -> list[str]:
    return [str(e.get("insert_id", "")) for e in rec.json["events"]]  # insert_id: timeUUID


def mixpanel_ids(rec: RecordedRequest) -> list[str]:
    return [str(r["properties"].get("$insert_id", "")) for r in rec.json]  # timeUUID


def segment_ids(rec: RecordedRequest) -> list[str]:
    return [str(m.get("messageId", "")) for m in rec.json["batch"]]  # messageId: timeUUID


def datadog_ids(rec: RecordedRequest) -> list[str]:
    return [str(rec.json["data"]["attributes"]["attributes"]["changed_resource"]["name"])]


def _slack_unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def slack_ids(rec: RecordedRequest) -> list[str]:
    """One change per section block; its first line starts with the name: ``*name*``, or
    ``<link|name>`` when the change carries a link."""
    names = []
    for block in rec.json["blocks"]:
        line = block["text"]["text"].partition("\n")[0]
        if line.startswith("<"):
            names.append(_slack_unescape(line[line.index("|") + 1 : line.index(">")]))
        else:
            names.append(_slack_unescape(line[1 : line.index("*", 1)]))
    return names


def grafana_ids(rec: RecordedRequest) -> list[str]:
    """The text's first line is ``Statsig <type> <name> <action>[ by <who>]`` and the tags are
    ``statsig``, the type lowercased and the action: the name is what lies between them (a
    type may have a space: "Dynamic Config")."""
    _, kind, action = rec.json["tags"][:3]
    line = rec.json["text"].partition("\n")[0]
    rest = line[len("Statsig ") + len(kind) + 1 :]
    return [rest.partition(f" {action}")[0]]


TARGETS: dict[str, TargetBench] = {
    "webhook": TargetBench(
        target={"type": "webhook", "url": "{url}/ingest"},
        fake=lambda: FakeTarget(check=json_array_check).start(),
        ids=time_uuids,
    ),
    "fivetran": TargetBench(
        target={"type": "fivetran", "url": "{url}/webhooks/bench", "hmac_secret": FIVETRAN_SECRET},
        fake=lambda: FakeTarget(check=fivetran_check).start(),
        ids=time_uuids,
    ),
    "heap": TargetBench(
        target={"type": "heap", "app_id": HEAP_APP_ID, "base_url": "{url}"},
        fake=lambda: FakeTarget(check=heap_check).start(),
        ids=heap_ids,
        unpace={"rate_limit_per_minute": LIFTED},
        vendor_limit="15,000/min (250/s)",
    ),
    "statsig": TargetBench(
        target={"type": "statsig", "server_secret": "secret-bench", "url": "{url}/v1/log_event"},
        fake=lambda: FakeStatsig("secret-bench").start(),
        ids=statsig_ids,
    ),
    "chronosphere": TargetBench(
        target={"type": "chronosphere", "url": "{url}", "api_token": CHRONOSPHERE_TOKEN},
        fake=lambda: FakeTarget(check=chronosphere_check).start(),
        ids=chronosphere_ids,
        sends=CHANGES,
        unpace={"rate_limit_per_minute": LIFTED},
        vendor_limit="300/min (5/s)",
    ),
    # Amplitude, Mixpanel and Segment: the relay paces none of them (it only backs off after a
    # 429), so there is nothing to lift; the limits are the vendors' documented ones.
    "amplitude": TargetBench(
        target={"type": "amplitude", "api_key": AMPLITUDE_KEY, "base_url": "{url}"},
        fake=lambda **kw: FakeAmplitude(AMPLITUDE_KEY, **kw).start(),
        ids=amplitude_ids,
        vendor_limit="30/s per user or device",
    ),
    "mixpanel": TargetBench(
        target={"type": "mixpanel", "project_token": MIXPANEL_TOKEN, "base_url": "{url}"},
        fake=lambda **kw: FakeMixpanel(MIXPANEL_TOKEN, **kw).start(),
        ids=mixpanel_ids,
        vendor_limit="2 GB/min per project (~30k/s)",
    ),
    "segment": TargetBench(
        target={"type": "segment", "write_key": SEGMENT_WRITE_KEY, "base_url": "{url}"},
        fake=lambda **kw: FakeSegment(SEGMENT_WRITE_KEY, **kw).start(),
        ids=segment_ids,
        vendor_limit="60M per 10 min (100k/s)",
    ),
    "datadog": TargetBench(
        target={"type": "datadog", "api_key": DATADOG_KEY, "base_url": "{url}"},
        fake=lambda: FakeDatadog(DATADOG_KEY).start(),
        ids=datadog_ids,
        sends=CHANGES,
        vendor_limit="250,000/min per org",
    ),
    "slack": TargetBench(
        # url: the hook (the credential, its path checked by the fake); base_url: the fake.
        target={
            "type": "slack",
            "url": f"https://hooks.slack.com{SLACK_PATH}",
            "base_url": "{url}",
        },
        fake=lambda: FakeSlack().start(),
        ids=slack_ids,
        sends=CHANGES,
        unpace={"messages_per_minute": LIFTED},
        vendor_limit="~1 message/s per hook (20 changes each)",
    ),
    "grafana": TargetBench(
        target={"type": "grafana", "url": "{url}", "token": GRAFANA_TOKEN},
        fake=lambda: FakeGrafana(GRAFANA_TOKEN).start(),
        ids=grafana_ids,
        sends=CHANGES,
        vendor_limit="none documented (self-hosted)",
    ),
}


# --------------------------------------------------------------------------- measuring


class CpuSampler:
    """CPU seconds of the relay's process tree, and of this process (the fake), over time."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float, float]] = []  # (monotonic, relay, self)

    def sample(self) -> None:
        relay = tree_cpu_s(self.pid)
        if relay is not None:
            own = os.times()
            self.samples.append((time.monotonic(), relay, own.user + own.system))

    def at(self, t: float) -> tuple[float, float]:
        """(relay, self) CPU seconds at ``t``, interpolated between the samples around it."""
        s = self.samples
        if not s:
            return 0.0, 0.0
        if t <= s[0][0]:
            return s[0][1], s[0][2]
        for (t0, r0, o0), (t1, r1, o1) in itertools.pairwise(s):
            if t0 <= t <= t1:
                f = (t - t0) / (t1 - t0) if t1 > t0 else 0.0
                return r0 + f * (r1 - r0), o0 + f * (o1 - o0)
        return s[-1][1], s[-1][2]


class Tally:
    """What the fake accepted: ids, requests, the window. Answered requests are counted once
    and their bodies dropped, so a 100k-event run does not keep every body in memory."""

    def __init__(self, bench: TargetBench) -> None:
        self.bench = bench
        self.seen: Counter[str] = Counter()
        self.next = 0
        self.requests = 0  # answered, any status
        self.carrying = 0  # 2xx requests that carried events
        self.statuses: Counter[int] = Counter()
        self.first: float | None = None  # arrival of the first / last 2xx request
        self.last: float | None = None
        self.id_errors: list[str] = []
        self.last_progress = time.monotonic()

    def update(self, fake: FakeTarget) -> None:
        requests = fake.requests
        while self.next < len(requests) and requests[self.next].status is not None:
            rec = requests[self.next]
            self.next += 1
            self.requests += 1
            status = rec.status or 0
            self.statuses[status] += 1
            if 200 <= status < 300 and rec.check_error is None:
                try:
                    ids = self.bench.ids(rec)
                except (KeyError, TypeError, AttributeError) as exc:
                    ids = []
                    if len(self.id_errors) < 5:
                        self.id_errors.append(f"{rec.summary()}: {exc!r}")
                if ids:
                    self.carrying += 1
                    self.seen.update(ids)
                    self.last_progress = time.monotonic()
                self.first = rec.received_at if self.first is None else self.first
                self.last = rec.received_at
            rec.raw = rec.body = b""
            rec.json = None


# --------------------------------------------------------------------------- one run


def stanza(bench: TargetBench, url: str, args: argparse.Namespace) -> dict[str, Any]:
    """The target's config: its entry with the URL filled in, the bench's retry settings, and
    the relay-side rate limit lifted unless --paced."""
    target = {
        k: v.replace("{url}", url) if isinstance(v, str) else v for k, v in bench.target.items()
    }
    target |= RETRY
    if not args.paced:
        target |= bench.unpace
    return target


def relay_config(
    name: str,
    target: dict[str, Any],
    sends: str,
    tmp: Path,
    ports: tuple[int, int],
    secret: str,
    synchronous: str,
) -> dict[str, Any]:
    """The relay's whole config (JSON is YAML): one source, one target, one route."""
    route: dict[str, Any] = {"name": "bench", "from": "statsig", "to": name}
    route_filter = SENDS[sends][1]
    if route_filter:
        route["filter"] = route_filter
    return {
        "server": {
            "listen": f"127.0.0.1:{ports[0]}",
            "admin_listen": f"127.0.0.1:{ports[1]}",
            "max_body": "5MiB",
            "shutdown_grace": "2s",
        },
        "spool": {
            "backend": "sqlite",
            "path": str(tmp / "spool.db"),
            "max_size": "1GiB",
            "synchronous": synchronous,
        },
        "sources": {
            "statsig": {"type": "statsig_webhook", "path": WEBHOOK_PATH, "signing_secret": secret}
        },
        "targets": {name: target},
        "routes": [route],
    }


def two_ports() -> tuple[int, int]:
    for _ in range(20):
        a, b = free_port(), free_port()
        if a != b:
            return a, b
    raise BenchError("could not find two free ports")


async def wait_ready(url: str, proc: Any, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"relay exited with {proc.returncode}\n{tail(log)}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise BenchError(f"relay not ready at {url} after {timeout:g}s\n{tail(log)}")


async def ingest(url: str, secret: str, bodies: list[bytes], args: argparse.Namespace) -> None:
    """POST every body, signed; each must be answered 2xx (a 503 is retried, bounded)."""
    todo = iter(bodies)
    deadline = time.monotonic() + args.ingest_timeout

    async def worker(session: aiohttp.ClientSession) -> None:
        for body in todo:
            for _attempt in range(20):
                if time.monotonic() > deadline:
                    raise BenchError(f"ingest took longer than {args.ingest_timeout:g}s")
                ts = str(int(time.time() * 1000))
                headers = {
                    "Content-Type": "application/json",
                    "X-Statsig-Request-Timestamp": ts,
                    "X-Statsig-Signature": sign(secret.encode(), ts.encode(), body),
                }
                async with session.post(url, data=body, headers=headers) as resp:
                    text = await resp.text()
                    if 200 <= resp.status < 300:
                        break
                    if resp.status != 503:
                        raise BenchError(f"ingest answered {resp.status}: {text[:300]}")
                await asyncio.sleep(0.2)
            else:
                raise BenchError("ingest: a body was refused 20 times (spool full?)")

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(args.ingest_connections)))


async def run_target(
    name: str, bench: TargetBench, n: int, args: argparse.Namespace, procs: Procs, tmp: Path
) -> dict[str, Any]:
    tag = secrets.token_hex(4)
    ids = [f"b{tag}-{i:07d}" for i in range(n)]
    build, rng, per = SENDS[bench.sends][0], random.Random(tag), args.body_events
    bodies = [orjson.dumps(build(ids[i : i + per], rng)) for i in range(0, n, per)]
    secret = secrets.token_hex(16)
    py = sys.executable

    # 1. ingest while the target's port refuses connections (bound, never listening)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as refused:
        refused.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{refused.getsockname()[1]}"
        ports = two_ports()
        target = stanza(bench, url, args) | HOLD
        config = relay_config(name, target, bench.sends, tmp, ports, secret, args.synchronous)
        (tmp / "ingest.yaml").write_text(json.dumps(config, indent=1))
        log = tmp / "relay-ingest.log"
        relay = procs.start(
            "relay", [py, "-m", "relay", "run", "-c", str(tmp / "ingest.yaml")], ROOT, log
        )
        await wait_ready(f"http://127.0.0.1:{ports[1]}/readyz", relay, args.ready_timeout, log)
        t0 = time.monotonic()
        await ingest(f"http://127.0.0.1:{ports[0]}{WEBHOOK_PATH}", secret, bodies, args)
        ingest_s = time.monotonic() - t0
        procs.stop(relay, timeout=args.stop_timeout)
    del bodies
    await asyncio.sleep(0.6)  # held rows come due just before a probe, at most retry_max on

    # 2. the fake, and the relay again on the same spool
    try:
        fake = await bench.fake(**args.fake_args.get(name, {}))
    except TypeError as exc:
        raise BenchError(
            f"{name}: its fake does not take {args.fake_args.get(name)}: {exc}"
        ) from exc
    try:
        ports = two_ports()
        target = stanza(bench, fake.url, args)
        config = relay_config(name, target, bench.sends, tmp, ports, secret, args.synchronous)
        (tmp / "deliver.yaml").write_text(json.dumps(config, indent=1))
        log = tmp / "relay-deliver.log"
        relay = procs.start(
            "relay", [py, "-m", "relay", "run", "-c", str(tmp / "deliver.yaml")], ROOT, log
        )
        sampler = CpuSampler(relay.pid)
        # The window opens at the first request, while the relay may still be starting up:
        # read its CPU right there rather than interpolate over a sampling interval.
        check = fake.check

        def sample_first(rec: RecordedRequest) -> Any:
            if len(fake.requests) == 1:
                sampler.sample()
            return check(rec) if check is not None else None

        fake.check = sample_first
        tally = Tally(bench)
        wanted = set(ids)
        deadline = time.monotonic() + args.drain_timeout
        done_at: float | None = None
        outcome = "complete"
        while True:
            sampler.sample()
            tally.update(fake)
            now = time.monotonic()
            if done_at is None and len(tally.seen) >= n and wanted <= tally.seen.keys():
                done_at = now
            if done_at is not None and now - done_at >= args.settle:
                break
            if relay.poll() is not None:
                raise BenchError(f"relay exited with {relay.returncode}\n{tail(log)}")
            if done_at is None and now > deadline:
                outcome = f"drain timeout ({args.drain_timeout:g}s)"
                break
            if done_at is None and now - tally.last_progress > args.stall_timeout:
                outcome = f"stalled: nothing new for {args.stall_timeout:g}s"
                break
            await asyncio.sleep(SAMPLE_S)
        metrics: dict[str, float] = {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"http://127.0.0.1:{ports[1]}/metrics") as resp:
                    metrics = parse_metrics(await resp.text())
        procs.stop(relay, timeout=args.stop_timeout)
        failures = list(fake.failures)
    finally:
        await fake.close()

    missing = len(wanted - tally.seen.keys())
    duplicates = sum(c - 1 for c in tally.seen.values() if c > 1)
    unknown = sum(c for i, c in tally.seen.items() if i not in wanted)
    window = (tally.last - tally.first) if tally.first is not None and tally.last else 0.0
    (cpu0, own0), (cpu1, own1) = sampler.at(tally.first or 0.0), sampler.at(tally.last or 0.0)
    relay_cpu, fake_cpu = cpu1 - cpu0, own1 - own0
    once = outcome == "complete" and not (missing or duplicates or unknown or failures)
    return {
        "target": name,
        "events": n,
        "sends": bench.sends,
        "paced": args.paced,
        "exactly_once": once,
        "outcome": outcome,
        "missing": missing,
        "duplicates": duplicates,
        "unknown_ids": unknown,
        "fake_failures": failures[:10],
        "id_errors": tally.id_errors,
        "window_s": round(window, 4),
        "events_per_s": round(n / window, 1) if window > 0 and once else None,
        "relay_cpu_s": round(relay_cpu, 3),
        "relay_cpu_us_per_event": round(relay_cpu * 1e6 / n, 2) if window > 0 else None,
        "fake_process_cpu_s": round(fake_cpu, 3),
        "requests": tally.requests,
        "requests_with_events": tally.carrying,
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "mean_batch": round(len(wanted & tally.seen.keys()) / tally.carrying, 1)
        if tally.carrying
        else None,
        "ingest_s": round(ingest_s, 2),
        "cpu_samples": len(sampler.samples),
        "relay_metrics": {
            k: v
            for k, v in metrics.items()
            if k.startswith(
                (
                    "relay_events_delivered_total",
                    "relay_events_retried_total",
                    "relay_events_dead_lettered_total",
                    "relay_delivery_requests_total",
                )
            )
        },
        "config": {
            k: v.replace(fake.url, "{url}") if isinstance(v, str) else v for k, v in target.items()
        },
        "relay_log_tail": tail(log, 10).replace(str(tmp), "<tmp>"),
    }


# --------------------------------------------------------------------------- report


def span(values: list[float], fmt: str) -> str:
    """One value, or the range (min to max) over the repeats."""
    if not values:
        return "n/a"
    lo, hi = min(values), max(values)
    return format(lo, fmt) if lo == hi else f"{format(lo, fmt)}–{format(hi, fmt)}"


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["target"] for r in runs):
        mine = [r for r in runs if r["target"] == name]
        rates = [r["events_per_s"] for r in mine if r["events_per_s"]]
        cpu = [r["relay_cpu_us_per_event"] for r in mine if r["relay_cpu_us_per_event"]]
        out[name] = {
            "runs": len(mine),
            "events": mine[0]["events"],
            "events_per_s": rates,
            "events_per_s_median": statistics.median(rates) if rates else None,
            "relay_cpu_us_per_event": cpu,
            "relay_cpu_us_per_event_median": statistics.median(cpu) if cpu else None,
            "requests": [r["requests"] for r in mine],
            "mean_batch": [r["mean_batch"] for r in mine if r["mean_batch"]],
            "exactly_once": all(r["exactly_once"] for r in mine),
            "problems": [
                f"{r['outcome']}, missing {r['missing']}, duplicates {r['duplicates']}, "
                f"unknown {r['unknown_ids']}, fake failures {len(r['fake_failures'])}"
                for r in mine
                if not r["exactly_once"]
            ],
        }
    return out


def markdown(summary: dict[str, dict[str, Any]], header: str) -> str:
    lines = [
        header,
        "",
        "| target | events | events/s | CPU µs/event | requests | mean batch | vendor limit "
        "| exactly once |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for name, s in summary.items():
        limit = TARGETS[name].vendor_limit or "–"
        lines.append(
            f"| {name} | {s['events']:,} | {span(s['events_per_s'], ',.0f')} "
            f"| {span(s['relay_cpu_us_per_event'], '.1f')} | {span(s['requests'], ',d')} "
            f"| {span(s['mean_batch'], '.1f')} | {limit} "
            f"| {'yes' if s['exactly_once'] else 'NO: ' + '; '.join(s['problems'])} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", default=",".join(TARGETS), help="comma-separated, in run order")
    p.add_argument("--events", type=int, default=100_000, help="per event target (max 1M)")
    p.add_argument("--changes", type=int, default=5_000, help="per config-change target")
    p.add_argument("--repeat", type=int, default=1, help="rounds over the targets (max 10)")
    p.add_argument("--paced", action="store_true", help="keep the relay's vendor rate limits")
    p.add_argument(
        "--fake-arg",
        action="append",
        default=[],
        metavar="TARGET:KEY=VALUE",
        help="keyword argument for a target's fake (e.g. its rate limit); repeatable",
    )
    p.add_argument("--body-events", type=int, default=100, help="events per webhook body")
    p.add_argument("--ingest-connections", type=int, default=4)
    p.add_argument("--synchronous", choices=("full", "normal"), default="full")
    p.add_argument("--ready-timeout", type=float, default=30.0)
    p.add_argument("--ingest-timeout", type=float, default=300.0)
    p.add_argument("--drain-timeout", type=float, default=300.0, help="per run (max 900)")
    p.add_argument("--stall-timeout", type=float, default=30.0, help="no new event this long")
    p.add_argument("--settle", type=float, default=1.0, help="watch for duplicates this long")
    p.add_argument("--stop-timeout", type=float, default=15.0)
    p.add_argument("--tmp-root", default=None, help="where the temp dirs (spools) go")
    p.add_argument("--keep-tmp", action="store_true")
    p.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    args = p.parse_args(argv)
    args.targets = [t for t in args.targets.split(",") if t]
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown or not args.targets:
        p.error(f"unknown targets {unknown}; known: {', '.join(TARGETS)}")
    if not 1 <= args.events <= 1_000_000 or not 1 <= args.changes <= 100_000:
        p.error("--events in [1, 1000000], --changes in [1, 100000]")
    if not 1 <= args.repeat <= 10 or not 1 <= args.body_events <= 1000:
        p.error("--repeat in [1, 10], --body-events in [1, 1000]")
    if not 1 <= args.ingest_connections <= 32:
        p.error("--ingest-connections in [1, 32]")
    for name in ("ready_timeout", "ingest_timeout", "drain_timeout", "stall_timeout"):
        if not 0 < getattr(args, name) <= 900:
            p.error(f"--{name.replace('_', '-')} must be in (0, 900]")
    if not 0 <= args.settle <= 30 or not 0 < args.stop_timeout <= 60:
        p.error("--settle in [0, 30], --stop-timeout in (0, 60]")
    args.fake_args = {}
    for item in args.fake_arg:
        target, _, kv = item.partition(":")
        key, sep, value = kv.partition("=")
        if target not in TARGETS or not key or not sep:
            p.error(f"--fake-arg wants TARGET:KEY=VALUE with a known target, got {item!r}")
        with contextlib.suppress(ValueError):
            value = json.loads(value)  # numbers and booleans as such
        args.fake_args.setdefault(target, {})[key] = value
    return args


async def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    runs = []
    for round_no in range(args.repeat):  # A B C, A B C: each round runs every target once
        for name in args.targets:
            bench = TARGETS[name]
            n = args.changes if bench.sends == CHANGES else args.events
            print(f"[{round_no + 1}/{args.repeat}] {name}: {n:,} {bench.sends}", file=sys.stderr)
            tmp = Path(tempfile.mkdtemp(prefix=f"relay-targets-{name}-", dir=args.tmp_root))
            procs = Procs()  # this run's relays; stopped, by process group, whatever happens
            try:
                result = await run_target(name, bench, n, args, procs, tmp)
            finally:
                procs.stop_all()
                if args.keep_tmp:
                    print(f"kept {tmp}", file=sys.stderr)
                else:
                    shutil.rmtree(tmp, ignore_errors=True)
            result["round"] = round_no + 1
            print(
                f"  {result['events_per_s'] or 0:,.0f} events/s, "
                f"{result['relay_cpu_us_per_event']} µs/event, {result['requests']} requests, "
                f"exactly once: {result['exactly_once']} ({result['outcome']})",
                file=sys.stderr,
            )
            runs.append(result)
    return runs


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    started = datetime.now(UTC)
    try:
        runs = asyncio.run(run_all(args))
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    summary = summarize(runs)
    command = " ".join(["bench/targets.py", *(argv if argv is not None else sys.argv[1:])])
    code = git_info(ROOT)
    header = (
        f"## delivery per target {started.isoformat(timespec='seconds')}\n\n`{command}` at "
        f"{code['commit']} ({code['dirty_files']} uncommitted files); {os.cpu_count()} CPUs; "
        f"relay-side vendor rate limits {'kept' if args.paced else 'lifted'}"
    )
    print(markdown(summary, header))
    if not args.no_save:
        RESULTS_DIR.mkdir(exist_ok=True)
        path = RESULTS_DIR / f"targets-{started.strftime('%Y%m%d-%H%M%S')}.json"
        result = {
            "command": command,
            "started_at": started.isoformat(timespec="seconds"),
            "code": code,
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "kernel": platform.release(),
                "loadavg_after": os.getloadavg(),
            },
            "summary": summary,
            "runs": runs,
        }
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    return 0 if all(s["exactly_once"] for s in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
