"""Installable as documented: the examples pass `check` with the variables they list, a wheel
built from the source runs, and what the Dockerfile and compose file rely on is there (no
Docker engine on the test machine: the image itself is not built here)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import RelayFactory
from tests.daemon import REPO_ROOT, free_port

EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.yaml"))
ENV_LINE = re.compile(r"^#\s+([A-Z][A-Z0-9_]+(?:, [A-Z][A-Z0-9_]+)*)\s{2,}", re.M)


def listed_variables(path: Path) -> list[str]:
    """The variables an example's header lists (``#   NAME   what it is``)."""
    return [v for line in ENV_LINE.findall(path.read_text()) for v in line.split(", ")]


def relay_cli(
    *args: str, env: dict[str, str], cwd: Path = REPO_ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT), **env},
        timeout=60,
    )


def test_there_is_one_example_per_use_case() -> None:
    assert [p.name for p in EXAMPLES] == [
        "browser-first-party.yaml",
        "config-changes-to-chronosphere.yaml",
        "config-changes-to-datadog-slack-grafana.yaml",
        "segment-to-statsig.yaml",
        "statsig-sdk-proxy.yaml",
        "statsig-to-amplitude-and-mixpanel.yaml",
        "statsig-to-fivetran-and-heap.yaml",
        "statsig-to-segment.yaml",
        "two-replicas-redis.yaml",
    ]
    readme = (REPO_ROOT / "README.md").read_text()
    assert all(f"`examples/{p.name}`" in readme for p in EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_each_example_passes_check_with_the_variables_it_lists(example: Path) -> None:
    names = listed_variables(example)
    assert names, "the header lists the environment variables the example needs"
    values = {n: f"value-of-{n.lower()}" for n in names}
    values["REDIS_URL"] = "redis://:pw@127.0.0.1:6379/0"
    values["WEBHOOK_URL"] = "https://example.com/hook"
    values["CHRONOSPHERE_TENANT"] = "acme"
    values["SLACK_WEBHOOK_URL"] = "https://hooks.slack.com/services/T0/B0/x"
    values["GRAFANA_URL"] = "https://grafana.example.com"
    result = relay_cli("check", "-c", str(example), env=values)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stdout  # no unsigned source, no unfed target
    for name in names:  # nothing listed is unused, nothing needed is unlisted
        fewer = {k: v for k, v in values.items() if k != name}
        missing = relay_cli("check", "-c", str(example), env=fewer)
        assert missing.returncode == 2 and f"environment variable {name} is not set" in (
            missing.stderr
        ), name


def test_a_wheel_built_from_the_source_runs_without_the_source_tree(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO_ROOT / name, src / name)
    shutil.copytree(
        REPO_ROOT / "relay", src / "relay", ignore=shutil.ignore_patterns("__pycache__")
    )
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    [wheel] = (tmp_path / "dist").glob("statsig_relay-*-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "statsig-relay = relay.cli:main" in zf.read(entry_points).decode()
        metadata = zf.read(next(n for n in names if n.endswith("METADATA"))).decode()
    modules = {str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "relay").rglob("*.py")}
    assert modules <= set(names), modules - set(names)
    assert any(n.endswith("/LICENSE") for n in names) and "Apache-2.0" in metadata

    site = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
         str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    # Run from an empty directory with only the installed copy importable (deps from this venv).
    env = {**os.environ, "PYTHONPATH": str(site)}
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    shutil.copy(REPO_ROOT / "config.example.yaml", run_dir / "config.yaml")
    version = subprocess.run(
        [str(site / "bin" / "statsig-relay"), "--version"],
        capture_output=True, text=True, cwd=run_dir, env=env, timeout=60,
    )  # fmt: skip
    assert version.returncode == 0 and version.stdout.startswith("statsig-relay 0."), version
    check = subprocess.run(
        [str(site / "bin" / "statsig-relay"), "check"],  # RELAY_CONFIG default: config.yaml
        capture_output=True, text=True, cwd=run_dir, env=env, timeout=60,
    )  # fmt: skip
    assert check.returncode == 0 and "config config.yaml: ok" in check.stdout, check.stderr
    where = subprocess.run(
        [sys.executable, "-c", "import relay; print(relay.__file__)"],
        capture_output=True, text=True, cwd=run_dir, env=env, timeout=60,
    )  # fmt: skip
    assert where.stdout.startswith(str(site)), "the test ran the installed copy"


def test_docs_claim_no_package_index_entry() -> None:
    for path in ("README.md", "systemd/statsig-relay.service", "Dockerfile"):
        text = (REPO_ROOT / path).read_text()
        assert not re.search(r"pip3? install (-U )?['\"]?statsig-relay\b(?!\[)", text), path
        assert "pipx install statsig-relay" not in text, path


def dockerfile() -> str:
    return (REPO_ROOT / "Dockerfile").read_text()


def test_the_dockerfile_copies_files_that_exist_and_runs_as_a_user_with_a_volume() -> None:
    text = dockerfile()
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        *sources, _ = line.split()
        for source in sources:
            assert (REPO_ROOT / source).exists(), source
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert 'VOLUME ["/var/lib/statsig-relay"]' in text
    assert "STATE_DIRECTORY=/var/lib/statsig-relay" in text  # where config.example.yaml spools
    licence = (REPO_ROOT / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0" in licence


async def test_the_dockerfile_healthcheck_asks_healthz(relay_factory: RelayFactory) -> None:
    """The HEALTHCHECK command, run as is (port aside) against a relay and against nothing."""
    import asyncio

    [cmd] = re.findall(r"HEALTHCHECK .*?CMD (\[.*?\])\n", dockerfile(), re.S)
    argv = json.loads(cmd.replace("\\\n", ""))
    assert argv[0] == "python" and "/healthz" in argv[-1]
    relay = await relay_factory("sources: {}\ntargets: {}\nroutes: []\n")

    def health(port: int) -> int:
        code = argv[-1].replace(":9102/", f":{port}/")
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, timeout=30
        ).returncode

    assert await asyncio.to_thread(health, relay.admin_port or 0) == 0
    assert await asyncio.to_thread(health, free_port()) != 0


def test_compose_runs_two_replicas_on_redis_with_the_example_it_mounts() -> None:
    compose = yaml.safe_load((REPO_ROOT / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    relays = [s for name, s in services.items() if name.startswith("relay-")]
    assert len(relays) == 2 and "redis" in services
    assert "noeviction" in services["redis"]["command"]
    assert "--appendonly" in services["redis"]["command"]
    for relay in relays:
        assert (REPO_ROOT / "deploy" / relay["build"]["context"] / "Dockerfile").is_file()
        [mount] = relay["volumes"]
        source, target, _ = mount.split(":")
        mounted = (REPO_ROOT / "deploy" / source).resolve()
        assert mounted == REPO_ROOT / "examples" / "two-replicas-redis.yaml"
        assert relay["environment"]["RELAY_CONFIG"] == target
        assert set(listed_variables(mounted)) <= set(relay["environment"])
        assert "healthcheck" not in relay  # the image's HEALTHCHECK applies
