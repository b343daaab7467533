"""Wiring and lifecycle: the one place where the daemon is put together.

``Relay`` owns the spool, the targets and their deliverers, the sources behind the public
listener, and the admin listener (``admin.py``). Start-up order: spool → targets → background
tasks → deliverers → admin → public listener (so nothing is acknowledged before it can be
stored). Every step pushes its own close onto one ``AsyncExitStack`` (aiohttp's
``cleanup_ctx`` idea), so shutdown, and a start-up that fails half-way (a port taken), close
exactly what was opened, in reverse order. Shutdown is bounded by one deadline,
``shutdown_grace`` from the moment stop begins: no new send starts, the listeners stop accepting
and finish their requests in flight, sends in flight finish or are cancelled at the deadline,
and whatever was not delivered stays in the spool. A second SIGTERM/SIGINT ends the waiting at
once (what was acknowledged is in the spool either way).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import __version__, systemd
from .admin import create_admin_app
from .config import Config, load_config, split_host_port
from .deliver import Deliverer
from .events import now_ms
from .guard import ClientAddress, Guard
from .httplog import ProtocolLog
from .ingest import Handler, Ingest, error_response
from .metrics import RelayMetrics
from .router import CompiledRoute, Router
from .schema import ConfigError
from .sources import SOURCES, Source
from .spool.backends import create_spool
from .spool.base import Spool
from .state import KeyLedger
from .status import CounterRing, Redactor, TargetState, document, read_counters
from .targets import TARGETS, Target

logger = logging.getLogger(__name__)

STATS_INTERVAL = 5.0
STATE_EXPIRY_INTERVAL = 300.0
LISTENER_CLOSE_FLOOR = 0.2  # s: closing an idle listener, even when the grace is spent
# Young-generation GC threshold (CPython's default is 700): every request allocates ~1000
# containers (its parsed events), so the default ran a collection per request and, through
# promotions, a full collection of the whole heap (~12 ms each) a few times a second.
GC_GEN0_THRESHOLD = 10_000


def settle_heap() -> None:
    """Collect once, then exempt everything alive (modules, app, config) from future
    collections, and collect the young generation less often.

    Full collections were the largest cause of slow ingest answers (bench at 100k events/s:
    p99 30 ms → 8 ms). Only for the daemon process: tests run many relays in one process.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 10, 10)


@dataclass
class Pipeline:
    """Everything that a config reload replaces: sources, routes, targets."""

    sources: dict[str, Source]
    router: Router
    endpoints: dict[tuple[str, str], Handler]


def build_targets(config: Config) -> dict[str, Target]:
    return {name: TARGETS[cfg.type](name, cfg) for name, cfg in config.targets.items()}


def build_sources(config: Config) -> dict[str, Source]:
    return {name: SOURCES[cfg.type](name, cfg) for name, cfg in config.sources.items()}


def compile_routes(config: Config, targets: dict[str, Target]) -> list[CompiledRoute]:
    return [
        CompiledRoute(route, target.accepts, target.takes_statsig_internal)
        for route in config.routes
        for target in [targets[route.to]]
    ]


