"""The statsig target: log_event wire shape, Statsig's limits, and how its answers are read."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest

from relay.app import Relay
from relay.config import parse_config
from relay.schema import ConfigError
from relay.targets.base import Batch
from relay.targets.statsig import StatsigConfig, StatsigTarget
from tests.conftest import (
    RelayFactory,
    admin_url,
    fixture_json,
    get,
    metrics_text,
    post_export,
    scraped_metric,
    spool_empty,
)
from tests.fake_statsig import FakeStatsig
from tests.fakes import Answer, poll_until

FAST = "linger: 0s, retry_initial: 50ms, retry_max: 200ms, timeout: 2s"
KEY = "secret-test"


def config(*fakes: tuple[str, FakeStatsig, str]) -> str:
    """A statsig_webhook source routed to one statsig target per (name, fake, key)."""
    targets = "".join(
        f'  {name}: {{type: statsig, server_secret: "{key}", url: "{fake.log_event_url}", '
        f"{FAST}}}\n"
        for name, fake, key in fakes
    )
    routes = "".join(
        f"  - {{name: to-{name}, from: exports, to: {name}}}\n" for name, _, _ in fakes
    )
    return f"sources:\n  exports: {{type: statsig_webhook}}\ntargets:\n{targets}routes:\n{routes}"


def events(n: int, name: str = "add_to_cart") -> list[dict[str, Any]]:
    return [
        {
            "eventName": name,
            "user": {"userID": f"u{i}"},
            "timestamp": 1_700_000_000_000 + i,
            "value": i,
            "metadata": {"i": str(i)},
            "timeUUID": f"t{i}",
        }
        for i in range(n)
    ]


async def test_202_delivers_exports_in_the_log_event_shape(relay_factory: RelayFactory) -> None:
    async with FakeStatsig(KEY) as statsig:
        relay = await relay_factory(config(("statsig", statsig, KEY)))
        exports = fixture_json("statsig_export_batch.json")
        assert await post_export(relay, exports) == 200
        await statsig.wait_for(lambda: len(statsig.delivered()) == len(exports))
        assert statsig.failures == []
        request = statsig.requests[0]
        assert request.status == 202
        assert request.headers["statsig-api-key"] == KEY
        assert request.headers["Content-Encoding"] == "gzip"
        assert request.headers["STATSIG-SDK-TYPE"] == "statsig-relay"
        assert request.json["statsigMetadata"]["sdkType"] == "statsig-relay"
        sent = {e["eventName"]: e for e in statsig.delivered()}
        custom = sent["my_custom_event"]
        assert custom == {
            "eventName": "my_custom_event",
            "user": {"userID": "a_user", "email": "a.user@email.com"},
            "time": 1655231253265,  # the export's string timestamp, as int ms
            "value": "a_custom_value",
            "metadata": {"key_a": "value_a", "key_b": "123"},
        }
        gate = sent["statsig::gate_exposure"]
        assert gate["metadata"] == {"gate": "test_gate", "gateValue": "true", "ruleID": "default"}
        assert gate["time"] == 1644520566968
        await poll_until(lambda: spool_empty(relay))
        assert await scraped_metric(relay, 'relay_events_delivered_total{target="statsig"}') == 5


async def test_metadata_becomes_strings_and_fields_fit_statsigs_limits(
    relay_factory: RelayFactory,
) -> None:
    async with FakeStatsig(KEY) as statsig:
        relay = await relay_factory(config(("statsig", statsig, KEY)))
        event = {
            "eventName": "n" * 100,
            "timestamp": "2024-06-06T00:00:00Z",
            "value": "v" * 80,
            "user": {
                "userID": "u1",
                "customIDs": {"stableID": "s1"},
                "privateAttributes": {"email": "private@example.com"},
                "custom": {"big": "x" * 5000, "plan": "pro"},
            },
            "metadata": {
                "count": 3,
                "price": 2.5,
                "whole": 4.0,
                "flag": True,
                "nothing": None,
                "nested": {"a": [1, "b"]},
                "huge": "h" * 5000,
            },
        }
        assert await post_export(relay, [event]) == 200
        await statsig.wait_for(lambda: len(statsig.delivered()) == 1)
        assert statsig.failures == []
        sent = statsig.delivered()[0]
        assert sent["eventName"] == "n" * 64
        assert sent["value"] == "v" * 64
        assert sent["time"] == 1717632000000
        assert sent["metadata"] == {
            "count": "3",
            "price": "2.5",
            "whole": "4",
            "flag": "true",
            "nested": '{"a":[1,"b"]}',
        }  # "huge" alone broke the 4096 limit: dropped, the rest kept
        assert sent["user"] == {
            "userID": "u1",
            "customIDs": {"stableID": "s1"},
            "custom": {"plan": "pro"},
        }
        for field in ("eventName", "value", "metadata", "user"):
            line = f'relay_target_fields_trimmed_total{{field="{field}",target="statsig"}}'
            assert await scraped_metric(relay, line) == 1, field


async def test_503_503_202_delivers_once(relay_factory: RelayFactory) -> None:
    async with FakeStatsig(KEY, 503, Answer(429, headers={"Retry-After": "0"})) as statsig:
        relay = await relay_factory(config(("statsig", statsig, KEY)))
        assert await post_export(relay, events(4)) == 200
        await statsig.wait_for(lambda: len(statsig.delivered()) == 4)
        await poll_until(lambda: spool_empty(relay))
        assert [r.status for r in statsig.requests] == [503, 429, 202]
        assert [e["time"] for e in statsig.delivered()] == [e["timestamp"] for e in events(4)]
        assert await relay.spool.dead_rows("statsig") == []


@pytest.mark.parametrize("refusal", ["wrong key: 401", "403"])
async def test_refused_key_holds_the_events_marks_the_target_failing_and_never_leaks_the_key(
    relay_factory: RelayFactory, caplog: pytest.LogCaptureFixture, refusal: str
) -> None:
    """The rule every target shares (relay/deliver.py): a refused key is the target's
    problem, not the events'. No bisecting, nothing dead-lettered; delivered once it works."""
    caplog.set_level(logging.DEBUG)
    configured = "secret-wrongKEY0123456789" if refusal.startswith("wrong") else KEY
    answers = [] if refusal.startswith("wrong") else [Answer(403, json={"error": configured})]
    async with FakeStatsig(KEY, *answers) as statsig:
        relay = await relay_factory(config(("project_a", statsig, configured)))
        assert await post_export(relay, events(10)) == 200
        failing = 'relay_target_failing{target="project_a"}'
        await poll_until(lambda: _scraped_is(relay, failing, 1))
        # Ready all the same: one target's key does not take the relay out of service.
        assert (await get(admin_url(relay, "/readyz")))[0] == 200
        _, body = await get(admin_url(relay, "/status.json"))
        state = orjson.loads(body)["targets"]["project_a"]
        assert state["state"] == "failing" and "secret-…" in state["state_reason"], state
        assert statsig.requests[0].status == (401 if refusal.startswith("wrong") else 403)
        assert "server secret key" in caplog.text
        leaked = [caplog.text, body, await metrics_text(relay)]

        statsig.key = configured  # the operator fixes the key (403: the next answer is 202)
        await statsig.wait_for(lambda: len(statsig.delivered()) == 10, timeout=15)
        await poll_until(lambda: spool_empty(relay))
        assert all(len(r.json["events"]) == 10 for r in statsig.requests)  # never bisected
        assert await relay.spool.dead_rows("project_a") == []
        await poll_until(lambda: _scraped_is(relay, failing, 0))
        assert (await get(admin_url(relay, "/readyz")))[0] == 200
        for text in leaked:
            assert configured not in text


