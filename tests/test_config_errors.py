"""`check` reports every config error in one pass, then a summary; an empty variable in a
header is a warning and in a credential an error naming the field, never the value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from relay.config import parse_config
from relay.schema import ConfigError, ConfigErrors

REPO = Path(__file__).resolve().parents[1]

MANY_PROBLEMS = """
server: {listen: "127.0.0.1:8080", bogus: 1}
spool: {path: "SPOOL"}
sources:
  statsig: {type: statsig_webhook, signing_secret: "${UNSET_A}"}
  web: {type: segment, write_key: "${SEGMENT_KEY}", frobnicate: true}
targets:
  hooks: {type: webhook, url: "${UNSET_B}"}
  heap: {type: heap, app_id: "${UNSET_C}", batch_max_events: many}
  out: {type: file, path: OUT}
routes:
  - {name: a, from: statsig, to: nowhere}
  - {name: b, from: [nosuch], to: hooks}
  - {name: c, from: web, to: elsewhere}
"""


def check(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **env},
        timeout=60,
    )


def write(tmp_path: Path, text: str) -> Path:
    config = tmp_path / "relay.yaml"
    text = text.replace("SPOOL", str(tmp_path / "spool.db")).replace("OUT", str(tmp_path / "o"))
    config.write_text(text)
    return config


def test_check_reports_every_error_in_one_pass_then_a_summary(tmp_path: Path) -> None:
    config = write(tmp_path, MANY_PROBLEMS)
    result = check(config, {"SEGMENT_KEY": "sk-very-secret-value"})
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    expected = [
        "sources.statsig.signing_secret: environment variable UNSET_A is not set",
        "targets.hooks.url: environment variable UNSET_B is not set",
        "targets.heap.app_id: environment variable UNSET_C is not set",
        "server.bogus: unknown key",
        "sources.web.frobnicate: unknown key",
        "targets.heap.batch_max_events: expected an integer, got 'many'",
        "routes[0].to: no target named 'nowhere'",
        "routes[1].from[0]: no source named 'nosuch'",
        "routes[2].to: no target named 'elsewhere'",
    ]
    for text in expected:
        assert any(text in line for line in lines), (text, result.stderr)
    assert len(lines) == len(expected) + 1
    assert lines[-1] == f"statsig-relay: {len(expected)} config errors in {config}"
    assert "sk-very-secret-value" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_errors_that_only_follow_from_an_unset_variable_are_not_repeated() -> None:
    text = """
sources: {statsig: {type: statsig_webhook, signing_secret: "${UNSET_A}"}}
targets:
  amp: {type: amplitude, api_key: k, base_url: "${AMP_URL}"}
routes: [{name: a, from: statsig, to: amp}]
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(text, {})
    assert isinstance(caught.value, ConfigErrors)
    assert [str(e) for e in caught.value.errors] == [
        "sources.statsig.signing_secret: environment variable UNSET_A is not set",
        "targets.amp.base_url: environment variable AMP_URL is not set",
    ]


def test_a_default_is_expanded_only_when_it_is_used() -> None:
    text = """
sources: {statsig: {type: statsig_webhook}}
targets:
  c: {type: chronosphere, api_token: t, url: "${CHRONO_URL:-https://${TENANT}.chronosphere.io}"}
routes: [{name: a, from: statsig, to: c, filter: {categories: [config_change]}}]
"""
    config = parse_config(text, {"CHRONO_URL": "http://127.0.0.1:9"})
    assert config.targets["c"].url == "http://127.0.0.1:9"
    config = parse_config(text, {"TENANT": "acme"})
    assert config.targets["c"].url == "https://acme.chronosphere.io"


EMPTY_HEADER = """
spool: {path: "SPOOL"}
sources: {statsig: {type: statsig_webhook, signing_secret: s3cr3t-value}}
targets:
  hooks:
    {type: webhook, url: "http://127.0.0.1:9/h", headers: {Authorization: "Bearer ${HOOK_TOKEN}"}}
routes: [{name: a, from: statsig, to: hooks}]
"""


