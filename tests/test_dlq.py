"""The DLQ commands are safe in production: each trap an operator could fall into has a test
here."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.cli import main
from relay.dlq import DeadFilter, DlqError, Pacer, pages, purge, replay, select
from relay.spool.records import DeadRow
from relay.spool.sqlite import SqliteSpool, SqliteSpoolConfig
from tests.conftest import RelayFactory, post_export
from tests.daemon import REPO_ROOT, free_port
from tests.fakes import FakeTargetFactory, poll_until
from tests.test_spool_contract import (  # noqa: F401  (fixtures)
    SpoolFactory,
    make_spool,
    redis_spools,
    redis_url,
)

DAY_MS = 86_400_000
T0 = 1_780_000_000_000  # 2026-05-28T20:26:40Z


def events(*names: str) -> bytes:
    return orjson.dumps([{"eventName": n, "timeUUID": f"{n}-{i}"} for i, n in enumerate(names)])


def dead(target: str, route: str, names: tuple[str, ...], reason: str, at: int) -> DeadRow:
    return DeadRow(0, target, route, events(*names), len(names), at - 1000, 1, at, reason)


async def _fill(path: Path, rows: list[DeadRow]) -> None:
    spool = SqliteSpool(SqliteSpoolConfig(path=str(path)))
    await spool.open()
    try:
        await spool.settle((), (), rows)
    finally:
        await spool.close()


async def _read(path: Path) -> tuple[list[DeadRow], list[Any]]:
    """(dead rows, events waiting in the queue for target "out")."""
    spool = SqliteSpool(SqliteSpoolConfig(path=str(path)), lock=False)
    await spool.open()
    try:
        queued = await spool.claim("out", 10_000, 10**9, 1)
        return await spool.dead_rows(), [e for r in queued for e in orjson.loads(r.body)]
    finally:
        await spool.close()


def read(path: Path) -> tuple[list[DeadRow], list[Any]]:
    return asyncio.run(_read(path))


def config_file(tmp_path: Path, spool: str | None = None) -> Path:
    """A config whose source needs ${WH_SECRET}, never set in these tests."""
    spool = spool or f'{{path: "{tmp_path}/spool.db"}}'
    path = tmp_path / "relay.yaml"
    path.write_text(f"""
spool: {spool}
sources: {{hook: {{type: statsig_webhook, signing_secret: "${{WH_SECRET}}"}}}}
targets:
  out: {{type: file, path: "{tmp_path}/out.jsonl"}}
  other: {{type: file, path: "{tmp_path}/other.jsonl"}}
