"""The webhook, fivetran and file targets: wire format, headers, signatures; spool metrics."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import orjson

from relay.app import Relay
from tests.conftest import (
    RelayFactory,
    admin_url,
    fixture_bytes,
    get,
    metrics_text,
    post_export,
    sample,
)
from tests.fakes import FakeTargetFactory, RecordedRequest, poll_until

EXPORT = fixture_bytes("statsig_export_batch.json")


async def test_fivetran_gets_the_raw_batch_with_a_base64_hmac(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    def check(request: RecordedRequest) -> None:
        assert request.path == "/webhooks/abc123"
        assert request.headers["Content-Type"] == "application/json"
        expected = base64.b64encode(
            hmac.new(b"ft-secret", request.body, hashlib.sha256).digest()
        ).decode()
        assert request.headers["X-Fivetran-Hmac-Sign"] == expected
        assert isinstance(request.json, list)

    fake = await fake_targets(check=check)
    relay = await relay_factory(f"""
sources: {{statsig: {{type: statsig_webhook}}}}
targets:
  warehouse: {{type: fivetran, url: "{fake.url}/webhooks/abc123", hmac_secret: ft-secret,
               linger: 0s}}
routes: [{{name: all, from: statsig, to: warehouse}}]
""")
    assert await post_export(relay, EXPORT) == 200
    await fake.wait_for(lambda: len(fake.events()) == 5)
    assert fake.failures == []
    assert [e["eventName"] for e in fake.events()] == [e["eventName"] for e in orjson.loads(EXPORT)]


async def test_webhook_custom_headers_hmac_signature_and_object_format(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    def check(request: RecordedRequest) -> None:
        assert request.headers["Authorization"] == "Bearer t0ken"
        digest = hmac.new(b"hook-secret", request.body, hashlib.sha256).hexdigest()
        assert request.headers["X-Signature"] == "sha256=" + digest
        assert set(request.json) == {"events"}

    fake = await fake_targets(check=check)
    relay = await relay_factory(f"""
sources: {{statsig: {{type: statsig_webhook}}}}
targets:
  hooks:
    type: webhook
    url: "{fake.url}/hook"
    headers: {{Authorization: "Bearer t0ken"}}
    format: object
    linger: 0s
    signing: {{scheme: hmac, secret: hook-secret, header: X-Signature, prefix: "sha256="}}
routes: [{{name: all, from: statsig, to: hooks, filter: {{categories: [custom]}}}}]
""")
    assert await post_export(relay, EXPORT) == 200
    await fake.wait_for(lambda: len(fake.events()) == 2)
    assert fake.failures == []
    assert [e["eventName"] for e in fake.events()] == ["page_view", "my_custom_event"]


async def test_webhook_ndjson_format(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    fake = await fake_targets()
    relay = await relay_factory(f"""
sources: {{statsig: {{type: statsig_webhook}}}}
targets: {{hooks: {{type: webhook, url: "{fake.url}/hook", format: ndjson, linger: 0s}}}}
routes: [{{name: all, from: statsig, to: hooks}}]
""")
    assert await post_export(relay, EXPORT) == 200
    [request] = await fake.wait_for_requests(1)
    assert request.headers["Content-Type"] == "application/x-ndjson"
    lines = request.body.decode().strip().split("\n")
    assert [orjson.loads(line)["timeUUID"] for line in lines] == [
        e["timeUUID"] for e in orjson.loads(EXPORT)
    ]


async def test_file_target_appends_json_lines(relay_factory: RelayFactory, tmp_path: Path) -> None:
    out = tmp_path / "out" / "events.jsonl"
    relay = await relay_factory(f"""
sources: {{statsig: {{type: statsig_webhook}}}}
targets: {{local: {{type: file, path: "{out}", linger: 0s}}}}
routes: [{{name: all, from: statsig, to: local}}]
""")
    assert await post_export(relay, EXPORT) == 200
    assert await post_export(relay, EXPORT) == 200
    await poll_until(lambda: out.exists() and len(out.read_text().splitlines()) == 10)
    first = orjson.loads(out.read_text().splitlines()[0])
    assert first["eventName"] == "page_view" and first["timestamp"] == 1644520566967


async def test_metrics_show_spool_depth_age_latency_and_batch_sizes(
    relay_factory: RelayFactory, fake_targets: FakeTargetFactory
) -> None:
    down = await fake_targets(default=503)
    up = await fake_targets()
    relay = await relay_factory(f"""
sources: {{statsig: {{type: statsig_webhook}}}}
targets:
  down: {{type: webhook, url: "{down.url}/x", linger: 0s, retries_in_process: 1,
          retry_initial: 1h}}
  up: {{type: webhook, url: "{up.url}/x", linger: 0s}}
routes:
  - {{name: to-down, from: statsig, to: down}}
  - {{name: to-up, from: statsig, to: up, filter: {{exclude_categories: [custom]}}}}
""")
    assert await post_export(relay, EXPORT) == 200
    await up.wait_for(lambda: len(up.events()) == 3)
    await down.wait_for_requests(1)
    await poll_until(lambda: _retried(relay))
    await relay.update_spool_metrics()
    text = await metrics_text(relay)
    assert 'relay_spool_events{target="down"} 5.0' in text
    assert 'relay_spool_events{target="up"} 0.0' in text
    age = sample(text, 'relay_spool_oldest_age_seconds{target="down"}')
    assert age > 0
    assert 'relay_events_filtered_total{route="to-up"} 2.0' in text
    assert 'relay_events_delivered_total{target="up"} 3.0' in text
    assert 'relay_batch_size_events_count{target="up"} 1.0' in text
    assert 'relay_delivery_latency_seconds_count{target="up"} 1.0' in text
    assert 'relay_delivery_requests_total{outcome="retry",target="down"} 1.0' in text
    _, health = await get(admin_url(relay, "/healthz"))
    assert orjson.loads(health) == {"alive": True}


async def _retried(relay: Relay) -> bool:
    stats = await relay.spool.stats()
    return "down" in stats.queued and not relay.deliverers["down"]._inflight
