"""Datadog, Slack and Grafana targets: Statsig config changes through the real pipeline, against
fakes that enforce each vendor's documented auth, fields and limits (tests/fake_change_targets)."""

from __future__ import annotations

import itertools
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from relay.app import Relay
from relay.config import parse_config
from relay.events import now_ms
from relay.schema import ConfigError
from relay.targets.changes import read_change, rfc3339
from relay.targets.datadog import DatadogConfig, DatadogTarget, change_event
from relay.targets.grafana import GrafanaConfig, annotation
from relay.targets.slack import SlackConfig, SlackTarget, message
from tests.conftest import RelayFactory, fixture_json, metric, post_export, signed_headers
from tests.daemon import DaemonProcess, free_port
from tests.fake_change_targets import FakeDatadog, FakeGrafana, FakeSlack
from tests.fakes import Answer, poll_until

DD_KEY = "dd-key-never-logged"
GRAFANA_TOKEN = "glsa_token_never_logged"
ONLY_CHANGES = ", filter: {categories: [config_change]}"
HOUR_MS = 3600 * 1000


def change(
    name: str,
    kind: str = "Gate",
    action: str = "updated",
    at_ms: int | None = None,
    user: dict[str, str] | None = None,
    **meta: Any,
) -> dict[str, Any]:
    return {
        "eventName": "statsig::config_change",
        "timestamp": now_ms() if at_ms is None else at_ms,
        "user": {"name": "Test User", "email": "testuser@email.com"} if user is None else user,
        "metadata": {"type": kind, "name": name, "action": action, **meta},
    }


def target_config(kind: str, url: str, extra: str = "") -> str:
    settings = {
        "datadog": f'api_key: "{DD_KEY}", base_url: "{url}"',
        "slack": f'url: "{FakeSlack().hook_url}", base_url: "{url}", linger: 0s',
        "grafana": f'url: "{url}", token: "{GRAFANA_TOKEN}"',
    }[kind]
    return f"""
sources:
  statsig: {{type: statsig_webhook}}
targets:
  out: {{type: {kind}, {settings}, retry_initial: 50ms, retry_max: 300ms{extra}}}
routes:
  - {{name: changes, from: statsig, to: out{ONLY_CHANGES}}}
"""


def dead_count(relay: Relay) -> float:
    return sum(
        s.value
        for m in relay.metrics.registry.collect()
        if m.name == "relay_events_dead_lettered"
        for s in m.samples
        if s.name.endswith("_total") and s.labels.get("target") == "out"
    )


async def settled(relay: Relay, delivered: int, dead: int = 0) -> None:
    def done() -> bool:
        ok = metric(relay, "relay_events_delivered_total", target="out")
        return ok >= delivered and dead_count(relay) >= dead

    await poll_until(
        done,
        message=lambda: (
            f"delivered {metric(relay, 'relay_events_delivered_total', target='out')}"
            f" dead {dead_count(relay)}"
        ),
    )


def parse_iso_ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


# -- routes must filter to config changes ----------------------------------------------------


@pytest.mark.parametrize("kind", ["datadog", "slack", "grafana"])
def test_a_route_that_does_not_filter_to_config_changes_is_refused_at_check(kind: str) -> None:
    text = target_config(kind, "http://127.0.0.1:9").replace(ONLY_CHANGES, "")
    with pytest.raises(ConfigError) as caught:
        parse_config(text, {})
    assert caught.value.path == "routes[0].filter"
    assert "'changes'" in caught.value.message and "'out'" in caught.value.message
    # exposures alongside config changes are refused too; the event name alone is enough
    mixed = text.replace("to: out", "to: out, filter: {categories: [config_change, custom]}")
    with pytest.raises(ConfigError, match="config changes only"):
        parse_config(mixed, {})
    globbed = text.replace("to: out", "to: out, filter: {events: ['statsig::*']}")
    with pytest.raises(ConfigError, match="config changes only"):
        parse_config(globbed, {})
    named = text.replace("to: out", "to: out, filter: {events: ['statsig::config_change']}")
    assert parse_config(named, {}).routes[0].to == "out"
    assert parse_config(target_config(kind, "http://127.0.0.1:9"), {}).routes[0].to == "out"


