"""Dedup and first-exposure routes in front of every vendor target, unchanged.

The transforms run before a target sees an event, so each vendor target must get exactly what a
webhook would: the first exposure per (unit, gate/config/experiment) and each ``timeUUID`` once,
also when Statsig redelivers the same body. Each fake enforces its API (tests/fake_*.py)."""

from __future__ import annotations

from typing import Any

import pytest

from relay.events import now_ms
from tests.conftest import RelayFactory, metric, post_export, spool_empty
from tests.fake_amplitude import FakeAmplitude
from tests.fake_change_targets import FakeDatadog, FakeGrafana, FakeSlack
from tests.fake_mixpanel import FakeMixpanel
from tests.fake_segment import FakeSegment
from tests.fakes import FakeTarget, poll_until
from tests.test_transforms import exposure

SEG_KEY = "seg-transforms-key"
DD_KEY = "dd-transforms-key"
GRAFANA_TOKEN = "glsa_transforms_token"


def event_fake(kind: str) -> tuple[FakeTarget, str]:
    """The vendor's fake and the target stanza pointing at it (``{url}`` filled in later)."""
    if kind == "amplitude":
        amp = FakeAmplitude()
        return amp, f'type: amplitude, api_key: "{amp.api_key}", base_url: "{{url}}"'
    if kind == "mixpanel":
        mp = FakeMixpanel()
        return mp, f'type: mixpanel, project_token: "{mp.token}", base_url: "{{url}}"'
    return FakeSegment(SEG_KEY), f'type: segment, write_key: "{SEG_KEY}", base_url: "{{url}}"'


@pytest.mark.parametrize("kind", ["amplitude", "mixpanel", "segment"])
async def test_first_exposure_and_dedup_in_front_of_an_event_target(
    kind: str, relay_factory: RelayFactory
) -> None:
    body = [
        exposure("alice", "new_nav"),
        exposure("alice", "new_nav"),  # not the first: dropped
        exposure("bob", "new_nav"),
        exposure("alice", "checkout", "experiment"),
        exposure("alice", "checkout", "experiment"),  # not the first: dropped
        {"eventName": "purchase", "userID": "alice", "user": {"userID": "alice"},
         "timestamp": now_ms(), "timeUUID": f"purchase-{kind}"},
    ]  # fmt: skip
    fake, stanza = event_fake(kind)
    async with fake:
        relay = await relay_factory(f"""
sources:
  statsig: {{type: statsig_webhook}}
targets:
  out: {{{stanza.format(url=fake.url)}, linger: 0s}}
routes:
  - {{name: once, from: statsig, to: out, dedup: true, first_exposure_only: true}}
""")
        assert await post_export(relay, body) == 200
        assert await post_export(relay, body) == 200  # Statsig redelivers the same body
        await poll_until(lambda: spool_empty(relay), timeout=15)
        taken = list(fake.accepted)  # type: ignore[attr-defined]
        assert len(taken) == 4, taken  # alice/new_nav, bob/new_nav, alice/checkout, purchase
        assert fake.failures == []
        dropped = {
            reason: metric(relay, "relay_events_dropped_total", route="once", reason=reason)
            for reason in ("first_exposure", "dedup")
        }
        assert sum(dropped.values()) == 8, dropped  # 2 repeats, then all 6 again
        assert dropped["first_exposure"] >= 2 and dropped["dedup"] >= 1, dropped


def change(name: str, uuid: str) -> dict[str, Any]:
    return {
        "eventName": "statsig::config_change",
        "timestamp": now_ms(),
        "timeUUID": uuid,
        "user": {"name": "Test User", "email": "testuser@email.com"},
        "metadata": {"type": "Gate", "name": name, "action": "updated"},
    }


@pytest.mark.parametrize("kind", ["datadog", "slack", "grafana"])
async def test_dedup_in_front_of_a_config_change_target(
    kind: str, relay_factory: RelayFactory
) -> None:
    fake: FakeTarget
    if kind == "datadog":
        fake = FakeDatadog(DD_KEY)
    elif kind == "slack":
        fake = FakeSlack()
    else:
        fake = FakeGrafana(GRAFANA_TOKEN)
    async with fake:
        stanza = {
            "datadog": f'api_key: "{DD_KEY}", base_url: "{fake.url}"',
            "slack": f'url: "{FakeSlack().hook_url}", base_url: "{fake.url}", linger: 0s',
            "grafana": f'url: "{fake.url}", token: "{GRAFANA_TOKEN}"',
        }[kind]
        relay = await relay_factory(f"""
sources:
  statsig: {{type: statsig_webhook}}
targets:
  out: {{type: {kind}, {stanza}}}
routes:
  - {{name: once, from: statsig, to: out, dedup: true,
      filter: {{categories: [config_change]}}}}
""")
        body = [change("new_nav", f"c1-{kind}"), change("checkout", f"c2-{kind}")]
        assert await post_export(relay, body) == 200
        assert await post_export(relay, body) == 200  # redelivered: both dropped
        await poll_until(lambda: spool_empty(relay), timeout=15)
        assert metric(relay, "relay_events_delivered_total", target="out") == 2
        assert metric(relay, "relay_events_dropped_total", route="once", reason="dedup") == 2
        text = str(fake.accepted())  # type: ignore[attr-defined]
        assert text.count("new_nav") >= 1 and text.count("checkout") >= 1
        assert fake.failures == []
