"""The admin listener: /metrics, /healthz and /readyz for Prometheus, systemd and balancers;
/status (HTML) and /status.json for people and ``statsig-relay status``.

It reads the daemon through the small ``Observed`` interface, so it holds no state of its own
and keeps working across config reloads (it asks again on every request).
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .metrics import RelayMetrics
from .statuspage import render_html


class Observed(Protocol):
    """What the admin endpoints need from the daemon."""

    @property
    def metrics(self) -> RelayMetrics: ...

    def is_healthy(self) -> bool:
        """Alive: every delivery loop runs (a dead loop needs a restart)."""
        ...

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready to take traffic, and the reasons when not."""
        ...

    async def status(self) -> dict[str, Any]:
        """The status document (relay/status.py)."""
        ...


def json_response(status: int, payload: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


def create_admin_app(relay: Observed) -> web.Application:
    """The admin application; served on ``server.admin_listen``."""
    app = web.Application()

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(relay.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        ok = relay.is_healthy()
        return json_response(200 if ok else 503, {"alive": ok})

    async def readyz(_: web.Request) -> web.Response:
        ok, detail = relay.readiness()
        return json_response(200 if ok else 503, detail)

    async def status_json(_: web.Request) -> web.Response:
        return json_response(200, await relay.status())

    async def status_html(_: web.Request) -> web.Response:
        return web.Response(
            text=render_html(await relay.status()),
            content_type="text/html",
            headers={
                "Cache-Control": "no-store",
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
            },
        )

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status_html)
    app.router.add_get("/status.json", status_json)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