def test_chronosphere_still_takes_an_unfiltered_route() -> None:
    text = """
sources: {statsig: {type: statsig_webhook}}
targets: {c: {type: chronosphere, tenant: acme, api_token: t}}
routes: [{name: r, from: statsig, to: c}]
"""
    assert parse_config(text, {}).routes[0].to == "c"


def test_secrets_stay_out_of_describe_and_config_errors() -> None:
    hook = "https://hooks.slack.com/services/T0/B0/verysecret"
    assert "verysecret" not in SlackTarget("s", SlackConfig(url=hook)).describe()
    assert DD_KEY not in DatadogTarget("d", DatadogConfig(api_key=DD_KEY)).describe()
    assert DatadogTarget("d", DatadogConfig(api_key="k", site="datadoghq.eu")).url == (
        "https://event-management-intake.datadoghq.eu/api/v2/events"
    )
    assert SlackConfig(url=hook, base_url="http://127.0.0.1:1/").hook_url() == (
        "http://127.0.0.1:1/services/T0/B0/verysecret"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(f"targets: {{s: {{type: slack, url: {{a: '{hook}'}}}}}}\nroutes: []\n", {})
    assert "verysecret" not in str(caught.value)
    with pytest.raises(ConfigError, match="site"):
        DatadogConfig(api_key="k", site="datadog.example")
    with pytest.raises(ConfigError, match="batch_max_events"):
        SlackConfig(url=hook, batch_max_events=51)
    with pytest.raises(ConfigError, match="token"):
        GrafanaConfig(url="https://g.example", token=" ")


# -- Datadog ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "resource_type"),
    [("Gate", "feature_flag"), ("Experiment", "feature_flag"), ("DynamicConfig", "configuration")],
)
@pytest.mark.parametrize("action", ["created", "updated", "deleted"])
def test_datadog_maps_each_kind_and_action(kind: str, resource_type: str, action: str) -> None:
    now = now_ms()
    event = change("checkout", kind, action, at_ms=now, environment="production",
                   description="Rolled out to 50%")  # fmt: skip
    attrs = change_event(read_change(event), now)["data"]["attributes"]
    assert attrs["category"] == "change" and attrs["integration_id"] == "custom-events"
    assert attrs["title"] == f"Statsig {kind} checkout {action}"
    assert attrs["message"] == "Rolled out to 50%"
    assert attrs["timestamp"] == rfc3339(now)
    assert attrs["tags"] == [
        "source:statsig",
        f"statsig_type:{kind.lower()}",
        f"action:{action}",
        "env:production",
    ]
    custom = attrs["attributes"]
    assert custom["changed_resource"] == {"name": "checkout", "type": resource_type}
    assert custom["author"] == {"name": "testuser@email.com", "type": "user"}
    assert "original_timestamp" not in custom["change_metadata"]


def test_datadog_change_without_user_or_fields_is_still_valid() -> None:
    event = {"eventName": "statsig::config_change", "timestamp": "1709660062000", "metadata": {}}
    attrs = change_event(read_change(event), 1709660062000)["data"]["attributes"]
    assert "author" not in attrs["attributes"] and "message" not in attrs
    assert attrs["attributes"]["changed_resource"] == {"name": "(unnamed)", "type": "configuration"}
    assert attrs["title"] == "Statsig config (unnamed) changed"


async def test_datadog_fixture_changes_arrive_as_change_events(
    relay_factory: RelayFactory,
) -> None:
    changes = fixture_json("statsig_config_changes.json")
    for item in changes["data"]:
        item["timestamp"] = now_ms() - 60_000
    async with FakeDatadog(DD_KEY) as datadog:
        relay = await relay_factory(target_config("datadog", datadog.url), shutdown_grace="2s")
        assert await post_export(relay, changes) == 200
        await settled(relay, 2)
    assert datadog.failures == []
    resources = [
        b["data"]["attributes"]["attributes"]["changed_resource"] for b in datadog.accepted()
    ]
    assert resources == [
        {"name": "layout_v2", "type": "feature_flag"},
        {"name": "checkout_flow", "type": "feature_flag"},
    ]


