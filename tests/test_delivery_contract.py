"""The delivery contract (relay/targets/base.py, relay/deliver.py, relay/health.py).

* A row that cannot be read whole is read event by event: only the unreadable event dies.
* A target that names its bad events gets exactly those dead-lettered, without bisection.
* A target that rejects everything is not hammered: bounded requests, marked failing, its
  events held (nothing dead-lettered) and delivered once it takes events again.
* A target that cannot be reached turns degraded, then failing after ``failing_after``, with one
  log line per change of state; /readyz stays 200 throughout.
* ``delivered_on``, ``retry_on`` and ``fail_on`` override how a status is read.
"""

from __future__ import annotations

import asyncio
import logging
import math
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import pytest

from relay.app import Relay
from relay.events import now_ms
from relay.spool.records import NewRow
from relay.targets import TARGETS
from relay.targets.base import Batch, Outcome, Target, TargetConfig, Verdict, json_headers
from tests.conftest import (
    RelayFactory,
    admin_url,
    dead_count,
    get,
    metric,
    post_export,
    spool_empty,
)
from tests.daemon import free_port
from tests.fake_statsig import FakeStatsig
from tests.fakes import Answer, FakeTarget, FakeTargetFactory, RecordedRequest, poll_until

FAST = "linger: 0s, retry_initial: 50ms, retry_max: 300ms, timeout: 2s"
SECRET = "whsec-contract"
KEY = "secret-contract-key"
HUGE = int("1" + "0" * 400)  # no float holds it: the relay cannot read it back as a number


def events(n: int, prefix: str = "e") -> list[dict[str, Any]]:
    return [
        {
            "eventName": "custom",
            "timeUUID": f"{prefix}{i}",
            "value": f"{prefix}{i}",
            "timestamp": 1700000000000 + i,
            "user": {"userID": f"u{i}"},
        }
        for i in range(n)
    ]


def uuids_of(request: RecordedRequest) -> list[str]:
    return [e["timeUUID"] for e in request.events()]


def delivered(fake: FakeTarget) -> list[str]:
    return [u for r in fake.requests if r.status == 200 for u in uuids_of(r)]


async def status_json(relay: Relay) -> dict[str, Any]:
    _, body = await get(admin_url(relay, "/status.json"))
    return orjson.loads(body)  # type: ignore[no-any-return]


def budget(n: int) -> int:
    return 2 * math.ceil(math.log2(n)) + 10


def one_at_a_time(fake: FakeTarget) -> str:
    """A webhook target sending one batch of up to 500 at a time, probing after 1 to 2 s."""
    return f"""
sources:
  statsig: {{type: statsig_webhook}}
targets:
  out: {{type: webhook, url: "{fake.url}/in", batch_max_events: 500, concurrency: 1,
         {FAST}, retry_initial: 1s, retry_max: 2s}}
routes:
  - {{name: all, from: statsig, to: out}}
"""


def strict(request: RecordedRequest) -> Answer:
    """A receiver that refuses any body it cannot parse, as a strict JSON parser does."""
    return Answer(200) if request.is_json else Answer(400, json={"error": "invalid JSON"})


# -- a row that cannot be read whole -----------------------------------------------------------


