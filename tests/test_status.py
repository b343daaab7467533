"""The status page on the admin listener: /status.json, /status in a real headless Chromium,
and `statsig-relay status` against a running relay."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from playwright.async_api import Browser

from relay.app import Relay
from relay.config import parse_config
from relay.status import CounterRing, Redactor
from relay.statuspage import REFRESH_SECONDS
from tests.browser import browser  # noqa: F401  (the fixture)
from tests.conftest import RelayFactory, admin_url, get, post_export, relay_yaml
from tests.daemon import REPO_ROOT
from tests.fakes import Answer, FakeTargetFactory, RecordedRequest, poll_until

TOKEN = "tok-9f8e7d6c5b4a"  # the webhook target's bearer token: never on the page
HOSTILE = "<script>alert('pwned')</script>"


def echo_credential(request: RecordedRequest) -> Answer:
    """A target that answers 500 and echoes our credential and some markup back."""
    auth = request.headers.get("Authorization", "")
    return Answer(500, body=f"denied {auth} {HOSTILE}".encode())


def export(n: int, tag: str) -> list[dict[str, Any]]:
    return [
        {"eventName": f"purchase_{tag}", "timeUUID": f"{tag}-{i}", "timestamp": 1780000000000}
        for i in range(n)
    ]


async def status_relay(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory, tmp_path: Path
) -> Relay:
    sick = await fake_targets(default=echo_credential)
    return await relay_factory(f"""
sources: {{hook: {{type: statsig_webhook, max_events: 10}}}}
targets:
  archive: {{type: file, path: "{tmp_path}/archive.jsonl", linger: 0s}}
  crm: {{type: webhook, url: "{sick.url}/in", linger: 0s, retries_in_process: 1,
         retry_initial: 30s, headers: {{Authorization: "Bearer {TOKEN}"}}}}
routes:
  - {{name: everything, from: hook, to: archive}}
  - {{name: purchases, from: hook, to: crm, filter: {{events: [purchase_a]}}}}
""")


async def status_json(relay: Relay) -> dict[str, Any]:
    code, text = await get(admin_url(relay, "/status.json"))
    assert code == 200
    return orjson.loads(text)


async def test_status_json_has_sources_routes_targets_and_spool_without_secrets(
    relay_factory: RelayFactory,
    fake_targets: FakeTargetFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    relay = await status_relay(relay_factory, fake_targets, tmp_path)
    assert await post_export(relay, export(3, "a")) == 200
    assert await post_export(relay, export(2, "b")) == 200
    assert await post_export(relay, b"{not json") == 400
    assert await post_export(relay, export(11, "z")) == 413

    async def crm_has_failed() -> bool:
        return (await status_json(relay))["targets"]["crm"]["last_error"] != ""

    await poll_until(crm_has_failed)
    doc = await status_json(relay)
    hook = doc["sources"]["hook"]
    assert (hook["requests_last_minute"], hook["events_last_minute"]) == (4, 5)
    assert hook["rejected"] == {"malformed": 1, "too_many_events": 1}
    assert hook["rejected_last_minute"] == 2
    assert hook["refused_requests"] == {"too_many_events": 1}
    assert doc["routes"]["purchases"] | {"dropped": {}} == {
        "from": ["hook"],
        "to": "crm",
        "routed": 3,
        "routed_last_minute": 3,
        "filtered": 2,
        "dropped": {},
    }
    crm = doc["targets"]["crm"]
    assert crm["queued"] == 3 and crm["oldest_age_s"] >= 0 and crm["backoff_s"] > 1
    assert crm["retrying_last_minute"] == 3 and crm["delivered_total"] == 0
    assert crm["last_error"] == f"HTTP 500: denied [redacted] {HOSTILE}"
    archive = doc["targets"]["archive"]
    assert archive["type"] == "file" and archive["failing"] is False
    assert doc["spool"]["backend"] == "sqlite" and doc["spool"]["bytes"] > 0
    assert doc["spool"]["limit_bytes"] == 1024**3 and doc["ready"] is True
    assert doc["config"]["last_reload"] is None and doc["uptime_s"] >= 0
    assert TOKEN not in orjson.dumps(doc).decode()
    _, readyz = await get(admin_url(relay, "/readyz"))
    assert TOKEN not in readyz
    assert "HTTP 500: denied [redacted]" in caplog.text and TOKEN not in caplog.text


def test_the_redactor_hides_every_configured_secret_and_nothing_else() -> None:
    config = parse_config(
        f"""
