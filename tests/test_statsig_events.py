"""The statsig_events source: Statsig's log_event, rgstr and event webhook shapes, via a Relay."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from relay.config import parse_config
from relay.schema import ConfigError
from relay.targets.base import Batch
from relay.targets.statsig import StatsigConfig, StatsigTarget
from tests.conftest import RelayFactory, post, public_url, scraped_metric
from tests.daemon import DaemonProcess, free_port
from tests.fakes import FakeTarget, FakeTargetFactory, poll_until

KEY = "secret-relay-in"


def config(fake: FakeTarget, source_extra: str = "", route_extra: str = "") -> str:
    """statsig_events → a webhook target, so the test sees the internal events as routed."""
    return f"""
sources:
  sdk: {{type: statsig_events, api_keys: ["{KEY}", "client-other"]{source_extra}}}
targets:
  out: {{type: webhook, url: "{fake.url}/in", linger: 0s, timeout: 2s}}
routes:
  - {{name: sdk-out, from: sdk, to: out{route_extra}}}
"""


def sdk_event(name: str = "add_to_cart", **extra: Any) -> dict[str, Any]:
    event = {
        "eventName": name,
        "user": {"userID": "u1", "customIDs": {"stableID": "s1"}},
        "value": 3,
        "metadata": {"sku": "A-1", "qty": "2"},
        "time": 1_717_000_000_123,
    }
    event.update(extra)
    return event


async def test_log_event_gzipped_with_the_sdk_headers_is_accepted_like_statsig(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake))
    body = {
        "events": [sdk_event(), sdk_event("page_view", value="home", time="2024-06-06T00:00:00Z")],
        "statsigMetadata": {"sdkType": "py-server", "sdkVersion": "0.72.1"},
    }
    status, payload, _ = await post(
        public_url(relay, "/statsig/v1/log_event"),
        gzip.compress(orjson.dumps(body)),
        {
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "STATSIG-API-KEY": KEY,  # any case
            "STATSIG-CLIENT-TIME": "1717000000999",
            "STATSIG-EVENT-COUNT": "2",
        },
    )
    assert (status, payload) == (202, {"success": True})
    await fake.wait_for(lambda: len(fake.events()) == 2)
    first, second = fake.events()
    assert first == {
        "eventName": "add_to_cart",
        "user": {"userID": "u1", "customIDs": {"stableID": "s1"}},
        "value": 3,
        "metadata": {"sku": "A-1", "qty": "2"},
        "timestamp": 1_717_000_000_123,
        "statsigMetadata": {"sdkType": "py-server", "sdkVersion": "0.72.1"},
    }
    assert second["timestamp"] == 1_717_632_000_000 and second["value"] == "home"


async def test_rgstr_takes_the_key_from_the_k_query_parameter_and_a_shared_user(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake))
    event = sdk_event()
    del event["user"]
    body = {"events": [event], "user": {"userID": "browser-user"}}
    status, payload, _ = await post(
        public_url(relay, "/statsig/v1/rgstr?k=client-other&st=javascript-client&ec=1"),
        orjson.dumps(body),
    )
    assert (status, payload) == (202, {"success": True})
    await fake.wait_for(lambda: len(fake.events()) == 1)
    assert fake.events()[0]["user"] == {"userID": "browser-user"}


async def test_event_webhook_takes_one_object_or_a_list_with_event_not_eventname(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake, source_extra=", path_prefix: /in/statsig/"))
    headers = {"Content-Type": "application/json", "statsig-api-key": KEY}
    one = {
        "user": {"userID": "u9"},
        "event": "signup",
        "value": "pro",
        "metadata": {"plan": "pro"},
        "timestamp": "1717000000000",
    }
    status, payload, _ = await post(
        public_url(relay, "/in/statsig/v1/webhooks/event_webhook"), orjson.dumps(one), headers
    )
    assert (status, payload) == (202, {"success": True})
    many = [{**one, "event": "login", "timestamp": 1_717_000_000}, {**one, "event": "logout"}]
    status, _, _ = await post(
        public_url(relay, "/in/statsig/v1/webhooks/event_webhook"), orjson.dumps(many), headers
    )
    assert status == 202
    await fake.wait_for(lambda: len(fake.events()) == 3)
    got = fake.events()
    assert [e["eventName"] for e in got] == ["signup", "login", "logout"]
    assert all("event" not in e for e in got)
    assert [e["timestamp"] for e in got] == [1_717_000_000_000] * 3  # ms, s and a string
    assert got[0]["metadata"] == {"plan": "pro"} and got[0]["user"] == {"userID": "u9"}


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing statsig-api-key"),
        ({"statsig-api-key": "secret-wrong"}, "not one of this source's api_keys"),
        ({"statsig-api-key": KEY + "x"}, "not one of this source's api_keys"),
    ],
)
async def test_missing_or_wrong_key_is_401_and_nothing_is_spooled(
    relay_factory: RelayFactory,
    fake_targets: FakeTargetFactory,
    headers: dict[str, str],
    reason: str,
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake))
    status, payload, _ = await post(
        public_url(relay, "/statsig/v1/log_event"),
        orjson.dumps({"events": [sdk_event()]}),
        {"Content-Type": "application/json", **headers},
    )
    assert status == 401
    assert reason in payload["error"]
    assert "secret-wrong" not in payload["error"]
    assert (await relay.spool.stats()).queued == {}
    assert await scraped_metric(
        relay, 'relay_events_rejected_total{reason="unauthorized",source="sdk"}'
    )


async def test_sdk_internal_events_are_accepted_and_left_to_the_route_filter(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(
        config(fake, route_extra=", filter: {exclude_categories: [statsig_internal]}")
    )
    diagnostics = {
        "eventName": "statsig::diagnostics",
        "metadata": {"context": "initialize", "markers": [{"key": "overall", "step": None}]},
        "time": 1_717_000_000_000,
    }
    exposure = sdk_event(
        "statsig::gate_exposure",
        metadata={"gate": "new_checkout", "gateValue": "true", "ruleID": "default"},
        secondaryExposures=[{"gate": "holdout", "gateValue": "false", "ruleID": "r"}],
        statsigMetadata={"samplingMode": "none"},
    )
    body = {"events": [diagnostics, exposure, sdk_event()]}
    status, payload, _ = await post(
        public_url(relay, "/statsig/v1/log_event"),
        orjson.dumps(body),
        {"statsig-api-key": KEY, "Content-Type": "application/json"},
    )
    assert (status, payload) == (202, {"success": True})
    await fake.wait_for(lambda: len(fake.events()) == 2)
    names = [e["eventName"] for e in fake.events()]
    assert names == ["statsig::gate_exposure", "add_to_cart"]
    gate = fake.events()[0]
    assert gate["secondaryExposures"] == exposure["secondaryExposures"]
    assert gate["statsigMetadata"] == {"samplingMode": "none"}
    assert await scraped_metric(relay, 'relay_events_filtered_total{route="sdk-out"}') == 1


async def test_one_broken_event_is_skipped_and_counted_the_rest_go_on(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake))
    body = {
        "events": [
            sdk_event("first"),
            {"value": 1, "time": 1_717_000_000_000},  # no eventName
            sdk_event("bad_time", time="yesterday"),
            sdk_event("bad_user", user="u1"),
            "not an object",
            sdk_event("last"),
        ]
    }
    status, payload, _ = await post(
        public_url(relay, "/statsig/v1/log_event"), orjson.dumps(body), {"statsig-api-key": KEY}
    )
    assert status == 202
    assert payload["success"] is True and payload["rejected"] == 4
    assert payload["errors"][0] == "event 1: missing eventName"
    await fake.wait_for(lambda: len(fake.events()) == 2)
    assert [e["eventName"] for e in fake.events()] == ["first", "last"]
    line = 'relay_events_rejected_total{reason="malformed_event",source="sdk"}'
    assert await scraped_metric(relay, line) == 4


async def test_a_request_with_nothing_usable_is_400_with_the_reasons(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake))
    headers = {"statsig-api-key": KEY}
    for body, words in [
        (b'{"events": [{"value": 1}]}', "missing eventName"),
        (b'{"event": "x"}', 'expected {"events": [...]}'),
        (b"{not json", "malformed JSON"),
    ]:
        status, payload, _ = await post(public_url(relay, "/statsig/v1/log_event"), body, headers)
        assert status == 400, body
        assert words in payload["error"]
    assert (await relay.spool.stats()).queued == {}


def test_config_requires_api_keys_unless_explicitly_open() -> None:
    base = "sources:\n  sdk: {type: statsig_events%s}\n"
    with pytest.raises(ConfigError) as err:
        parse_config(base % "", {})
    assert err.value.path == "sources.sdk.api_keys"
    assert "require_key: false" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config(base % ", path_prefix: statsig, api_keys: [k]", {})
    assert err.value.path == "sources.sdk.path_prefix"
    opened = parse_config(base % ", require_key: false, path_prefix: /", {})
    assert opened.sources["sdk"].path_prefix == ""


async def test_two_sdks_in_one_batch_to_statsig_each_keep_their_identity(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    """The SDK proxy: Statsig sees which SDK sent each event, not only the relay's identity."""
    fake = await fake_targets()
    relay = await relay_factory(f"""
sources:
  sdk: {{type: statsig_events, api_keys: ["{KEY}"]}}
targets:
  statsig: {{type: statsig, server_secret: secret-out, url: "{fake.url}/v1/log_event",
             linger: 0s}}
routes: [{{name: sdk-to-statsig, from: sdk, to: statsig}}]
""")
    senders = [
        ({"sdkType": "py-server", "sdkVersion": "0.72.1"}, [sdk_event("a"), sdk_event("b")]),
        ({"sdkType": "javascript-client", "sdkVersion": "3.1.0", "stableID": "s9"}, [
            sdk_event("c", statsigMetadata={"gate": "g1"})]),
    ]  # fmt: skip
    for meta, events in senders:
        status, _, _ = await post(
            public_url(relay, "/statsig/v1/log_event"),
            orjson.dumps({"events": events, "statsigMetadata": meta}),
            {"Content-Type": "application/json", "statsig-api-key": KEY},
        )
        assert status == 202
    await fake.wait_for(lambda: sum(len(r.json["events"]) for r in fake.requests) == 3)
    by_name = {}
    for request in fake.requests:  # one batch or two, as the deliverer claimed them
        assert request.headers["User-Agent"].startswith("statsig-relay/")
        assert request.json["statsigMetadata"]["sdkType"] == "statsig-relay"  # the batch's sender
        by_name.update({e["eventName"]: e["statsigMetadata"] for e in request.json["events"]})
    assert by_name["a"] == by_name["b"] == {"sdkType": "py-server", "sdkVersion": "0.72.1"}
    js = {"sdkType": "javascript-client", "sdkVersion": "3.1.0", "stableID": "s9", "gate": "g1"}
    assert by_name["c"] == js
    # And in one batch, as Statsig's log_event gets it: each event names its own SDK.
    target = StatsigTarget("t", StatsigConfig(server_secret="secret-x", gzip=False))
    events = [dict(sdk_event(n), timestamp=1, statsigMetadata=m) for n, m in [
        ("a", by_name["a"]), ("c", js)]]  # fmt: skip
    body, _ = target.encode(Batch.of_events(events))
    assert [e["statsigMetadata"] for e in orjson.loads(body)["events"]] == [by_name["a"], js]


