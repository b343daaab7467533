"""The real Statsig Python SDK (legacy server SDK, package ``statsig``) logs through the relay.

The SDK is pointed at the relay by ``StatsigOptions(api_for_log_event=".../statsig/v1")`` (it
appends ``log_event``), exactly as a user would. Its config download goes to a small fake of
Statsig's config API on 127.0.0.1, and its exception reports too, so nothing leaves the machine.
The relay routes the SDK's events (statsig_events source) to a statsig target whose downstream
is the fake log_event server, which checks the documented request shape and a different key.
The SDK is synchronous and threaded, so it runs in a worker thread while the relay's loop serves.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from statsig import StatsigEvent, StatsigOptions, StatsigUser
from statsig.statsig_error_boundary import _StatsigErrorBoundary
from statsig.statsig_server import StatsigServer

from tests.conftest import RelayFactory, metrics_text
from tests.fake_statsig import FakeStatsig
from tests.fakes import Answer, FakeTarget, RecordedRequest

SDK_KEY = "secret-test"  # what the SDK presents to the relay
DOWNSTREAM_KEY = "secret-downstream"  # what the relay presents to Statsig

# The least download_config_specs answer the SDK takes as a valid ruleset: one gate, no rules.
CONFIG_SPECS = {
    "time": 1_717_000_000_000,
    "has_updates": True,
    "feature_gates": [
        {
            "name": "new_checkout",
            "type": "feature_gate",
            "entity": "feature_gate",
            "salt": "salt-1",
            "enabled": True,
            "defaultValue": False,
            "idType": "userID",
            "rules": [],
        }
    ],
    "dynamic_configs": [],
    "layer_configs": [],
    "layers": {},
}


def config_api_answer(rec: RecordedRequest) -> Answer:
    """Statsig's config API as the SDK uses it: rulesets, ID lists, exception reports."""
    if "download_config_specs" in rec.path:
        return Answer(200, json=CONFIG_SPECS)
    return Answer(200, json={})


def relay_config(downstream: FakeStatsig) -> str:
    return f"""
sources:
  sdk: {{type: statsig_events, api_keys: ["{SDK_KEY}"]}}
targets:
  statsig: {{type: statsig, server_secret: "{DOWNSTREAM_KEY}", url: "{downstream.log_event_url}",
            linger: 0s, timeout: 5s}}
routes:
  - {{name: sdk-to-statsig, from: sdk, to: statsig,
     filter: {{exclude_categories: [statsig_internal]}}}}
"""


def run_sdk(relay_port: int, config_api: str) -> dict[str, Any]:
    """Initialise the SDK, check a gate, log one custom event, shut down (flushes)."""
    server = StatsigServer()
    options = StatsigOptions(
        api=f"{config_api}/v1",
        api_for_log_event=f"http://127.0.0.1:{relay_port}/statsig/v1",
        init_timeout=5,
        timeout=5,
        rulesets_sync_interval=3600,
        idlists_sync_interval=3600,
    )
    details = server.initialize(SDK_KEY, options)
    user = StatsigUser("u1", email="u1@example.com", custom_ids={"stableID": "s-1"})
    gate = server.check_gate(user, "new_checkout")
    server.log_event(
        StatsigEvent(
            user,
            "add_to_cart",
            value=3,
            metadata={"item": "book", "qty": 2, "gift": True},
        )
    )
    server.shutdown()  # flushes the event queue to log_event
    return {"source": str(details.source), "init_success": details.init_success, "gate": gate}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_the_statsig_python_sdk_logs_through_the_relay_to_statsig(
    relay_factory: RelayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        FakeStatsig(DOWNSTREAM_KEY) as downstream,
        FakeTarget(default=config_api_answer) as config_api,
    ):
        # The SDK reports its own exceptions to statsigapi.net: keep that on loopback too.
        monkeypatch.setattr(_StatsigErrorBoundary, "endpoint", f"{config_api.url}/v1/sdk_exception")
        relay = await relay_factory(relay_config(downstream))
        started_ms = time.time_ns() // 1_000_000
        outcome = await asyncio.wait_for(
            asyncio.to_thread(run_sdk, relay.public_port, config_api.url), timeout=60
        )
        assert outcome["init_success"] is True, outcome
        assert outcome["gate"] is False

        await downstream.wait_for(
            lambda: any(e["eventName"] == "add_to_cart" for e in downstream.delivered()),
            timeout=20,
        )
        assert downstream.failures == []
        assert downstream.refused_keys == 0
        sent = {e["eventName"]: e for e in downstream.delivered()}
        cart = sent["add_to_cart"]
        assert cart["user"]["userID"] == "u1"
        assert cart["user"]["customIDs"] == {"stableID": "s-1"}
        assert cart["value"] == 3
        assert cart["metadata"] == {"item": "book", "qty": "2", "gift": "true"}
        assert started_ms - 1000 <= cart["time"] <= time.time_ns() // 1_000_000
        exposure = sent["statsig::gate_exposure"]  # SDK exposures flow like any event
        assert exposure["metadata"]["gate"] == "new_checkout"
        assert exposure["metadata"]["gateValue"] == "false"
        assert all(not name.startswith("statsig::diagnostics") for name in sent)

        paths = {r.path for r in config_api.requests}
        assert any("download_config_specs" in p for p in paths), paths
        assert not any("sdk_exception" in p for p in paths), "the SDK reported an exception"
        metrics = await metrics_text(relay)
        assert 'relay_requests_total{code="202",source="sdk"}' in metrics
        assert SDK_KEY not in metrics and DOWNSTREAM_KEY not in metrics