spool: {{backend: redis, url: "redis://:redis-pw-1234@127.0.0.1:6379/0"}}
sources:
  hook: {{type: statsig_webhook, signing_secrets: [whsig-one, whsig-two]}}
  web: {{type: segment, write_key: seg-write-key, dedup_window: 1h}}
targets:
  out: {{type: webhook, url: "https://h.example.com/x", headers: {{X-Token: {TOKEN}}},
         signing: {{scheme: hmac, secret: sign-secret-99}}}}
  st: {{type: statsig, server_secret: secret-abcdef}}
routes: [{{name: r, from: hook, to: out}}]
""",
        {},
    )
    redact = Redactor.of(config)
    text = (
        f"whsig-two whsig-one seg-write-key {TOKEN} secret-abcdef redis-pw-1234 sign-secret-99 "
        "h.example.com statsig_webhook"
    )
    assert redact(text) == "[redacted] " * 7 + "h.example.com statsig_webhook"


def test_last_minute_is_measured_against_the_oldest_snapshot_in_the_window() -> None:
    ring = CounterRing(span=60, interval=5)
    key = ("relay_events_received_total", (("source", "s"),))
    for t in range(0, 200, 5):
        ring.sample(1000.0 + t, {key: float(t)})
    at, values = ring.base(1000.0 + 195)
    assert (at, values[key]) == (1135.0, 135.0)  # 60 s back, not the first snapshot
    assert CounterRing().base(5.0) == (5.0, {})


async def test_status_page_in_a_real_browser_escapes_text_works_offline_and_refreshes(
    relay_factory: RelayFactory,
    fake_targets: FakeTargetFactory,
    tmp_path: Path,
    browser: Browser,  # noqa: F811  (the fixture)
) -> None:
    relay = await status_relay(relay_factory, fake_targets, tmp_path)
    assert await post_export(relay, export(4, "a")) == 200
    assert await post_export(relay, export(2, "b")) == 200

    async def crm_has_failed() -> bool:
        return (await status_json(relay))["targets"]["crm"]["last_error"] != ""

    await poll_until(crm_has_failed)
    page = await browser.new_page(viewport={"width": 1500, "height": 900})
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    url = admin_url(relay, "/status")
    response = await page.goto(url)
    assert response is not None and response.status == 200

    assert (await page.inner_text("#ready")) == "ready"
    sources = await page.inner_text("#sources")
    assert "hook" in sources and "statsig_webhook" in sources
    crm_row = await page.inner_text("#targets tbody tr:nth-child(2)")
    assert crm_row.startswith("crm\twebhook\t4\t")
    assert HOSTILE in crm_row  # shown as text ...
    assert await page.locator("script").count() == 0 and dialogs == []  # ... never run
    assert TOKEN not in await page.content() and "[redacted]" in crm_row
    assert "purchases" in await page.inner_text("#routes")
    assert "sqlite" in await page.inner_text("#spool")
    assert requested == [url]  # no CDN, no script, no font: one self-contained page

    shot = tmp_path / "status.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("RELAY_STATUS_SCREENSHOT"):  # refresh docs/status.png
        Path(os.environ["RELAY_STATUS_SCREENSHOT"]).write_bytes(shot.read_bytes())

    # The meta refresh reloads the page by itself: new events show up without a click.
    assert await post_export(relay, export(3, "c")) == 200

    async def refreshed() -> bool:
        text = await page.inner_text("#sources")
        return "\t9\t9\t" in text  # events in the last minute and in total

    await poll_until(refreshed, timeout=REFRESH_SECONDS * 3)
    assert requested.count(url) >= 2


async def test_status_command_prints_the_table_from_a_running_relay(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory, tmp_path: Path
) -> None:
    relay = await status_relay(relay_factory, fake_targets, tmp_path)
    assert await post_export(relay, export(2, "a")) == 200
    result = await _cli("status", "--url", admin_url(relay, ""))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("statsig-relay ") and "READY" in lines[0]
    assert any(line.split()[:3] == ["hook", "statsig_webhook", "1"] for line in lines)
    assert any(line.split()[:4] == ["purchases", "hook", "→", "crm"] for line in lines)
    assert any(line.startswith("spool (sqlite): ") for line in lines)
    assert TOKEN not in result.stdout

    # -c reads only server.admin_listen: an unset secret elsewhere does not matter.
    config = tmp_path / "relay.yaml"
    config.write_text(
        f"server: {{admin_listen: '127.0.0.1:{relay.admin_port}'}}\n"
        "sources: {hook: {type: statsig_webhook, signing_secret: '${NEVER_SET}'}}\n"
    )
    by_config = await _cli("status", "-c", str(config))
    assert by_config.returncode == 0, by_config.stderr
    assert by_config.stdout.splitlines()[2:7] == lines[2:7]  # the same relay's sources, routes

    gone = await _cli("status", "--url", "http://127.0.0.1:9")
    assert gone.returncode == 1 and "cannot read http://127.0.0.1:9/status.json" in gone.stderr


async def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a process, run in a thread: the relay it talks to lives in this loop."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=30,
    )


async def test_status_shows_the_config_file_and_the_last_reload_result(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory, tmp_path: Path
) -> None:
    relay = await status_relay(relay_factory, fake_targets, tmp_path)
    good = tmp_path / "relay.yaml"
    good.write_text(
        relay_yaml("sources: {hook: {type: statsig_webhook}}\ntargets: {}\nroutes: []\n", tmp_path)
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("targets: {}", "targets: {t: {type: file}}"))
    assert not await relay.reload(str(bad))
    doc = await status_json(relay)
    assert doc["config"]["path"] == ""  # still the config it started with
    assert doc["config"]["last_reload"]["result"] == "error"
    assert "targets.t.path" in doc["config"]["last_reload"]["error"]
    assert await relay.reload(str(good))
    doc = await status_json(relay)
    assert doc["config"]["path"] == str(good) and doc["config"]["last_reload"]["result"] == "ok"
    assert list(doc["targets"]) == [] and list(doc["routes"]) == []
    _, page = await get(admin_url(relay, "/status"))
    assert f"config {good}; last reload: ok at " in page


async def test_status_watch_refreshes_until_interrupted(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory, tmp_path: Path
) -> None:
    relay = await status_relay(relay_factory, fake_targets, tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "status", "--watch", "0.1", "--url", admin_url(relay, "")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    seen = bytearray()

    def read_screens() -> None:
        assert proc.stdout is not None
        while seen.count(b"\x1b[2J") < 3 and (chunk := proc.stdout.read1(4096)):
            seen.extend(chunk)

    try:
        await asyncio.wait_for(asyncio.to_thread(read_screens), timeout=30)
    finally:
        proc.send_signal(signal.SIGINT)
        # Keep reading while it exits: a full stdout pipe would block its last flush.
        await asyncio.to_thread(proc.communicate, None, 30)
        code = proc.returncode
    screens = seen.decode().split("\x1b[H\x1b[2J")[1:]
    assert len(screens) >= 3 and all("READY" in s and "archive" in s for s in screens[:3])
    assert code == 0