class Relay:
    """The daemon. ``await relay.start()`` … ``await relay.stop()``, or ``relay.run()``."""

    def __init__(self, config: Config, metrics: RelayMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or RelayMetrics()
        self.spool: Spool = create_spool(config.spool)
        self.ledger = KeyLedger(self.spool)  # kept across reloads
        self.targets: dict[str, Target] = {}
        self.deliverers: dict[str, Deliverer] = {}
        self.pipeline: Pipeline | None = None
        self.ingest: Ingest | None = None
        self._stack: contextlib.AsyncExitStack | None = None  # set while started
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()  # a second signal: stop waiting
        self._deadline: float | None = None  # loop time at which a stop's waiting ends
        self.public_port: int | None = None
        self.admin_port: int | None = None
        self.started_at = time.time()
        self.last_reload: dict[str, Any] | None = None  # {"result", "at", "error"}
        self.counter_ring = CounterRing(interval=STATS_INTERVAL)  # "last minute" on /status
        self.redact = Redactor.of(config)

    # -- assembling ------------------------------------------------------------------------
    def _pipeline(self, config: Config, targets: dict[str, Target]) -> Pipeline:
        router = Router(compile_routes(config, targets), self.metrics)
        sources = build_sources(config)
        ingest = Ingest(
            router,
            self.spool,
            self.ledger,
            self.metrics,
            config.server.max_body,
            config.server.retry_after,
            config.server.body_timeout,
        )
        endpoints: dict[tuple[str, str], Handler] = {}
        address = ClientAddress(config.server.trusted_proxies)
        for source in sources.values():
            guard = Guard(source, address, self.metrics) if Guard.needed(source) else None
            for endpoint in source.endpoints():
                endpoints[(endpoint.method, endpoint.path)] = ingest.handler(
                    source, endpoint, guard
                )
                if guard is not None and guard.cors is not None:
                    endpoints[("OPTIONS", endpoint.path)] = guard.preflight
            for warning in source.warnings():
                logger.warning("%s", warning, extra={"source": source.name})
        for name in targets:
            if not any(route.to == name for route in config.routes):
                logger.warning(
                    "target %r has no route; it only drains what is spooled",
                    name,
                    extra={"target": name},
                )
        self.ingest = ingest
        return Pipeline(sources, router, endpoints)

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        """Public listener: one dict look-up to the source endpoint (swappable on reload)."""
        pipeline = self.pipeline
        handler = pipeline.endpoints.get((request.method, request.path)) if pipeline else None
        if handler is None:
            if pipeline and any(path == request.path for _, path in pipeline.endpoints):
                return error_response(405, f"{request.method} is not allowed on {request.path}")
            return error_response(404, f"no source serves {request.path}")
        return await handler(request)

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self._stack is not None

    async def start(self) -> None:
        """Open everything; if a step fails, close what was opened (in reverse) and raise."""
        if self._stack is not None:
            raise RuntimeError("relay already started")
        async with contextlib.AsyncExitStack() as stack:
            await self._open(stack)
            self._stack = stack.pop_all()  # success: stop() closes it
        cfg = self.config
        logger.info(
            "statsig-relay listening on %s (admin %s); %d sources, %d routes, %d targets",
            cfg.server.listen,
            cfg.server.admin_listen,
            len(cfg.sources),
            len(cfg.routes),
            len(cfg.targets),
        )

    async def _open(self, stack: contextlib.AsyncExitStack) -> None:
        """Start-up steps; each pushes its close right after it has something to close."""
        cfg = self.config
        self.started_at = time.time()
        self.counter_ring.sample(self.started_at, read_counters(self.metrics.registry))
        await self.spool.open()
        stack.push_async_callback(self._close_spool)
        self.metrics.spool_limit_bytes.set(getattr(cfg.spool, "max_size", 0))
        self._watch_spool_room()
        stack.push_async_callback(self._close_targets)  # those in self.targets at that time
        for name, target in build_targets(cfg).items():
            await target.open()
            self.targets[name] = target
        self.pipeline = self._pipeline(cfg, self.targets)
        background = [
            asyncio.create_task(self._refresh_stats(), name="spool-stats"),
            asyncio.create_task(self._expire_state(), name="state-expiry"),
        ]
        stack.push_async_callback(_cancel, background)
        stack.push_async_callback(self._stop_deliverers)  # those running at that time
        for target in self.targets.values():
            self._start_deliverer(target)
        admin = create_admin_app(self)
        self.admin_port = await self._listen(
            stack, admin, cfg.server.admin_listen, "admin", reuse_port=False
        )
        self.public_port = await self._listen(
            stack, None, cfg.server.listen, "public", reuse_port=cfg.server.reuse_port
        )

    def _watch_spool_room(self) -> None:
        """The spool's write gauges are read at each scrape: a full disk shows at once."""
        spool, m = self.spool, self.metrics
        m.spool_writable.set_function(lambda: 0.0 if spool.write_problem()[0] else 1.0)
        for reason in ("size_limit", "disk_full"):
            m.spool_refusing.labels(reason).set_function(
                lambda reason=reason: 1.0 if spool.write_problem()[0] == reason else 0.0
            )

    def _start_deliverer(self, target: Target) -> None:
        deliverer = Deliverer(target, self.spool, self.metrics, lambda text: self.redact(text))
        self.deliverers[target.name] = deliverer
        deliverer.start()

    async def _stop_deliverers(self) -> None:
        grace = self._remaining()
        try:  # kept in self.deliverers while they stop, so hurry() reaches them
            await asyncio.gather(*(d.stop(grace) for d in self.deliverers.values()))
        finally:
            self.deliverers = {}

    def _remaining(self) -> float:
        """What is left of the shutdown grace (all of it outside a stop)."""
        if self._hurry.is_set():
            return 0.0
        if self._deadline is None:
            return float(self.config.server.shutdown_grace)
        return max(0.0, self._deadline - asyncio.get_running_loop().time())

    async def _close_listener(self, runner: web.AppRunner, name: str) -> None:
        """Stop accepting, let requests in flight finish until the stop's deadline, unless a
        second signal says not to wait: then the process exits with them unanswered (never
        acknowledged, so nothing is lost). aiohttp's own wait (shutdown_timeout) is not the
        bound: it waits that long, then as long again for a cancelled handler, and a handler
        waiting on a frozen spool outlasts both."""
        closing = asyncio.ensure_future(runner.cleanup())
        hurry = asyncio.ensure_future(self._hurry.wait())
        await asyncio.wait(
            (closing, hurry),
            timeout=max(self._remaining(), LISTENER_CLOSE_FLOOR),
            return_when=asyncio.FIRST_COMPLETED,
        )
        hurry.cancel()
        if not closing.done():
            logger.warning("%s listener: not waiting for its requests in flight", name)
            closing.cancel()
        await asyncio.gather(closing, hurry, return_exceptions=True)

    async def _close_spool(self) -> None:
        """Close the spool; a commit under way (a frozen Redis) is waited for only until the
        stop's deadline."""
        await self.spool.close(max(self._remaining(), LISTENER_CLOSE_FLOOR))

    async def _close_targets(self) -> None:
        targets, self.targets = self.targets, {}
        for target in targets.values():
            await target.close()

    async def _listen(
        self,
        stack: contextlib.AsyncExitStack,
        app: web.Application | None,
        address: str,
        name: str,
        *,
        reuse_port: bool,
    ) -> int:
        """Serve ``app`` (the admin listener), or with ``app`` None the public listener:
        aiohttp's low-level server straight to :meth:`_dispatch`, without the application's
        router, middlewares and signals a source does not use (a third of a small request's
        cost)."""
        host, port = split_host_port(address)
        server_options: dict[str, Any] = {
            "access_log": None,
            # aiohttp's keep-alive timer closes a connection that has not delivered a complete
            # request head this long after it opened or after its previous answer: the header
            # phase's limit (a slowloris), and the idle keep-alive limit.
            "keepalive_timeout": self.config.server.header_timeout,
            "logger": ProtocolLog(name, self.metrics.bad_http_requests),
        }
        grace = self.config.server.shutdown_grace
        runner: web.BaseRunner[Any]
        if app is not None:
            runner = web.AppRunner(app, shutdown_timeout=grace, **server_options)
        else:
            max_body = self.config.server.max_body
            loop = asyncio.get_running_loop()

            def request(*parts: Any) -> web.BaseRequest:
                return web.BaseRequest(*parts, loop, client_max_size=max_body)

            server = web.Server(self._dispatch, request_factory=request, **server_options)
            runner = web.ServerRunner(server, shutdown_timeout=grace)
        await runner.setup()
        # Cleanup stops accepting, then lets requests in flight finish (shutdown_timeout).
        stack.push_async_callback(self._close_listener, runner, name)
        site = web.TCPSite(runner, host, port, reuse_address=True, reuse_port=reuse_port)
        try:
            await site.start()
        except OSError as exc:
            key = "listen" if name == "public" else "admin_listen"
            shareable = exc.errno == errno.EADDRINUSE and name == "public" and not reuse_port
            hint = " (relays meant to share a port set server.reuse_port)" if shareable else ""
            # asyncio's bind error repeats the address as a tuple; a resolver error
            # (socket.gaierror) has a negative errno and its own text.
            positive = isinstance(exc.errno, int) and exc.errno > 0
            reason = os.strerror(exc.errno) if positive else exc.strerror or str(exc)
            raise OSError(exc.errno, f"server.{key} {address}: {reason}{hint}") from None
        return int(runner.addresses[0][1])  # the bound port, also when port 0 was asked for

    async def stop(self) -> None:
        """Bounded, ordered drain (see the module docstring); a no-op when not started."""
        stack, self._stack = self._stack, None
        if stack is None:
            return
        self._deadline = asyncio.get_running_loop().time() + self.config.server.shutdown_grace
        for deliverer in self.deliverers.values():  # before anything else: no new send
            deliverer.stop_claiming()
        try:
            await stack.aclose()
        finally:
            self._deadline = None

    def hurry(self) -> None:
        """End a stop's waiting now: sends in flight are cancelled (their rows stay in the
        spool, delivered after the next start), requests in flight go unanswered."""
        if self._hurry.is_set():
            return
        self._hurry.set()
        sends = sum(d.sends_in_flight[0] for d in self.deliverers.values())
        logger.warning(
            "second signal: stopping now; %d sends in flight cancelled, their rows stay in "
            "the spool",
            sends,
        )
        for deliverer in self.deliverers.values():
            deliverer.abandon()

    async def reload(self, path: str) -> bool:
        """Apply a changed config without dropping anything; a bad file keeps the old one.

        A failure before the swap (the file, or a new target that cannot open) leaves the
        running config in place and closes what this attempt opened; it is logged, counted
        and shown on the status page like a config error.
        """
        try:
            new = load_config(path)
        except ConfigError as exc:
            return self._reload_refused("; ".join(str(exc).splitlines()))  # every error found
        if new.server != self.config.server or new.spool != self.config.spool:
            logger.warning("reload: server and spool settings need a restart; applying the rest")
        old_targets = self.targets
        targets: dict[str, Target] = {}
        opened: list[Target] = []
        for name, cfg in new.targets.items():
            current = old_targets.get(name)
            if current is not None and current.config == cfg:
                targets[name] = current
                continue
            try:
                target = TARGETS[cfg.type](name, cfg)
                await target.open()
            except Exception as exc:  # a path it cannot write, a bad URL: the file's fault
                for done in opened:
                    await done.close()
                why = Redactor.of(new)(f"{type(exc).__name__}: {exc}")
                return self._reload_refused(f"targets.{name}: could not open: {why}")
            opened.append(target)
            targets[name] = target
        # Swap what ingest uses first, then retire deliverers of removed or changed targets.
        new.server, new.spool = self.config.server, self.config.spool
        self.pipeline = self._pipeline(new, targets)
        retired = [n for n, t in old_targets.items() if targets.get(n) is not t]
        await asyncio.gather(
            *(self.deliverers.pop(n).stop(self.config.server.shutdown_grace) for n in retired)
        )
        for name in retired:
            await old_targets[name].close()
        self.targets = targets
        for name, target in targets.items():
            if name not in self.deliverers:
                self._start_deliverer(target)
        self.config = new
        self.redact = Redactor.of(new)
        self.metrics.config_reloads.labels("ok").inc()
        self.last_reload = {"result": "ok", "at": _iso_now(), "error": ""}
        logger.info(
            "config reloaded: %d sources, %d routes, %d targets",
            len(new.sources),
            len(new.routes),
            len(new.targets),
        )
        return True

    def _reload_refused(self, error: str) -> bool:
        self.metrics.config_reloads.labels("error").inc()
        logger.error("reload refused, keeping the running config: %s", error)
        self.last_reload = {"result": "error", "at": _iso_now(), "error": error}
        return False

    def request_stop(self) -> None:
        """SIGTERM/SIGINT: the first drains (``shutdown_grace``), a second stops at once."""
        if self._stop.is_set():
            self.hurry()
        self._stop.set()

    async def run_until_stopped(self, config_path: str | None = None) -> None:
        """Start, serve until SIGTERM/SIGINT, reload on SIGHUP, then drain and stop."""
        loop = asyncio.get_running_loop()
        await self.start()
        settle_heap()
        reloads: list[asyncio.Task[Any]] = []

        def on_hup() -> None:
            if config_path:
                reloads.append(asyncio.create_task(self._reload_notified(config_path)))

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        systemd.notify("READY=1", f"STATUS=relaying; admin on {self.config.server.admin_listen}")
        watchdog = asyncio.create_task(systemd.watchdog_loop(self.is_healthy))
        try:
            await self._stop.wait()
        finally:
            systemd.notify("STOPPING=1")
            logger.info(
                "stopping: no new sends; draining in-flight requests and sends for up to %gs "
                "(server.shutdown_grace; a second SIGTERM or SIGINT stops at once)",
                self.config.server.shutdown_grace,
            )
            watchdog.cancel()
            await asyncio.gather(*reloads, return_exceptions=True)
            await self.stop()
            logger.info("stopped")

    async def _reload_notified(self, path: str) -> None:
        systemd.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            await self.reload(path)
            settle_heap()  # the replaced pipeline is garbage now; the new one is long-lived
        except Exception as exc:  # a bug: the daemon keeps running on what it has
            logger.exception("reload failed")
            self._reload_refused(self.redact(f"internal error: {type(exc).__name__}: {exc}"))
        finally:
            systemd.notify("READY=1")

    # -- background work -------------------------------------------------------------------
    async def _refresh_stats(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.update_spool_metrics()
            self.counter_ring.sample(time.time(), read_counters(self.metrics.registry))
            await asyncio.sleep(STATS_INTERVAL)

    async def update_spool_metrics(self) -> None:
        stats = await self.spool.stats()
        m = self.metrics
        now = now_ms()
        for name in set(self.targets) | set(stats.queued) | set(stats.dead):
            depth = stats.queued.get(name)
            m.spool_events.labels(name).set(depth.events if depth else 0)
            oldest = depth.oldest_received_ms if depth else None
            m.spool_oldest_age.labels(name).set(max(0, now - oldest) / 1000 if oldest else 0)
            dead = stats.dead.get(name)
            m.dlq_events.labels(name).set(dead.events if dead else 0)
            target = self.targets.get(name)
            held = depth.events if depth and target is not None and target.health.failing else 0
            m.target_held_events.labels(name).set(held)
        m.spool_bytes.set(stats.bytes_used)

    async def _expire_state(self) -> None:
        while True:
            await asyncio.sleep(STATE_EXPIRY_INTERVAL)
            expire = getattr(self.spool, "expire_state", None)
            if expire is not None:
                with contextlib.suppress(Exception):
                    await expire(now_ms())

    # -- admin -----------------------------------------------------------------------------
    def is_healthy(self) -> bool:
        return all(d.running for d in self.deliverers.values())

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether this relay can accept and commit events. A target's health is not part of
        it (one expired key must not take every replica out of a load balancer): it is on
        /status, the metrics and the RelayTargetFailing alert."""
        problems: list[str] = []
        if not self.started:
            problems.append("starting")
        reason, problem = self.spool.write_problem()
        if reason:
            problems.append(problem)
        for name, deliverer in self.deliverers.items():
            if not deliverer.running:
                problems.append(f"target {name}: delivery loop is not running")
        targets = {}
        for name, target in self.targets.items():
            health = target.health
            targets[name] = {
                "state": health.state.value,
                "failing": health.failing,
                "reason": self.redact(health.reason),
                "last_error": self.redact(
                    self.deliverers[name].last_error if name in self.deliverers else ""
                ),
            }
        return not problems, {"ready": not problems, "problems": problems, "targets": targets}

    async def status(self) -> dict[str, Any]:
        """The status document (relay/status.py) for /status, /status.json and `status`."""
        stats = await self.spool.stats()
        now = time.time()
        pipeline = self.pipeline
        targets = []
        for name, target in self.targets.items():
            depth = stats.queued.get(name)
            dead = stats.dead.get(name)
            deliverer = self.deliverers.get(name)
            oldest = depth.oldest_received_ms if depth else None
            targets.append(
                TargetState(
                    name=name,
                    type=target.config.type,
                    describe=target.describe(),
                    queued=depth.events if depth else 0,
                    oldest_age_s=max(0.0, now - oldest / 1000) if oldest else 0.0,
                    dead=dead.events if dead else 0,
                    state=target.health.state.value,
                    state_reason=target.health.reason,
                    state_since=target.health.since,
                    held=(depth.events if depth else 0) if target.health.failing else 0,
                    last_error=deliverer.last_error if deliverer else "",
                    backoff_s=deliverer.backoff_s(now) if deliverer else 0.0,
                )
            )
        limit = int(self.config.spool.max_size)
        ok, detail = self.readiness()
        return document(
            version=__version__,
            started_at=self.started_at,
            now=now,
            config_path=self.config.path,
            last_reload=self.last_reload,
            sources={n: s.kind for n, s in (pipeline.sources.items() if pipeline else ())},
            routes=[(r.name, list(r.sources), r.to) for r in self.config.routes],
            targets=targets,
            spool={
                "backend": self.config.spool.backend,
                "bytes": stats.bytes_used,
                "limit_bytes": limit,
                "used_percent": round(100 * stats.bytes_used / limit, 1) if limit else 0.0,
            },
            ready=(ok, detail["problems"]),
            current=read_counters(self.metrics.registry),
            base=self.counter_ring.base(now),
            redact=self.redact,
        )


def _iso_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
