"""A damaged spool file at ``spool.path``: random bytes, a truncated copy of a real spool, a
copy with one corrupted page. Every command answers in one line naming the file and exits 1,
never writes to it (hash before and after), and ``spool salvage`` copies the readable rows
into a new file that the relay then runs on and delivers.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tests.conftest import signed_headers
from tests.daemon import REPO_ROOT, DaemonProcess, free_port
from tests.fakes import FakeTarget, FakeTargetFactory, poll_until

SECRET = "damage-secret"
BATCHES = 40


def config(fake: FakeTarget, port: int, admin: int, spool: str) -> str:
    return f"""
server: {{listen: "127.0.0.1:{port}", admin_listen: "127.0.0.1:{admin}", shutdown_grace: 2s}}
spool: {{backend: sqlite, path: "{spool}"}}
sources:
  statsig: {{type: statsig_webhook, path: /webhooks/statsig, signing_secret: "${{HOOK_SECRET}}"}}
targets:
  out: {{type: webhook, url: "{fake.url}/in", linger: 0s, retry_initial: 1m, retry_max: 1m,
         retries_in_process: 1, timeout: 3s}}
routes:
  - {{name: all, from: statsig, to: out}}
"""


def batch(tag: str, n: int = 10) -> list[dict[str, Any]]:
    return [
        {"eventName": "custom", "timeUUID": f"{tag}-{i}", "timestamp": 1700000000000,
         "user": {"userID": f"u{i}"}, "metadata": {"pad": "x" * 300}}
        for i in range(n)
    ]  # fmt: skip


def cli(tmp_path: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HOOK_SECRET": SECRET}
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def delivered(fake: FakeTarget) -> list[str]:
    return [e["timeUUID"] for r in fake.requests if r.status == 200 for e in r.events()]


async def real_spool(tmp_path: Path, fake: FakeTarget) -> tuple[Path, set[str]]:
    """A spool written by the relay itself: BATCHES rows queued for a target that is down."""
    port, admin = free_port(), free_port()
    acknowledged: set[str] = set()
    async with DaemonProcess(
        config(fake, port, admin, "./spool.db"), tmp_path, env={"HOOK_SECRET": SECRET}
    ) as daemon:
        await daemon.start(f"http://127.0.0.1:{admin}/readyz")
        async with aiohttp.ClientSession() as session:
            for i in range(BATCHES):
                events = batch(f"b{i}")
                body = orjson.dumps(events)
                async with session.post(
                    f"http://127.0.0.1:{port}/webhooks/statsig",
                    data=body,
                    headers=signed_headers(SECRET, body),
                ) as response:
                    assert response.status == 200, await response.text()
                acknowledged.update(e["timeUUID"] for e in events)
        assert await daemon.terminate() == 0
    return tmp_path / "spool.db", acknowledged


def damaged_copies(spool: Path, into: Path) -> tuple[dict[str, Path], int]:
    """Random bytes, the first half of ``spool``, and ``spool`` with one leaf page of its queue
    table overwritten; and how many rows that page held."""
    into.mkdir()
    random_bytes = into / "random.db"
    random_bytes.write_bytes(os.urandom(100_000))
    data = spool.read_bytes()
    truncated = into / "truncated.db"
    truncated.write_bytes(data[: len(data) // 2])
    corrupt = into / "corrupt.db"
    shutil.copyfile(spool, corrupt)
    with sqlite3.connect(f"file:{corrupt}?mode=ro", uri=True) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        leaves = db.execute(
            "SELECT pageno, ncell FROM dbstat WHERE name = 'queue' AND pagetype = 'leaf'"
        ).fetchall()
    db.close()
    assert len(leaves) >= 3, leaves
    page, rows = leaves[len(leaves) // 2]
    with corrupt.open("r+b") as file:
        file.seek((page - 1) * page_size)
        file.write(b"\xff" * page_size)
    return {"random": random_bytes, "truncated": truncated, "corrupt": corrupt}, rows


def one_line_naming(result: subprocess.CompletedProcess[str], path: Path) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


async def test_every_command_names_a_damaged_spool_in_one_line_and_never_writes_to_it(
    tmp_path: Path, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets(default=503)
    (tmp_path / "real").mkdir()
    spool, _ = await real_spool(tmp_path / "real", fake)
    copies, _ = damaged_copies(spool, tmp_path / "bad")
    port, admin = free_port(), free_port()
    for kind, path in copies.items():
        before = sha(path)
        (tmp_path / f"{kind}.yaml").write_text(config(fake, port, admin, str(path)))
        conf = str(tmp_path / f"{kind}.yaml")
        what = "not an SQLite database" if kind == "random" else "is damaged"

        run = cli(tmp_path, "run", "-c", conf)
        assert run.returncode == 1, (kind, run.stderr)
        line = one_line_naming(run, path)
        assert what in line, line
        if kind != "random":
            assert "statsig-relay spool check" in line, line

        check = cli(tmp_path, "check", "-c", conf)
        assert check.returncode == 1, (kind, check.stdout, check.stderr)
        assert what in one_line_naming(check, path)

        spool_check = cli(tmp_path, "spool", "check", "-c", conf)
        assert spool_check.returncode == 1, (kind, spool_check.stderr)
        assert what in one_line_naming(spool_check, path)

        dlq = cli(tmp_path, "dlq", "list", "-c", conf)
        assert dlq.returncode == 1, (kind, dlq.stderr)
        assert what in one_line_naming(dlq, path)

        assert sha(path) == before, f"{kind}: the damaged file was written to"

    sound = cli(tmp_path / "real", "spool", "check", "-c", "relay.yaml")
    assert sound.returncode == 0, sound.stderr
    assert f"spool ./spool.db: ok ({BATCHES * 10} events in {BATCHES} queued rows" in sound.stdout


async def test_salvage_copies_the_readable_rows_and_the_relay_delivers_them_from_the_new_file(
    tmp_path: Path, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets(default=503)
    (tmp_path / "real").mkdir()
    spool, acknowledged = await real_spool(tmp_path / "real", fake)
    copies, lost_rows = damaged_copies(spool, tmp_path / "bad")
    port, admin = free_port(), free_port()
    for kind in ("corrupt", "truncated"):
        path = copies[kind]
        before = sha(path)
        conf = tmp_path / f"{kind}.yaml"
        conf.write_text(config(fake, port, admin, str(path)))
        new = tmp_path / f"salvaged-{kind}.db"
        salvage = cli(tmp_path, "spool", "salvage", "-c", str(conf), "--to", str(new))
        assert salvage.returncode == 0, salvage.stderr
        assert sha(path) == before, f"{kind}: salvage wrote to the damaged file"
        assert str(new) in salvage.stdout, salvage.stdout
        again = cli(tmp_path, "spool", "salvage", "-c", str(conf), "--to", str(new))
        assert again.returncode == 1 and "exists" in again.stderr, again.stderr

        recovered = int(salvage.stdout.split("salvaged ", 1)[1].split(" events", 1)[0])
        if kind == "corrupt":  # one leaf page lost: the rows on it, 10 events each
            assert recovered == (BATCHES - lost_rows) * 10, salvage.stdout
            assert f"{lost_rows} rows unreadable" in salvage.stdout, salvage.stdout
        else:
            assert 0 < recovered < BATCHES * 10, salvage.stdout

        # The relay runs on the new file and delivers what was salvaged, each event once.
        fake.requests.clear()
        fake.default = 200
        run_dir = tmp_path / f"run-{kind}"
        run_dir.mkdir()
        async with DaemonProcess(
            config(fake, port, admin, str(new)), run_dir, env={"HOOK_SECRET": SECRET}
        ) as daemon:
            await daemon.start(f"http://127.0.0.1:{admin}/readyz")
            await poll_until(lambda n=recovered: len(delivered(fake)) >= n, timeout=20)
            assert await daemon.terminate() == 0
        got = delivered(fake)
        assert len(got) == len(set(got)) == recovered
        assert set(got) <= acknowledged
        fake.default = 503


async def test_a_damaged_pointer_map_page_is_still_named_in_one_line(
    tmp_path: Path, fake_targets: FakeTargetFactory
) -> None:
    """SQLite's quick_check reports damage to the page-pointer map (page 2 of a spool that
    gives free pages back) as one multi-line text; the relay's answer stays one line."""
    fake = await fake_targets(default=503)
    (tmp_path / "real").mkdir()
    spool, _ = await real_spool(tmp_path / "real", fake)
    path = tmp_path / "ptrmap.db"
    shutil.copyfile(spool, path)
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental: ptrmap pages
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    with path.open("r+b") as file:
        file.seek(page_size)  # page 2: the first pointer-map page
        file.write(b"\xff" * page_size)
    before = sha(path)
    port, admin = free_port(), free_port()
    conf = tmp_path / "ptrmap.yaml"
    conf.write_text(config(fake, port, admin, str(path)))
    for args in (["run"], ["check"], ["spool", "check"], ["dlq", "list"]):
        result = cli(tmp_path, *args, "-c", str(conf))
        assert result.returncode == 1, (args, result.stderr)
        line = one_line_naming(result, path)
        assert "is damaged (SQLite: " in line and "*** in database" not in line, line
        assert "more;" in line, line  # how many other problems quick_check found
    assert sha(path) == before


async def test_an_empty_spool_file_is_a_new_spool_for_check_as_for_run(
    tmp_path: Path, fake_targets: FakeTargetFactory
) -> None:
    """SQLite creates the file when it opens it, so a relay stopped before its first commit
    leaves an empty one; `run` starts on it as a new spool, and `check` (which the systemd unit
    runs before the start) must not call it damaged."""
    fake = await fake_targets()
    (tmp_path / "spool.db").write_bytes(b"")
    (tmp_path / "relay.yaml").write_text(config(fake, free_port(), free_port(), "./spool.db"))
    check = cli(tmp_path, "check", "-c", "relay.yaml")
    assert check.returncode == 0, check.stderr
    spool_check = cli(tmp_path, "spool", "check", "-c", "relay.yaml")
    assert spool_check.returncode == 0, spool_check.stderr
    assert "spool ./spool.db: ok (0 events in 0 queued rows" in spool_check.stdout
    assert (tmp_path / "spool.db").read_bytes() == b""  # checking wrote nothing