routes: [{{name: all, from: hook, to: out}}, {{name: copy, from: hook, to: other}}]
""")
    return path


@pytest.fixture
def dlq(tmp_path: Path) -> Path:
    """A spool with three dead rows (ids 1-3) and the config that names it."""
    asyncio.run(
        _fill(
            tmp_path / "spool.db",
            [
                dead("out", "all", ("purchase", "page_view"), "HTTP 400: bad event", T0),
                dead(
                    "out", "all", ("purchase",), "gave up after 5 attempts: HTTP 503", T0 + DAY_MS
                ),
                dead("other", "copy", ("signup",), "HTTP 401: bad key", T0 + 2 * DAY_MS),
            ],
        )
    )
    return config_file(tmp_path)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_dlq_reads_only_the_spool_section_an_unset_secret_elsewhere_does_not_matter(
    dlq: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "dlq", "list", "-c", str(dlq))
    assert code == 0, err
    assert [line.split("\t")[0] for line in out.splitlines()] == ["ID", "1", "2", "3"]


def test_a_missing_spool_file_is_an_error_naming_it_and_nothing_is_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_file(tmp_path)
    code, out, err = run(capsys, "dlq", "list", "-c", str(config))
    assert code == 1
    assert f"spool file {tmp_path}/spool.db does not exist" in err
    assert "empty" not in out + err
    assert not (tmp_path / "spool.db").exists()


def test_purge_without_a_selection_refuses_unless_all(
    dlq: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "dlq", "purge", "-c", str(dlq))
    assert code == 2 and "--all" in err
    assert len(read(dlq.parent / "spool.db")[0]) == 3
    code, out, _ = run(capsys, "dlq", "purge", "-c", str(dlq), "--all")
    assert code == 0 and "purged 4 events" in out
    assert read(dlq.parent / "spool.db")[0] == []


@pytest.mark.parametrize("action", ["list", "show", "export", "replay", "purge"])
def test_an_unknown_target_or_id_exits_non_zero_naming_it(
    dlq: Path, capsys: pytest.CaptureFixture[str], action: str
) -> None:
    code, _, err = run(capsys, "dlq", action, "-c", str(dlq), "--target", "nope")
    assert code == 1 and "no target named 'nope'" in err and "out" in err
    code, _, err = run(capsys, "dlq", action, "-c", str(dlq), "--id", "2", "--id", "99")
    assert code == 1 and "no dead-letter row with id 99" in err
    code, _, err = run(capsys, "dlq", action, "-c", str(dlq), "--id", "x7")
    assert code == 1 and "x7" in err
    assert len(read(dlq.parent / "spool.db")[0]) == 3  # nothing touched


def test_row_ids_are_never_reused_after_a_purge(
    dlq: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spool_path = dlq.parent / "spool.db"
    assert run(capsys, "dlq", "purge", "-c", str(dlq), "--id", "3")[0] == 0
    asyncio.run(_fill(spool_path, [dead("out", "all", ("late",), "HTTP 400", T0)]))
    assert [r.id for r in read(spool_path)[0]] == [1, 2, 4]
    code, _, err = run(capsys, "dlq", "replay", "-c", str(dlq), "--id", "3")
    assert code == 1 and "id 3" in err  # 3 is gone for good, not some other row


async def test_old_spool_files_keep_their_dead_letters_and_stop_reusing_ids(
    tmp_path: Path,
) -> None:
    import sqlite3

    path = tmp_path / "spool.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE dead (id INTEGER PRIMARY KEY, target TEXT NOT NULL, route TEXT NOT NULL,"
        " body BLOB NOT NULL, count INTEGER NOT NULL, bytes INTEGER NOT NULL,"
        " first_received INTEGER NOT NULL, attempts INTEGER NOT NULL, dead_at INTEGER NOT NULL,"
        " reason TEXT NOT NULL);"
        "INSERT INTO dead VALUES (7, 'out', 'all', '[{}]', 1, 4, 1, 2, 3, 'HTTP 400');"
    )
    db.commit()
    db.close()
    spool = SqliteSpool(SqliteSpoolConfig(path=str(path)))
    await spool.open()
    try:
        assert [(r.id, r.reason) for r in await spool.dead_rows()] == [(7, "HTTP 400")]
        await spool.purge_dead(None, ["7"])
        await spool.settle((), (), [dead("out", "all", ("x",), "HTTP 400", T0)])
        assert [r.id for r in await spool.dead_rows()] == [8]
    finally:
        await spool.close()


def test_filters_select_rows_and_events(dlq: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def ids(*args: str) -> list[str]:
        code, out, err = run(capsys, "dlq", "list", "-c", str(dlq), *args)
        assert code == 0, err
        return [line.split("\t")[0] for line in out.splitlines() if line[:1].isdigit()]

    assert ids("--event", "purch*") == ["1", "2"]
    assert ids("--event", "page_*") == ["1"]
    assert ids("--reason", "HTTP 4") == ["1", "3"]  # prefix
    assert ids("--reason", "*503*") == ["2"]  # glob
    assert ids("--route", "copy") == ["3"]
    assert ids("--since", "2026-05-29") == ["2", "3"]
    assert ids("--until", "2026-05-29T00:00:00Z") == ["1"]
    assert ids("--since", "2026-05-29", "--until", "2026-05-30", "--target", "out") == ["2"]
    assert ids("--event", "nothing*") == []
    _, out, _ = run(capsys, "dlq", "show", "-c", str(dlq), "--event", "page_*")
    assert "1 events (of 2)" in out and "page_view" in out and "purchase" not in out


def test_replay_with_an_event_filter_splits_the_row_and_leaves_the_rest_dead(
    dlq: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "dlq", "replay", "-c", str(dlq), "--event", "page_*")
    assert code == 0, err
    assert "replayed 1 events" in out
    rows, queued = read(dlq.parent / "spool.db")
    assert [e["eventName"] for e in queued] == ["page_view"]
    assert [(r.id, r.count, r.reason) for r in rows] == [
        (2, 1, "gave up after 5 attempts: HTTP 503"),
        (3, 1, "HTTP 401: bad key"),
        (4, 1, "HTTP 400: bad event"),  # what row 1 still holds, under a new id
    ]
    assert orjson.loads(rows[2].body)[0]["eventName"] == "purchase"


def test_purge_with_filters_deletes_only_what_matches(
    dlq: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "dlq", "purge", "-c", str(dlq), "--event", "purchase")
    assert code == 0 and "purged 2 events" in out
    rows, _ = read(dlq.parent / "spool.db")
    assert [(r.target, [e["eventName"] for e in orjson.loads(r.body)]) for r in rows] == [
        ("other", ["signup"]),
        ("out", ["page_view"]),
    ]


def test_export_writes_json_lines_with_the_reason(
    dlq: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_file = tmp_path / "dead.jsonl"
    code, _, err = run(
        capsys, "dlq", "export", "-c", str(dlq), "--target", "out", "-o", str(out_file)
    )
    assert code == 0 and "exported 3 events" in err
    lines = [orjson.loads(line) for line in out_file.read_bytes().splitlines()]
    assert [(x["id"], x["reason"][:8], x["event"]["eventName"]) for x in lines] == [
        ("1", "HTTP 400", "purchase"),
        ("1", "HTTP 400", "page_view"),
        ("2", "gave up ", "purchase"),
    ]
    assert lines[0]["dead_at"] == "2026-05-28T20:26:40.000Z" and lines[0]["attempts"] == 1
    code, out, _ = run(capsys, "dlq", "export", "-c", str(dlq), "--reason", "HTTP 401")
    assert [orjson.loads(x)["event"]["eventName"] for x in out.splitlines()] == ["signup"]
    assert len(read(dlq.parent / "spool.db")[0]) == 3  # export leaves the DLQ as it was


def test_replay_with_a_rate_moves_everything(dlq: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "dlq", "replay", "-c", str(dlq), "--target", "out", "--rate", "1000")
    assert code == 0 and "replayed 3 events to the queue at ≤1000 events/s" in out
    rows, queued = read(dlq.parent / "spool.db")
    assert [r.target for r in rows] == ["other"] and len(queued) == 3
    code, _, err = run(capsys, "dlq", "replay", "-c", str(dlq), "--rate", "0")
    assert code == 2 and "--rate" in err


async def test_pacer_spaces_work_to_the_rate() -> None:
    now = [100.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    pacer = Pacer(10, clock=lambda: now[0], sleep=sleep)
    for units in (5, 5, 20, 1):
        await pacer.take(units)
    assert slept == [0.5, 0.5, 2.0]  # 5 units at 10/s = 0.5 s, then 5, then 20


def test_dlq_on_an_unreachable_redis_spool_is_a_clear_error(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    config = config_file(
        tmp_path, f'{{backend: redis, url: "redis://:hunter2@127.0.0.1:{port}/0"}}'
    )
    result = subprocess.run(
        [sys.executable, "-m", "relay", "dlq", "list", "-c", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"cannot open the spool: cannot reach the redis spool at redis://127.0.0.1:{port}/0" in (
        result.stderr
    )
    assert "hunter2" not in result.stderr


async def test_dead_letters_count_the_attempt_that_killed_them(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory, tmp_path: Path
) -> None:
    fake = await fake_targets(default=500)
    bad = await fake_targets(
        default=lambda request: 400 if "u1" in [e["timeUUID"] for e in request.events()] else 200
    )
    relay = await relay_factory(f"""