async def _scraped_is(relay: Relay, line: str, value: float) -> bool:
    return await scraped_metric(relay, line) == value


async def test_400_for_one_event_dead_letters_only_that_event(
    relay_factory: RelayFactory,
) -> None:
    async with FakeStatsig(KEY) as statsig:
        statsig.default = statsig.reject_event("bad_event")
        relay = await relay_factory(config(("statsig", statsig, KEY)))
        batch = events(10)
        batch[6]["eventName"] = "bad_event"
        assert await post_export(relay, batch) == 200
        await poll_until(lambda: spool_empty(relay))
        assert statsig.failures == []
        assert sorted(e["value"] for e in statsig.delivered()) == [0, 1, 2, 3, 4, 5, 7, 8, 9]
        dead = await relay.spool.dead_rows("statsig")
        dead_events = [e for row in dead for e in orjson.loads(row.body)]
        assert [e["timeUUID"] for e in dead_events] == ["t6"]
        assert dead[0].reason.startswith("HTTP 400")
        assert await scraped_metric(relay, 'relay_target_failing{target="statsig"}') == 0


async def test_413_splits_and_delivers_everything(relay_factory: RelayFactory) -> None:
    async with FakeStatsig(KEY) as statsig:
        statsig.default = statsig.too_large_over(3)
        relay = await relay_factory(config(("statsig", statsig, KEY)))
        assert await post_export(relay, events(10)) == 200
        await poll_until(lambda: spool_empty(relay))
        assert sorted(e["value"] for e in statsig.delivered()) == list(range(10))
        assert 413 in [r.status for r in statsig.requests]
        assert await relay.spool.dead_rows("statsig") == []


