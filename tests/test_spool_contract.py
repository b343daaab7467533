"""The spool contract (relay/spool/base.py), proven against both backends: SQLite and Redis.

Every test in the first part runs twice, once per backend, against a fresh spool. The Redis
spool runs on a redis-server this module starts on a free loopback port (no persistence), with a
unique key prefix per test whose keys are deleted afterwards. The last tests are Redis-only:
several replicas sharing one queue.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from relay.events import now_ms
from relay.schema import ByteSize
from relay.spool.base import Spool, SpoolFull
from relay.spool.records import NewRow, SpoolRow, dead_from
from relay.spool.redis import RedisSpool, RedisSpoolConfig
from relay.spool.sqlite import SqliteSpool, SqliteSpoolConfig
from tests.daemon import free_port
from tests.fakes import poll_until

SpoolFactory = Callable[..., Awaitable[Spool]]


# -- a private redis-server -------------------------------------------------------------------
def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail(
            "redis-server is not installed: the Redis spool tests need it on PATH "
            "(apt-get install redis-server)",
            pytrace=False,
        )
    log = workdir / "redis.log"
    for _ in range(3):  # the free port may be taken between probing and binding
        port = free_port()
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [
                    exe,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--dir",
                    str(workdir),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            if _answers_ping(port):
                return proc, port
            time.sleep(0.02)
        proc.kill()
        proc.wait(5)
    pytest.fail(f"redis-server did not start; its log:\n{log.read_text()[-2000:]}", pytrace=False)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of our own on a free loopback port, for the whole test session."""
    proc, port = _start_redis(tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


async def delete_prefix(url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def redis_spools(redis_url: str) -> AsyncIterator[Callable[..., Awaitable[RedisSpool]]]:
    """``await make(max_size=...)``: an open RedisSpool on this test's own key prefix (so several
    are replicas of one queue); the prefix's keys are deleted at teardown."""
    made: list[RedisSpool] = []
    prefix = f"test-{uuid.uuid4().hex[:12]}"

    async def make(max_size: int = 1024**3) -> RedisSpool:
        config = RedisSpoolConfig(url=redis_url, prefix=prefix, max_size=ByteSize(max_size))
        spool = RedisSpool(config)
        await spool.open()
        made.append(spool)
        return spool

    yield make
    for spool in made:
        await spool.close()
    await delete_prefix(redis_url, prefix)


@pytest.fixture(params=["sqlite", "redis"])
async def make_spool(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    redis_spools: Callable[..., Awaitable[RedisSpool]],
) -> AsyncIterator[SpoolFactory]:
    """``await make_spool(max_size=...)``: a fresh, open spool of the backend under test."""
    made: list[Spool] = []

    async def make(max_size: int = 1024**3) -> Spool:
        if request.param == "redis":
            return await redis_spools(max_size=max_size)
        config = SqliteSpoolConfig(
            path=str(tmp_path / f"spool{len(made)}.db"),
            max_size=ByteSize(max_size),
            synchronous="normal",
        )
        spool = SqliteSpool(config)
        await spool.open()
        made.append(spool)
        return spool

    yield make
    for spool in made:
        await spool.close()


@pytest.fixture
async def spool(make_spool: SpoolFactory) -> Spool:
    return await make_spool()


def new_row(tag: str, count: int = 1, target: str = "t", first: int | None = None) -> NewRow:
    body = orjson.dumps([{"eventName": tag, "i": i} for i in range(count)])
    return NewRow(target, "route", body, count, now_ms() if first is None else first)


def tags(rows: list[SpoolRow]) -> list[str]:
    return [orjson.loads(r.body)[0]["eventName"] for r in rows]


BIG = 1 << 30


async def claim_when_due(spool: Spool) -> list[SpoolRow]:
    """Claim (30 s lease) until rows come back, for a row whose lease or retry time must pass."""
    rows: list[SpoolRow] = []

    async def claimed() -> bool:
        rows.extend(await spool.claim("t", 10, BIG, 30))
        return bool(rows)

    await poll_until(claimed, timeout=5, interval=0.05)
    return rows


# -- the contract, on both backends ---------------------------------------------------------
async def test_claim_returns_rows_in_order_within_limits_but_at_least_one(spool: Spool) -> None:
    await spool.enqueue([new_row(f"r{i}", count=3) for i in range(5)])
    await spool.enqueue([new_row("other", target="u")])

    first = await spool.claim("t", 7, BIG, 30)
    assert tags(first) == ["r0", "r1"]  # a third row would make 9 events > 7
    assert first[0].id != first[1].id
    assert (first[0].count, first[0].attempts, first[0].target) == (3, 0, "t")
    assert tags(await spool.claim("t", 1, BIG, 30)) == ["r2"]  # one row even over the limit
    r3 = await spool.claim("t", 100, len(new_row("r3", 3).body), 30)
    assert tags(r3) == ["r3"]  # max_bytes allows exactly one row
    assert tags(await spool.claim("t", 100, BIG, 30)) == ["r4"]
    assert await spool.claim("t", 100, BIG, 30) == []
    assert tags(await spool.claim("u", 100, BIG, 30)) == ["other"]


async def test_a_leased_row_is_claimed_again_only_after_its_lease_runs_out(spool: Spool) -> None:
    await spool.enqueue([new_row("a")])
    (row,) = await spool.claim("t", 10, BIG, 0.3)
    started = time.monotonic()
    assert await spool.claim("t", 10, BIG, 0.3) == []

    again = await claim_when_due(spool)
    assert time.monotonic() - started >= 0.25
    assert [r.id for r in again] == [row.id]
    assert again[0].attempts == 0  # a lapsed lease is not an attempt
    await spool.ack(again)
    assert await spool.claim("t", 10, BIG, 0.3) == []


async def test_a_renewed_lease_holds_the_row_and_a_lapsed_one_is_not_renewed(
    spool: Spool,
) -> None:
    await spool.enqueue([new_row("a")])
    rows = await spool.claim("t", 10, BIG, 0.4)
    started = time.monotonic()
    # Renew a few times past the first lease: nobody can claim the row meanwhile.
    while time.monotonic() - started < 1.0:
        assert await spool.renew(rows, 0.4) == 1
        assert await spool.claim("t", 10, BIG, 30) == []
        await asyncio.sleep(0.1)

    # Stop renewing: the row is taken over once the lease runs out, and the old claim's
    # renewal no longer takes it back.
    again = await claim_when_due(spool)
    assert [r.id for r in again] == [rows[0].id]
    assert await spool.renew(rows, 30) == 0
    assert await spool.renew(again, 30) == 1
    await spool.ack(again)
    assert await spool.renew(again, 30) == 0  # settled rows are not renewed


async def test_released_rows_are_due_at_once_with_no_attempt_counted(spool: Spool) -> None:
    await spool.enqueue([new_row("a"), new_row("b")])
    rows = await spool.claim("t", 100, BIG, 30)
    assert await spool.claim("t", 100, BIG, 30) == []  # leased
    await spool.release(rows)
    again = await spool.claim("t", 100, BIG, 30)
    assert [r.body for r in again] == [r.body for r in rows]  # in order, not after a lease
    assert [r.attempts for r in again] == [0, 0]


async def test_retry_counts_an_attempt_and_hides_the_row_until_next_attempt(spool: Spool) -> None:
    await spool.enqueue([new_row("a")])
    rows = await spool.claim("t", 10, BIG, 30)
    started = time.monotonic()
    await spool.retry(rows, now_ms() + 400, "HTTP 503: busy")
    assert await spool.claim("t", 10, BIG, 30) == []  # lease released, but not due yet

    again = await claim_when_due(spool)
    assert time.monotonic() - started >= 0.35
    assert [(r.id, r.attempts) for r in again] == [(rows[0].id, 1)]
    await spool.retry(again, 0, "HTTP 503: still busy")
    assert [r.attempts for r in await spool.claim("t", 10, BIG, 30)] == [2]


async def test_settle_replaces_claimed_rows_by_requeue_and_dead(spool: Spool) -> None:
    await spool.enqueue([new_row("a", count=4, first=1000), new_row("b", count=2, first=2000)])
    rows = await spool.claim("t", 100, BIG, 30)
    assert len(rows) == 2
    retry_body = orjson.dumps([{"eventName": "left", "i": 0}, {"eventName": "left", "i": 1}])
    dead_body = orjson.dumps([{"eventName": "bad"}])
    requeue = NewRow("t", "route", retry_body, 2, 1000, attempts=1, last_error="HTTP 503")
    dead = dead_from(rows[0], "HTTP 400: bad event", now_ms(), dead_body, 1)
    await spool.settle(rows, [requeue], [dead])

    stats = await spool.stats()
    assert (stats.queued["t"].rows, stats.queued["t"].events) == (1, 2)
    assert stats.queued["t"].oldest_received_ms == 1000
    assert (stats.dead["t"].rows, stats.dead["t"].events) == (1, 1)
    assert stats.bytes_used == len(retry_body) + len(dead_body)
    (again,) = await spool.claim("t", 100, BIG, 30)
    assert (again.body, again.count, again.attempts) == (retry_body, 2, 1)
    assert again.first_received_ms == 1000
    (dead_row,) = await spool.dead_rows()
    assert (dead_row.body, dead_row.count, dead_row.reason) == (dead_body, 1, "HTTP 400: bad event")


async def test_ack_removes_the_rows_and_their_bytes(spool: Spool) -> None:
    await spool.enqueue([new_row("a"), new_row("b")])
    rows = await spool.claim("t", 100, BIG, 30)
    await spool.ack(rows[:1])
    stats = await spool.stats()
    assert stats.queued["t"].rows == 1
    assert stats.bytes_used == len(rows[1].body)
    await spool.ack(rows[1:])
    stats = await spool.stats()
    assert stats.queued == {} and stats.bytes_used == 0


async def test_dead_letters_list_replay_and_purge(spool: Spool) -> None:
    await spool.enqueue([new_row("a", 1), new_row("b", 2), new_row("c", 3)])
    await spool.enqueue([new_row("d", 4, target="u")])
    now = now_ms()
    await spool.dead_letter(await spool.claim("t", 100, BIG, 30), "HTTP 400: no", now)
    await spool.dead_letter(await spool.claim("u", 100, BIG, 30), "HTTP 401: key", now)

    dead = await spool.dead_rows()
    assert [d.count for d in dead] == [1, 2, 3, 4]  # in dead-letter order
    assert [d.target for d in dead] == ["t", "t", "t", "u"]
    assert all(d.dead_at_ms == now and d.attempts == 0 for d in dead)
    assert dead[3].reason == "HTTP 401: key"
    assert [d.count for d in await spool.dead_rows("t")] == [1, 2, 3]
    assert [d.count for d in await spool.dead_rows(limit=2)] == [1, 2]
    stats = await spool.stats()
    assert (stats.dead["t"].rows, stats.dead["t"].events, stats.dead["u"].events) == (3, 6, 4)
    assert stats.queued == {}

    assert await spool.replay_dead("t", [str(dead[0].id)]) == 1
    (replayed,) = await spool.claim("t", 100, BIG, 30)
    assert (tags([replayed]), replayed.attempts) == (["a"], 0)
    assert await spool.replay_dead("u", [str(dead[1].id)]) == 0  # that id is not u's
    assert await spool.purge_dead(ids=[str(dead[1].id)]) == 2
    assert await spool.replay_dead() == 3 + 4  # everything left, across targets
    assert await spool.dead_rows() == []
    assert tags(await spool.claim("u", 100, BIG, 30)) == ["d"]
    rows = await spool.claim("t", 100, BIG, 30)
    assert tags(rows) == ["c"]

    await spool.dead_letter(rows, "again", now_ms())
    assert await spool.purge_dead("u") == 0
    assert await spool.purge_dead("t") == 3
    assert await spool.purge_dead() == 0
    assert await spool.replay_dead() == 0
    assert (await spool.stats()).dead == {}


async def test_split_dead_requeues_some_events_and_keeps_the_rest_dead_in_one_step(
    spool: Spool,
) -> None:
    await spool.enqueue([new_row("a", 3)])
    await spool.dead_letter(await spool.claim("t", 100, BIG, 30), "HTTP 400: no", now_ms())
    (dead,) = await spool.dead_rows()
    taken = orjson.dumps([{"eventName": "a", "i": 0}])
    rest = orjson.dumps([{"eventName": "a", "i": 1}, {"eventName": "a", "i": 2}])
    requeue = NewRow("t", dead.route, taken, 1, dead.first_received_ms, last_error="replayed")
    remainder = dataclasses.replace(dead, body=rest, count=2)
    assert await spool.split_dead(dead.id, [requeue], [remainder])

    (left,) = await spool.dead_rows()
    assert (left.body, left.count, left.reason) == (rest, 2, "HTTP 400: no")
    assert left.id != dead.id
    (queued,) = await spool.claim("t", 100, BIG, 30)
    assert (queued.body, queued.count, queued.attempts) == (taken, 1, 0)
    stats = await spool.stats()
    assert stats.bytes_used == len(taken) + len(rest)
    # The old row is gone: a second split of it (another DLQ command's) writes nothing.
    assert not await spool.split_dead(dead.id, [requeue], [remainder])
    assert [d.id for d in await spool.dead_rows()] == [left.id]
    assert (await spool.stats()).bytes_used == len(taken) + len(rest)


async def test_seen_keys_respects_expiry(spool: Spool) -> None:
    now = now_ms()
    await spool.enqueue([new_row("a")], [("k1", now + 60_000), ("k2", now - 1)])
    assert await spool.seen_keys(["k1", "k2", "k3"], now) == {"k1"}
    assert await spool.seen_keys(["k1"], now + 120_000) == set()
    assert await spool.seen_keys([], now) == set()

    await spool.enqueue([], [("k4", now_ms() + 300), ("k1", now + 600_000)])  # keys alone
    assert await spool.seen_keys(["k4"], now_ms()) == {"k4"}

    async def k4_expired() -> bool:
        return await spool.seen_keys(["k4"], now_ms()) == set()

    await poll_until(k4_expired, timeout=5, interval=0.05)
    assert await spool.seen_keys(["k1"], now + 300_000) == {"k1"}  # re-set with a later expiry


async def test_is_full_once_max_size_bytes_are_stored(make_spool: SpoolFactory) -> None:
    row = new_row("x" * 40)
    spool = await make_spool(max_size=len(row.body) * 2 - 1)
    await spool.enqueue([row])
    assert not spool.is_full()
    await spool.enqueue([new_row("x" * 40)])
    assert spool.is_full()
    with pytest.raises(SpoolFull):
        await spool.enqueue([new_row("y")])
    assert (await spool.stats()).queued["t"].rows == 2  # the refused row was not stored
    await spool.ack(await spool.claim("t", 100, BIG, 30))
    assert not spool.is_full()
    await spool.enqueue([new_row("z")])


async def test_stats_count_rows_events_oldest_and_bytes(spool: Spool) -> None:
    assert (await spool.stats()).queued == {}
    rows = [new_row("a", 2, first=5000), new_row("b", 3, first=4000), new_row("c", 1, "u", 9000)]
    await spool.enqueue(rows)
    await spool.claim("t", 1, BIG, 30)  # leased rows are still queued
    stats = await spool.stats()
    t, u = stats.queued["t"], stats.queued["u"]
    assert (t.rows, t.events, t.oldest_received_ms) == (2, 5, 4000)
    assert (u.rows, u.events, u.oldest_received_ms) == (1, 1, 9000)
    assert stats.dead == {}
    assert stats.bytes_used == sum(len(r.body) for r in rows)


async def test_deliverer_wakeup_is_set_when_rows_are_committed(spool: Spool) -> None:
    wakeup = spool.wakeup("t")
    await spool.enqueue([new_row("a", target="u")])
    assert not wakeup.is_set()
    await spool.enqueue([new_row("a")])
    assert wakeup.is_set()


# -- Redis only: replicas sharing one queue --------------------------------------------------
async def test_two_replicas_claiming_concurrently_get_every_row_exactly_once(
    redis_spools: Callable[..., Awaitable[RedisSpool]],
) -> None:
    one, two = await redis_spools(), await redis_spools()
    await one.enqueue([new_row(f"r{i}") for i in range(200)])
    claimed: dict[str, list[int | str]] = {"one": [], "two": []}

    async def worker(name: str, spool: RedisSpool) -> None:
        for _ in range(500):  # bounded: 200 rows, at most 3 per claim
            rows = await spool.claim("t", 3, BIG, 30)
            if not rows:
                return
            claimed[name].extend(r.id for r in rows)
            await spool.ack(rows)

    await asyncio.wait_for(
        asyncio.gather(*(worker(n, s) for n, s in [("one", one), ("two", two)] * 3)), 30
    )
    every = claimed["one"] + claimed["two"]
    assert len(every) == 200 and len(set(every)) == 200
    assert claimed["one"] and claimed["two"]
    assert (await two.stats()).queued == {}


async def test_a_crashed_replicas_claim_is_taken_over_and_its_late_settle_is_ignored(
    redis_spools: Callable[..., Awaitable[RedisSpool]], redis_url: str
) -> None:
    crashed, survivor = await redis_spools(), await redis_spools()
    await crashed.enqueue([new_row("a", 2)])
    stale = await crashed.claim("t", 10, BIG, 0.3)
    await crashed.close()  # dies holding the lease
    assert await survivor.claim("t", 10, BIG, 30) == []

    taken = await claim_when_due(survivor)
    assert [r.id for r in taken] == [r.id for r in stale]
    await survivor.ack(taken)

    # The first replica comes back and settles what it had: the rows are gone, nothing changes.
    revived = await redis_spools()
    body = orjson.dumps([{"eventName": "a", "i": 1}])
    await revived.settle(stale, [NewRow("t", "route", body, 1, 0)], [])
    await revived.retry(stale, 0, "late")
    stats = await revived.stats()
    assert stats.queued == {} and stats.dead == {} and stats.bytes_used == 0

    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = await client.keys("*")
    finally:
        await client.aclose()
    assert keys and all(k.startswith(f"{survivor.config.prefix}:".encode()) for k in keys)


async def test_concurrent_enqueues_share_one_redis_call(
    redis_spools: Callable[..., Awaitable[RedisSpool]], redis_url: str
) -> None:
    spool = await redis_spools()
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.config_resetstat()
        await asyncio.gather(*(spool.enqueue([new_row(f"r{i}")]) for i in range(50)))
        commands = await client.info("commandstats")
    finally:
        await client.aclose()
    calls = sum(commands.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "eval"))
    assert 1 <= calls <= 3, commands  # one group (plus a script load on first use)
    assert (await spool.stats()).queued["t"].rows == 50


async def test_the_size_limit_is_shared_by_replicas(
    redis_spools: Callable[..., Awaitable[RedisSpool]],
) -> None:
    row = new_row("x" * 40)
    one = await redis_spools(max_size=len(row.body))
    two = await redis_spools(max_size=len(row.body))
    await one.enqueue([row])
    assert one.is_full() and not two.is_full()  # two has not heard yet
    with pytest.raises(SpoolFull):
        await two.enqueue([new_row("y")])  # the shared counter says no
    assert two.is_full()
    await two.ack(await two.claim("t", 10, BIG, 30))
    await one.stats()
    assert not one.is_full() and not two.is_full()


def test_redis_spool_config_rejects_bad_values() -> None:
    from relay.schema import ConfigError, build

    config = build(RedisSpoolConfig, {"backend": "redis", "lease": "2s"}, "spool")
    assert config.lease == 2.0 and config.prefix == "relay"
    with pytest.raises(ConfigError, match=r"spool\.url"):
        build(RedisSpoolConfig, {"backend": "redis", "url": "http://x"}, "spool")
    with pytest.raises(ConfigError, match=r"spool\.prefix"):
        build(RedisSpoolConfig, {"backend": "redis", "prefix": ""}, "spool")
    with pytest.raises(ConfigError, match=r"spool\.stream"):
        build(RedisSpoolConfig, {"backend": "redis", "stream": "x"}, "spool")


async def test_an_unreachable_redis_is_a_clear_error_without_the_password() -> None:
    port = free_port()
    spool = RedisSpool(RedisSpoolConfig(url=f"redis://:hunter2@127.0.0.1:{port}/0"))
    with pytest.raises(RuntimeError, match="cannot reach the redis spool") as info:
        await spool.open()
    assert "hunter2" not in str(info.value)
    assert f"127.0.0.1:{port}" in str(info.value)


async def test_a_redis_that_may_evict_keys_is_warned_about(
    redis_spools: Callable[..., Awaitable[RedisSpool]],
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.config_set("maxmemory-policy", "allkeys-lru")
        await redis_spools()
        assert "maxmemory-policy allkeys-lru: set noeviction" in caplog.text
        await client.config_set("maxmemory-policy", "noeviction")
        caplog.clear()
        await redis_spools()
        assert "maxmemory-policy" not in caplog.text
    finally:
        await client.config_set("maxmemory-policy", "noeviction")
        await client.aclose()
