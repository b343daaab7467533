"""A public source's gate, over real HTTP: CORS, rate limit per client IP, event count and names,
the client IP in user.ip, trusted proxies, and the encodings of the Statsig browser SDK.

The relay is a real Relay on 127.0.0.1; the downstream is the fake Statsig log_event server,
so what the gate lets through is checked as Statsig would receive it.
"""

from __future__ import annotations

import base64
import gzip
from typing import Any

import aiohttp
import orjson
import pytest

from relay.cli import routing_table
from relay.config import parse_config
from relay.cors import CorsConfig, CorsPolicy
from relay.ratelimit import RateLimitConfig, RateLimiter
from relay.schema import ConfigError
from tests.conftest import RelayFactory, metric, public_url, relay_yaml
from tests.fake_statsig import FakeStatsig

CLIENT_KEY = "client-browser-test"
DOWNSTREAM_KEY = "secret-downstream"
PAGE = "https://app.example.com"
RGSTR = "/statsig/v1/rgstr"


def relay_config(downstream: FakeStatsig, web_extra: str = "", seg_extra: str = "") -> str:
    return f"""
sources:
  web:
    type: statsig_events
    api_keys: ["{CLIENT_KEY}"]
    cors: {{origins: ["{PAGE}", "https://*.shop.example"], max_age: 10m}}
    {web_extra}
  seg:
    type: segment
    write_keys: [wk-test]
    cors: {{origins: ["*"]}}
    {seg_extra}
targets:
  statsig: {{type: statsig, server_secret: "{DOWNSTREAM_KEY}", url: "{downstream.log_event_url}",
            linger: 0s, timeout: 5s}}
routes:
  - {{name: web-to-statsig, from: [web, seg], to: statsig}}
"""


def rgstr_body(*names: str, stable_id: str = "stable-1", user: Any = None) -> dict[str, Any]:
    return {
        "events": [
            {
                "eventName": name,
                "user": user if user is not None else {"userID": "u1"},
                "time": 1_717_000_000_000 + i,
                "metadata": {"n": i},
                "value": 3,
            }
            for i, name in enumerate(names)
        ],
        "statsigMetadata": {"stableID": stable_id, "sdkType": "javascript-client"},
    }


async def request(
    method: str,
    url: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    local_addr: str | None = None,
) -> tuple[int, dict[str, str], Any]:
    connector = aiohttp.TCPConnector(local_addr=(local_addr, 0)) if local_addr else None
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.request(method, url, data=body, headers=headers or {}) as response,
    ):
        text = await response.text()
        try:
            payload: Any = orjson.loads(text)
        except orjson.JSONDecodeError:
            payload = text
        return response.status, dict(response.headers), payload


def rgstr_url(relay: Any, **query: str) -> str:
    params = "&".join(f"{k}={v}" for k, v in {"k": CLIENT_KEY, **query}.items())
    return public_url(relay, f"{RGSTR}?{params}")


# -- CORS --------------------------------------------------------------------------------------


async def test_preflight_from_an_allowed_origin_gets_204_with_what_the_sdks_send(
    relay_factory: RelayFactory,
) -> None:
    async with FakeStatsig(DOWNSTREAM_KEY) as downstream:
        relay = await relay_factory(relay_config(downstream))
        status, headers, _ = await request(
            "OPTIONS",
            rgstr_url(relay),
            headers={
                "Origin": PAGE,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "statsig-event-count,statsig-sdk-type",
            },
        )
        assert status == 204
        assert headers["Access-Control-Allow-Origin"] == PAGE
        assert "POST" in headers["Access-Control-Allow-Methods"]
        allowed = headers["Access-Control-Allow-Headers"].split(", ")
        for name in ("statsig-event-count", "statsig-sdk-type", "authorization", "content-type"):
            assert name in allowed
        assert headers["Access-Control-Max-Age"] == "600"
        assert "Origin" in headers["Vary"]

        status, headers, _ = await request(
            "OPTIONS",
            rgstr_url(relay),
            headers={"Origin": PAGE, "Access-Control-Request-Private-Network": "true"},
        )
        assert status == 204 and headers["Access-Control-Allow-Private-Network"] == "true"

        wildcard = "https://eu.shop.example"
        status, headers, _ = await request(
            "OPTIONS", rgstr_url(relay), headers={"Origin": wildcard}
        )
        assert status == 204 and headers["Access-Control-Allow-Origin"] == wildcard