def test_an_empty_variable_in_a_header_is_a_warning_at_check(tmp_path: Path) -> None:
    result = check(write(tmp_path, EMPTY_HEADER), {"HOOK_TOKEN": ""})
    assert result.returncode == 0, result.stderr
    assert (
        "warning: targets.hooks.headers.Authorization: environment variable HOOK_TOKEN is set"
        " but empty" in result.stdout.replace("\n  ", "\nwarning: ")
    )
    clean = check(write(tmp_path, EMPTY_HEADER), {"HOOK_TOKEN": "tok-123456"})
    assert clean.returncode == 0 and "HOOK_TOKEN" not in clean.stdout
    assert "tok-123456" not in clean.stdout + clean.stderr


@pytest.mark.parametrize(
    ("where", "stanza"),
    [
        ("sources.statsig.signing_secret", 'signing_secret: "${CRED}"'),
        ("targets.out.server_secret", None),
        ("sources.sdk.api_keys[0]", None),
    ],
)
def test_an_empty_variable_in_a_credential_is_refused_naming_the_field(
    tmp_path: Path, where: str, stanza: str | None
) -> None:
    text = f"""
spool: {{path: "SPOOL"}}
sources:
  statsig: {{type: statsig_webhook, {stanza or "signing_secret: abcdefgh"}}}
  sdk: {{type: statsig_events, api_keys: ["{"${CRED}" if "sdk" in where else "client-abc"}"]}}
targets:
  out: {{type: statsig, server_secret: "{"${CRED}" if "out" in where else "secret-abc"}"}}
routes: [{{name: a, from: [statsig, sdk], to: out}}]
"""
    result = check(write(tmp_path, text), {"CRED": ""})
    assert result.returncode == 2
    assert f"{where}: environment variable CRED is set but empty" in result.stderr
    assert "1 config error in" in result.stderr


def test_a_config_file_that_is_not_utf8_is_a_config_error_not_a_traceback(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("# réglages\n".encode("latin-1") + (REPO / "config.example.yaml").read_bytes())
    result = subprocess.run(
        [sys.executable, "-m", "relay", "check", "-c", str(bad)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"cannot read config {bad}: not UTF-8 text (byte 0xe9 at offset 3)" in result.stderr


def test_a_secret_that_is_not_utf8_in_a_file_or_variable_is_an_error_naming_the_field(
    tmp_path: Path,
) -> None:
    """A raw random secret file (``head -c 32 /dev/urandom``) or a variable holding such bytes
    ended check and run in a traceback."""
    secret_file = tmp_path / "statsig_secret"
    secret_file.write_bytes(b"LEAK\xff\xfe-raw")
    config = tmp_path / "relay.yaml"
    for value, env, message in [
        (
            f"${{file:{secret_file}}}",
            {},
            f"sources.statsig.signing_secret: secret file {secret_file} is not UTF-8 text",
        ),
        (
            "${HOOK_SECRET}",
            {"HOOK_SECRET": b"LEAK\xff-raw"},
            "sources.statsig.signing_secret: environment variable HOOK_SECRET is not UTF-8 text",
        ),
    ]:
        config.write_text(
            f"""
sources:
  statsig: {{type: statsig_webhook, path: /w, signing_secret: "{value}"}}
targets:
  out: {{type: file, path: ./out.jsonl}}
routes:
  - {{name: all, from: statsig, to: out}}
"""
        )
        result = subprocess.run(
            [sys.executable, "-m", "relay", "check", "-c", str(config)],
            capture_output=True,
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **env},
            timeout=60,
        )
        stderr = result.stderr.decode(errors="replace")
        assert result.returncode == 2, stderr
        assert "Traceback" not in stderr
        assert message in stderr, stderr
        assert b"LEAK" not in result.stdout + result.stderr
