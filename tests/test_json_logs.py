"""With ``log_format: json`` every line is one object with ts, level, logger, msg, and the
target, route, source, count, reason and status of the event in their own fields, so a log
store can filter by target; the text format keeps the sentence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from tests.conftest import fixture_bytes, signed_headers
from tests.daemon import DaemonProcess, free_port
from tests.fakes import FakeTargetFactory, poll_until

SECRET = "whsec-json-logs"


def config(fmt: str, tmp_path: Path, flaky: str, down: str, public: int, admin: int) -> str:
    return f"""
server: {{listen: "127.0.0.1:{public}", admin_listen: "127.0.0.1:{admin}", log_format: {fmt}}}
spool: {{path: "{tmp_path}/spool.db"}}
sources: {{statsig: {{type: statsig_webhook, signing_secret: {SECRET}}}}}
targets:
  flaky: {{type: webhook, url: "{flaky}/in", linger: 0s, max_attempts: 2, retry_initial: 50ms,
           retry_max: 50ms}}
  down: {{type: webhook, url: "{down}/in", linger: 0s, failing_after: 200ms,
          retry_initial: 50ms, retry_max: 100ms}}
routes:
  - {{name: to-flaky, from: statsig, to: flaky}}
  - {{name: to-down, from: statsig, to: down}}
"""


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line and not line.startswith("--- start")]
    return [orjson.loads(line) for line in lines]


async def post_export(public: int) -> None:
    import aiohttp

    body = fixture_bytes("statsig_export_batch.json")
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{public}/webhooks/statsig"
        async with session.post(url, data=body, headers=signed_headers(SECRET, body)) as r:
            assert r.status == 200


async def test_json_logs_carry_target_route_count_reason_status_fields(
    tmp_path: Path, fake_targets: FakeTargetFactory
) -> None:
    flaky = await fake_targets(default=503)
    down = await fake_targets(default=503)
    public, admin = free_port(), free_port()
    text = config("json", tmp_path, flaky.url, down.url, public, admin)
    async with DaemonProcess(text, tmp_path) as daemon:
        await daemon.start(f"http://127.0.0.1:{admin}/readyz")
        await post_export(public)

        def by_target(name: str) -> list[dict[str, Any]]:
            return [e for e in json_lines(daemon.log_text()) if e.get("target") == name]

        await poll_until(
            lambda: (
                any("dead-lettered" in e["msg"] for e in by_target("flaky"))
                and any(e["level"] == "error" for e in by_target("down"))
            ),
            timeout=20,
        )
        assert await daemon.terminate() == 0
        entries = json_lines(daemon.log_text())
    for entry in entries:
        assert {"ts", "level", "logger", "msg"} <= set(entry), entry
    [dead] = [e for e in by_target("flaky") if "dead-lettered" in e["msg"]]
    assert dead["route"] == "to-flaky" and dead["count"] == 5 and dead["status"] == 503
    assert "503" in dead["reason"] and dead["level"] == "warning"
    failing = [e for e in by_target("down") if e["level"] == "error"]
    assert failing and "503" in failing[0]["reason"] and "failing" in failing[0]["msg"]
    assert all(e["target"] == "down" for e in by_target("down"))  # the filter a user runs
    started = [e for e in entries if "listening on" in e["msg"]]
    assert started and "target" not in started[0]


async def test_the_text_format_keeps_the_sentence(
    tmp_path: Path, fake_targets: FakeTargetFactory
) -> None:
    flaky = await fake_targets(default=503)
    down = await fake_targets(default=503)
    public, admin = free_port(), free_port()
    text = config("text", tmp_path, flaky.url, down.url, public, admin)
    async with DaemonProcess(text, tmp_path) as daemon:
        await daemon.start(f"http://127.0.0.1:{admin}/readyz")
        await post_export(public)
        await poll_until(lambda: "target flaky: dead-lettered 5 events" in daemon.log_text(), 20)
        assert not daemon.log_text().splitlines()[-1].startswith("{")
