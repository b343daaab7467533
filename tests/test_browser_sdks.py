"""The real browser SDKs, in a real Chromium, post through the relay from another origin.

A page is served from one loopback origin (``http://127.0.0.1:<page>``) and loads the SDK
bundles installed from npm (tests/js/node_modules) from that page server; the relay answers on
another origin (``http://localhost:<relay>``), so every request is cross-origin and goes through
CORS exactly as on a real site. The Statsig client's initialize call is answered by the page
server. What the relay delivers is checked by the fake Statsig log_event server.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, Request

from tests.browser import browser  # noqa: F401  (the fixture)
from tests.conftest import RelayFactory, metric
from tests.fake_statsig import FakeStatsig
from tests.npm import NODE_MODULES, js_packages  # noqa: F401  (the fixture)

pytestmark = pytest.mark.usefixtures("js_packages")
STATSIG_BUNDLE = NODE_MODULES / "@statsig" / "js-client" / "build" / "statsig-js-client.min.js"
SEGMENT_UMD = NODE_MODULES / "@segment" / "analytics-next" / "dist" / "umd"
CLIENT_KEY = "client-browser-test"
WRITE_KEY = "wk-browser-test"
DOWNSTREAM_KEY = "secret-downstream"

# A real browser or Node process on a loaded 2-core host can take longer than the fakes'
# default 10 s deadline to start, load the SDK and flush: wait up to this long.
BROWSER_DEADLINE = 30.0


def initialize_answer() -> dict[str, Any]:
    """The least precomputed-values answer @statsig/js-client takes; the SDK flag lets it gzip
    its log requests to a custom URL (gz=1), as Statsig turns on for proxies."""
    return {
        "feature_gates": {},
        "dynamic_configs": {},
        "layer_configs": {},
        "time": int(time.time() * 1000),
        "has_updates": True,
        "hash_used": "djb2",
        "derived_fields": {},
        "sdk_flags": {"enable_log_event_compression": True},
    }


PAGE = """<!doctype html>
<html><head><title>shop</title>
<script src="/statsig.js"></script>
<script src="/segment/index.js"></script>
</head><body><h1>shop</h1></body></html>
"""


@dataclass
class PageServer:
    """The site: the page, the SDK bundles from node_modules and Statsig's initialize."""

    runner: web.AppRunner | None = None
    port: int = 0
    initialize_calls: int = 0
    seen: list[str] = field(default_factory=list)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()

        async def page(_: web.Request) -> web.Response:
            return web.Response(text=PAGE, content_type="text/html")

        async def statsig_bundle(_: web.Request) -> web.FileResponse:
            return web.FileResponse(STATSIG_BUNDLE)

        async def initialize(_: web.Request) -> web.Response:
            self.initialize_calls += 1
            return web.json_response(initialize_answer())

        async def bye(_: web.Request) -> web.Response:
            return web.Response(text="<p>bye</p>", content_type="text/html")

        app.router.add_get("/", page)
        app.router.add_get("/bye", bye)
        app.router.add_get("/statsig.js", statsig_bundle)
        app.router.add_post("/v1/initialize", initialize)
        app.router.add_static("/segment/", SEGMENT_UMD)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self.runner.addresses[0][1])

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def site() -> AsyncIterator[PageServer]:
    server = PageServer()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


def relay_config(downstream: FakeStatsig, origin: str) -> str:
    return f"""
sources:
  web:
    type: statsig_events
    api_keys: ["{CLIENT_KEY}"]
    cors: {{origins: ["{origin}"]}}
    rate_limit: {{per_second: 50, burst: 100}}
  seg:
    type: segment
    write_keys: ["{WRITE_KEY}"]
    cors: {{origins: ["{origin}"]}}
targets:
  statsig: {{type: statsig, server_secret: "{DOWNSTREAM_KEY}", url: "{downstream.log_event_url}",
            linger: 0s, timeout: 5s}}
routes:
  - {{name: browser-to-statsig, from: [web, seg], to: statsig,
     filter: {{exclude_categories: [statsig_internal]}}}}
"""


