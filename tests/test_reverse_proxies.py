"""The docs' nginx and Caddy examples, for real: the relay under /t/ on the app's own origin.

Each block is read from docs/browser.md, with the example host and ports swapped for loopback ones,
and run by Debian's ``nginx`` or ``caddy`` (tests/run.sh installs them). Behind the proxy: the
page server of the browser tests (the app) and a relay whose source has no ``cors`` at all,
since the page and /t/ share one origin, and which trusts the proxy's X-Forwarded-For.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from playwright.async_api import Browser

from tests.browser import browser  # noqa: F401  (the fixture)
from tests.conftest import RelayFactory
from tests.daemon import free_port
from tests.fake_statsig import FakeStatsig
from tests.fakes import poll_until
from tests.npm import js_packages  # noqa: F401  (the fixture)
from tests.test_browser_sdks import CLIENT_KEY, DOWNSTREAM_KEY, PageServer, by_name

PAGE = Path(__file__).resolve().parents[1] / "docs" / "browser.md"
pytestmark = pytest.mark.usefixtures("js_packages")

# A real browser or Node process on a loaded 2-core host can take longer than the fakes'
# default 10 s deadline to start, load the SDK and flush: wait up to this long.
BROWSER_DEADLINE = 30.0


def docs_block(language: str) -> str:
    block = re.search(rf"```{language}\n(.*?)```", PAGE.read_text(), re.S)
    assert block, f"docs/browser.md has no ```{language} block"
    return block.group(1)


def caddy_command(port: int, relay_port: int, app_port: int, tmp_path: Path) -> list[str]:
    """The docs' Caddyfile on loopback addresses, without Caddy's admin API."""
    text = docs_block("caddyfile")
    assert "app.example.com" in text and "127.0.0.1:8080" in text and "127.0.0.1:3000" in text
    text = text.replace("app.example.com", f"http://127.0.0.1:{port}")
    text = text.replace("127.0.0.1:8080", f"127.0.0.1:{relay_port}")
    text = text.replace("127.0.0.1:3000", f"127.0.0.1:{app_port}")
    path = tmp_path / "Caddyfile"
    path.write_text("{\n    admin off\n}\n" + text)
    return [tool("caddy"), "run", "--config", str(path), "--adapter", "caddyfile"]


def nginx_command(port: int, relay_port: int, app_port: int, tmp_path: Path) -> list[str]:
    """The docs' location block in a server of its own, the app at /, files in tmp_path."""
    text = docs_block("nginx")
    assert "127.0.0.1:8080" in text
    location = text.replace("127.0.0.1:8080", f"127.0.0.1:{relay_port}")
    temp = " ".join(
        f"{kind}_temp_path {tmp_path}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    path = tmp_path / "nginx.conf"
    path.write_text(
        f"""daemon off;
pid {tmp_path}/nginx.pid;
error_log stderr;
events {{}}
http {{
    access_log off;
    {temp}
    server {{
        listen 127.0.0.1:{port};
{location}
        location / {{
            proxy_pass http://127.0.0.1:{app_port};
        }}
    }}
}}
"""
    )
    return [tool("nginx"), "-c", str(path), "-p", str(tmp_path)]


def tool(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is not installed: tests/run.sh installs Debian's {name}"
    return found


PROXIES = {"caddy": caddy_command, "nginx": nginx_command}


async def accepting(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


@pytest.fixture
async def app() -> AsyncIterator[PageServer]:
    server = PageServer()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def start_proxy(command: list[str], tmp_path: Path) -> asyncio.subprocess.Process:
    env = {"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    return await asyncio.create_subprocess_exec(
        *command,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


@pytest.mark.parametrize("proxy", sorted(PROXIES))
async def test_the_docs_proxy_example_serves_the_relay_under_t_on_the_apps_origin(
    proxy: str,
    browser: Browser,  # noqa: F811
    app: PageServer,
    relay_factory: RelayFactory,
    tmp_path: Path,
) -> None:
    async with FakeStatsig(DOWNSTREAM_KEY) as downstream:
        relay = await relay_factory(
            f"""
sources:
  web: {{type: statsig_events, api_keys: ["{CLIENT_KEY}"], user_ip: true}}
targets:
  statsig: {{type: statsig, server_secret: "{DOWNSTREAM_KEY}", url: "{downstream.log_event_url}",
            linger: 0s, timeout: 5s}}
routes:
  - {{name: web-to-statsig, from: web, to: statsig,
     filter: {{exclude_categories: [statsig_internal]}}}}
""",
            server="trusted_proxies: [127.0.0.1/32]",
        )
        port = free_port()
        origin = f"http://127.0.0.1:{port}"
        command = PROXIES[proxy](port, relay.public_port, app.port, tmp_path)
        server = await start_proxy(command, tmp_path)
        try:
            await poll_until(
                lambda: server.returncode is not None or accepting(port),
                20.0,
                message=f"{proxy} is not listening",
            )
            assert server.returncode is None, (await server.communicate())[1].decode()[-2000:]

            # The page and the relay share one origin: no CORS anywhere.
            page = await (await browser.new_context()).new_page()
            await page.goto(f"{origin}/")
            started = int(time.time() * 1000)
            await page.evaluate(
                """async (key) => {
                    const client = new window.Statsig.StatsigClient(key, {userID: 'u-proxy'}, {
                        networkConfig: {
                            logEventUrl: `${location.origin}/t/statsig/v1/rgstr`,
                            initializeUrl: `${location.origin}/v1/initialize`}});
                    await client.initializeAsync();
                    client.logEvent('checkout', 7, {via: 'proxy'});
                    await client.flush();
                }""",
                CLIENT_KEY,
            )
            await downstream.wait_for(
                lambda: by_name(downstream, "checkout"), timeout=BROWSER_DEADLINE
            )
            (checkout,) = by_name(downstream, "checkout")
            assert checkout["user"]["userID"] == "u-proxy"
            assert checkout["user"]["ip"] == "127.0.0.1"
            assert checkout["metadata"] == {"via": "proxy"}
            assert checkout["time"] >= started

            # A client at 127.0.0.2 that forges X-Forwarded-For: Caddy puts the real address in
            # its place, nginx appends it; the relay takes the right-most address that is not a
            # trusted proxy, so the forged one is never believed.
            body = orjson.dumps(
                {"events": [{"eventName": "forged", "user": {"userID": "u2"}, "time": started}]}
            )
            connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
            async with (
                aiohttp.ClientSession(connector=connector) as session,
                session.post(
                    f"{origin}/t/statsig/v1/rgstr?k={CLIENT_KEY}",
                    data=body,
                    headers={"X-Forwarded-For": "203.0.113.66", "Content-Type": "text/plain"},
                ) as response,
            ):
                assert response.status == 202
            await downstream.wait_for(
                lambda: by_name(downstream, "forged"), timeout=BROWSER_DEADLINE
            )
            assert by_name(downstream, "forged")[0]["user"]["ip"] == "127.0.0.2"
            assert downstream.failures == []
        finally:
            if server.returncode is None:
                server.terminate()
            await server.communicate()