async def test_two_projects_each_get_their_own_key(relay_factory: RelayFactory) -> None:
    async with FakeStatsig("secret-project-a") as a, FakeStatsig("secret-project-b") as b:
        relay = await relay_factory(
            config(("project_a", a, "secret-project-a"), ("project_b", b, "secret-project-b"))
        )
        assert await post_export(relay, events(3)) == 200
        await a.wait_for(lambda: len(a.delivered()) == 3)
        await b.wait_for(lambda: len(b.delivered()) == 3)
        assert {r.headers["statsig-api-key"] for r in a.requests} == {"secret-project-a"}
        assert {r.headers["statsig-api-key"] for r in b.requests} == {"secret-project-b"}
        assert a.refused_keys == b.refused_keys == 0
        assert a.failures == b.failures == []


async def test_large_batches_are_capped_at_1000_events_per_request(
    relay_factory: RelayFactory,
) -> None:
    async with FakeStatsig(KEY) as statsig:
        relay = await relay_factory(config(("statsig", statsig, KEY)))
        assert await post_export(relay, events(1500)) == 200
        await statsig.wait_for(lambda: len(statsig.delivered()) == 1500)
        assert statsig.failures == []
        assert max(len(r.events()) for r in statsig.requests) <= 1000


async def test_encoding_without_gzip_and_an_event_without_user() -> None:
    target = StatsigTarget("t", StatsigConfig(server_secret=KEY, gzip=False))
    body, trimmed = target.encode(
        Batch.of_events(
            [
                {
                    "eventName": "statsig::diagnostics",
                    "timestamp": 1_700_000_000_000,
                    "userID": "top",
                    "metadata": {"markers": [{"k": 1}]},
                }
            ]
        )
    )
    document = orjson.loads(body)
    assert document["events"] == [
        {
            "eventName": "statsig::diagnostics",
            "user": {"userID": "top"},
            "time": 1_700_000_000_000,
            "metadata": {"markers": '[{"k":1}]'},
        }
    ]
    assert trimmed.items() == []


def build(target: str) -> StatsigConfig:
    text = f"targets:\n  project_a: {target}\nroutes: []\n"
    config = parse_config(text, {})
    result = config.targets["project_a"]
    assert isinstance(result, StatsigConfig)
    return result


@pytest.mark.parametrize(
    ("target", "path", "words"),
    [
        ("{type: statsig}", "targets.project_a.server_secret", "required key is missing"),
        ('{type: statsig, server_secret: ""}', "targets.project_a.server_secret", "secret-…"),
        (
            "{type: statsig, server_secret: console-ABCDEF123}",
            "targets.project_a.server_secret",
            "is a console API key",
        ),
        (
            "{type: statsig, server_secret: secret-x, batch_max_events: 1001}",
            "targets.project_a.batch_max_events",
            "at most 1000",
        ),
        (
            "{type: statsig, server_secret: secret-x, batch_max_bytes: 20MB}",
            "targets.project_a.batch_max_bytes",
            "10 MB",
        ),
    ],
)
def test_config_errors_name_the_field_and_never_echo_the_key(
    target: str, path: str, words: str
) -> None:
    with pytest.raises(ConfigError) as err:
        build(target)
    assert err.value.path == path
    assert words in str(err.value)
    assert "ABCDEF123" not in str(err.value)


def test_a_client_key_is_accepted_with_a_warning_that_does_not_echo_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = build("{type: statsig, server_secret: client-XYZ987}")
    assert "XYZ987" not in repr(config)
    with caplog.at_level(logging.WARNING):
        target = StatsigTarget("project_a", config)
    assert "client SDK key" in caplog.text and "secret-…" in caplog.text
    assert "XYZ987" not in caplog.text
    assert "XYZ987" not in target.describe()
    assert build("{type: statsig, server_secret: secret-ok}").batch_max_events == 1000