async def test_an_unreadable_number_dead_letters_only_its_event_on_every_target(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    hook = await fake_targets(default=strict)
    async with FakeStatsig(KEY) as statsig:
        relay = await relay_factory(f"""
sources:
  statsig: {{type: statsig_webhook, signing_secret: {SECRET}}}
targets:
  hook: {{type: webhook, url: "{hook.url}/in", {FAST}}}
  statsig: {{type: statsig, server_secret: "{KEY}", url: "{statsig.log_event_url}", {FAST}}}
routes:
  - {{name: h, from: statsig, to: hook}}
  - {{name: s, from: statsig, to: statsig}}
""")
        body = events(6)
        body[-1]["metadata"] = {"n": "HUGE"}
        raw = orjson.dumps(body).replace(b'"HUGE"', str(HUGE).encode())
        # Ingest refuses such an event now; delivery must be safe whatever is stored (a spool
        # written by an older relay, a replayed dead letter): the row goes in as it is.
        await relay.spool.enqueue(
            [NewRow("hook", "h", raw, 6, now_ms()), NewRow("statsig", "s", raw, 6, now_ms())]
        )
        await poll_until(lambda: spool_empty(relay), timeout=15)

        good = [f"e{i}" for i in range(5)]
        assert sorted(delivered(hook)) == good
        assert sorted(e["value"] for e in statsig.delivered()) == good
        for target in ("hook", "statsig"):
            dead = await relay.spool.dead_rows(target)
            assert [row.count for row in dead] == [1], target
            assert str(HUGE).encode() in dead[0].body  # kept as received, for replay
            assert (
                orjson.loads(dead[0].body.replace(str(HUGE).encode(), b"0"))[0]["timeUUID"] == "e5"
            )
        statsig_dead = (await relay.spool.dead_rows("statsig"))[0]
        assert statsig_dead.reason.startswith("encode_error: unreadable event: int too large")
        assert (await relay.spool.dead_rows("hook"))[0].reason.startswith("HTTP 400")


# -- a target that says which events failed ----------------------------------------------------


@dataclass(kw_only=True)
class IndexedConfig(TargetConfig):
    type: Literal["indexed"] = "indexed"
    url: str = ""
    others_delivered: bool = True


class IndexedTarget(Target):
    """A target added later: its service answers 400 ``{"failed": [{"index", "message"}]}``
    and either imported the others (Mixpanel's strict import) or refused them with the bad
    ones (Amplitude's HTTP API)."""

    kind = "indexed"
    config_class = IndexedConfig
    config: IndexedConfig

    async def send(self, batch: Batch) -> Outcome:
        return await self.post(self.config.url, batch.json_array(), json_headers())

    def classify(self, status: int, headers: Any, body: str) -> Outcome:
        if status == 400 and body.startswith("{"):
            failed = orjson.loads(body).get("failed", [])
            return Outcome.per_event(
                {f["index"]: Outcome(Verdict.REJECT, f["message"]) for f in failed},
                others_delivered=self.config.others_delivered,
                status=status,
            )
        return super().classify(status, headers, body)


def naming_service(bad: set[str], imports_others: bool) -> Any:
    def answer(request: RecordedRequest) -> Answer:
        ids = uuids_of(request)
        failed = [{"index": i, "message": f"{u} is invalid"} for i, u in enumerate(ids) if u in bad]
        if not failed:
            return Answer(200)
        return Answer(400, json={"failed": failed})

    return answer


@pytest.mark.parametrize("imports_others", [True, False], ids=["mixpanel-like", "amplitude-like"])
async def test_two_events_named_by_index_are_dead_lettered_and_the_498_delivered_once(
    relay_factory: RelayFactory,
    fake_targets: FakeTargetFactory,
    monkeypatch: pytest.MonkeyPatch,
    imports_others: bool,
) -> None:
    monkeypatch.setitem(TARGETS, "indexed", IndexedTarget)
    bad = {"e17", "e402"}
    fake = await fake_targets(default=naming_service(bad, imports_others))
    relay = await relay_factory(f"""
sources:
  statsig: {{type: statsig_webhook}}
targets:
  out: {{type: indexed, url: "{fake.url}/in", others_delivered: {str(imports_others).lower()},
         batch_max_events: 500, concurrency: 1, {FAST}}}
routes:
  - {{name: all, from: statsig, to: out}}
""")
    assert await post_export(relay, events(500)) == 200
    await poll_until(lambda: spool_empty(relay), timeout=15)

    taken = [
        u
        for r in fake.requests
        for u in uuids_of(r)
        if r.status == 200 or (imports_others and u not in bad)
    ]
    assert sorted(taken) == sorted(f"e{i}" for i in range(500) if f"e{i}" not in bad)
    assert len(taken) == len(set(taken)) == 498  # each once: never resent once imported
    # One request, plus one resend of the 498 when the service refused them with the bad two.
    assert [len(r.events()) for r in fake.requests] == ([500] if imports_others else [500, 498])
    dead = await relay.spool.dead_rows("out")
    dead_ids = sorted(e["timeUUID"] for row in dead for e in orjson.loads(row.body))
    assert dead_ids == sorted(bad)
    assert {row.reason for row in dead} == {"e17 is invalid", "e402 is invalid"}
    assert metric(relay, "relay_events_delivered_total", target="out") == 498
    assert not relay.targets["out"].health.failing


# -- a target that rejects everything ----------------------------------------------------------


async def test_a_target_that_rejects_everything_is_probed_not_hammered_and_loses_nothing(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    fake = await fake_targets(default=Answer(400, json={"error": "schema mismatch"}))
    relay = await relay_factory(one_at_a_time(fake))
    assert await post_export(relay, events(500)) == 200
    await poll_until(lambda: relay.targets["out"].health.failing)
    first_batch = len(fake.requests)
    assert first_batch <= budget(500), first_batch
    assert fake.requests[0].events() and len(fake.requests[0].events()) == 500

    # Failing, not dead-lettered, and the relay stays ready.
    assert (await get(admin_url(relay, "/readyz")))[0] == 200
    state = (await status_json(relay))["targets"]["out"]
    assert state["state"] == "failing"
    assert "rejects every event" in state["state_reason"] and "HTTP 400" in state["state_reason"]
    assert metric(relay, "relay_target_failing", target="out") == 1
    assert metric(relay, "relay_target_state", target="out", state="failing") == 1
    assert await relay.spool.dead_rows("out") == []
    await relay.update_spool_metrics()
    assert metric(relay, "relay_target_held_events", target="out") == 500

    # A probe after the backoff is bounded the same way; then the receiver is fixed.
    await fake.wait_for(lambda: len(fake.requests) > first_batch, timeout=10)
    fake.default = Answer(200)
    await poll_until(lambda: spool_empty(relay), timeout=15)
    assert sorted(delivered(fake)) == sorted(f"e{i}" for i in range(500))
    assert len(delivered(fake)) == 500
    assert await relay.spool.dead_rows("out") == []
    assert not relay.targets["out"].health.failing
    await relay.update_spool_metrics()
    assert metric(relay, "relay_target_held_events", target="out") == 0
    failing_lines = [r for r in caplog.records if "failing, holding" in r.getMessage()]
    assert len(failing_lines) == 1
    assert sum("recovered" in r.getMessage() for r in caplog.records) == 1


async def test_small_sends_to_a_target_that_rejects_everything_are_held_not_dead_lettered(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets(default=400)
    relay = await relay_factory(f"""
sources:
  statsig: {{type: statsig_webhook}}
targets:
  out: {{type: webhook, url: "{fake.url}/in", {FAST}, retry_initial: 5s, retry_max: 5s}}
routes:
  - {{name: all, from: statsig, to: out}}
""")
    assert await post_export(relay, events(5, "a")) == 200
    assert await post_export(relay, events(3, "b")) == 200
    await poll_until(lambda: relay.targets["out"].health.failing)
    sent = len(fake.requests)
    assert sent <= budget(5) + budget(3)
    stats = await relay.spool.stats()
    assert stats.queued["out"].events == 8  # held, none dead
    assert await relay.spool.dead_rows("out") == []


async def test_a_target_that_answers_413_to_everything_is_held_not_dead_lettered_as_too_large(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    """A proxy in front of the receiver that refuses every body (413 to a lone 150-byte event)
    is the target's problem, like a 400 for everything: bounded requests, failing, held."""
    too_large = Answer(413, body=b"<html>413 Request Entity Too Large</html>")
    fake = await fake_targets(default=too_large)
    relay = await relay_factory(one_at_a_time(fake))
    assert await post_export(relay, events(60)) == 200
    await poll_until(lambda: relay.targets["out"].health.failing)
    assert len(fake.requests) <= budget(60), len(fake.requests)
    assert "HTTP 413" in relay.targets["out"].health.reason
    assert await relay.spool.dead_rows("out") == []
    assert (await relay.spool.stats()).queued["out"].events == 60  # held

    fake.default = Answer(200)  # the proxy is fixed: the probe delivers, the rest follows
    await poll_until(lambda: spool_empty(relay), timeout=15)
    assert sorted(delivered(fake)) == sorted(f"e{i}" for i in range(60))
    assert await relay.spool.dead_rows("out") == []


async def test_a_poison_event_is_still_isolated_when_the_target_takes_the_others(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets(default=lambda r: 400 if "e0" in uuids_of(r) else 200)
    relay = await relay_factory(f"""
sources:
  statsig: {{type: statsig_webhook}}
targets:
  out: {{type: webhook, url: "{fake.url}/in", batch_max_events: 500, {FAST}}}
routes:
  - {{name: all, from: statsig, to: out}}
""")
    assert await post_export(relay, events(500)) == 200
    await poll_until(lambda: spool_empty(relay), timeout=15)
    assert sorted(delivered(fake)) == sorted(f"e{i}" for i in range(1, 500))
    dead = await relay.spool.dead_rows("out")
    assert [e["timeUUID"] for row in dead for e in orjson.loads(row.body)] == ["e0"]
    assert len(fake.requests) <= budget(500)
    assert not relay.targets["out"].health.failing


async def test_a_statsig_url_that_is_not_log_event_holds_the_events_until_it_is_fixed(
    relay_factory: RelayFactory,
) -> None:
    async with FakeStatsig(KEY, 404, 404) as statsig:  # then 202: the proxy route is fixed
        relay = await relay_factory(f"""
sources:
  statsig: {{type: statsig_webhook}}
targets:
  statsig: {{type: statsig, server_secret: "{KEY}", url: "{statsig.log_event_url}", {FAST}}}
routes:
  - {{name: s, from: statsig, to: statsig}}
""")
        assert await post_export(relay, events(4)) == 200
        await poll_until(lambda: relay.targets["statsig"].health.failing)
        reason = relay.targets["statsig"].health.reason
        assert "is not a Statsig log_event endpoint" in reason and KEY not in reason
        assert (await get(admin_url(relay, "/readyz")))[0] == 200
        await poll_until(lambda: spool_empty(relay), timeout=15)
        assert sorted(e["value"] for e in statsig.delivered()) == [f"e{i}" for i in range(4)]
        assert await relay.spool.dead_rows("statsig") == []
        assert not relay.targets["statsig"].health.failing


# -- a target that cannot be reached -----------------------------------------------------------


async def test_an_unreachable_target_turns_failing_after_failing_after_then_recovers(
    relay_factory: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    port = free_port()  # nothing listens: connections are refused
    relay = await relay_factory(f"""
sources:
  statsig: {{type: statsig_webhook}}
targets:
  out: {{type: webhook, url: "http://127.0.0.1:{port}/in", failing_after: 1s,
         retries_in_process: 1, {FAST}}}
routes:
  - {{name: all, from: statsig, to: out}}
""")
    health = relay.targets["out"].health
    assert await post_export(relay, events(5)) == 200
    await poll_until(lambda: health.state.value == "degraded")
    assert (await status_json(relay))["targets"]["out"]["state"] == "degraded"
    await poll_until(lambda: health.failing, timeout=10)
    state = (await status_json(relay))["targets"]["out"]
    assert state["state"] == "failing" and "network error" in state["state_reason"]
    assert metric(relay, "relay_target_failing", target="out") == 1
    assert (await get(admin_url(relay, "/readyz")))[0] == 200
    assert await relay.spool.dead_rows("out") == []
    # The people's views: the status page and `statsig-relay status` say it, with what is held.
    _, page = await get(admin_url(relay, "/status"))
    assert "failing since" in page and "(5 held)" in page and "network error" in page
    cli = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "relay", "status", "--url", admin_url(relay, "")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert cli.returncode == 0, cli.stderr
    line = next(x for x in cli.stdout.splitlines() if x.lstrip().startswith("out"))
    assert "failing since" in line and "(5 held)" in line, cli.stdout

    async with FakeTarget(port=port) as fake:
        await poll_until(lambda: spool_empty(relay), timeout=15)
        assert sorted(delivered(fake)) == [f"e{i}" for i in range(5)]
    assert health.state.value == "ok"
    assert metric(relay, "relay_target_failing", target="out") == 0
    messages = [r.getMessage() for r in caplog.records if r.name == "relay.health"]
    assert sum("degraded" in m and "retrying" in m for m in messages) == 1
    assert sum("failing, holding" in m for m in messages) == 1
    assert sum("recovered" in m for m in messages) == 1
    warnings = [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name in ("relay.deliver", "relay.health")
    ]
    assert len(warnings) == 2, [r.getMessage() for r in warnings]  # degraded, failing


# -- the user's reading of a status ------------------------------------------------------------


async def test_delivered_on_retry_on_and_fail_on_override_the_built_in_rule(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    dup = await fake_targets(default=409)  # "already have it"
    busy = await fake_targets(400, 400, 200)  # the receiver's 400 means "try later"
    picky = await fake_targets(200, default=503)  # its 503 means "never"
    relay = await relay_factory(f"""
sources:
  statsig: {{type: statsig_webhook}}
targets:
  dup: {{type: webhook, url: "{dup.url}/in", delivered_on: [409], {FAST}}}
  busy: {{type: webhook, url: "{busy.url}/in", retry_on: [400], {FAST}}}
  picky: {{type: webhook, url: "{picky.url}/in", fail_on: [503], {FAST}}}
routes:
  - {{name: a, from: statsig, to: dup}}
  - {{name: b, from: statsig, to: busy}}
  - {{name: c, from: statsig, to: picky}}
""")
    assert await post_export(relay, events(1, "warm")) == 200
    await picky.wait_for_requests(1)
    assert await post_export(relay, events(1)) == 200
    await poll_until(lambda: spool_empty(relay), timeout=15)
    assert metric(relay, "relay_events_delivered_total", target="dup") == 2
    assert await relay.spool.dead_rows("dup") == []
    assert [r.status for r in busy.requests][:3] == [400, 400, 200]
    assert await relay.spool.dead_rows("busy") == []
    assert [r.status for r in picky.requests] == [200, 503]
    dead = await relay.spool.dead_rows("picky")
    assert [row.count for row in dead] == [1] and dead[0].reason.startswith("HTTP 503")


@pytest.mark.parametrize(
    ("keys", "error"),
    [
        ("retry_on: [400], fail_on: [400]", "targets.out.fail_on: 400 is also in retry_on"),
        ("delivered_on: [42]", "targets.out.delivered_on: 42 is not an HTTP status"),
        ("failing_after: 0s", "targets.out.failing_after: must be more than 0s"),
    ],
)
def test_status_lists_are_checked(keys: str, error: str) -> None:
    from relay.config import parse_config
    from relay.schema import ConfigError

    with pytest.raises(ConfigError) as raised:
        parse_config(
            f"""
sources: {{s: {{type: statsig_webhook}}}}
targets:
  out: {{type: webhook, url: "http://127.0.0.1:9/in", {keys}}}
routes: [{{name: r, from: s, to: out}}]
""",
            {},
        )
    assert error in str(raised.value)


async def test_one_event_too_large_for_a_proxy_is_dead_lettered_alone_not_holding_the_target(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    """A fresh relay (nothing delivered yet) whose oldest row is one event too big for the
    receiver's proxy and too big to share a claim. Refused alone before anything was taken, it
    is blamed on the target and held, which puts it behind the rows that came after it; they
    are delivered, the target is proven, and the event is dead-lettered alone."""

    def proxy(request: RecordedRequest) -> Answer:
        return Answer(413) if len(request.raw) > 4000 else Answer(200)

    fake = await fake_targets(default=proxy)
    relay = await relay_factory(f"""
sources:
  statsig: {{type: statsig_webhook}}
targets:
  out: {{type: webhook, url: "{fake.url}/in", batch_max_bytes: 3000, {FAST}}}
routes:
  - {{name: all, from: statsig, to: out}}
""")
    big = [{**events(1, "big")[0], "metadata": {"blob": "x" * 5000}}]
    assert await post_export(relay, big) == 200
    assert await post_export(relay, events(5, "small")) == 200
    await poll_until(lambda: len(delivered(fake)) == 5)
    await poll_until(lambda: dead_count(relay, "out"))
    (dead,) = await relay.spool.dead_rows("out")
    assert dead.count == 1 and "413" in dead.reason
    await poll_until(lambda: not relay.targets["out"].health.failing)
