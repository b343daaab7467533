"""The json source end to end: any JSON, a declared mapping, through a real relay."""

from __future__ import annotations

import gzip
from typing import Any

import orjson
import pytest

from relay.app import Relay
from relay.config import parse_config
from relay.schema import ConfigError
from relay.sources.json_source import JsonSource
from tests.conftest import RelayFactory, metric, post, public_url
from tests.fakes import FakeTarget, FakeTargetFactory

MAPPING = """
    mapping:
      event_name: type
      user_id: user.id
      custom_ids: {stableID: anon}
      user: {email: user.mail, custom.plan: user.plan}
      value: amount
      timestamp: ts
      metadata: props"""


def config(fake: FakeTarget, source: str = "", mapping: str = MAPPING) -> str:
    return f"""
sources:
  app:
    type: json
    path: /ingest/app
    api_keys: [k1, k2]
    {source}{mapping}
targets:
  out: {{type: webhook, url: "{fake.url}/in", linger: 0s}}
routes:
  - {{name: app, from: app, to: out}}
"""


def url(relay: Relay) -> str:
    return public_url(relay, "/ingest/app")


def bearer(key: str = "k1") -> dict[str, str]:
    return {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}


EVENT = {
    "type": "Signed Up",
    "user": {"id": 7, "mail": "a@example.com", "plan": "pro"},
    "anon": "s-1",
    "amount": "19.5",
    "ts": "2024-06-06T01:00:00+02:00",
    "props": {"source": "ads", "trial": True, "n": 3, "extra": {"k": [1]}},
    "ignored": "not mapped",
}
MAPPED = {
    "eventName": "Signed Up",
    "user": {
        "userID": "7",
        "email": "a@example.com",
        "custom": {"plan": "pro"},
        "customIDs": {"stableID": "s-1"},
    },
    "userID": "7",
    "timestamp": 1717628400000,
    "value": 19.5,
    "metadata": {"source": "ads", "trial": "true", "n": "3", "extra": '{"k":[1]}'},
}


@pytest.mark.parametrize(
    "shape",
    [
        lambda e: [e],
        lambda e: {"events": [e]},
        lambda e: {"data": [e]},
        lambda e: e,  # one object is one event
    ],
    ids=["array", "events", "data", "object"],
)
async def test_every_body_shape_maps_to_the_statsig_event(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory, shape: Any
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake))
    status, payload, _ = await post(url(relay), orjson.dumps(shape(EVENT)), bearer())
    assert (status, payload) == (200, {"accepted": 1, "rejected": 0})
    await fake.wait_for(lambda: len(fake.events()) == 1)
    assert fake.events()[0] == MAPPED


async def test_events_path_metadata_map_default_name_and_rename(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    source = (
        "events_path: payload.items\n    event_name_default: Order Completed\n"
        "    rename: retail\n    "
    )
    mapping = """
    mapping:
      event_name: kind
      user_id: uid
      metadata: {order: order.id, paid: order.paid, missing: nowhere}"""
    relay = await relay_factory(config(fake, source, mapping))
    body = {
        "payload": {
            "items": [
                {"uid": "u1", "order": {"id": 12, "paid": False}},
                {"uid": "u2", "kind": "Product Viewed", "order": {"id": "A"}},
            ]
        }
    }
    status, payload, _ = await post(url(relay), orjson.dumps(body), bearer("k2"))
    assert (status, payload["accepted"]) == (200, 2)
    await fake.wait_for(lambda: len(fake.events()) == 2)
    first, second = fake.events()
    assert (first["eventName"], first["metadata"]) == ("purchase", {"order": "12", "paid": "false"})
    assert (second["eventName"], second["metadata"]) == ("view_item", {"order": "A"})
    status, payload, _ = await post(url(relay), b'{"payload": {}}', bearer())
    assert status == 400 and "payload.items" in payload["error"]


async def test_a_bad_event_is_rejected_alone(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake))
    body = [
        EVENT,
        5,
        {**EVENT, "type": None},
        {**EVENT, "ts": "someday"},
        {**EVENT, "type": {"x": 1}},
        {**EVENT, "type": 404},
    ]
    status, payload, _ = await post(url(relay), orjson.dumps(body), bearer())
    assert status == 200
    assert (payload["accepted"], payload["rejected"]) == (2, 4)
    assert "event 2: no event name at type" in payload["errors"]
    await fake.wait_for(lambda: len(fake.events()) == 2)
    assert [e["eventName"] for e in fake.events()] == ["Signed Up", "404"]