sources: {{hook: {{type: statsig_webhook}}}}
targets:
  flaky: {{type: webhook, url: "{fake.url}/in", linger: 0s, retries_in_process: 1,
           max_attempts: 2, retry_initial: 10ms, retry_max: 20ms}}
  strict: {{type: webhook, url: "{bad.url}/in", linger: 0s}}
routes: [{{name: a, from: hook, to: flaky}}, {{name: b, from: hook, to: strict}}]
""")
    await post_export(
        relay,
        [
            {"eventName": "e", "timeUUID": "u0", "timestamp": T0, "user": {}},
            {"eventName": "e", "timeUUID": "u1", "timestamp": T0, "user": {}},
        ],
    )

    async def both_dead() -> bool:
        return len(await relay.spool.dead_rows()) == 2

    await poll_until(both_dead)
    attempts = {r.target: r.attempts for r in await relay.spool.dead_rows()}
    assert attempts == {"flaky": 2, "strict": 1}
    assert len(fake.requests) == 2
    assert [r.status for r in bad.requests] == [400, 200, 400]  # bisected to u1


async def test_event_selection_splits_rows_the_same_on_every_backend(
    make_spool: SpoolFactory,  # noqa: F811  (the fixture)
) -> None:
    spool = await make_spool()
    await spool.settle(
        (),
        (),
        [
            dead("out", "all", ("purchase", "page_view", "purchase"), "HTTP 400: bad", T0),
            dead("out", "all", ("page_view",), "HTTP 400: bad", T0),
        ],
    )
    [mixed, alone] = await spool.dead_rows()
    chosen = await select(spool, DeadFilter(event="page_*"), ["out"])
    assert [(s.row.id, len(s.taken), len(s.rest)) for s in chosen] == [
        (mixed.id, 1, 2),
        (alone.id, 1, 0),
    ]
    assert await replay(spool, chosen) == 2
    [rest] = await spool.dead_rows()
    assert rest.id not in (mixed.id, alone.id) and int(rest.id) > int(alone.id)
    assert [e["eventName"] for e in orjson.loads(rest.body)] == ["purchase", "purchase"]
    assert (rest.count, rest.reason, rest.attempts) == (2, "HTTP 400: bad", 1)
    queued = await spool.claim("out", 100, 10**9, 30)
    assert sorted(e["eventName"] for r in queued for e in orjson.loads(r.body)) == [
        "page_view",
        "page_view",
    ]
    assert (await spool.stats()).dead["out"].events == 2

    taken = await select(spool, DeadFilter(reason="HTTP 4*", since_ms=T0 - 1), ["out"])
    assert await purge(spool, taken) == 2
    assert await spool.dead_rows() == []
    with pytest.raises(DlqError, match="no dead-letter row with id 1"):
        await select(spool, DeadFilter(ids=("1",)), ["out"])


async def test_a_large_dlq_is_read_page_by_page_and_whole_rows_are_not_held(
    make_spool: SpoolFactory,  # noqa: F811  (the fixture)
) -> None:
    """Pages of 2 rows over 7: the same selection as one read, ids found on any page, and
    without bodies (list, replay, purge) a whole row keeps only its metadata."""
    spool = await make_spool()
    names = [("purchase",), ("page_view", "purchase"), ("purchase",)] * 2 + [("page_view",)]
    await spool.settle((), (), [dead("out", "all", n, "HTTP 400: bad", T0) for n in names])
    rows = await spool.dead_rows()
    assert len(rows) == 7
    ids = [int(r.id) for r in rows]
    assert [int(r.id) for r in await spool.dead_rows(limit=3, after_id=ids[2])] == ids[3:6]
    assert await spool.dead_rows(after_id=ids[-1]) == []

    every = await select(spool, DeadFilter(), ["out"], page_rows=2)
    assert [int(s.row.id) for s in every] == ids
    assert [s.row.body for s in every] == [r.body for r in rows]  # bodies by default
    light = await select(spool, DeadFilter(), ["out"], bodies=2, page_rows=2)
    assert [(int(s.row.id), s.count, s.row.body) for s in light] == [
        (i, r.count, r.body if n < 2 else b"")
        for n, (i, r) in enumerate(zip(ids, rows, strict=True))
    ]
    paged = [[int(s.row.id) for s in page] async for page in pages(spool, DeadFilter(), ["out"], 3)]
    assert paged == [ids[0:3], ids[3:6], ids[6:7]]

    by_id = await select(spool, DeadFilter(ids=(str(ids[0]), str(ids[5]))), ["out"], page_rows=2)
    assert [int(s.row.id) for s in by_id] == [ids[0], ids[5]]
    with pytest.raises(DlqError, match="no dead-letter row with id 999"):
        await select(spool, DeadFilter(ids=(str(ids[6]), "999")), ["out"], page_rows=2)

    split = await select(spool, DeadFilter(event="page_*"), ["out"], bodies=0, page_rows=2)
    assert [(int(s.row.id), len(s.taken), len(s.rest)) for s in split] == [
        (ids[1], 1, 1),
        (ids[4], 1, 1),
        (ids[6], 1, 0),
    ]
    assert await replay(spool, split) == 3
    assert (
        await replay(spool, await select(spool, DeadFilter(), ["out"], bodies=0, page_rows=2)) == 6
    )
    assert await spool.dead_rows() == []
    queued = await spool.claim("out", 100, 10**9, 30)
    assert sorted(e["eventName"] for r in queued for e in orjson.loads(r.body)) == sorted(
        n for row in names for n in row
    )
