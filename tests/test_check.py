"""`check` refuses every config `run` refuses, with the same message; and it warns."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon import REPO_ROOT, free_port

GOOD_SERVER = "{listen: '127.0.0.1:PORT', admin_listen: '127.0.0.1:ADMIN'}"


def config(server: str = GOOD_SERVER, spool: str = "{path: ./spool.db}", extra: str = "") -> str:
    return f"""
server: {server}
spool: {spool}
sources: {{hook: {{type: statsig_webhook, signing_secret: s3cret}}}}
targets: {{out: {{type: file, path: ./out.jsonl{extra}}}}}
routes: [{{name: all, from: hook, to: out}}]
"""


BAD = {
    "log level": (
        config("{listen: '127.0.0.1:PORT', admin_listen: '127.0.0.1:ADMIN', log_level: verbose}"),
        "server.log_level: must be one of debug, info, warning, error, critical",
    ),
    "listen port out of range": (
        config("{listen: '127.0.0.1:99999', admin_listen: '127.0.0.1:ADMIN'}"),
        "server.listen: port 99999 is out of range (0-65535) in '127.0.0.1:99999'",
    ),
    "admin port out of range": (
        config("{listen: '127.0.0.1:PORT', admin_listen: '127.0.0.1:70000'}"),
        "server.admin_listen: port 70000 is out of range",
    ),
    "listen without a port": (
        config("{listen: '127.0.0.1', admin_listen: '127.0.0.1:ADMIN'}"),
        "server.listen: expected host:port, got '127.0.0.1'",
    ),
    "listen host not an IPv4 address": (
        config("{listen: '256.1.1.1:8080', admin_listen: '127.0.0.1:ADMIN'}"),
        "server.listen: '256.1.1.1' is not a valid IPv4 address in '256.1.1.1:8080'",
    ),
    "admin host not an IPv6 address": (
        config("{listen: '127.0.0.1:PORT', admin_listen: '[::1::2]:9102'}"),
        "server.admin_listen: '[::1::2]' is not a bracketed IPv6 address",
    ),
    "listen host name with an underscore": (
        config("{listen: 'relay_host:8080', admin_listen: '127.0.0.1:ADMIN'}"),
        "server.listen: 'relay_host' is not a valid host name",
    ),
    "log format": (
        config("{listen: '127.0.0.1:PORT', admin_listen: '127.0.0.1:ADMIN', log_format: xml}"),
        "server.log_format: must be text or json",
    ),
    "redis port not a number": (
        config(spool="{backend: redis, url: 'redis://:pw-secret@127.0.0.1:six/0'}"),
        "spool.url: the port must be a number from 0 to 65535",
    ),
    "unknown key": (
        config(extra=", batch_max_evnts: 5"),
        "targets.out.batch_max_evnts: unknown key",
    ),
    "wrong type": (
        config(extra=", linger: soon"),
        "targets.out.linger: expected a duration",
    ),
}


def relay(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)},
        timeout=30,
    )


@pytest.mark.parametrize("case", list(BAD))
def test_check_and_run_refuse_a_bad_config_with_the_same_message(tmp_path: Path, case: str) -> None:
    text, message = BAD[case]
    path = tmp_path / "relay.yaml"
    path.write_text(text.replace("PORT", str(free_port())).replace("ADMIN", str(free_port())))
    check = relay("check", "-c", str(path), cwd=tmp_path)
    run = relay("run", "-c", str(path), cwd=tmp_path)  # exits at once: nothing to serve
    assert (check.returncode, run.returncode) == (2, 2), (check.stderr, run.stderr)
    assert message in check.stderr
    assert check.stderr == run.stderr
    assert "Traceback" not in run.stderr and "pw-secret" not in check.stderr + run.stderr
    assert not (tmp_path / "spool.db").exists()  # run refused before opening anything


def test_check_warns_about_a_target_no_route_feeds(tmp_path: Path) -> None:
    path = tmp_path / "relay.yaml"
    path.write_text(
        config()
        .replace("PORT", "0")
        .replace("ADMIN", "0")
        .replace(
            "targets: {out: {type: file, path: ./out.jsonl}}",
            "targets: {out: {type: file, path: ./out.jsonl}, spare: {type: file, path: ./s.jsonl}}",
        )
    )
    result = relay("check", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    spare = next(i for i, line in enumerate(lines) if line.startswith("  spare:"))
    assert (
        lines[spare + 1]
        == "    warning: no route feeds this target; it only drains what is spooled"
    )
    assert sum("no route feeds" in line for line in lines) == 1


@pytest.mark.parametrize(
    ("spool", "directory", "message"),
    [
        ("./data", "data", "spool.path: ./data is a directory; name a file, e.g. ./data/spool.db"),
        ("./spool.db", "spool.db.reserve", "spool.path: ./spool.db.reserve is a directory"),
    ],
)
def test_every_command_refuses_a_spool_path_that_is_a_directory_with_the_same_message(
    tmp_path: Path, spool: str, directory: str, message: str
) -> None:
    (tmp_path / directory).mkdir()
    path = tmp_path / "relay.yaml"
    text = config(spool=f"{{path: {spool}}}")
    path.write_text(text.replace("PORT", str(free_port())).replace("ADMIN", str(free_port())))
    commands = [("check",), ("run",), ("dlq", "list"), ("spool", "check")]
    results = [relay(*command, "-c", str(path), cwd=tmp_path) for command in commands]
    for command, result in zip(commands, results, strict=True):
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        first = result.stderr.splitlines()[0]
        assert first.startswith(f"statsig-relay: config error: {message}"), (command, first)
        assert result.stderr == results[0].stderr, command
    assert not (tmp_path / "spool.db").exists()  # run refused before opening anything
