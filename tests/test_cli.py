"""The command line: check prints the routing table or names the bad field; dlq works offline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from relay.spool.records import DeadRow, NewRow
from relay.spool.sqlite import SqliteSpool, SqliteSpoolConfig

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        timeout=60,
    )


def test_version() -> None:
    result = cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("statsig-relay ")


def test_check_prints_sources_targets_and_routes_of_the_example() -> None:
    result = cli("check", "-c", "config.example.yaml")
    assert result.returncode == 0, result.stderr
    assert "statsig (statsig_webhook): POST /webhooks/statsig" in result.stdout
    assert "everything-to-file: statsig -> local (everything)" in result.stdout
    assert "accepts unsigned requests" in result.stdout


def test_check_names_the_bad_field_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (REPO / "config.example.yaml")
        .read_text()
        .replace("type: file", "type: file\n    batch_max_events: many")
    )
    result = cli("check", "-c", str(bad))
    assert result.returncode == 2
    assert "targets.local.batch_max_events: expected an integer, got 'many'" in result.stderr


def test_check_never_prints_secrets(tmp_path: Path) -> None:
    result = cli(
        "check", "-c", "config.example.yaml", env={"STATSIG_WEBHOOK_SECRET": "super-secret-value"}
    )
    assert result.returncode == 0
    assert "super-secret-value" not in result.stdout + result.stderr


async def test_dlq_list_show_replay_purge(tmp_path: Path) -> None:
    spool_path = tmp_path / "spool.db"
    spool = SqliteSpool(SqliteSpoolConfig(path=str(spool_path)))
    await spool.open()
    await spool.enqueue([NewRow("out", "all", b'[{"eventName":"e1"}]', 1, 1)])
    [row] = await spool.claim("out", 10, 10_000, 60)
    await spool.settle(
        [row],
        (),
        [
            DeadRow(0, "out", "all", b'[{"eventName":"e1"}]', 1, 1, 3, 2, "HTTP 400: bad event"),
            DeadRow(
                0, "other", "r2", b'[{"eventName":"e2"},{"eventName":"e3"}]', 2, 1, 1, 2, "HTTP 401"
            ),
        ],
    )
    await spool.close()
    config = tmp_path / "relay.yaml"
    config.write_text(f"""
spool: {{path: "{spool_path}"}}
sources: {{statsig: {{type: statsig_webhook}}}}
targets: {{out: {{type: file, path: "{tmp_path}/out.jsonl"}}}}
routes: [{{name: all, from: statsig, to: out}}]
""")
    listing = cli("dlq", "list", "-c", str(config))
    assert listing.returncode == 0, listing.stderr
    assert (
        "out\tall\t1 events\tattempts 3" in listing.stdout
        and "HTTP 400: bad event" in listing.stdout
    )
    show = cli("dlq", "show", "-c", str(config), "--target", "other")
    assert '{"eventName":"e3"}' in show.stdout and "e1" not in show.stdout
    replay = cli("dlq", "replay", "-c", str(config), "--target", "out")
    assert "replayed 1 events" in replay.stdout
    purge = cli("dlq", "purge", "-c", str(config), "--all")
    assert "purged 2 events" in purge.stdout

    spool = SqliteSpool(SqliteSpoolConfig(path=str(spool_path)))
    await spool.open()
    try:
        assert await spool.dead_rows() == []
        [queued] = await spool.claim("out", 10, 10_000, 60)
        assert orjson.loads(queued.body) == [{"eventName": "e1"}] and queued.attempts == 0
    finally:
        await spool.close()


def test_a_second_daemon_on_the_same_sqlite_spool_is_refused(tmp_path: Path) -> None:
    import fcntl
    import os

    (tmp_path / "data").mkdir()
    lock = os.open(tmp_path / "data" / "spool.db.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        config = tmp_path / "relay.yaml"
        config.write_text(f"""
server: {{listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0"}}
spool: {{path: "{tmp_path}/data/spool.db"}}
sources: {{statsig: {{type: statsig_webhook}}}}
targets: {{out: {{type: file, path: "{tmp_path}/out.jsonl"}}}}
routes: [{{name: all, from: statsig, to: out}}]
""")
        result = cli("run", "-c", str(config))
        assert result.returncode == 1
        assert "in use by another relay process" in result.stderr
    finally:
        os.close(lock)


def test_send_with_an_unreadable_file_a_bad_url_or_header_says_so_and_exits_2(
    tmp_path: Path,
) -> None:
    """These were Python tracebacks (FileNotFoundError, ValueError, UnicodeEncodeError)."""
    body = tmp_path / "batch.json"
    body.write_text("[]")
    url = "http://127.0.0.1:9/webhooks/statsig"  # never reached: each use is refused first
    uses = {
        (url, str(tmp_path / "missing.json")): "cannot read",
        (url, str(tmp_path)): "cannot read",
        ("not-a-url", str(body)): "not-a-url",
        ("http://[::1/x", str(body)): "http://[::1/x",
        (url, str(body), "--header", "X-Note: €"): "'X-Note': not latin-1",
        (url, str(body), "--header", ": v"): "'': not a header name",
        (url, str(body), "--header", "é: v"): "'é': not a header name",
        (url, str(body), "--header", "X-Two: a\nb"): "'X-Two': the value holds a line break",
    }
    for args, named in uses.items():
        result = cli("send", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr, args
        assert result.stderr.startswith("statsig-relay: send: "), (args, result.stderr)
        assert named in result.stderr, (args, result.stderr)


def test_status_watch_and_dlq_limit_refuse_numbers_that_are_not_positive(tmp_path: Path) -> None:
    """``status --watch -1`` ended in a traceback from time.sleep; ``dlq list --limit -5`` on
    an empty queue printed "... 5 more rows"."""
    config = tmp_path / "relay.yaml"
    config.write_text(f"spool: {{backend: sqlite, path: {tmp_path / 'spool.db'}}}\n")
    uses = [
        ("status", "--url", "http://127.0.0.1:9", "--watch", "-1"),
        ("status", "--url", "http://127.0.0.1:9", "--watch", "nan"),
        ("status", "--url", "http://127.0.0.1:9", "--watch", "inf"),
        ("dlq", "list", "-c", str(config), "--limit", "-5"),
        ("dlq", "show", "-c", str(config), "--limit", "0"),
    ]
    for args in uses:
        result = cli(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, args
        assert "more rows" not in result.stdout, args
        option = args[-2]
        assert f"argument {option}: must be a positive" in result.stderr, (args, result.stderr)