async def test_events_without_a_user_are_delivered_and_counted(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake))
    body = [{"type": "anonymous"}, {"type": "stable only", "anon": "s"}, {"type": "x", "anon": ""}]
    status, payload, _ = await post(url(relay), orjson.dumps(body), bearer())
    assert (status, payload["accepted"]) == (200, 3)
    await fake.wait_for(lambda: len(fake.events()) == 3)
    assert fake.events()[0]["user"] == {} and fake.events()[0]["metadata"] == {}
    assert metric(relay, "relay_events_without_user_total", source="app") == 2


async def test_api_key_as_bearer_x_api_key_or_configured_header(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake))
    body = orjson.dumps({"type": "ok"})
    accepted = [bearer("k1"), {"X-API-Key": "k2"}]
    refused = [bearer("nope"), {"X-API-Key": "nope"}, {"Authorization": "Basic azE6"}, {}]
    for headers in accepted:
        assert (await post(url(relay), body, headers))[0] == 200
    for headers in refused:
        status, payload, _ = await post(url(relay), orjson.dumps({"type": "refused"}), headers)
        assert status == 401
        assert "nope" not in payload["error"]
    await fake.wait_for(lambda: len(fake.events()) == 2)
    assert {e["eventName"] for e in fake.events()} == {"ok"}


async def test_a_configured_key_header_is_the_only_one_read(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake, "api_key_header: X-Relay-Key\n    "))
    body = orjson.dumps({"type": "ok"})
    assert (await post(url(relay), body, {"X-Relay-Key": "Bearer k1"}))[0] == 200
    assert (await post(url(relay), body, {"X-Relay-Key": "k2"}))[0] == 200
    assert (await post(url(relay), body, bearer("k1")))[0] == 401
    await fake.wait_for(lambda: len(fake.events()) == 2)


async def test_bad_json_is_400_and_gzip_is_accepted(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake))
    status, payload, _ = await post(url(relay), b"{nope", bearer())
    assert status == 400 and "malformed JSON" in payload["error"]
    status, _, _ = await post(url(relay), b"42", bearer())
    assert status == 400
    gz = gzip.compress(orjson.dumps([EVENT]))
    status, _, _ = await post(url(relay), gz, {**bearer(), "Content-Encoding": "gzip"})
    assert status == 200
    await fake.wait_for(lambda: fake.events() == [MAPPED])


async def test_dedup_key_drops_repeats(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(config(fake, mapping=MAPPING + "\n      dedup_key: id"))
    body = orjson.dumps([{**EVENT, "id": 1}, {**EVENT, "id": 1}, {**EVENT, "id": 2}])
    assert (await post(url(relay), body, bearer()))[0] == 200
    assert (await post(url(relay), body, bearer()))[0] == 200
    marker = orjson.dumps([{"type": "marker", "id": 3}])
    assert (await post(url(relay), marker, bearer()))[0] == 200
    await fake.wait_for(lambda: any(e["eventName"] == "marker" for e in fake.events()))
    assert len(fake.events()) == 3


def test_open_source_warns_and_config_errors_name_the_yaml_path() -> None:
    open_config = parse_config(
        "sources: {j: {type: json, mapping: {event_name: t}}}\n", env={}
    ).sources["j"]
    assert JsonSource("j", open_config).warnings() == [
        "source 'j' accepts requests without a key: set api_keys"
    ]
    for text, path in [
        ("sources: {j: {type: json}}", "sources.j.mapping.event_name"),
        (
            "sources: {j: {type: json, mapping: {event_name: t, user: {plan: p}}}}",
            "sources.j.mapping.user.plan",
        ),
        ("sources: {j: {type: json, mapping: {event_nam: t}}}", "sources.j.mapping.event_nam"),
        ("sources: {j: {type: json, path: x, mapping: {event_name: t}}}", "sources.j.path"),
    ]:
        with pytest.raises(ConfigError) as err:
            parse_config(text + "\n", env={})
        assert err.value.path == path, str(err.value)
