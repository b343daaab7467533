"""The Redis spool behind Redis Sentinel, with real processes: a password-protected master, two
replicas and a ``redis-sentinel``, all started here on free loopback ports; two relays as
processes (one given the Sentinel URL, one the ``sentinels``/``service_name`` keys). The master
is killed with kill -9 under load; Sentinel promotes a replica; ingest answers 503 with
Retry-After meanwhile (never a 500), resumes on the new master, and every acknowledged event
reaches the target. Redis Cluster is refused by ``check`` (a cluster URL) and by ``run`` (a
cluster-enabled server).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.daemon import REPO_ROOT, DaemonProcess, free_port
from tests.fakes import FakeTarget, poll_until
from tests.test_redis_faults import SECRET, Sender, delivered, lost_and_duplicated

PASSWORD = "master-pw-4f1c"  # requirepass of the master and replicas
SENTINEL_PASSWORD = "sentinel-pw-9b2e"  # requirepass of the sentinel itself
SERVICE = "relaymaster"


def _exe(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        pytest.fail(f"{name} is not installed (apt-get install {name})", pytrace=False)
    return exe


def _command(port: int, *args: str, password: str = PASSWORD) -> str:
    """One command by redis-cli; its answer as text ('' when the server does not answer)."""
    result = subprocess.run(
        ["redis-cli", "-p", str(port), "--no-auth-warning", "-a", password, *args],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return result.stdout.strip()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return bool(sock.recv(64))  # +PONG, or -NOAUTH: either way it is up
    except OSError:
        return False


class Cluster:
    """A master, its replicas and one sentinel; every process killed at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.master = 0
        self.replicas: list[int] = []
        self.sentinel = 0

    def _spawn(self, port: int, argv: list[str]) -> None:
        log = (self.workdir / f"{port}.log").open("ab")
        self.procs[port] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not _answers(port):
            assert self.procs[port].poll() is None, (self.workdir / f"{port}.log").read_text()
            assert time.monotonic() < deadline, f"port {port} did not answer"
            time.sleep(0.02)

    def redis(self, replica_of: int = 0) -> int:
        port = free_port()
        data = self.workdir / str(port)
        data.mkdir()
        argv = [
            _exe("redis-server"),
            "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
            "--save", "", "--appendonly", "no",
            "--requirepass", PASSWORD, "--masterauth", PASSWORD,
            # A re-pointed replica syncs at once (the default waits 5 s for more replicas).
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        if replica_of:
            argv += ["--replicaof", "127.0.0.1", str(replica_of)]
        self._spawn(port, argv)
        return port

    def start(self, replicas: int = 2) -> None:
        self.master = self.redis()
        self.replicas = [self.redis(replica_of=self.master) for _ in range(replicas)]
        poll_sync(
            lambda: f"connected_slaves:{replicas}" in _command(self.master, "INFO", "replication")
        )
        self.sentinel = free_port()
        conf = self.workdir / "sentinel.conf"  # Sentinel rewrites its file: one of its own
        conf.write_text(
            f"port {self.sentinel}\nbind 127.0.0.1\ndir {self.workdir}\n"
            f"requirepass {SENTINEL_PASSWORD}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.master} 1\n"
            f"sentinel auth-pass {SERVICE} {PASSWORD}\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
            f"sentinel parallel-syncs {SERVICE} {replicas}\n"
        )
        self._spawn(self.sentinel, [_exe("redis-sentinel"), str(conf)])
        # Sentinel finds the replicas through the master's INFO (every 10 s at first).
        poll_sync(lambda: self.sentinel_says("SENTINEL", "REPLICAS", SERVICE).count("ip") == 2)

    def sentinel_says(self, *args: str) -> str:
        return _command(self.sentinel, *args, password=SENTINEL_PASSWORD)

    def master_port(self) -> int:
        answer = self.sentinel_says("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE).split()
        return int(answer[-1]) if answer else 0

    def kill(self, port: int) -> None:
        self.procs[port].kill()
        self.procs[port].wait(10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def poll_sync(condition: object, timeout: float = 30.0) -> None:
    """poll_until for set-up before any event loop work: a bounded wait on a condition."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    workdir = tmp_path / "redis"
    workdir.mkdir()
    found = Cluster(workdir)
    try:
        found.start()
        yield found
    finally:
        found.stop()


def relay_config(spool: str, sink_url: str, name: str, port: int, admin: int) -> str:
    return f"""
server: {{listen: '127.0.0.1:{port}', admin_listen: '127.0.0.1:{admin}', shutdown_grace: 2s,
          retry_after: 1s}}
spool: {{backend: redis, prefix: relay, lease: 5s, replica_acks: 1, replica_ack_timeout: 1s,
         sentinel_password: '{SENTINEL_PASSWORD}', {spool}}}
sources:
  statsig: {{type: statsig_webhook, path: /webhooks/statsig, signing_secret: {SECRET}}}
targets:
  sink: {{type: webhook, url: '{sink_url}/ingest', headers: {{X-Relay: {name}}}, linger: 0,
          batch_max_events: 50, concurrency: 4, timeout: 10s, retry_initial: 100ms,
          retry_max: 1s}}
routes:
  - {{name: all, from: statsig, to: sink}}
"""


async def test_master_killed_under_load_sentinel_fails_over_and_nothing_acknowledged_is_lost(
    cluster: Cluster, tmp_path: Path
) -> None:
    dead = free_port()  # a sentinel that never answers comes first: the client moves on
    spools = {
        "a": f"url: 'redis+sentinel://:{PASSWORD}@127.0.0.1:{dead},127.0.0.1:{cluster.sentinel}"
        f"/{SERVICE}/0'",
        "b": f"url: 'redis://:{PASSWORD}@/0', service_name: {SERVICE},"
        f" sentinels: ['127.0.0.1:{dead}', '127.0.0.1:{cluster.sentinel}']",
    }
    async with (
        FakeTarget() as fake,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
    ):
        daemons: list[DaemonProcess] = []
        urls: list[str] = []
        try:
            for name, spool in spools.items():
                port, admin = free_port(), free_port()
                workdir = tmp_path / name
                workdir.mkdir()
                daemon = DaemonProcess(relay_config(spool, fake.url, name, port, admin), workdir)
                daemons.append(daemon)
                await daemon.start(f"http://127.0.0.1:{admin}/readyz")
                urls.append(f"http://127.0.0.1:{port}")

            sender = Sender(session)
            stop = asyncio.Event()
            load = asyncio.create_task(sender.run(lambda: urls, stop, limit=4000))
            await poll_until(lambda: sender.statuses[200] >= 40, timeout=30)

            old = cluster.master
            acked_before = len(sender.acked)
            refused_before = sender.statuses[503]
            cluster.kill(old)
            killed_at = time.monotonic()
            await poll_until(lambda: sender.statuses[503] > refused_before, timeout=30)
            ok_at_first_503 = sender.statuses[200]
            await poll_until(lambda: cluster.master_port() not in (0, old), timeout=30)
            promoted_at = time.monotonic()
            await poll_until(lambda: sender.statuses[200] > ok_at_first_503, timeout=30)
            first_ok_at = time.monotonic()
            ok_at_promotion = sender.statuses[200]
            # Ingest resumes on the new master (it takes a re-pointed replica for replica_acks).
            await poll_until(lambda: sender.statuses[200] >= ok_at_promotion + 60, timeout=30)
            resumed_at = time.monotonic()
            stop.set()
            await load

            await fake.wait_for(lambda: sender.acked <= set(delivered(fake)), timeout=60)
            counts = delivered(fake)
            lost, dupes = lost_and_duplicated(sender.acked, counts)
            print(
                f"sentinel failover: {sum(sender.statuses.values())} requests"
                f" {dict(sender.statuses)}, {len(sender.acked)} acknowledged"
                f" ({acked_before} before the kill), {len(counts)} delivered, {len(lost)} lost,"
                f" {dupes} duplicated; after the kill: promoted {promoted_at - killed_at:.1f}s,"
                f" first 2xx {first_ok_at - killed_at:.1f}s, 60 more 2xx"
                f" {resumed_at - killed_at:.1f}s"
            )
            assert lost == set()
            assert set(sender.statuses) <= {200, 503}, sender.statuses  # never a 500
            assert sender.retry_after_missing == 0
            assert all(d.running() for d in daemons)
            for daemon in daemons:  # no password in what the relays said
                log = daemon.log_text()
                assert PASSWORD not in log and SENTINEL_PASSWORD not in log
        finally:
            for daemon in daemons:
                daemon.kill()


def _check(tmp_path: Path, spool: str) -> subprocess.CompletedProcess[str]:
    config = relay_config(spool, "http://127.0.0.1:9", "a", 0, 0)
    (tmp_path / "relay.yaml").write_text(config)
    return subprocess.run(
        [sys.executable, "-m", "relay", "check", "-c", str(tmp_path / "relay.yaml")],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "spool",
    [
        f"url: 'redis+sentinel://:{PASSWORD}@10.0.0.1:26379,10.0.0.2/mymaster/0'",
        f"url: 'rediss+sentinel://:{PASSWORD}@[::1]:26380/mymaster'",
        f"url: 'redis://:{PASSWORD}@/2', sentinels: ['10.0.0.1:26379', 'sentinel-2'],"
        " service_name: mymaster",
    ],
)
def test_check_accepts_sentinel_configs(tmp_path: Path, spool: str) -> None:
    result = _check(tmp_path, spool)
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("spool", "expected"),
    [
        (f"url: 'redis+cluster://:{PASSWORD}@10.0.0.1:7000'", "Redis Cluster is not supported"),
        (f"url: 'sentinel://:{PASSWORD}@10.0.0.1:26379/m'", "redis+sentinel://"),
        (f"url: 'redis+sentinel://:{PASSWORD}@10.0.0.1:26379'", "service name"),
        (
            f"url: 'redis://:{PASSWORD}@10.0.0.1:6379/0', sentinels: [a]",
            "Sentinel names the master",
        ),
        ("sentinels: ['10.0.0.1:26379']", "spool.service_name: required"),
        ("sentinels: ['10.0.0.1:port']", "spool.sentinels[0]"),
    ],
)
def test_check_refuses_cluster_and_bad_sentinel_configs_with_the_reason(
    tmp_path: Path, spool: str, expected: str
) -> None:
    result = _check(tmp_path, spool)
    assert result.returncode == 2
    assert expected in result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_run_refuses_a_cluster_enabled_redis_with_a_clear_message(tmp_path: Path) -> None:
    port = free_port()
    argv = [_exe("redis-server"), "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--dir", str(tmp_path), "--save", "", "--cluster-enabled", "yes"]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        poll_sync(lambda: _answers(port), timeout=10)
        config = relay_config(f"url: 'redis://127.0.0.1:{port}/0'", "http://127.0.0.1:9", "a", 0, 0)
        config = config.replace(f"sentinel_password: '{SENTINEL_PASSWORD}', ", "")
        config = config.replace("replica_acks: 1", "replica_acks: 0")
        (tmp_path / "relay.yaml").write_text(config)
        result = subprocess.run(
            [sys.executable, "-m", "relay", "run", "-c", str(tmp_path / "relay.yaml")],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        proc.kill()
        proc.wait(10)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Redis Cluster is not supported" in output
    assert "Traceback" not in output
