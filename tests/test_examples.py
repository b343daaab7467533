"""Every example runs with environment variables alone: `check` passes, every endpoint can be
pointed elsewhere (here: local fakes on 127.0.0.1), and the daemon started from it delivers to
each of its targets, each request naming the relay in its User-Agent."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay import __version__
from relay.app import build_targets
from relay.config import load_config
from tests.conftest import fixture_bytes, signed_headers
from tests.daemon import DaemonProcess, free_port
from tests.fakes import FakeTarget, FakeTargetFactory

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
WEBHOOK_SECRET = "whsec-example-test"
SERVER_SECRET = "secret-example-test"
CLIENT_KEY = "client-example-test"
WRITE_KEY = "segment-write-key-test"

# Where each endpoint variable points: one fake, a path per target, so a request says whose.
ENDPOINTS = {
    "STATSIG_LOG_EVENT_URL": "/statsig/v1/log_event",
    "HEAP_URL": "/heap",
    "FIVETRAN_URL": "/fivetran",
    "AMPLITUDE_URL": "/amplitude",
    "MIXPANEL_URL": "/mixpanel",
    "SEGMENT_URL": "/segment",
    "DATADOG_URL": "/datadog",
    "SLACK_WEBHOOK_URL": "/slack/T0/B0/x",
    "GRAFANA_URL": "/grafana",
    "CHRONOSPHERE_URL": "/chronosphere",
    "WEBHOOK_URL": "/webhook",
}
# The prefix each target type's requests arrive under.
PREFIX = {
    "statsig": "/statsig/",
    "heap": "/heap/",
    "fivetran": "/fivetran/",
    "amplitude": "/amplitude/",
    "mixpanel": "/mixpanel/",
    "segment": "/segment/",
    "datadog": "/datadog/",
    "slack": "/slack/",
    "grafana": "/grafana/",
    "chronosphere": "/chronosphere/",
    "webhook": "/webhook",
}


def example_env(fake_url: str, tmp_path: Path, redis_url: str = "") -> dict[str, str]:
    env = {name: fake_url + path for name, path in ENDPOINTS.items()}
    env.update(
        STATSIG_WEBHOOK_SECRET=WEBHOOK_SECRET,
        STATSIG_SERVER_SECRET=SERVER_SECRET,
        STATSIG_CLIENT_KEY=CLIENT_KEY,
        SEGMENT_WRITE_KEY=WRITE_KEY,
        FIVETRAN_HOOK="hook123",
        FIVETRAN_HMAC_SECRET="fivetran-hmac",
        HEAP_APP_ID="12345",
        AMPLITUDE_API_KEY="amp-key",
        MIXPANEL_PROJECT_TOKEN="mp-token",
        DATADOG_API_KEY="dd-key",
        GRAFANA_TOKEN="glsa_token",
        CHRONOSPHERE_API_TOKEN="chrono-token",
        CHRONOSPHERE_TENANT="unused",
        HOOK_TOKEN="hook-token",
        STATE_DIRECTORY=str(tmp_path),
        RELAY_LISTEN=f"127.0.0.1:{free_port()}",
        RELAY_ADMIN_LISTEN=f"127.0.0.1:{free_port()}",
    )
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


def urls_of(obj: Any) -> list[str]:
    """Every http(s) URL a built target holds (its config's and the ones it derived)."""
    values = list(vars(obj).values()) + list(vars(obj.config).values())
    return [v for v in values if isinstance(v, str) and v.startswith(("http://", "https://"))]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_passes_check_with_environment_variables_alone(
    example: Path, tmp_path: Path
) -> None:
    fake_url = "http://127.0.0.1:9"
    env = example_env(fake_url, tmp_path, "redis://127.0.0.1:9/0")
    result = subprocess.run(
        [sys.executable, "-m", "relay", "check", "-c", str(example)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **env},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "warning: targets" not in result.stdout


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_every_endpoint_of_every_example_follows_its_variable(
    example: Path, tmp_path: Path
) -> None:
    fake_url = "http://127.0.0.1:9"
    config = load_config(example, example_env(fake_url, tmp_path, "redis://127.0.0.1:9/0"))
    for name, target in build_targets(config).items():
        urls = urls_of(target)
        assert urls, f"{example.name}: target {name} has no URL"
        for url in urls:
            assert url.startswith(fake_url + "/"), f"{example.name}: {name} still goes to {url}"


async def requests_per_source(env: dict[str, str], example: Path) -> None:
    """What each kind of source in the example is sent: a signed export and config changes,
    an SDK log_event, a Segment batch."""
    base = f"http://{env['RELAY_LISTEN']}"
    config = load_config(example, env)
    kinds = {source.type for source in config.sources.values()}
    text = example.read_text()
    async with aiohttp.ClientSession() as session:
        posts: list[tuple[str, bytes, dict[str, str]]] = []
        if "statsig_webhook" in kinds:
            path = "/webhooks/statsig"
            for name in ("statsig_export_batch.json", "statsig_config_changes.json"):
                body = fixture_bytes(name)
                posts.append((path, body, signed_headers(WEBHOOK_SECRET, body)))
        if "statsig_events" in kinds:
            body = b'{"events": [{"eventName": "add_to_cart", "user": {"userID": "u1"}}]}'
            key = CLIENT_KEY if "STATSIG_CLIENT_KEY" in text else SERVER_SECRET
            headers = {"Content-Type": "application/json", "statsig-api-key": key}
            posts.append(("/statsig/v1/log_event", body, headers))
        if "segment" in kinds:
            auth = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
            headers = {"Content-Type": "application/json", "Authorization": f"Basic {auth}"}
            posts.append(("/segment/v1/batch", fixture_bytes("segment_batch.json"), headers))
        assert posts, f"{example.name}: no source this test knows how to feed"
        for path, body, headers in posts:
            async with session.post(base + path, data=body, headers=headers) as response:
                assert response.status < 300, (path, response.status, await response.text())


async def run_example(example: Path, tmp_path: Path, fake: FakeTarget, redis_url: str) -> None:
    env = example_env(fake.url, tmp_path, redis_url)
    kinds = {t.type for t in load_config(example, env).targets.values()}
    async with DaemonProcess(example.read_text(), tmp_path, env=env) as daemon:
        await daemon.start(f"http://{env['RELAY_ADMIN_LISTEN']}/readyz")
        await requests_per_source(env, example)

        def reached() -> set[str]:
            return {k for k in kinds if any(r.path.startswith(PREFIX[k]) for r in fake.requests)}

        await fake.wait_for(lambda: reached() == kinds, timeout=20)
        agents = {r.headers.get("User-Agent") for r in fake.requests}
        assert agents == {f"statsig-relay/{__version__}"}, agents
        assert await daemon.terminate() == 0


@pytest.mark.parametrize(
    "example", [e for e in EXAMPLES if "redis" not in e.name], ids=lambda p: p.stem
)
async def test_every_example_delivers_to_local_fakes_with_environment_variables_alone(
    example: Path, tmp_path: Path, fake_targets: FakeTargetFactory
) -> None:
    await run_example(example, tmp_path, await fake_targets(), "")


async def test_the_redis_example_delivers_to_local_fakes(
    tmp_path: Path, fake_targets: FakeTargetFactory
) -> None:
    from tests.test_redis_faults import RedisServer

    workdir = tmp_path / "redis"
    workdir.mkdir()
    redis = RedisServer(workdir)
    await asyncio.to_thread(redis.start)
    try:
        example = REPO / "examples" / "two-replicas-redis.yaml"
        await run_example(example, tmp_path, await fake_targets(), redis.url)
    finally:
        redis.stop()
