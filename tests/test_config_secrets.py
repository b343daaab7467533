"""A config error never shows a secret's value, whatever type the secret was given.

Secret fields are marked once in their config dataclasses (``relay.schema.secret``); these tests
run ``statsig-relay check`` as a process on a table of mistyped secrets, and reload a running
daemon with one, and look for the value in everything printed or logged.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from relay.schema import ConfigError, build, secret
from tests.conftest import get
from tests.daemon import REPO_ROOT, DaemonProcess, free_port
from tests.fakes import poll_until

LEAK = "whsig-LEAKED-7f3a"  # appears in every mistyped secret below; must appear nowhere

HOOK = "hook: {type: statsig_webhook, signing_secret: s3cret-ok}"
OUT = "out: {type: file, path: ./out.jsonl}"
URL = "'http://127.0.0.1:9/in'"  # never called: check does not connect
# (sources, targets, the YAML path the error must name)
MISTYPED = {
    "webhook signing_secret as a list": (
        f"hook: {{type: statsig_webhook, signing_secret: ['{LEAK}']}}",
        "",
        "sources.hook.signing_secret: expected a string, got a list",
    ),
    "webhook signing_secrets item as a mapping": (
        f"hook: {{type: statsig_webhook, signing_secrets: [{{k: '{LEAK}'}}]}}",
        "",
        "sources.hook.signing_secrets[0]: expected a string, got a mapping",
    ),
    "webhook signing_secrets as a mapping": (
        f"hook: {{type: statsig_webhook, signing_secrets: {{k: '{LEAK}'}}}}",
        "",
        "sources.hook.signing_secrets: expected a list, got",
    ),
    "segment write_key as a list": (
        f"{HOOK}, seg: {{type: segment, write_key: ['{LEAK}']}}",
        "",
        "sources.seg.write_key: expected a string, got a list",
    ),
    "segment write_keys item as a list": (
        f"{HOOK}, seg: {{type: segment, write_keys: [['{LEAK}']]}}",
        "",
        "sources.seg.write_keys[0]: expected a string, got a list",
    ),
    "json api_keys item as a mapping": (
        f"{HOOK}, js: {{type: json, api_keys: [{{a: '{LEAK}'}}]}}",
        "",
        "sources.js.api_keys[0]: expected a string, got a mapping",
    ),
    "statsig_events api_keys item as a list": (
        f"{HOOK}, sdk: {{type: statsig_events, api_keys: [['{LEAK}']]}}",
        "",
        "sources.sdk.api_keys[0]: expected a string, got a list",
    ),
    "statsig server_secret as a list": (
        HOOK,
        f"st: {{type: statsig, server_secret: ['secret-{LEAK}']}}",
        "targets.st.server_secret: expected a string, got a list",
    ),
    "webhook headers value as a list": (
        HOOK,
        f"wh: {{type: webhook, url: {URL}, headers: {{Authorization: ['{LEAK}']}}}}",
        "targets.wh.headers.Authorization: expected a string, got a list",
    ),
    "webhook signing.secret as a list": (
        HOOK,
        f"wh: {{type: webhook, url: {URL}, signing: {{secret: ['{LEAK}']}}}}",
        "targets.wh.signing.secret: expected a string, got a list",
    ),
    "fivetran hmac_secret as a mapping": (
        HOOK,
        f"ft: {{type: fivetran, url: {URL}, hmac_secret: {{s: '{LEAK}'}}}}",
        "targets.ft.hmac_secret: expected a string, got a mapping",
    ),
    "fivetran headers value as a mapping": (
        HOOK,
        f"ft: {{type: fivetran, url: {URL}, headers: {{X-Token: {{t: '{LEAK}'}}}}}}",
        "targets.ft.headers.X-Token: expected a string, got a mapping",
    ),
    "fivetran url (its endpoint id is the credential) as a list": (
        HOOK,
        f"ft: {{type: fivetran, url: ['https://webhooks.fivetran.com/webhooks/{LEAK}']}}",
        "targets.ft.url: expected a string, got a list",
    ),
    "webhook url as a mapping": (
        HOOK,
        f"wh: {{type: webhook, url: {{u: 'https://hooks.example.com/{LEAK}'}}}}",
        "targets.wh.url: expected a string, got a mapping",
    ),
    "chronosphere api_token as a list": (
        HOOK,
        f"ch: {{type: chronosphere, tenant: acme, api_token: ['{LEAK}']}}",
        "targets.ch.api_token: expected a string, got a list",
    ),
}


def write_config(tmp_path: Path, sources: str, targets: str) -> Path:
    path = tmp_path / "relay.yaml"
    path.write_text(
        f"""
