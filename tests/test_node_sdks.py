"""The real Node SDKs (installed from npm into tests/js) log through the relay.

Each test runs a small script from tests/js/ with ``node``, pointed at the relay as a user
would point it: ``@segment/analytics-node`` by ``host`` and ``path``, ``statsig-node`` by
``api`` (its configs come from a loopback fake of Statsig's config API), and the Statsig
server core ``@statsig/statsig-node-core`` by ``logEventUrl`` and ``specsUrl``. The relay sends the
events on to the fake Statsig log_event server, which checks what Statsig would receive.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.conftest import RelayFactory
from tests.fake_statsig import FakeStatsig
from tests.fakes import Answer, FakeTarget, RecordedRequest
from tests.npm import JS, js_packages  # noqa: F401  (the fixture)
from tests.test_statsig_sdk import CONFIG_SPECS, config_api_answer

pytestmark = pytest.mark.usefixtures("js_packages")
SERVER_KEY = "secret-node-sdk"
WRITE_KEY = "wk-node-test"
DOWNSTREAM_KEY = "secret-downstream"

# A real browser or Node process on a loaded 2-core host can take longer than the fakes'
# default 10 s deadline to start, load the SDK and flush: wait up to this long.
BROWSER_DEADLINE = 30.0


def relay_config(downstream: FakeStatsig) -> str:
    return f"""
sources:
  sdk: {{type: statsig_events, api_keys: ["{SERVER_KEY}"]}}
  seg: {{type: segment, write_keys: ["{WRITE_KEY}"]}}
targets:
  statsig: {{type: statsig, server_secret: "{DOWNSTREAM_KEY}", url: "{downstream.log_event_url}",
            linger: 0s, timeout: 5s}}
routes:
  - {{name: node-to-statsig, from: [sdk, seg], to: statsig,
     filter: {{exclude_categories: [statsig_internal]}}}}
"""


async def run_node(script: str, *args: str, timeout: float = 30.0) -> str:
    """Run ``node tests/js/<script> args…``; its stdout, or fail with its stderr."""
    process = await asyncio.create_subprocess_exec(
        "node",
        script,
        *args,
        cwd=JS,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, f"node {script} exited {process.returncode}: {err.decode()}"
    return out.decode()


def by_name(downstream: FakeStatsig, name: str) -> list[dict[str, Any]]:
    return [e for e in downstream.delivered() if e["eventName"] == name]


async def test_segment_analytics_node_posts_its_batches_through_the_relay(
    relay_factory: RelayFactory,
) -> None:
    async with FakeStatsig(DOWNSTREAM_KEY) as downstream:
        relay = await relay_factory(relay_config(downstream))
        started = int(time.time() * 1000)
        await run_node("segment_node.js", f"http://127.0.0.1:{relay.public_port}", WRITE_KEY)
        await downstream.wait_for(
            lambda: by_name(downstream, "Order Completed") and by_name(downstream, "page")
        )
        (order,) = by_name(downstream, "Order Completed")
        (page,) = by_name(downstream, "page")
        assert order["user"] == {
            "userID": "u-seg-node",
            "ip": "203.0.113.20",
            "customIDs": {"stableID": "anon-node"},
        }
        assert order["time"] == 1_767_323_045_678  # the message's own timestamp
        assert order["value"] == 42.5
        assert order["metadata"] == {"sku": "C3"}
        assert page["metadata"] == {"name": "Pricing", "category": "Docs"}
        assert page["time"] >= started
        assert page["user"]["userID"] == "u-seg-node"
        assert by_name(downstream, "identify") == []  # identify is dropped by default
        assert downstream.failures == []


async def test_statsig_node_logs_through_the_relay(relay_factory: RelayFactory) -> None:
    async with (
        FakeStatsig(DOWNSTREAM_KEY) as downstream,
        FakeTarget(config_api_answer) as config_api,
    ):
        relay = await relay_factory(relay_config(downstream))
        started = int(time.time() * 1000)
        out = await run_node(
            "statsig_node.js",
            f"http://127.0.0.1:{relay.public_port}/statsig/v1",
            f"{config_api.url}/v1",
            SERVER_KEY,
        )
        assert '"gate":false' in out  # the fake's ruleset: enabled, no rules pass
        await downstream.wait_for(lambda: by_name(downstream, "purchase"), timeout=BROWSER_DEADLINE)
        (purchase,) = by_name(downstream, "purchase")
        assert purchase["user"]["userID"] == "u-node"
        assert purchase["user"]["email"] == "n@example.com"
        assert purchase["user"]["customIDs"] == {"stableID": "st-node"}
        assert purchase["value"] == 30
        assert purchase["metadata"] == {"sku": "B2", "qty": "3"}
        assert started <= purchase["time"] <= int(time.time() * 1000)
        assert any("download_config_specs" in r.path for r in config_api.requests)
        assert downstream.failures == []


def core_config_answer(rec: RecordedRequest) -> Answer:
    """The server core's config download (v2): entities keyed by name, not listed."""
    specs = {
        **CONFIG_SPECS,
        "feature_gates": {gate["name"]: gate for gate in CONFIG_SPECS["feature_gates"]},
        "dynamic_configs": {},
        "layer_configs": {},
    }
    return Answer(200, json=specs)


async def test_statsig_node_core_logs_through_the_relay(relay_factory: RelayFactory) -> None:
    """The Rust-based core posts log_event with ``Content-Encoding: zstd``."""
    async with (
        FakeStatsig(DOWNSTREAM_KEY) as downstream,
        FakeTarget(core_config_answer) as config_api,
    ):
        relay = await relay_factory(relay_config(downstream))
        started = int(time.time() * 1000)
        out = await run_node(
            "statsig_node_core.js",
            f"http://127.0.0.1:{relay.public_port}/statsig/v1/log_event",
            f"{config_api.url}/v2/download_config_specs",
            SERVER_KEY,
        )
        assert '"gate":false' in out
        assert [r.path for r in config_api.requests] == [
            f"/v2/download_config_specs/{SERVER_KEY}.json"
        ]
        await downstream.wait_for(lambda: by_name(downstream, "purchase"), timeout=BROWSER_DEADLINE)
        (purchase,) = by_name(downstream, "purchase")
        assert purchase["user"]["email"] == "c@example.com"
        assert purchase["user"]["userID"] == "u-core"
        assert purchase["user"]["customIDs"] == {"stableID": "st-core"}
        assert purchase["value"] == 30
        assert purchase["metadata"] == {"sku": "B2", "qty": "3"}
        assert started <= purchase["time"] <= int(time.time() * 1000)
        assert downstream.failures == []