async def test_preflight_and_post_from_another_origin_are_refused_without_cors_headers(
    relay_factory: RelayFactory,
) -> None:
    async with FakeStatsig(DOWNSTREAM_KEY) as downstream:
        relay = await relay_factory(relay_config(downstream))
        evil = {"Origin": "https://evil.example"}
        status, headers, _ = await request("OPTIONS", rgstr_url(relay), headers=evil)
        assert status == 403
        assert not any(h.startswith("Access-Control-") for h in headers)
        body = orjson.dumps(rgstr_body("click"))
        status, headers, answer = await request("POST", rgstr_url(relay), body, evil)
        assert status == 403 and "not allowed" in answer["error"]
        assert not any(h.startswith("Access-Control-") for h in headers)
        assert metric(relay, "relay_requests_refused_total", source="web", reason="origin") == 2
        # The bare apex is not a subdomain of the wildcard.
        apex = {"Origin": "https://shop.example"}
        status, _, _ = await request("POST", rgstr_url(relay), body, apex)
        assert status == 403
        assert downstream.requests == []


async def test_errors_to_an_allowed_origin_carry_the_cors_headers(
    relay_factory: RelayFactory,
) -> None:
    async with FakeStatsig(DOWNSTREAM_KEY) as downstream:
        relay = await relay_factory(relay_config(downstream))
        url = public_url(relay, f"{RGSTR}?k=client-wrong")
        status, headers, _ = await request("POST", url, b"{}", {"Origin": PAGE})
        assert status == 401
        assert headers["Access-Control-Allow-Origin"] == PAGE
        status, headers, _ = await request("POST", rgstr_url(relay), b"{not json", {"Origin": PAGE})
        assert status == 400
        assert headers["Access-Control-Allow-Origin"] == PAGE
        assert headers["Access-Control-Expose-Headers"] == "Retry-After"


async def test_any_origin_is_answered_with_a_star_on_a_source_with_public_keys(
    relay_factory: RelayFactory,
) -> None:
    async with FakeStatsig(DOWNSTREAM_KEY) as downstream:
        relay = await relay_factory(relay_config(downstream))
        status, headers, _ = await request(
            "OPTIONS", public_url(relay, "/segment/v1/t"), headers={"Origin": "https://x.test"}
        )
        assert status == 204 and headers["Access-Control-Allow-Origin"] == "*"


def test_a_star_origin_is_refused_at_load_where_the_credentials_are_secrets(tmp_path) -> None:
    yaml = relay_yaml(
        """
sources:
  sdk: {type: statsig_events, api_keys: [secret-abc], cors: {origins: ["*"]}}
""",
        tmp_path,
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml, {})
    assert caught.value.path == "sources.sdk.cors.origins"
    client_keys = yaml.replace("secret-abc", "client-abc")
    assert parse_config(client_keys, {}).sources["sdk"].cors is not None


@pytest.mark.parametrize(
    ("origin", "path"),
    [
        ("app.example.com", "sources.web.cors.origins[0]"),
        ("https://app.example.com/", "sources.web.cors.origins[0]"),
        ("https://a.*.example.com", "sources.web.cors.origins[0]"),
    ],
)
def test_a_malformed_origin_is_a_config_error_naming_it(tmp_path, origin: str, path: str) -> None:
    yaml = relay_yaml(
        f"""
sources:
  web: {{type: segment, cors: {{origins: ["{origin}"]}}}}
""",
        tmp_path,
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml, {})
    assert caught.value.path == path


def test_wildcard_origins_match_subdomains_only() -> None:
    policy = CorsPolicy(CorsConfig(origins=["https://*.example.com", "http://127.0.0.1:8000"]))
    assert policy.allows("https://a.example.com")
    assert policy.allows("https://A.B.example.com")
    assert policy.allows("http://127.0.0.1:8000")
    assert not policy.allows("https://example.com")
    assert not policy.allows("http://a.example.com")
    assert not policy.allows("https://a.example.com.evil.test")
    assert not policy.allows("https://a.example.com:8443")
    assert not policy.allows("http://127.0.0.1:8001")


# -- rate limit and client IP ------------------------------------------------------------------