server: {{listen: '127.0.0.1:{free_port()}', admin_listen: '127.0.0.1:{free_port()}'}}
spool: {{path: ./spool.db}}
sources: {{{sources}}}
targets: {{{", ".join(t for t in (OUT, targets) if t)}}}
routes: [{{name: all, from: hook, to: out}}]
"""
    )
    return path


def run_check(path: Path) -> subprocess.CompletedProcess[str]:
    """``statsig-relay check -c path`` as a process, in the config's folder, with a bare env."""
    return subprocess.run(
        [sys.executable, "-m", "relay", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        cwd=path.parent,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)},
        timeout=30,
    )


@pytest.mark.parametrize("case", list(MISTYPED))
def test_check_names_the_field_and_type_of_a_mistyped_secret_never_its_value(
    tmp_path: Path, case: str
) -> None:
    sources, targets, message = MISTYPED[case]
    path = write_config(tmp_path, sources, targets)
    result = run_check(path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "LEAKED" not in result.stdout + result.stderr


# YAML reads an unquoted 0755 as 493 and 1_000 as 1000: a key that changed without a word.
UNQUOTED_NUMBERS = {
    "statsig_events api_keys item": (
        f"{HOOK}, sdk: {{type: statsig_events, api_keys: [0755]}}",
        "",
        "sources.sdk.api_keys[0]: expected a quoted string, got a number; quote the value",
    ),
    "webhook signing_secret": (
        "hook: {type: statsig_webhook, signing_secret: 8675309}",
        "",
        "sources.hook.signing_secret: expected a quoted string, got a number",
    ),
    "webhook headers value": (
        HOOK,
        f"wh: {{type: webhook, url: {URL}, headers: {{X-Token: 8_675_309}}}}",
        "targets.wh.headers.X-Token: expected a quoted string, got a number",
    ),
}


@pytest.mark.parametrize("case", list(UNQUOTED_NUMBERS))
def test_check_refuses_a_secret_that_yaml_read_as_a_number(tmp_path: Path, case: str) -> None:
    sources, targets, message = UNQUOTED_NUMBERS[case]
    path = write_config(tmp_path, sources, targets)
    result = run_check(path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    for shown in ("493", "0755", "8675309", "8_675_309"):
        assert shown not in result.stdout + result.stderr


# A syntax error on a secret's line: PyYAML's message quotes that line; ours names the position.
BROKEN_YAML = {
    "unclosed quote": (
        f'sources:\n  hook:\n    type: statsig_webhook\n    signing_secret: "{LEAK}\n',
        "found unexpected end of stream at line 5, column 1"
        " (while scanning a quoted scalar started at line 4)",
    ),
    "colon inside a plain value": (
        f"sources:\n  hook: {{type: statsig_webhook, signing_secret: {LEAK}: x}}\n",
        "(while parsing a flow mapping started at line 2)",
    ),
    "mapping value after a plain value": (
        f"targets:\n  st:\n    type: statsig\n    server_secret: secret-{LEAK}: x\n",
        "mapping values are not allowed here at line 4, column ",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN_YAML))
def test_check_points_at_a_yaml_syntax_error_without_quoting_the_line(
    tmp_path: Path, case: str
) -> None:
    text, message = BROKEN_YAML[case]
    path = tmp_path / "relay.yaml"
    path.write_text(text)
    result = run_check(path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{path} is not valid YAML: " in result.stderr
    assert message in result.stderr
    assert "LEAKED" not in result.stdout + result.stderr


def test_a_sections_own_check_never_quotes_a_secret_field() -> None:
    """A ``__post_init__`` check that quotes a value is caught by the same marking."""
    from dataclasses import dataclass

    @dataclass(kw_only=True)
    class Section:
        token: str = secret()

        def __post_init__(self) -> None:
            raise ConfigError("token", f"looks wrong: {self.token!r}")

    with pytest.raises(ConfigError) as caught:
        build(Section, {"token": LEAK}, "targets.x")
    assert str(caught.value) == "targets.x.token: looks wrong: '[secret]'"


@pytest.mark.parametrize(
    ("bad", "logged"),
    [
        (f"['{LEAK}']", "sources.hook.signing_secret: expected a string, got a list"),
        (f'"{LEAK}', "is not valid YAML: "),  # unclosed quote: PyYAML would quote the line
    ],
    ids=["mistyped", "unclosed-quote"],
)
async def test_a_reload_refused_for_a_bad_secret_logs_the_field_not_the_value(
    tmp_path: Path, bad: str, logged: str
) -> None:
    port, admin = free_port(), free_port()

    def text(secret_yaml: str) -> str:
        return f"""
server: {{listen: "127.0.0.1:{port}", admin_listen: "127.0.0.1:{admin}", shutdown_grace: 2s}}
spool: {{backend: sqlite, path: ./data/spool.db}}
sources: {{hook: {{type: statsig_webhook, signing_secret: {secret_yaml}}}}}
targets: {{{OUT}}}
routes: [{{name: all, from: hook, to: out}}]
"""

    async with DaemonProcess(text("s3cret-ok"), tmp_path) as daemon:
        await daemon.start(f"http://127.0.0.1:{admin}/readyz")
        daemon.config_path.write_text(text(bad))
        os.kill(daemon.pid, signal.SIGHUP)  # type: ignore[arg-type]

        async def refused() -> bool:
            _, metrics = await get(f"http://127.0.0.1:{admin}/metrics")
            return 'relay_config_reloads_total{result="error"} 1.0' in metrics

        await poll_until(refused, timeout=10)
        await poll_until(lambda: "reload refused" in daemon.log_text(), timeout=5)
        _, status = await get(f"http://127.0.0.1:{admin}/status")
        log = daemon.log_text()
        assert logged in log
        assert "LEAKED" not in log and "LEAKED" not in status
        assert await daemon.terminate() == 0


# Targets whose URL is configurable, each with a password in it (https://user:password@host):
# the URL is sent to and is not itself a secret field, but its password is.
WITH_PASSWORD = f"http://relay:{LEAK}@127.0.0.1:9"
URL_TARGETS = ", ".join(
    [
        f"st: {{type: statsig, server_secret: secret-ok, url: '{WITH_PASSWORD}/v1/log_event'}}",
        f"gr: {{type: grafana, url: '{WITH_PASSWORD}', token: tok}}",
        f"sg: {{type: segment, write_key: wk, base_url: '{WITH_PASSWORD}'}}",
        f"ch: {{type: chronosphere, url: '{WITH_PASSWORD}', api_token: tok}}",
        f"dd: {{type: datadog, api_key: key, base_url: '{WITH_PASSWORD}'}}",
        f"am: {{type: amplitude, api_key: key, base_url: '{WITH_PASSWORD}'}}",
        f"mp: {{type: mixpanel, project_token: tok, base_url: '{WITH_PASSWORD}'}}",
        f"hp: {{type: heap, app_id: '1', base_url: '{WITH_PASSWORD}'}}",
        f"wh: {{type: webhook, url: '{WITH_PASSWORD}/in'}}",
        f"ft: {{type: fivetran, url: '{WITH_PASSWORD}/in'}}",
    ]
)


async def test_a_password_in_a_target_url_is_hidden_by_check_and_on_status(
    tmp_path: Path,
) -> None:
    """``check`` and /status showed statsig, grafana, segment, … URLs with their password."""
    path = write_config(tmp_path, HOOK, URL_TARGETS)
    result = run_check(path)
    assert result.returncode == 0, result.stderr
    assert "LEAKED" not in result.stdout + result.stderr, result.stdout
    assert "st: statsig log_event http://relay:[redacted]@127.0.0.1:9/v1/log_event" in result.stdout
    assert "gr: grafana annotations to http://relay:[redacted]@127.0.0.1:9/api/" in result.stdout

    port, admin = free_port(), free_port()
    text = path.read_text().replace(
        path.read_text().splitlines()[1],
        f"server: {{listen: '127.0.0.1:{port}', admin_listen: '127.0.0.1:{admin}'}}",
    )
    async with DaemonProcess(text, tmp_path) as daemon:
        await daemon.start(f"http://127.0.0.1:{admin}/readyz")
        _, status = await get(f"http://127.0.0.1:{admin}/status")
        _, status_json = await get(f"http://127.0.0.1:{admin}/status.json")
        assert "relay:[redacted]@127.0.0.1:9" in status_json
        assert "LEAKED" not in status + status_json + daemon.log_text()
        assert await daemon.terminate() == 0
