"""Statsig-internal events (``statsig::diagnostics``: the Node core SDK puts its config specs
URL, server secret in the query, in their metadata) go only to ``statsig`` targets unless a route
names them; every ``secret-…`` key bound for another target is redacted; ``check`` warns about a
route that forwards them elsewhere.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from relay.app import Relay
from tests.conftest import RelayFactory, metric, post_json
from tests.daemon import REPO_ROOT
from tests.fake_statsig import FakeStatsig
from tests.fakes import FakeTarget

SDK_KEY = "sdk-key-internal"
DOWNSTREAM_KEY = "secret-downstream"
LEAKED = "secret-abc123XYZ789"
SPECS_URL = f"https://api.statsigcdn.com/v2/download_config_specs/?k={LEAKED}"
NOW_MS = 1_717_628_400_000


def config(hook: str, statsig: str, hook_filter: str = "") -> str:
    flt = f", filter: {hook_filter}" if hook_filter else ""
    return f"""
sources:
  sdk: {{type: statsig_events, path_prefix: /statsig, api_keys: ["{SDK_KEY}"]}}
targets:
  hook: {{type: webhook, url: "{hook}/in", linger: 0s}}
  statsig: {{type: statsig, server_secret: "{DOWNSTREAM_KEY}", url: "{statsig}", linger: 0s}}
routes:
  - {{name: to-hook, from: sdk, to: hook{flt}}}
  - {{name: to-statsig, from: sdk, to: statsig}}
"""


def sdk_events() -> dict[str, Any]:
    """What @statsig/statsig-node-core logs: a diagnostics event holding the specs URL, and a
    custom event whose metadata happens to hold a secret too."""
    user = {"userID": "u1"}
    return {
        "events": [
            {
                "eventName": "statsig::diagnostics",
                "user": user,
                "time": NOW_MS,
                "metadata": {"context": "initialize", "url": SPECS_URL, "markers": "[]"},
            },
            {
                "eventName": "add_to_cart",
                "user": user,
                "time": NOW_MS,
                "metadata": {"sku": "A-1", "note": f"pasted {LEAKED} by mistake"},
            },
        ]
    }


async def log_events(relay: Relay) -> None:
    status, answer = await post_json(
        relay, "/statsig/v1/log_event", sdk_events(), {"statsig-api-key": SDK_KEY}
    )
    assert status == 202 and answer == {"success": True}, answer


def bodies(fake: FakeTarget) -> bytes:
    return b"".join(request.body for request in fake.requests)


async def test_internal_events_reach_only_statsig_unless_named(
    relay_factory: RelayFactory,
) -> None:
    async with FakeTarget() as hook, FakeStatsig(DOWNSTREAM_KEY, max_string_length=200) as statsig:
        relay = await relay_factory(config(hook.url, statsig.log_event_url))
        await log_events(relay)
        await statsig.wait_for(lambda: len(statsig.delivered()) == 2)
        await hook.wait_for(lambda: len(hook.events()) == 1)
        # Statsig gets its own diagnostics as the SDK sent them
        diagnostics = next(
            e for e in statsig.delivered() if e["eventName"] == "statsig::diagnostics"
        )
        assert diagnostics["metadata"]["url"] == SPECS_URL
        # the webhook gets the custom event, redacted, and never the diagnostics
        (custom,) = hook.events()
        assert custom["eventName"] == "add_to_cart"
        assert custom["metadata"]["note"] == "pasted secret-REDACTED by mistake"
        assert LEAKED.encode() not in bodies(hook)
        dropped = metric(
            relay, "relay_events_dropped_total", route="to-hook", reason="statsig_internal"
        )
        assert dropped == 1
        assert metric(relay, "relay_secrets_redacted_total", route="to-hook") == 1
        assert metric(relay, "relay_secrets_redacted_total", route="to-statsig") == 0


async def test_a_route_naming_internal_events_forwards_them_redacted(
    relay_factory: RelayFactory,
) -> None:
    for named in ("{categories: [statsig_internal]}", '{events: ["statsig::diagnostics"]}'):
        async with FakeTarget() as hook, FakeStatsig(DOWNSTREAM_KEY, max_string_length=200) as sg:
            relay = await relay_factory(config(hook.url, sg.log_event_url, named))
            await log_events(relay)
            await hook.wait_for(lambda hook=hook: len(hook.events()) == 1)
            (diagnostics,) = hook.events()
            assert diagnostics["eventName"] == "statsig::diagnostics", named
            assert diagnostics["metadata"]["url"] == SPECS_URL.replace(LEAKED, "secret-REDACTED")
            assert LEAKED.encode() not in bodies(hook)
            assert metric(relay, "relay_secrets_redacted_total", route="to-hook") == 1
            await relay.stop()


def check(config_text: str, tmp_path: Path) -> str:
    path = tmp_path / "relay.yaml"
    path.write_text(
        f"server: {{listen: '127.0.0.1:0', admin_listen: '127.0.0.1:0'}}\n"
        f"spool: {{path: '{tmp_path}/spool.db'}}\n" + config_text
    )
    result = subprocess.run(
        [sys.executable, "-m", "relay", "check", "-c", str(path)],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_check_warns_about_a_route_forwarding_internal_events(tmp_path: Path) -> None:
    hook, statsig = "http://127.0.0.1:9/hook", "http://127.0.0.1:9/v1/log_event"
    quiet = check(config(hook, statsig), tmp_path)
    assert "Statsig-internal" not in quiet, quiet
    for named, shown in (
        ("{categories: [statsig_internal]}", "every statsig_internal event"),
        ('{events: ["statsig::diagnostics", "add_to_cart"]}', "statsig::diagnostics"),
    ):
        out = check(config(hook, statsig, named), tmp_path)
        lines = out.splitlines()
        at = next(i for i, line in enumerate(lines) if line.startswith("  to-hook:"))
        assert lines[at + 1] == (
            f"    warning: forwards Statsig-internal events ({shown}) to a webhook target; SDK "
            "diagnostics hold the server's config URL, key included (secret-… keys are redacted)"
        ), out
        assert sum("Statsig-internal" in line for line in lines) == 1, out
        assert DOWNSTREAM_KEY not in out


def test_redaction_leaves_everything_else_byte_for_byte() -> None:
    from relay.redact import redact_secrets

    body = orjson.dumps([{"a": f"x {LEAKED}-y", "b": "secret-", "c": "secret-REDACTED"}])
    redacted, count = redact_secrets(body)
    assert count == 1
    assert redacted == body.replace(LEAKED.encode(), b"secret-REDACTED")
    assert redact_secrets(b'[{"a":"no keys here"}]') == (b'[{"a":"no keys here"}]', 0)