async def test_a_flood_from_one_ip_gets_429_while_other_ips_are_served(
    relay_factory: RelayFactory,
) -> None:
    async with FakeStatsig(DOWNSTREAM_KEY) as downstream:
        relay = await relay_factory(
            relay_config(downstream, "rate_limit: {per_second: 0.5, burst: 3}"),
            server="trusted_proxies: [127.0.0.1/32]",
        )
        body = orjson.dumps(rgstr_body("click"))
        statuses = []
        for _ in range(8):  # bounded: 8 requests from 127.0.0.2, burst is 3
            status, headers, _ = await request(
                "POST", rgstr_url(relay), body, {"Origin": PAGE}, local_addr="127.0.0.2"
            )
            statuses.append(status)
        assert statuses[:3] == [202, 202, 202]
        assert set(statuses[3:]) == {429}
        assert int(headers["Retry-After"]) >= 1
        assert headers["Access-Control-Allow-Origin"] == PAGE  # the page may read Retry-After
        refused = metric(relay, "relay_requests_refused_total", source="web", reason="rate_limited")
        assert refused == 5

        # Another address (127.0.0.1 directly) is served.
        status, _, _ = await request("POST", rgstr_url(relay), body)
        assert status == 202
        # Through the trusted proxy 127.0.0.1, each X-Forwarded-For client has its own bucket.
        for client in ("203.0.113.7", "203.0.113.8"):
            status, _, _ = await request(
                "POST", rgstr_url(relay), body, {"X-Forwarded-For": f"{client}"}
            )
            assert status == 202
        # From an untrusted peer the header is not believed: 127.0.0.2 is still limited.
        status, _, _ = await request(
            "POST",
            rgstr_url(relay),
            body,
            {"X-Forwarded-For": "198.51.100.1"},
            local_addr="127.0.0.2",
        )
        assert status == 429


def test_the_ip_table_stays_bounded_and_buckets_refill() -> None:
    now = [0.0]
    limiter = RateLimiter(RateLimitConfig(per_second=2, burst=2, max_clients=3), lambda: now[0])
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.5]
    for i in range(10):
        limiter.take(f"ip{i}")
    assert len(limiter) == 3
    now[0] = 1.0
    assert limiter.take("ip9") == 0.0


async def test_client_ip_goes_into_user_ip_and_the_stable_id_into_custom_ids(
    relay_factory: RelayFactory,
) -> None:
    async with FakeStatsig(DOWNSTREAM_KEY) as downstream:
        relay = await relay_factory(
            relay_config(downstream), server="trusted_proxies: [127.0.0.0/8]"
        )
        body = rgstr_body("click", "buy", stable_id="stable-xyz")
        body["events"][1]["user"] = {"userID": "u2", "ip": "192.0.2.55"}
        headers = {"Origin": PAGE, "X-Forwarded-For": "198.51.100.9, 127.0.0.3"}
        status, _, _ = await request("POST", rgstr_url(relay), orjson.dumps(body), headers)
        assert status == 202
        await downstream.wait_for(lambda: len(downstream.delivered()) >= 2)
        click, buy = downstream.delivered()
        assert click["user"] == {
            "userID": "u1",
            "ip": "198.51.100.9",
            "customIDs": {"stableID": "stable-xyz"},
        }
        assert buy["user"]["ip"] == "192.0.2.55"  # the event's own IP is kept
        assert click["metadata"] == {"n": "0"} and click["value"] == 3
        assert downstream.failures == []


# -- event count and names ---------------------------------------------------------------------


async def test_more_events_than_max_events_is_413_and_nothing_is_kept(
    relay_factory: RelayFactory,
) -> None:
    async with FakeStatsig(DOWNSTREAM_KEY) as downstream:
        relay = await relay_factory(relay_config(downstream, "max_events: 2", "max_events: 2"))
        body = orjson.dumps(rgstr_body("a", "b", "c"))
        status, headers, answer = await request("POST", rgstr_url(relay), body, {"Origin": PAGE})
        assert status == 413 and "at most 2" in answer["error"]
        assert headers["Access-Control-Allow-Origin"] == PAGE
        refused = metric(
            relay, "relay_requests_refused_total", source="web", reason="too_many_events"
        )
        assert refused == 1
        status, _, _ = await request("POST", rgstr_url(relay), orjson.dumps(rgstr_body("a", "b")))
        assert status == 202
        # Messages a source drops count too: three Segment identify calls in one batch.
        identify = {"type": "identify", "userId": "u1", "traits": {"plan": "pro"}}
        batch = orjson.dumps({"batch": [identify] * 3, "writeKey": "wk-test"})
        status, _, _ = await request("POST", public_url(relay, "/segment/v1/b"), batch)
        assert status == 413