async def test_datadog_change_older_than_18_hours_is_clamped_with_its_real_time_kept(
    relay_factory: RelayFactory,
) -> None:
    old = now_ms() - 30 * HOUR_MS
    async with FakeDatadog(DD_KEY) as datadog:
        relay = await relay_factory(target_config("datadog", datadog.url), shutdown_grace="2s")
        await post_export(relay, [change("old_gate", at_ms=old)])
        await settled(relay, 1)
    assert datadog.failures == []  # the fake refuses a timestamp older than 18 h
    (body,) = datadog.accepted()
    attrs = body["data"]["attributes"]
    assert attrs["attributes"]["change_metadata"]["original_timestamp"] == rfc3339(old)
    age = now_ms() - parse_iso_ms(attrs["timestamp"])
    assert 17 * HOUR_MS < age < 18 * HOUR_MS


async def test_datadog_refused_key_holds_the_change_then_delivers_it(
    relay_factory: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with FakeDatadog("the-right-key") as datadog:
        relay = await relay_factory(target_config("datadog", datadog.url), shutdown_grace="2s")
        await post_export(relay, [change("held_gate")])
        await poll_until(lambda: relay.targets["out"].health.failing)
        ready, detail = relay.readiness()
        assert ready and detail["targets"]["out"]["failing"]
        assert "HTTP 403" in detail["targets"]["out"]["reason"]
        assert datadog.refused >= 1 and datadog.accepted() == []
        datadog.key = DD_KEY  # the key is granted again
        await settled(relay, 1)
        assert await relay.spool.dead_rows("out") == []
        assert not relay.targets["out"].health.failing
    assert len(datadog.accepted()) == 1
    assert DD_KEY not in caplog.text


async def test_datadog_429_waits_x_ratelimit_reset(relay_factory: RelayFactory) -> None:
    async with FakeDatadog(DD_KEY) as datadog:
        datadog.script(datadog.rate_limited(reset=1))
        relay = await relay_factory(target_config("datadog", datadog.url), shutdown_grace="2s")
        await post_export(relay, [change("busy_gate")])
        await settled(relay, 1)
    first, second = datadog.requests
    assert (first.status, second.status) == (429, 202)
    assert second.received_at - first.received_at >= 0.95


async def test_datadog_400_dead_letters_that_change_alone(relay_factory: RelayFactory) -> None:
    async with FakeDatadog(DD_KEY) as datadog:
        datadog.script(202, Answer(400, json={"errors": ["invalid event"]}), 202)
        relay = await relay_factory(target_config("datadog", datadog.url), shutdown_grace="2s")
        await post_export(relay, [change(f"g{i}") for i in range(3)])
        await settled(relay, 2, dead=1)
        dead = await relay.spool.dead_rows("out")
    assert [orjson.loads(d.body)[0]["metadata"]["name"] for d in dead] == ["g1"]
    assert len(datadog.requests) == 3


# -- Slack -----------------------------------------------------------------------------------


def test_slack_message_says_what_changed_its_type_the_action_who_and_links() -> None:
    event = change("new_checkout", "Experiment", "created", url="https://console.statsig.com/x",
                   description="<b>bold</b> & more", environments=["staging", "prod"])  # fmt: skip
    body = message([read_change(event)])
    (block,) = body["blocks"]
    text = block["text"]["text"]
    assert block["type"] == "section" and block["text"]["type"] == "mrkdwn"
    assert text.startswith("<https://console.statsig.com/x|new_checkout> (Experiment) *created*")
    assert "by Test User (testuser@email.com)" in text
    assert "env: staging, prod" in text
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; more" in text  # mrkdwn control characters escaped
    assert body["text"] == (
        "Statsig config change: Experiment new_checkout created by testuser@email.com"
    )
    no_link = message([read_change(change("plain"))])["blocks"][0]["text"]["text"]
    assert no_link.startswith("*plain* (Gate) *updated*")


async def test_slack_burst_within_linger_shares_one_message(relay_factory: RelayFactory) -> None:
    async with FakeSlack() as slack:
        config = target_config("slack", slack.url).replace("linger: 0s", "linger: 300ms")
        relay = await relay_factory(config, shutdown_grace="2s")
        await post_export(relay, [change("a"), change("b", "DynamicConfig", "deleted")])
        await post_export(relay, [change("c", "Experiment", "created")])
        await settled(relay, 3)
    assert slack.failures == []
    (msg,) = slack.messages()
    assert [b["text"]["text"].split(" ")[0] for b in msg["blocks"]] == ["*a*", "*b*", "*c*"]
    assert msg["text"].startswith("3 Statsig config changes:")


async def test_slack_sends_about_one_message_a_second(relay_factory: RelayFactory) -> None:
    async with FakeSlack() as slack:
        config = target_config("slack", slack.url, ", batch_max_events: 1")
        relay = await relay_factory(config, shutdown_grace="2s")
        await post_export(relay, [change(f"r{i}") for i in range(3)])
        await settled(relay, 3)
    times = [r.received_at for r in slack.requests]
    assert len(times) == 3
    assert all(b - a >= 0.9 for a, b in itertools.pairwise(times)), times


async def test_slack_more_than_50_changes_never_exceed_50_blocks(
    relay_factory: RelayFactory,
) -> None:
    async with FakeSlack() as slack:
        config = target_config("slack", slack.url, ", batch_max_events: 50, linger: 300ms")
        relay = await relay_factory(config.replace("linger: 0s, ", ""), shutdown_grace="2s")
        await post_export(relay, [change(f"n{i}") for i in range(60)])
        await settled(relay, 60)
    assert slack.failures == []
    counts = [len(m["blocks"]) for m in slack.messages()]
    assert sum(counts) == 60 and max(counts) <= 50


async def test_slack_long_description_is_cut_within_3000_characters(
    relay_factory: RelayFactory,
) -> None:
    async with FakeSlack() as slack:
        relay = await relay_factory(target_config("slack", slack.url), shutdown_grace="2s")
        await post_export(relay, [change("x" * 2000, description="<" * 5000)])
        await settled(relay, 1)
    assert slack.failures == []
    assert len(slack.messages()[0]["blocks"][0]["text"]["text"]) <= 3000


@pytest.mark.parametrize(
    "gone", [(410, "channel_is_archived"), (404, "channel_not_found"), (403, "action_prohibited")]
)
async def test_slack_hook_gone_holds_the_change_instead_of_dead_lettering_it(
    relay_factory: RelayFactory, gone: tuple[int, str]
) -> None:
    async with FakeSlack() as slack:
        slack.gone = gone
        relay = await relay_factory(target_config("slack", slack.url), shutdown_grace="2s")
        await post_export(relay, [change("held")])
        await poll_until(lambda: relay.targets["out"].health.failing)
        assert gone[1] in relay.readiness()[1]["targets"]["out"]["reason"]
        assert relay.readiness()[0]
        await poll_until(lambda: slack.refused >= 2)  # probed again, not dropped
        assert dead_count(relay) == 0
        slack.gone = None  # the channel is back
        await settled(relay, 1)
        assert await relay.spool.dead_rows("out") == []
    assert len(slack.messages()) == 1


async def test_slack_invalid_blocks_isolates_the_bad_change(relay_factory: RelayFactory) -> None:
    def refuse_bad(rec: Any) -> Answer:
        if "*bad*" in rec.text:
            return FakeSlack.error(400, "invalid_blocks")
        return Answer(200, body=b"ok")

    async with FakeSlack() as slack:
        slack.default = refuse_bad
        config = target_config("slack", slack.url, ", messages_per_minute: 600")
        relay = await relay_factory(config, shutdown_grace="2s")
        await post_export(relay, [change("good1"), change("bad"), change("good2")])
        await settled(relay, 2, dead=1)
        dead = await relay.spool.dead_rows("out")
    assert [orjson.loads(d.body)[0]["metadata"]["name"] for d in dead] == ["bad"]
    assert "invalid_blocks" in dead[0].reason
    delivered = [b["text"]["text"] for m in slack.messages() for b in m["blocks"]]
    assert sorted(t.split(" ")[0] for t in delivered) == ["*good1*", "*good2*"]


async def test_slack_429_honours_retry_after(relay_factory: RelayFactory) -> None:
    async with FakeSlack() as slack:
        slack.script(slack.rate_limited(retry_after=1))
        relay = await relay_factory(target_config("slack", slack.url), shutdown_grace="2s")
        await post_export(relay, [change("slow")])
        await settled(relay, 1)
    first, second = slack.requests
    assert (first.status, second.status) == (429, 200)
    assert second.received_at - first.received_at >= 0.95


# -- Grafana ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["Gate", "Experiment", "DynamicConfig"])
@pytest.mark.parametrize("action", ["created", "updated", "deleted"])
def test_grafana_annotation_for_each_kind_and_action(kind: str, action: str) -> None:
    event = change("pricing", kind, action, at_ms=1709660061095, description="why")
    body = annotation(read_change(event), "dash-1")
    assert body == {
        "time": 1709660061095,
        "tags": ["statsig", kind.lower(), action],
        "text": f"Statsig {kind} pricing {action} by Test User (testuser@email.com)\nwhy",
        "dashboardUID": "dash-1",
    }
    assert "dashboardUID" not in annotation(read_change(event))


async def test_grafana_sends_one_annotation_per_change_in_order(
    relay_factory: RelayFactory,
) -> None:
    async with FakeGrafana(GRAFANA_TOKEN) as grafana:
        config = target_config(
            "grafana", grafana.url, ", dashboard_uid: statsig-relay, linger: 300ms"
        )
        relay = await relay_factory(config, shutdown_grace="2s")
        await post_export(relay, [change(f"a{i}", at_ms=1709660061000 + i) for i in range(3)])
        await settled(relay, 3)
    assert grafana.failures == []
    assert [(b["time"], b["dashboardUID"]) for b in grafana.accepted()] == [
        (1709660061000 + i, "statsig-relay") for i in range(3)
    ]


async def test_grafana_refused_annotation_is_dead_lettered_alone_and_others_not_resent(
    relay_factory: RelayFactory,
) -> None:
    async with FakeGrafana(GRAFANA_TOKEN) as grafana:
        grafana.script(grafana._added, Answer(400, json={"message": "Failed to save annotation"}))
        config = target_config("grafana", grafana.url, ", linger: 300ms")
        relay = await relay_factory(config, shutdown_grace="2s")
        await post_export(relay, [change("k0"), change("k1"), change("k2")])
        await settled(relay, 2, dead=1)
        dead = await relay.spool.dead_rows("out")
    assert [orjson.loads(d.body)[0]["metadata"]["name"] for d in dead] == ["k1"]
    texts = [r.json["text"].split(" ")[2] for r in grafana.requests]
    assert texts == ["k0", "k1", "k2"]  # once each: nothing taken is sent again


async def test_grafana_token_refused_mid_batch_holds_the_rest_then_delivers_once(
    relay_factory: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with FakeGrafana(GRAFANA_TOKEN) as grafana:

        def take_then_rotate(rec: Any) -> Answer:
            grafana.token = "rotated"  # the token is revoked right after the first annotation
            return grafana._added(rec)

        grafana.script(take_then_rotate)
        relay = await relay_factory(
            target_config("grafana", grafana.url, ", linger: 300ms"), shutdown_grace="2s"
        )
        await post_export(relay, [change("m0"), change("m1"), change("m2")])
        await poll_until(lambda: relay.targets["out"].health.failing)
        assert "HTTP 401" in relay.readiness()[1]["targets"]["out"]["reason"]
        grafana.token = GRAFANA_TOKEN
        await settled(relay, 3)
        assert await relay.spool.dead_rows("out") == []
    names = sorted(b["text"].split(" ")[2] for b in grafana.accepted())
    assert names == ["m0", "m1", "m2"]  # each exactly once
    assert GRAFANA_TOKEN not in caplog.text


# -- unicode ---------------------------------------------------------------------------------


async def test_unicode_names_and_people_arrive_intact_at_all_three(
    relay_factory: RelayFactory,
) -> None:
    person = {"name": "Zoë Ångström 山田", "email": "zoë@例え.jp"}
    event = change("café_🚀_flag", "Gate", "updated", user=person, description="Ünïcode ✓ 日本")
    async with (
        FakeDatadog(DD_KEY) as datadog,
        FakeSlack() as slack,
        FakeGrafana(GRAFANA_TOKEN) as grafana,
    ):
        body = f"""
sources:
  statsig: {{type: statsig_webhook}}
targets:
  dd: {{type: datadog, api_key: "{DD_KEY}", base_url: "{datadog.url}"}}
  sl: {{type: slack, url: "{slack.hook_url}", base_url: "{slack.url}", linger: 0s}}
  gr: {{type: grafana, url: "{grafana.url}", token: "{GRAFANA_TOKEN}"}}
routes:
  - {{name: dd, from: statsig, to: dd{ONLY_CHANGES}}}
  - {{name: sl, from: statsig, to: sl{ONLY_CHANGES}}}
  - {{name: gr, from: statsig, to: gr{ONLY_CHANGES}}}
"""
        relay = await relay_factory(body, shutdown_grace="2s")
        await post_export(relay, [event])
        for fake in (datadog, slack, grafana):
            await fake.wait_for(lambda f=fake: len(f.accepted()) == 1)
    assert datadog.failures == slack.failures == grafana.failures == []
    attrs = datadog.accepted()[0]["data"]["attributes"]
    assert attrs["attributes"]["changed_resource"]["name"] == "café_🚀_flag"
    assert attrs["attributes"]["author"]["name"] == "zoë@例え.jp"
    assert attrs["message"] == "Ünïcode ✓ 日本"
    text = slack.messages()[0]["blocks"][0]["text"]["text"]
    assert "*café_🚀_flag*" in text and "Zoë Ångström 山田 (zoë@例え.jp)" in text
    assert grafana.accepted()[0]["text"].startswith("Statsig Gate café_🚀_flag updated by Zoë")


# -- end to end, through the daemon process --------------------------------------------------


async def test_daemon_delivers_a_signed_statsig_export_to_all_three(tmp_path: Path) -> None:
    secret = "hook-secret-e2e"
    port, admin = free_port(), free_port()
    exports = fixture_json("statsig_export_batch.json")  # exposures and a custom event
    changes = [
        change("e2e_gate", "Gate", "created", url="https://console.statsig.com/gates/e2e_gate"),
        change("e2e_config", "DynamicConfig", "deleted", environment="production"),
    ]
    body = orjson.dumps([*exports, *changes])
    async with (
        FakeDatadog(DD_KEY) as datadog,
        FakeSlack() as slack,
        FakeGrafana(GRAFANA_TOKEN) as grafana,
    ):
        config = f"""
server: {{listen: "127.0.0.1:{port}", admin_listen: "127.0.0.1:{admin}", shutdown_grace: 5s}}
spool: {{backend: sqlite, path: ./data/spool.db}}
sources:
  statsig: {{type: statsig_webhook, signing_secret: "${{HOOK_SECRET}}"}}
targets:
  dd: {{type: datadog, api_key: "${{DD_API_KEY}}", base_url: "{datadog.url}"}}
  sl: {{type: slack, url: "${{SLACK_HOOK}}", base_url: "{slack.url}", linger: 500ms}}
  gr: {{type: grafana, url: "{grafana.url}", token: "${{GRAFANA_TOKEN}}"}}
routes:
  - {{name: dd, from: statsig, to: dd{ONLY_CHANGES}}}
  - {{name: sl, from: statsig, to: sl{ONLY_CHANGES}}}
  - {{name: gr, from: statsig, to: gr{ONLY_CHANGES}}}
"""
        env = {"HOOK_SECRET": secret, "DD_API_KEY": DD_KEY, "SLACK_HOOK": slack.hook_url,
               "GRAFANA_TOKEN": GRAFANA_TOKEN}  # fmt: skip
        async with DaemonProcess(config, tmp_path, env=env) as daemon:
            await daemon.start(f"http://127.0.0.1:{admin}/readyz")
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"http://127.0.0.1:{port}/webhooks/statsig",
                    data=body,
                    headers={"Content-Type": "application/json", **signed_headers(secret, body)},
                ) as resp,
            ):
                assert resp.status == 200, await resp.text()
            await datadog.wait_for(lambda: len(datadog.accepted()) == 2)
            await slack.wait_for(lambda: len(slack.accepted()) == 1)
            await grafana.wait_for(lambda: len(grafana.accepted()) == 2)
            assert await daemon.terminate() == 0
            log = daemon.log_text()
    assert datadog.failures == slack.failures == grafana.failures == []
    dd = sorted(
        (b["data"]["attributes"]["attributes"]["changed_resource"]["type"],
         b["data"]["attributes"]["tags"][2])
        for b in datadog.accepted()
    )  # fmt: skip
    assert dd == [("configuration", "action:deleted"), ("feature_flag", "action:created")]
    (msg,) = slack.messages()
    assert msg["blocks"][0]["text"]["text"].startswith(
        "<https://console.statsig.com/gates/e2e_gate|e2e_gate> (Gate) *created*"
    )
    assert sorted(tuple(b["tags"]) for b in grafana.accepted()) == [
        ("statsig", "dynamicconfig", "deleted"),
        ("statsig", "gate", "created"),
    ]
    for secret_text in (DD_KEY, GRAFANA_TOKEN, "hooksecret0001", secret):
        assert secret_text not in log