DEEP = "<deep>"


async def test_a_request_level_user_or_statsig_metadata_no_target_can_carry_is_a_400_naming_it(
    tmp_path: Path,
) -> None:
    """The request's ``user`` and ``statsigMetadata`` go onto every event after each event was
    screened: nested past 200 levels, or holding a number beyond a double, they made the spool
    row unencodable, a 500 logged as a relay bug."""
    port, admin = free_port(), free_port()
    text = f"""
server: {{listen: "127.0.0.1:{port}", admin_listen: "127.0.0.1:{admin}"}}
spool: {{backend: sqlite, path: ./data/spool.db}}
sources:
  sdk: {{type: statsig_events, api_keys: ["{KEY}"]}}
targets:
  out: {{type: file, path: ./data/out.jsonl}}
routes:
  - {{name: all, from: sdk, to: out}}
"""
    deep = b'{"a":' * 300 + b"1" + b"}" * 300
    events = [{"eventName": "e", "user": {"userID": "u1"}}, {"eventName": "shared"}]
    cases = {
        "user": (
            {"events": events, "user": {"userID": "u2", "custom": DEEP}},
            deep,
            "user: nested deeper than 200 levels",
        ),
        "statsigMetadata": (
            {"events": events, "statsigMetadata": {"sdkType": "js", "x": DEEP}},
            deep,
            "statsigMetadata: nested deeper than 200 levels",
        ),
        "statsigMetadata number": (
            {"events": events, "statsigMetadata": {"stableID": "s", "n": DEEP}},
            b"1e400",
            "statsigMetadata.n: 1e400 is beyond the range of a double (about ±1.8e308)",
        ),
    }
    url = f"http://127.0.0.1:{port}/statsig/v1/rgstr"
    async with DaemonProcess(text, tmp_path) as daemon:
        await daemon.start(f"http://127.0.0.1:{admin}/readyz")
        async with aiohttp.ClientSession() as session:
            for case, (document, inner, reason) in cases.items():
                body = orjson.dumps(document).replace(f'"{DEEP}"'.encode(), inner)
                async with session.post(url, data=body, headers={"statsig-api-key": KEY}) as r:
                    answer = await r.json()
                    assert (r.status, answer) == (400, {"error": reason}), case
            good = orjson.dumps({"events": [{"eventName": "after", "user": {"userID": "u"}}]})
            async with session.post(url, data=good, headers={"statsig-api-key": KEY}) as r:
                assert r.status == 202
        out = tmp_path / "data" / "out.jsonl"
        await poll_until(lambda: out.exists() and '"after"' in out.read_text(), timeout=10)
        assert "internal error" not in daemon.log_text()
        assert await daemon.terminate() == 0
