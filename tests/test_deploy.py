"""deploy/: the alert rules pass promtool, and a real Prometheus scraping a running relay finds
every metric the Grafana dashboard and the alert rules name (a renamed metric fails here)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import post
from tests.daemon import REPO_ROOT, DaemonProcess, free_port
from tests.fakes import FakeTargetFactory, poll_until

DEPLOY = REPO_ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "statsig-relay.json"
METRIC = re.compile(r"\brelay_[a-z_]+\b")


def tool(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is not installed: tests/run.sh installs Debian's prometheus"
    return found


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in doc["templating"]["list"] if v.get("definition")]
    return exprs


def names_used() -> set[str]:
    return set(METRIC.findall(" ".join(dashboard_exprs()))) | set(
        METRIC.findall(ALERTS.read_text())
    )


def test_promtool_checks_the_alert_rules() -> None:
    result = subprocess.run(
        [tool("promtool"), "check", "rules", str(ALERTS)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


def test_promtool_unit_tests_every_alert_on_recorded_series() -> None:
    tests = DEPLOY / "prometheus" / "alerts.test.yml"
    result = subprocess.run(
        [tool("promtool"), "test", "rules", str(tests)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = set(re.findall(r"- alert: (\w+)", ALERTS.read_text()))
    tested = set(re.findall(r"alertname: (\w+)", tests.read_text()))
    assert (
        alerts
        == tested
        == {
            "RelayDown",
            "RelayTargetFailing",
            "RelayQueueTooOld",
            "RelayDeadLettersGrowing",
            "RelaySpoolAlmostFull",
            "RelayRejectsSpiking",
            "RelayInternalErrors",
        }
    )


class Prometheus:
    """Prometheus run from the test (no service) on a free loopback port, scraping every 1 s."""

    def __init__(self, tmp_path: Path, admin_port: int) -> None:
        self.port = free_port()
        self.dir = tmp_path / "prometheus"
        self.dir.mkdir()
        config = self.dir / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: ['{ALERTS}']\n"
            "scrape_configs:\n"
            "  - job_name: statsig-relay\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{admin_port}']}}]\n"
        )
        self.log = (self.dir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    async def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        async with self.session.get(url, params=params) as response:
            body = await response.json()
        assert body["status"] == "success", body
        return body["data"]

    async def query(self, expr: str) -> list[Any]:
        return (await self.api("query", query=expr))["result"]

    async def alerts(self) -> list[dict[str, Any]]:
        return (await self.api("alerts"))["alerts"]

    def log_tail(self) -> str:
        return (self.dir / "prometheus.log").read_text(errors="replace")[-2000:]

    async def close(self) -> None:
        await self.session.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
async def relay_and_prometheus(
    tmp_path: Path, fake_targets: FakeTargetFactory
) -> AsyncIterator[tuple[DaemonProcess, Prometheus, int]]:
    """A relay daemon (a file target that delivers, a webhook target that answers 400, a
    dedup route) and a Prometheus scraping its admin listener."""
    # Takes events but refuses those marked bad: they are the events' fault, dead-lettered.
    refuses = await fake_targets(
        default=lambda request: 400 if "bad" in request.body.decode(errors="replace") else 200
    )
    port, admin = free_port(), free_port()
    config = f"""
server: {{listen: "127.0.0.1:{port}", admin_listen: "127.0.0.1:{admin}", shutdown_grace: 2s}}
spool: {{path: ./data/spool.db}}
sources: {{hook: {{type: statsig_webhook, max_events: 5}}}}
targets:
  archive: {{type: file, path: ./data/archive.jsonl, linger: 0s}}
  crm: {{type: webhook, url: "{refuses.url}/in", linger: 0s}}
routes:
  - {{name: everything, from: hook, to: archive, dedup: true}}
  - {{name: purchases, from: hook, to: crm, filter: {{events: [purchase]}}}}
"""
    async with DaemonProcess(config, tmp_path) as daemon:
        await daemon.start(f"http://127.0.0.1:{admin}/readyz")
        prometheus = Prometheus(tmp_path, admin)
        try:
            yield daemon, prometheus, port
        finally:
            await prometheus.close()


async def send(port: int, events: list[dict[str, Any]] | bytes) -> int:
    body = events if isinstance(events, bytes) else orjson.dumps(events)
    status, _, _ = await post(f"http://127.0.0.1:{port}/webhooks/statsig", body)
    return status


def event(name: str, uuid: str) -> dict[str, Any]:
    return {"eventName": name, "timeUUID": uuid, "timestamp": 1780000000000, "user": {}}


async def test_a_real_prometheus_finds_every_metric_the_dashboard_and_alerts_name(
    relay_and_prometheus: tuple[DaemonProcess, Prometheus, int],
) -> None:
    daemon, prometheus, port = relay_and_prometheus

    async def scraped_up() -> bool:
        try:
            found = await prometheus.query('up{job="statsig-relay"} == 1')
        except aiohttp.ClientError:
            return False
        return bool(found)

    await poll_until(scraped_up, timeout=30, message=prometheus.log_tail)

    # Traffic that makes every labelled series exist: delivered, filtered, dropped by dedup,
    # rejected, refused (max_events), dead-lettered; and a reload.
    assert await send(port, [event("page_view", "a1"), event("purchase", "p1")]) == 200
    assert await send(port, [event("purchase", "bad1")]) == 200  # crm refuses it
    assert await send(port, [event("page_view", "a1")]) == 200  # dedup drops it
    assert await send(port, b"{not json") == 400
    assert await send(port, [event("page_view", f"x{i}") for i in range(6)]) == 413
    os.kill(daemon.pid, signal.SIGHUP)  # type: ignore[arg-type]

    missing: set[str] = set()

    async def every_name_scraped() -> bool:
        missing.clear()
        for name in sorted(names_used() - {"up"}):
            if not await prometheus.query(f'count({{__name__="{name}"}})'):
                missing.add(name)
        return not missing

    await poll_until(every_name_scraped, timeout=30, message=lambda: f"not scraped: {missing}")
    assert len(names_used()) >= 20

    # Every dashboard query is valid PromQL and returns data.
    for expr in dashboard_exprs():
        if expr.startswith("label_values("):
            metric = expr[len("label_values(") :].split(",")[0]
            assert await prometheus.query(metric), expr
            continue
        promql = expr.replace("$instance", ".*").replace("$__rate_interval", "1m")
        await prometheus.query(promql)  # a syntax error fails in api()

    # The rules load and evaluate against the real series.
    async def rules_evaluated() -> bool:
        groups = (await prometheus.api("rules"))["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return len(rules) == 7 and all(r["health"] == "ok" for r in rules)

    await poll_until(rules_evaluated, timeout=15)

    # A new dead letter after Prometheus has seen the series fires RelayDeadLettersGrowing.
    assert await send(port, [event("purchase", "bad2")]) == 200

    async def dlq_alert() -> bool:
        return any(
            a["labels"]["alertname"] == "RelayDeadLettersGrowing"
            and a["labels"].get("target") == "crm"
            and a["state"] == "firing"
            for a in await prometheus.alerts()
        )

    await poll_until(dlq_alert, timeout=20)

    # The relay going away makes RelayDown pending (it fires after its `for: 1m`).
    daemon.kill()

    async def down_alert() -> bool:
        return any(
            a["labels"]["alertname"] == "RelayDown" and a["state"] == "pending"
            for a in await prometheus.alerts()
        )

    await poll_until(down_alert, timeout=20)
