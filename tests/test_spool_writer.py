"""The SQLite spool's writer process: it serves the spool, goes away with the relay, and a
killed one is replaced without losing a committed row or answering a request with a 500."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from relay.events import now_ms
from relay.spool.file_host import ProcessHost, WriterGone
from relay.spool.records import NewRow
from relay.spool.sqlite import SqliteSpool, SqliteSpoolConfig
from tests.daemon import DaemonProcess, free_port
from tests.fakes import FakeTargetFactory, poll_until
from tests.test_process import SECRET, batch, daemon_config, delivered, send

BIG = 1 << 30


def row(tag: str) -> NewRow:
    return NewRow("t", "route", orjson.dumps([{"eventName": tag}]), 1, now_ms())


def writer_pid(spool: SqliteSpool) -> int:
    host = spool._host
    assert isinstance(host, ProcessHost) and host._process is not None
    return host._process.pid


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as fh:
            found += [int(c) for c in fh.read().split()]
    return found


async def test_the_writer_process_holds_the_file_and_exits_when_the_spool_closes(
    tmp_path: Path,
) -> None:
    spool = SqliteSpool(SqliteSpoolConfig(path=str(tmp_path / "s.db")))
    await spool.open()
    pid = writer_pid(spool)
    try:
        assert alive(pid)
        await spool.enqueue([row("a")])
        second = SqliteSpool(SqliteSpoolConfig(path=str(tmp_path / "s.db")))
        with pytest.raises(RuntimeError, match="in use by another relay process"):
            await second.open()  # the writer process holds the lock, not the relay
    finally:
        await spool.close()
    assert not alive(pid)  # exited and reaped
    reopened = SqliteSpool(SqliteSpoolConfig(path=str(tmp_path / "s.db"), writer="thread"))
    await reopened.open()
    try:
        assert [r.body for r in await reopened.claim("t", 10, BIG, 30)] == [row("a").body]
    finally:
        await reopened.close()


async def test_a_killed_writer_fails_the_calls_under_way_then_a_new_one_takes_over(
    tmp_path: Path,
) -> None:
    spool = SqliteSpool(SqliteSpoolConfig(path=str(tmp_path / "s.db")))
    await spool.open()
    try:
        await spool.enqueue([row("before")])
        old = writer_pid(spool)
        os.kill(old, signal.SIGKILL)
        failures = 0

        async def enqueued() -> bool:
            nonlocal failures
            try:
                await spool.enqueue([row("after")])
            except WriterGone:
                failures += 1
                return False
            return True

        await poll_until(enqueued, timeout=10, interval=0.05)
        assert writer_pid(spool) != old
        claimed = await spool.claim("t", 10, BIG, 30)
        assert sorted(orjson.loads(r.body)[0]["eventName"] for r in claimed) == [
            "after",
            "before",
        ]
        assert failures <= 1  # at most the call that met the dead process
    finally:
        await spool.close()


async def test_the_daemon_survives_its_writer_being_killed_under_load_with_no_500(
    tmp_path: Path, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets(default=200)
    port, admin = free_port(), free_port()
    acknowledged: set[str] = set()
    statuses: list[int] = []
    async with DaemonProcess(
        daemon_config(fake, port, admin), tmp_path, env={"HOOK_SECRET": SECRET}
    ) as daemon:
        await daemon.start(f"http://127.0.0.1:{admin}/readyz")
        assert daemon.pid is not None
        (writer,) = children(daemon.pid)
        stop = asyncio.Event()

        async def sender(worker: int) -> None:
            async with aiohttp.ClientSession() as session:
                for i in range(400):  # bounded; the test stops it sooner
                    if stop.is_set():
                        return
                    events = batch(f"w{worker}-b{i}")
                    status = await send(session, port, events)
                    statuses.append(status)
                    if status == 200:
                        acknowledged.update(e["timeUUID"] for e in events)

        senders = [asyncio.create_task(sender(w)) for w in range(4)]
        await poll_until(lambda: len(acknowledged) >= 300, timeout=20)
        os.kill(writer, signal.SIGKILL)
        count = len(statuses)
        await poll_until(
            lambda: len(statuses) >= count + 40 and statuses[-1] == 200,
            timeout=20,
            message=lambda: f"statuses since the kill: {statuses[count:][-20:]}",
        )
        stop.set()
        await asyncio.gather(*senders)
        assert set(statuses) <= {200, 503}, sorted(set(statuses))
        assert writer not in children(daemon.pid) and len(children(daemon.pid)) == 1
        await poll_until(
            lambda: acknowledged <= delivered(fake),
            timeout=30,
            message=lambda: f"missing {len(acknowledged - delivered(fake))}",
        )
        assert await daemon.terminate() == 0
        assert "writer process exited" in daemon.log_text()


async def test_a_relay_killed_with_9_takes_its_writer_with_it_and_no_secret_went_along(
    tmp_path: Path, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets(default=200)
    port, admin = free_port(), free_port()
    async with DaemonProcess(
        daemon_config(fake, port, admin), tmp_path, env={"HOOK_SECRET": SECRET}
    ) as daemon:
        await daemon.start(f"http://127.0.0.1:{admin}/readyz")
        assert daemon.pid is not None
        (writer,) = children(daemon.pid)
        environ = Path(f"/proc/{writer}/environ").read_bytes()
        assert b"HOOK_SECRET" not in environ and SECRET.encode() not in environ
        async with aiohttp.ClientSession() as session:
            assert await send(session, port, batch("a")) == 200
        daemon.kill()
        await poll_until(lambda: not alive(writer), timeout=10)
        await daemon.start(f"http://127.0.0.1:{admin}/readyz")  # the lock is free again
        await poll_until(lambda: {f"a-{i}" for i in range(10)} <= delivered(fake), timeout=15)
        assert await daemon.terminate() == 0


async def test_an_ack_committed_by_a_writer_that_died_before_answering_frees_no_id_for_reuse(
    tmp_path: Path,
) -> None:
    """The writer deletes an acked row, then dies before it answers: the relay still holds
    the row in its schedule. The next writer must not give that id to a new row (it would be
    claimed for the old row's target and deleted by its ack), and the stale row must go."""
    path = tmp_path / "s.db"
    spool = SqliteSpool(SqliteSpoolConfig(path=str(path)))
    await spool.open()
    try:
        await spool.enqueue([NewRow("a", "ra", b'[{"eventName":"for-a"}]', 1, now_ms())])
        (claimed,) = await spool.claim("a", 10, BIG, 0.001)  # a lease long gone below
        # The ack's commit, as the dying writer made it; then the writer is gone.
        with sqlite3.connect(path) as db:
            db.execute("DELETE FROM queue WHERE id = ?", (claimed.id,))
        os.kill(writer_pid(spool), signal.SIGKILL)

        async def enqueued() -> bool:
            try:
                await spool.enqueue([NewRow("b", "rb", b'[{"eventName":"for-b"}]', 1, now_ms())])
            except WriterGone:
                return False
            return True

        await poll_until(enqueued, timeout=10, interval=0.05)
        (for_b,) = await spool.claim("b", 10, BIG, 30)
        assert for_b.id != claimed.id
        assert orjson.loads(for_b.body)[0]["eventName"] == "for-b"
        assert await spool.claim("a", 10, BIG, 30) == []
    finally:
        await spool.close()


def test_the_writer_process_loads_only_what_it_runs() -> None:
    """Every module the writer imports is resident in a second process: parsers, the HTTP
    stack and the metrics client stay in the relay's."""
    code = (
        "import sys, relay.spool.writer; "
        "print(' '.join(m for m in sys.modules if m.split('.')[0] in "
        "('aiohttp', 'msgspec', 'simdjson', 'yaml', 'prometheus_client', 'uvloop')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert loaded == []