def by_name(downstream: FakeStatsig, name: str) -> list[dict[str, Any]]:
    return [e for e in downstream.delivered() if e["eventName"] == name]


async def open_site(browser: Browser, site: PageServer) -> tuple[Page, list[Request]]:  # noqa: F811
    context = await browser.new_context()
    sent: list[Request] = []
    context.on("request", lambda request: sent.append(request))
    page = await context.new_page()
    await page.goto(f"{site.origin}/")
    return page, sent


async def test_statsig_js_client_logs_through_the_relay_with_fetch_and_beacon(
    browser: Browser,  # noqa: F811
    site: PageServer,
    relay_factory: RelayFactory,
) -> None:
    async with FakeStatsig(DOWNSTREAM_KEY) as downstream:
        relay = await relay_factory(relay_config(downstream, site.origin))
        relay_origin = f"http://localhost:{relay.public_port}"
        page, sent = await open_site(browser, site)
        started = int(time.time() * 1000)
        stable_id = await page.evaluate(
            """async ([logUrl, initUrl, key]) => {
                // Note each beacon (the real sendBeacon still sends it): Playwright does not
                // report beacons as requests, and the page is gone once it has sent them.
                const send = navigator.sendBeacon.bind(navigator);
                navigator.sendBeacon = (url, data) => {
                    const ok = send(url, data);
                    localStorage.setItem('beacon', JSON.stringify({url, ok, type: typeof data}));
                    return ok;
                };
                const client = new window.Statsig.StatsigClient(
                    key, {userID: 'u-browser', email: 'b@example.com'},
                    {networkConfig: {logEventUrl: logUrl, initializeUrl: initUrl}});
                await client.initializeAsync();
                client.logEvent('add_to_cart', 12.5, {sku: 'A1', qty: '2'});
                await client.flush();
                client.logEvent('left_page', 'checkout', {step: '3'});
                window.statsigClient = client;
                return client.getContext().stableID;
            }""",
            [f"{relay_origin}/statsig/v1/rgstr", f"{site.origin}/v1/initialize", CLIENT_KEY],
        )
        await downstream.wait_for(
            lambda: by_name(downstream, "add_to_cart"), timeout=BROWSER_DEADLINE
        )
        # Leaving the page: the SDK flushes what is queued with navigator.sendBeacon.
        await page.goto(f"{site.origin}/bye")
        await downstream.wait_for(
            lambda: by_name(downstream, "left_page"), timeout=BROWSER_DEADLINE
        )
        finished = int(time.time() * 1000)

        assert site.initialize_calls >= 1
        (cart,) = by_name(downstream, "add_to_cart")
        (left,) = by_name(downstream, "left_page")
        for event in (cart, left):
            assert event["user"]["userID"] == "u-browser"
            assert event["user"]["email"] == "b@example.com"
            assert event["user"]["customIDs"] == {"stableID": stable_id}
            assert event["user"]["ip"] == "127.0.0.1"
            assert started <= event["time"] <= finished
        assert cart["value"] == 12.5 and cart["metadata"] == {"sku": "A1", "qty": "2"}
        assert left["value"] == "checkout" and left["metadata"] == {"step": "3"}
        assert downstream.failures == []

        rgstr = [r for r in sent if "/statsig/v1/rgstr" in r.url]
        fetched = [r for r in rgstr if r.method == "POST" and r.resource_type == "fetch"]
        assert any("gz=1" in r.url for r in fetched), [r.url for r in fetched]
        beacon = orjson.loads(await page.evaluate("localStorage.getItem('beacon')"))
        assert beacon["ok"] is True and beacon["type"] == "string"  # sent as text/plain
        assert beacon["url"].startswith(f"{relay_origin}/statsig/v1/rgstr?k={CLIENT_KEY}&")
        assert metric(relay, "relay_requests_refused_total", source="web", reason="origin") == 0


