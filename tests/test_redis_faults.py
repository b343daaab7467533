"""The Redis spool under faults, with real processes: a replica killed with kill -9 mid-delivery,
Redis itself killed and restarted (``appendonly yes``) under load, Redis unreachable at start-up,
and a send slower than the lease (renewed, so never delivered twice).

Each test starts its own ``redis-server`` on a free loopback port. Senders are bounded loops;
the figures each test saw (acknowledged, delivered, lost, duplicated) are printed, so
``pytest -s`` shows them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.conftest import RelayFactory, post_export, signed_headers, spool_empty
from tests.daemon import REPO_ROOT, DaemonProcess, free_port
from tests.fakes import Answer, FakeTarget, RecordedRequest, poll_until
from tests.test_redis_replicas import make_batch
from tests.test_spool_contract import _answers_ping, _start_redis

SECRET = "fault-secret"


# -- a redis-server the test can kill and restart ----------------------------------------------
class RedisServer:
    """A private redis-server with ``appendonly yes`` (fsync always), restartable on its port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc, self.port = _start_redis(self.workdir)
        self._configure()

    def _configure(self) -> None:
        subprocess.run(
            ["redis-cli", "-p", str(self.port), "CONFIG", "SET", "appendonly", "yes"],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            ["redis-cli", "-p", str(self.port), "CONFIG", "SET", "appendfsync", "always"],
            check=True,
            capture_output=True,
        )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def restart(self) -> None:
        """Start again on the same port and directory, loading the append-only file."""
        log = (self.workdir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(self.workdir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while not _answers_ping(self.port):
            assert time.monotonic() < deadline, "redis-server did not restart"
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = RedisServer(workdir)
    server.start()
    yield server
    server.stop()


def relay_config(redis_url: str, sink_url: str, name: str, lease: str, **server: str) -> str:
    """One replica: a statsig_webhook source into a webhook target tagged with the replica."""
    listen = server.get("listen", "127.0.0.1:0")
    admin = server.get("admin", "127.0.0.1:0")
    timeout = server.get("timeout", "10s")
    return f"""
server: {{listen: '{listen}', admin_listen: '{admin}', shutdown_grace: 2s, retry_after: 1s}}
spool: {{backend: redis, url: '{redis_url}', prefix: relay, lease: {lease}}}
sources:
  statsig: {{type: statsig_webhook, path: /webhooks/statsig, signing_secret: {SECRET}}}
targets:
  sink: {{type: webhook, url: '{sink_url}/ingest', headers: {{X-Relay: {name}}}, linger: 0,
          batch_max_events: 50, concurrency: 4, timeout: {timeout}, retry_initial: 100ms,
          retry_max: 1s}}
routes:
  - {{name: all, from: statsig, to: sink}}
"""


def delivered(fake: FakeTarget) -> Counter[str]:
    """timeUUID → how many times a 200 answered a request carrying it."""
    return Counter(e["timeUUID"] for r in fake.requests if r.status == 200 for e in r.events())


def lost_and_duplicated(acked: set[str], counts: Counter[str]) -> tuple[set[str], int]:
    """Acknowledged events never delivered, and how many deliveries were repeats."""
    return acked - set(counts), sum(n - 1 for n in counts.values() if n > 1)


class Sender:
    """A bounded sender loop: signed batches of 10 to whichever relay URL it is given, keeping
    what was acknowledged and every status seen."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.acked: set[str] = set()
        self.statuses: Counter[int] = Counter()
        self.retry_after_missing = 0

    async def post(self, url: str) -> int:
        batch = make_batch(10)
        body = orjson.dumps(batch)
        try:
            async with self.session.post(
                url + "/webhooks/statsig", data=body, headers=signed_headers(SECRET, body)
            ) as resp:
                await resp.read()
                status = resp.status
                if status == 503 and "Retry-After" not in resp.headers:
                    self.retry_after_missing += 1
        except (aiohttp.ClientError, TimeoutError):
            status = 0  # connection refused / reset: the relay is gone, nothing acknowledged
        self.statuses[status] += 1
        if 200 <= status < 300:
            self.acked.update(e["timeUUID"] for e in batch)
        return status

    async def run(self, urls: Callable[[], list[str]], until: asyncio.Event, limit: int) -> None:
        """Post in turn to ``urls()`` until ``until`` is set or ``limit`` requests were sent."""
        for i in range(limit):
            if until.is_set():
                return
            targets = urls()
            await self.post(targets[i % len(targets)])
            await asyncio.sleep(0.01)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        yield s


# -- lease renewal ------------------------------------------------------------------------------
async def test_a_send_slower_than_the_lease_is_renewed_and_delivered_once(
    redis_server: RedisServer, relay_factory: RelayFactory
) -> None:
    # Every send takes 2.5 leases. Without renewal the other replica takes the rows over after
    # one lease and sends them again.
    lease = 0.6

    def slow(req: RecordedRequest) -> Answer:
        return Answer(200, delay=lease * 2.5)

    async with FakeTarget(default=slow) as fake:
        relays = [
            await relay_factory(relay_config(redis_server.url, fake.url, n, f"{lease}s"), full=True)
            for n in ("a", "b")
        ]
        batches = [make_batch(10) for _ in range(6)]
        sent = {e["timeUUID"] for b in batches for e in b}
        statuses = await asyncio.gather(
            *(post_export(relays[i % 2], b, secret=SECRET) for i, b in enumerate(batches))
        )
        assert all(s == 200 for s in statuses), statuses

        await fake.wait_for(lambda: set(delivered(fake)) == sent, timeout=20)
        await poll_until(lambda: spool_empty(relays[0]), timeout=10)
        counts = Counter(e["timeUUID"] for r in fake.requests for e in r.events())
        assert [uid for uid, n in counts.items() if n != 1] == [], "a row was sent twice"
        for relay in relays:
            lost = relay.metrics.leases_lost.labels("sink")._value.get()
            assert lost == 0
        print(f"slow target: {len(sent)} acknowledged, {len(counts)} delivered, 0 duplicated")


# -- kill -9 of one replica -----------------------------------------------------------------------
async def test_kill_9_of_one_replica_mid_delivery_the_other_delivers_everything(
    redis_server: RedisServer, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    lease = 2.0

    def answer(req: RecordedRequest) -> Answer:
        # a's sends hang: it dies holding leased rows that only b can deliver.
        return Answer(200, delay=float("inf")) if req.headers.get("X-Relay") == "a" else Answer(200)

    async with FakeTarget(default=answer) as fake:
        daemons, urls = [], []
        for name in ("a", "b"):
            port, admin = free_port(), free_port()
            workdir = tmp_path / name
            workdir.mkdir()
            config = relay_config(
                redis_server.url,
                fake.url,
                name,
                f"{lease:g}s",
                listen=f"127.0.0.1:{port}",
                admin=f"127.0.0.1:{admin}",
            )
            daemon = DaemonProcess(config, workdir)
            await daemon.start(f"http://127.0.0.1:{admin}/readyz")
            daemons.append(daemon)
            urls.append(f"http://127.0.0.1:{port}")
        a, b = daemons
        try:
            sender = Sender(session)
            for i in range(60):
                await sender.post(urls[i % 2])
            # a is holding sends in flight now: kill it.
            await fake.wait_for(
                lambda: any(r.headers.get("X-Relay") == "a" for r in fake.requests), timeout=10
            )
            a.kill()
            for _ in range(30):
                await sender.post(urls[1])
            assert sender.statuses[200] == 90, sender.statuses

            def by(relay: str) -> Counter[str]:
                return Counter(
                    e["timeUUID"]
                    for r in fake.requests
                    if r.headers.get("X-Relay") == relay
                    for e in r.events()
                )

            # a's requests hang forever: only b's are deliveries.
            await fake.wait_for(lambda: sender.acked <= set(by("b")), timeout=lease + 20)
            counts = by("b")
            lost, dupes = lost_and_duplicated(sender.acked, counts)
            print(
                f"kill -9 replica: {len(sender.acked)} acknowledged, {len(counts)} delivered,"
                f" {len(lost)} lost, {dupes} duplicated, {len(by('a'))} taken over from a"
            )
            assert lost == set()
            assert by("a") and set(by("a")) <= set(counts)  # a's claims were taken over
            assert b.running()
        finally:
            for daemon in daemons:
                daemon.kill()


# -- Redis down and back ------------------------------------------------------------------------
async def test_redis_killed_and_restarted_under_load_loses_nothing_and_never_answers_500(
    redis_server: RedisServer, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with FakeTarget() as fake:
        port, admin = free_port(), free_port()
        config = relay_config(
            redis_server.url,
            fake.url,
            "a",
            "5s",
            listen=f"127.0.0.1:{port}",
            admin=f"127.0.0.1:{admin}",
        )
        async with DaemonProcess(config, tmp_path) as daemon:
            await daemon.start(f"http://127.0.0.1:{admin}/readyz")
            url = f"http://127.0.0.1:{port}"
            sender = Sender(session)
            stop = asyncio.Event()
            load = asyncio.create_task(sender.run(lambda: [url], stop, limit=5000))

            await poll_until(lambda: sender.statuses[200] >= 30, timeout=20)
            redis_server.kill()
            down_at = sum(sender.statuses.values())
            await poll_until(lambda: sender.statuses[503] >= 5, timeout=20)
            redis_server.restart()
            await poll_until(lambda: sender.statuses[200] >= 60, timeout=30)
            stop.set()
            await load
            assert sum(sender.statuses.values()) > down_at

            await fake.wait_for(lambda: sender.acked <= set(delivered(fake)), timeout=30)
            counts = delivered(fake)
            lost, dupes = lost_and_duplicated(sender.acked, counts)
            print(
                f"redis restart: {sum(sender.statuses.values())} requests {dict(sender.statuses)},"
                f" {len(sender.acked)} acknowledged, {len(counts)} delivered, {len(lost)} lost,"
                f" {dupes} duplicated"
            )
            assert lost == set()
            assert set(sender.statuses) <= {200, 503}, sender.statuses
            assert sender.retry_after_missing == 0
            assert daemon.running()
            # The outage is told once a minute, not once per refused request or per claim.
            log = daemon.log_text()
            commits = log.count("could not commit")
            assert 1 <= commits <= 2 < sender.statuses[503], (commits, sender.statuses)
            assert log.count("claiming from the spool failed") <= 2


# -- Redis unreachable at start-up ----------------------------------------------------------------
def test_redis_unreachable_at_start_up_is_a_clear_error_and_a_non_zero_exit(
    tmp_path: Path,
) -> None:
    dead = free_port()
    config = relay_config(f"redis://:hunter2@127.0.0.1:{dead}/0", "http://127.0.0.1:9", "a", "5s")
    (tmp_path / "relay.yaml").write_text(config)
    result = subprocess.run(
        [sys.executable, "-m", "relay", "run", "-c", str(tmp_path / "relay.yaml")],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"cannot reach the redis spool at redis://127.0.0.1:{dead}/0" in output
    assert "hunter2" not in output
    assert "Traceback" not in output


async def test_sigterm_while_redis_is_frozen_exits_within_the_grace(
    redis_server: RedisServer, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """A frozen (not dead) Redis holds an ingest commit for up to 10 s. SIGTERM still ends
    within ``shutdown_grace``: the request goes unanswered (never acknowledged, so nothing is
    lost) instead of the listener's drain, the delivery loop's claim and the spool's close each
    waiting on Redis."""
    sink = await FakeTarget().start()
    port, admin = free_port(), free_port()
    config = relay_config(
        redis_server.url,
        sink.url,
        "a",
        "5s",
        listen=f"127.0.0.1:{port}",
        admin=f"127.0.0.1:{admin}",
    )
    assert redis_server.proc is not None
    try:
        async with DaemonProcess(config, tmp_path) as daemon:
            await daemon.start(f"http://127.0.0.1:{admin}/readyz")
            sender = Sender(session)
            assert await sender.post(f"http://127.0.0.1:{port}") == 200
            redis_server.proc.send_signal(signal.SIGSTOP)
            blocked = asyncio.create_task(sender.post(f"http://127.0.0.1:{port}"))
            done, _ = await asyncio.wait({blocked}, timeout=0.5)
            assert not done, "the commit should wait on the frozen Redis"
            started = time.monotonic()
            assert await daemon.terminate(timeout=20) == 0
            took = time.monotonic() - started
            assert took < 2 + 1.0, (
                f"stopped {took:.1f}s after SIGTERM, grace 2s:\n{daemon.log_tail()}"
            )
            assert await blocked in (0, 503)  # unanswered or refused: never acknowledged
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
        await sink.close()
