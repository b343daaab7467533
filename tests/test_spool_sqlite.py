"""What the SQLite spool adds to the contract: its schedule in memory, its body cache, and rows
written by another process (``statsig-relay dlq replay``) joining a running spool."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson

from relay.events import now_ms
from relay.spool import sqlite as sqlite_spool
from relay.spool.due import DueIndex, QueuedRow
from relay.spool.records import NewRow
from relay.spool.sqlite import SqliteSpool, SqliteSpoolConfig
from tests.fakes import poll_until

BIG = 1 << 30


def row(tag: str, count: int = 1, target: str = "t") -> NewRow:
    body = orjson.dumps([{"eventName": tag, "i": i} for i in range(count)])
    return NewRow(target, "route", body, count, now_ms())


def tags(rows: list) -> list[str]:
    return [orjson.loads(r.body)[0]["eventName"] for r in rows]


async def open_spool(path: Path, lock: bool = True) -> SqliteSpool:
    spool = SqliteSpool(SqliteSpoolConfig(path=str(path), synchronous="normal"), lock=lock)
    await spool.open()
    return spool


async def test_rows_left_claimed_by_a_closed_spool_are_due_at_once_when_reopened(
    tmp_path: Path,
) -> None:
    spool = await open_spool(tmp_path / "s.db")
    await spool.enqueue([row("a"), row("b", 2), row("c", target="u")])
    claimed = await spool.claim("t", 100, BIG, 3600)
    assert tags(claimed) == ["a", "b"]
    await spool.retry(claimed[1:], now_ms() + 3_600_000, "HTTP 503")
    await spool.close()  # "a" is still leased for an hour, "b" waits an hour

    spool = await open_spool(tmp_path / "s.db")
    try:
        (again,) = await spool.claim("t", 100, BIG, 30)
        assert (tags([again]), again.attempts) == (["a"], 0)  # the old lease is void
        assert await spool.claim("t", 100, BIG, 30) == []  # "b" keeps its next attempt
        assert tags(await spool.claim("u", 100, BIG, 30)) == ["c"]
    finally:
        await spool.close()


async def test_rows_replayed_by_another_process_are_claimed_by_the_running_spool(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    running = await open_spool(path)
    try:
        await running.enqueue([row("bad")])
        await running.dead_letter(await running.claim("t", 100, BIG, 30), "HTTP 400", now_ms())
        assert await running.claim("t", 100, BIG, 30) == []

        cli = await open_spool(path, lock=False)  # what `statsig-relay dlq replay` opens
        try:
            assert await cli.replay_dead("t") == 1
        finally:
            await cli.close()

        found = []

        async def replayed() -> bool:
            found.extend(await running.claim("t", 100, BIG, 30))
            return bool(found)

        await poll_until(replayed, timeout=5, interval=0.05)
        assert tags(found) == ["bad"] and found[0].attempts == 0
        assert running._bytes == len(found[0].body)  # moved from the dead letters, not added
        await running.ack(found)
        assert (await running.stats()).queued == {}
        assert running._bytes == 0
    finally:
        await running.close()


async def test_new_rows_still_commit_when_another_process_took_the_next_id(
    tmp_path: Path,
) -> None:
    """Ingest gives ids from a counter (one statement, no query); a row another process
    inserted meanwhile with that id sends the group to the transaction that asks SQLite."""
    path = tmp_path / "s.db"
    running = await open_spool(path)
    try:
        await running.enqueue([row("a"), row("b")])
        await running.ack(await running.claim("t", 100, BIG, 30))  # the counter stays at 3
        cli = await open_spool(path, lock=False)
        try:  # `dlq replay` inserts with SQLite's own ids: max + 1, here 1 and 2 ... 3
            await cli.enqueue([row("x1"), row("x2"), row("x3")])
        finally:
            await cli.close()
        await running.enqueue([row("c")])  # id 3 is taken: must not fail, nor overwrite "x3"
        found: list = []

        async def all_claimed() -> bool:
            found.extend(await running.claim("t", 100, BIG, 30))
            return len(found) >= 4

        await poll_until(all_claimed, timeout=5, interval=0.05)
        assert sorted(tags(found)) == ["c", "x1", "x2", "x3"]
        assert len({r.id for r in found}) == 4
    finally:
        await running.close()


async def test_bodies_past_the_cache_are_read_back_from_the_file(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(sqlite_spool, "_BODY_CACHE_BYTES", 200)
    spool = await open_spool(tmp_path / "s.db")
    try:
        rows = [row(f"r{i}", count=5) for i in range(6)]  # ~100 bytes each: 2 stay cached
        await spool.enqueue(rows)
        assert 0 < len(spool._bodies) < len(rows)
        claimed = await spool.claim("t", 1000, BIG, 30)
        assert [r.body for r in claimed] == [r.body for r in rows]
        assert spool._bodies == {} and spool._bodies_size == 0
        await spool.ack(claimed)
        assert (await spool.stats()).bytes_used == 0
    finally:
        await spool.close()


async def test_a_group_commit_carries_acks_and_new_rows_in_one_transaction(
    tmp_path: Path,
) -> None:
    spool = await open_spool(tmp_path / "s.db")
    transactions = 0
    commit_group = spool._group_commit._call

    async def counting(writes: list) -> list:
        nonlocal transactions
        transactions += 1
        return await commit_group(writes)

    spool._group_commit._call = counting
    try:
        await spool.enqueue([row("a")])
        first = await spool.claim("t", 100, BIG, 30)
        transactions = 0
        await asyncio.gather(spool.ack(first), spool.enqueue([row("b")]), spool.enqueue([row("c")]))
        assert transactions == 1
        claimed = await spool.claim("t", 100, BIG, 30)
        # The two requests' rows were merged into one row (rows.merge_rows), events in order.
        assert [e["eventName"] for r in claimed for e in orjson.loads(r.body)] == ["b", "c"]
        assert len(claimed) == 1 and claimed[0].count == 2
    finally:
        await spool.close()


def queued(row_id: int, count: int = 1, next_attempt: int = 0) -> QueuedRow:
    return QueuedRow(row_id, "t", "r", count, 10, 0, 0, next_attempt)


def test_acked_rows_do_not_pile_up_in_the_lease_heap() -> None:
    index = DueIndex()
    for i in range(5000):  # bounded
        index.add(queued(i))
        (claimed,) = index.claim("t", 1, BIG, 3_600_000, now=1)
        index.remove(claimed.id)
    assert len(index) == 0
    assert len(index._leases) <= 1024 + 2


def test_a_reused_row_id_does_not_revive_the_old_row() -> None:
    index = DueIndex()
    index.add(queued(7))
    (old,) = index.claim("t", 10, BIG, 100, now=1)
    index.remove(7)
    index.add(queued(7, count=2))  # SQLite reuses the id of a deleted last row
    (new,) = index.claim("t", 10, BIG, 1000, now=1)
    assert new is not old and new.count == 2
    assert index.claim("t", 10, BIG, 1000, now=500) == []  # old's lease entry is stale
    assert [r.count for r in index.claim("t", 10, BIG, 1000, now=1002)] == [2]  # new's ran out


def test_retried_rows_wait_then_come_back_in_receive_order() -> None:
    index = DueIndex()
    for i in (1, 2, 3):
        index.add(queued(i))
    first = index.claim("t", 1, BIG, 1000, now=0)
    index.retry(first[0].id, next_attempt=50)
    assert [r.id for r in index.claim("t", 10, BIG, 1000, now=10)] == [2, 3]
    index.retry(2, next_attempt=0)
    index.retry(3, next_attempt=0)
    assert [r.id for r in index.claim("t", 10, BIG, 1000, now=60)] == [1, 2, 3]
    assert [r.attempts for r in index.rows.values()] == [1, 1, 1]


async def test_small_rows_of_one_group_are_merged_per_target_and_route(tmp_path: Path) -> None:
    spool = await open_spool(tmp_path / "s.db")
    try:
        await asyncio.gather(
            spool.enqueue([row("a"), row("x", target="u")]),
            spool.enqueue([row("b", count=2)]),
            spool.enqueue([row("c"), row("y", target="u")]),
        )
        t = await spool.claim("t", 100, BIG, 30)
        u = await spool.claim("u", 100, BIG, 30)
        assert [len(t), len(u)] == [1, 1]
        assert [e["eventName"] for e in orjson.loads(t[0].body)] == ["a", "b", "b", "c"]
        assert t[0].count == 4 and u[0].count == 2
        big = NewRow("t", "route", b"[" + b'"' + b"x" * 70_000 + b'"]', 1, now_ms())
        await asyncio.gather(spool.enqueue([big]), spool.enqueue([row("d")]))
        assert len(await spool.claim("t", 100, BIG, 30)) == 2  # past the merge size: apart
    finally:
        await spool.close()


async def test_a_write_whose_key_is_stored_is_left_out_of_the_commit(tmp_path: Path) -> None:
    spool = await open_spool(tmp_path / "s.db")
    now = now_ms()
    later = now + 60_000
    try:
        assert await spool.enqueue_unless_seen("k1", now, [row("a")], [("k1", later)])
        await spool.enqueue([], [("old", now - 1)])  # stored, but expired
        answers = await asyncio.gather(  # one group: checked within the group too
            spool.enqueue_unless_seen("k1", now, [row("dup")], [("k1", later)]),
            spool.enqueue_unless_seen("k2", now, [row("b")], [("k2", later)]),
            spool.enqueue([row("c")]),
            spool.enqueue_unless_seen("k2", now, [row("again")], [("k2", later)]),
            spool.enqueue_unless_seen(
                "old", now, [row("d"), row("x", target="u")], [("old", later)]
            ),
        )
        assert answers == [False, True, None, False, True]
        t = await spool.claim("t", 100, BIG, 30)
        assert [e["eventName"] for r in t for e in orjson.loads(r.body)] == ["a", "b", "c", "d"]
        assert [len(t), sum(r.count for r in t)] == [2, 4]  # the group's rows merged
        assert tags(await spool.claim("u", 100, BIG, 30)) == ["x"]
        assert await spool.seen_keys(["k1", "k2", "old", "k3"], now) == {"k1", "k2", "old"}
        await spool.ack(t)
    finally:
        await spool.close()
    spool = await open_spool(tmp_path / "s.db")  # what the file holds matches the schedule
    try:
        assert tags(await spool.claim("u", 100, BIG, 30)) == ["x"]
        assert await spool.claim("t", 100, BIG, 30) == []
    finally:
        await spool.close()


async def test_a_write_after_close_is_refused_without_starting_a_new_writer(
    tmp_path: Path,
) -> None:
    """A request whose handler outlived the shutdown's grace may still write: the closed spool
    refuses it (a 503) rather than taking the file's lock again with a new writer."""
    spool = await open_spool(tmp_path / "spool.db")
    await spool.close()
    try:
        await spool.enqueue([row("late")])
    except RuntimeError as exc:
        assert "spool is not open" in str(exc)
    else:
        raise AssertionError("a closed spool took a write")
    assert not spool._host.running  # no writer was started to take it
    reopened = await open_spool(tmp_path / "spool.db")
    try:
        assert await reopened.claim("t", 100, BIG, 30) == []
    finally:
        await reopened.close()