async def test_segment_analytics_next_tracks_through_the_relay(
    browser: Browser,  # noqa: F811
    site: PageServer,
    relay_factory: RelayFactory,
) -> None:
    async with FakeStatsig(DOWNSTREAM_KEY) as downstream:
        relay = await relay_factory(relay_config(downstream, site.origin))
        api_host = f"localhost:{relay.public_port}/segment/v1"
        page, sent = await open_site(browser, site)
        started = int(time.time() * 1000)
        anonymous_id = await page.evaluate(
            """async ([writeKey, apiHost]) => {
                const [analytics] = await window.AnalyticsNext.AnalyticsBrowser.load(
                    {writeKey, cdnSettings: {integrations: {'Segment.io': {
                        apiKey: writeKey, apiHost, protocol: 'http'}}}},
                    {disableClientPersistence: true});
                await analytics.identify('u-seg', {email: 's@example.com'});
                await analytics.page('Shop', 'Checkout', {path: '/checkout'});
                await analytics.track('Order Completed', {revenue: 30, sku: 'B2', items: 2});
                return analytics.user().anonymousId();
            }""",
            [WRITE_KEY, api_host],
        )
        await downstream.wait_for(
            lambda: by_name(downstream, "Order Completed"), timeout=BROWSER_DEADLINE
        )
        await downstream.wait_for(lambda: by_name(downstream, "page"), timeout=BROWSER_DEADLINE)
        finished = int(time.time() * 1000)

        (order,) = by_name(downstream, "Order Completed")
        (viewed,) = by_name(downstream, "page")
        for event in (order, viewed):
            assert event["user"]["userID"] == "u-seg"
            assert event["user"]["customIDs"] == {"stableID": anonymous_id}
            assert event["user"]["ip"] == "127.0.0.1"
            assert event["user"]["userAgent"].startswith("Mozilla/")
            assert started <= event["time"] <= finished
        assert order["value"] == 30
        assert order["metadata"] == {"sku": "B2", "items": "2"}
        assert viewed["metadata"]["name"] == "Checkout"
        assert viewed["metadata"]["category"] == "Shop"
        assert downstream.failures == []

        paths = {r.url.split(str(relay.public_port), 1)[1] for r in sent if api_host in r.url}
        assert {"/segment/v1/t", "/segment/v1/p", "/segment/v1/i"} <= paths
        assert all(
            r.headers.get("content-type") == "text/plain"
            for r in sent
            if api_host in r.url and r.method == "POST"
        )
        dropped = metric(relay, "relay_events_dropped_total", route="source:seg", reason="identify")
        assert dropped == 1


async def test_segment_batches_flush_with_keepalive_when_the_page_is_left(
    browser: Browser,  # noqa: F811
    site: PageServer,
    relay_factory: RelayFactory,
) -> None:
    async with FakeStatsig(DOWNSTREAM_KEY) as downstream:
        relay = await relay_factory(relay_config(downstream, site.origin))
        api_host = f"localhost:{relay.public_port}/segment/v1"
        page, _ = await open_site(browser, site)
        await page.evaluate(
            """async ([writeKey, apiHost]) => {
                // Batching: nothing is sent until 100 events or a minute, or the page goes.
                const strategy = {strategy: 'batching', config: {size: 100, timeout: 60000}};
                const [analytics] = await window.AnalyticsNext.AnalyticsBrowser.load(
                    {writeKey, cdnSettings: {integrations: {'Segment.io': {
                        apiKey: writeKey, apiHost, protocol: 'http',
                        deliveryStrategy: strategy}}}},
                    {disableClientPersistence: true});
                await analytics.identify('u-batch');
                await analytics.track('Product Viewed', {sku: 'C1'});
                await analytics.track('Product Added', {sku: 'C1', price: 9.5});
            }""",
            [WRITE_KEY, api_host],
        )
        assert downstream.delivered() == []
        await page.goto(f"{site.origin}/bye")  # pagehide: the batch goes with keepalive
        await downstream.wait_for(lambda: len(by_name(downstream, "Product Added")) == 1)
        await downstream.wait_for(lambda: len(by_name(downstream, "Product Viewed")) == 1)
        (added,) = by_name(downstream, "Product Added")
        assert added["user"]["userID"] == "u-batch"
        assert added["metadata"] == {"sku": "C1", "price": "9.5"}
        assert metric(relay, "relay_requests_total", source="seg", code="200") == 1  # one /v1/b
        assert downstream.failures == []
