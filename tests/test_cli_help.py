"""The command line explains itself: help for every command and action, a missing default
config named, a closed pipe ends quietly, dlq list for people and for scripts, status at the
wrong port."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from relay.spool.records import DeadRow, NewRow
from relay.spool.sqlite import SqliteSpool, SqliteSpoolConfig
from tests.daemon import DaemonProcess, free_port

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ["run", "check", "dlq", "spool", "status", "send"]
DLQ_ACTIONS = ["list", "show", "export", "replay", "purge"]


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        timeout=60,
    )


def piped(args: list[str], cwd: Path = REPO) -> tuple[int, str]:
    """``statsig-relay ARGS | head -1``: the exit code and stderr of the relay's side."""
    relay = subprocess.Popen(
        [sys.executable, "-m", "relay", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )
    assert relay.stdout is not None and relay.stderr is not None
    relay.stdout.readline()
    relay.stdout.close()  # head -1 exits after its line
    err = relay.stderr.read().decode()
    return relay.wait(timeout=60), err


def test_top_level_help_is_for_users_and_lists_every_command() -> None:
    result = cli("--help")
    assert result.returncode == 0
    assert "``" not in result.stdout and ":func:" not in result.stdout
    assert "receives events" in result.stdout
    for command in COMMANDS:
        assert f"\n    {command} " in result.stdout, command


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_its_own_description(command: str) -> None:
    result = cli(command, "--help")
    assert result.returncode == 0
    assert f"usage: statsig-relay {command}" in result.stdout
    description = result.stdout.split("\n\n")[1]
    assert len(description) > 40 and not description.startswith(("positional", "options"))


@pytest.mark.parametrize(("command", "action"), [("dlq", a) for a in DLQ_ACTIONS] + [
    ("spool", "check"), ("spool", "salvage")])  # fmt: skip
def test_every_dlq_and_spool_action_has_its_own_help(command: str, action: str) -> None:
    result = cli(command, action, "--help")
    assert result.returncode == 0
    assert f"usage: statsig-relay {command} {action}" in result.stdout
    description = result.stdout.split("\n\n")[1]
    assert not description.startswith(("positional", "options")), description
    assert "-c CONFIG, --config CONFIG" in result.stdout
    assert "YAML config file (default" in result.stdout


def test_check_config_option_has_help() -> None:
    assert "YAML config file (default: $RELAY_CONFIG" in cli("check", "--help").stdout


def test_check_without_a_config_says_what_it_looked_for(tmp_path: Path) -> None:
    result = cli("check", cwd=tmp_path)
    assert result.returncode == 2
    assert "looked for config.yaml" in result.stderr and str(tmp_path) in result.stderr
    assert "-c" in result.stderr and "Traceback" not in result.stderr


def test_check_into_a_closed_pipe_exits_quietly() -> None:
    code, err = piped(["check", "-c", "config.example.yaml"])
    assert err == "" and code in (0, 141)


@pytest.fixture
def dead_letters(tmp_path: Path) -> Path:
    """A config whose spool holds 2,000 dead-lettered rows of two events each: more output
    than a pipe buffers, so the writer meets the closed pipe."""
    spool_path = tmp_path / "spool.db"

    async def fill() -> None:
        spool = SqliteSpool(SqliteSpoolConfig(path=str(spool_path)))
        await spool.open()
        pad = "x" * 200
        body = orjson.dumps([{"eventName": "e1", "pad": pad}, {"eventName": "e2", "pad": pad}])
        await spool.enqueue([NewRow("out", "all", body, 2, 1) for _ in range(2000)])
        rows = await spool.claim("out", 2000, 10**9, 60)
        dead = [DeadRow(0, "out", "all", body, 2, 1, 3, 2, "HTTP 400: bad") for _ in rows]
        await spool.settle(rows, (), dead)
        await spool.close()

    asyncio.run(fill())
    config = tmp_path / "relay.yaml"
    config.write_text(f"""
spool: {{path: "{spool_path}"}}
sources: {{statsig: {{type: statsig_webhook}}}}
targets: {{out: {{type: file, path: "{tmp_path}/out.jsonl"}}}}
routes: [{{name: all, from: statsig, to: out}}]
""")
    return config


@pytest.mark.parametrize("args", [["dlq", "list", "--limit", "2000"], ["dlq", "export"]])
def test_dlq_into_a_closed_pipe_exits_quietly(dead_letters: Path, args: list[str]) -> None:
    code, err = piped([*args, "-c", str(dead_letters)])
    assert "Traceback" not in err and "BrokenPipe" not in err and "spool error" not in err
    assert code in (0, 141)


def test_dlq_list_has_a_header_row_and_json_rows(dead_letters: Path) -> None:
    text = cli("dlq", "list", "-c", str(dead_letters), "--limit", "3")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split("\t") == [
        "ID", "TARGET", "ROUTE", "EVENTS", "ATTEMPTS", "DEAD AT", "REASON"]  # fmt: skip
    assert len(lines) == 4 and lines[1].split("\t")[1:3] == ["out", "all"]
    as_json = cli("dlq", "list", "-c", str(dead_letters), "--limit", "3", "--json")
    rows = [orjson.loads(line) for line in as_json.stdout.splitlines()]
    assert len(rows) == 3
    assert rows[0]["target"] == "out" and rows[0]["route"] == "all"
    assert rows[0]["events"] == 2 and rows[0]["attempts"] == 3
    assert rows[0]["reason"] == "HTTP 400: bad" and rows[0]["dead_at"].endswith("Z")


async def test_status_at_the_public_port_names_admin_listen(tmp_path: Path) -> None:
    public, admin = free_port(), free_port()
    config = f"""
server: {{listen: "127.0.0.1:{public}", admin_listen: "127.0.0.1:{admin}"}}
spool: {{path: "{tmp_path}/spool.db"}}
sources: {{statsig: {{type: statsig_webhook}}}}
targets: {{out: {{type: file, path: "{tmp_path}/out.jsonl"}}}}
routes: [{{name: all, from: statsig, to: out}}]
"""
    async with DaemonProcess(config, tmp_path) as daemon:
        await daemon.start(f"http://127.0.0.1:{admin}/readyz")
        wrong = await asyncio.to_thread(cli, "status", "--url", f"http://127.0.0.1:{public}")
        assert wrong.returncode == 1
        assert "public listener" in wrong.stderr and "admin_listen" in wrong.stderr
        right = await asyncio.to_thread(cli, "status", "--url", f"http://127.0.0.1:{admin}")
        assert right.returncode == 0, right.stderr