async def test_events_outside_the_allow_list_are_dropped_and_counted(
    relay_factory: RelayFactory,
) -> None:
    async with FakeStatsig(DOWNSTREAM_KEY) as downstream:
        relay = await relay_factory(
            relay_config(downstream, 'allowed_events: [purchase, "statsig::*"]')
        )
        body = orjson.dumps(rgstr_body("purchase", "spam", "statsig::gate_exposure", "spam"))
        status, _, _ = await request("POST", rgstr_url(relay), body)
        assert status == 202
        await downstream.wait_for(lambda: len(downstream.delivered()) >= 2)
        names = [e["eventName"] for e in downstream.delivered()]
        assert names == ["purchase", "statsig::gate_exposure"]
        dropped = metric(
            relay, "relay_events_dropped_total", route="source:web", reason="not_allowed"
        )
        assert dropped == 2


# -- what @statsig/js-client sends -------------------------------------------------------------


async def test_rgstr_bodies_gzipped_and_encoded_as_the_browser_sdk_sends_them(
    relay_factory: RelayFactory,
) -> None:
    async with FakeStatsig(DOWNSTREAM_KEY) as downstream:
        relay = await relay_factory(relay_config(downstream))
        plain = orjson.dumps(rgstr_body("one"))
        encoded = base64.b64encode(orjson.dumps(rgstr_body("two")))[::-1]
        both = gzip.compress(base64.b64encode(orjson.dumps(rgstr_body("three")))[::-1])
        text = {"Content-Type": "text/plain;charset=UTF-8"}
        assert (await request("POST", rgstr_url(relay, gz="1"), gzip.compress(plain), text))[
            0
        ] == 202
        assert (await request("POST", rgstr_url(relay, se="1"), encoded, text))[0] == 202
        assert (await request("POST", rgstr_url(relay, se="1", gz="1"), both, text))[0] == 202
        await downstream.wait_for(lambda: len(downstream.delivered()) >= 3)
        assert sorted(e["eventName"] for e in downstream.delivered()) == ["one", "three", "two"]

        status, _, answer = await request("POST", rgstr_url(relay, se="1"), b"{not base64")
        assert status == 400 and "base64" in answer["error"]
        status, _, answer = await request("POST", rgstr_url(relay, gz="1"), b"\x1f\x8bnot gzip")
        assert status == 400 and "gzip" in answer["error"]


def test_check_lists_a_sources_public_settings(tmp_path) -> None:
    yaml = relay_yaml(
        """
sources:
  web:
    type: statsig_events
    api_keys: [client-abc]
    cors: {origins: ["https://app.example.com"]}
    rate_limit: {per_second: 5, burst: 20}
    max_events: 100
""",
        tmp_path,
    )
    table = routing_table(parse_config(yaml, {}))
    assert (
        "    public: cors https://app.example.com; 5 requests/s per IP (burst 20); "
        "≤100 events/request; client IP → user.ip"
    ) in table


async def test_a_reload_applies_a_changed_origin_list(
    relay_factory: RelayFactory, tmp_path
) -> None:
    async with FakeStatsig(DOWNSTREAM_KEY) as downstream:
        text = relay_yaml(relay_config(downstream), tmp_path)
        relay = await relay_factory(text, full=True)
        newcomer = {"Origin": "https://new.example.org"}
        assert (await request("OPTIONS", rgstr_url(relay), headers=newcomer))[0] == 403
        changed = tmp_path / "relay.yaml"
        changed.write_text(text.replace(f'"{PAGE}"', '"https://new.example.org"'))
        assert await relay.reload(str(changed))
        status, headers, _ = await request("OPTIONS", rgstr_url(relay), headers=newcomer)
        assert status == 204 and headers["Access-Control-Allow-Origin"] == newcomer["Origin"]
        assert (await request("OPTIONS", rgstr_url(relay), headers={"Origin": PAGE}))[0] == 403
