"""The gate in front of a public (browser-facing) source: origin, rate, size, names, client IP.

A source that browsers post to is open to the whole internet, with a credential that is public
by design (a Statsig ``client-`` key, a Segment write key). Its config may ask for:

* ``cors``: which web origins may post (relay/cors.py); others get 403 and no CORS headers.
* ``rate_limit``: requests per second per client IP (relay/ratelimit.py); over it, 429 with
  ``Retry-After``.
* ``max_events``: events per request; more gets 413 and nothing of the request is kept.
* ``allowed_events``: event names to keep (``"statsig::*"`` ends in a wildcard); the others are
  dropped and counted, the rest of the request goes on.
* ``user_ip``: the client IP into ``user.ip`` of events that carry none (Statsig derives the
  country from it). On by default for sources with ``cors``.

The client IP is the peer address, or, when the peer is one of ``server.trusted_proxies``, the
right-most address in ``X-Forwarded-For`` that is not a trusted proxy: a client can write
anything into that header, only what our own proxies appended can be believed.

Each refusal is counted in ``relay_requests_refused_total{source, reason}``.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence

from aiohttp import web

from .cors import CorsPolicy
from .ingest import error_response
from .metrics import RelayMetrics
from .ratelimit import RateLimiter
from .schema import ConfigError
from .sources.base import Parsed, Source, SourceConfig, SourceError

logger = logging.getLogger(__name__)

NOT_ALLOWED = "not_allowed"  # Parsed.dropped reason of events outside allowed_events
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Sequence[str], path: str) -> list[IPNetwork]:
    """CIDRs (or single addresses) for ``server.trusted_proxies``; errors name the entry."""
    networks = []
    for i, value in enumerate(values):
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ConfigError(
                f"{path}[{i}]", f"not an IP address or CIDR such as 10.0.0.0/8: {value!r}"
            ) from None
    return networks


def user_ip_on(config: SourceConfig) -> bool:
    """``user_ip`` as set, or on for a source with ``cors`` (browser traffic)."""
    return config.user_ip if config.user_ip is not None else config.cors is not None


class ClientAddress:
    """Finds the client IP of a request, believing X-Forwarded-For only from trusted proxies."""

    def __init__(self, trusted_proxies: Sequence[str]) -> None:
        self._networks = parse_networks(trusted_proxies, "trusted_proxies")

    def _trusted(self, address: str) -> bool:
        if not self._networks:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)

    def of(self, request: web.BaseRequest) -> str:
        peer = request.remote or ""
        if not self._trusted(peer):
            return peer
        hops = [
            hop.strip()
            for header in request.headers.getall("X-Forwarded-For", [])
            for hop in header.split(",")
        ]
        client = peer
        for hop in reversed(hops):
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                break  # a garbled entry: nothing left of it can be believed
            client = hop
            if not self._trusted(hop):
                break
        return client


class Guard:
    """The public-endpoint controls of one source (see the module docstring)."""

    def __init__(self, source: Source, address: ClientAddress, metrics: RelayMetrics) -> None:
        config = source.config
        self.source_name = source.name
        self.address = address
        self.cors = CorsPolicy(config.cors) if config.cors is not None else None
        self.limiter = RateLimiter(config.rate_limit) if config.rate_limit is not None else None
        self.max_events = config.max_events
        names = config.allowed_events
        self._names = frozenset(n for n in names or () if not n.endswith("*"))
        self._prefixes = tuple(n[:-1] for n in names or () if n.endswith("*"))
        self._filter_names = names is not None
        self.user_ip = user_ip_on(config)
        refused = metrics.requests_refused
        self._refused_origin = refused.labels(source.name, "origin")
        self._refused_rate = refused.labels(source.name, "rate_limited")
        self._refused_size = refused.labels(source.name, "too_many_events")

    @staticmethod
    def needed(source: Source) -> bool:
        c = source.config
        return bool(
            c.cors is not None
            or c.rate_limit is not None
            or c.max_events is not None
            or c.allowed_events is not None
            or c.user_ip
        )

    # -- before the body is read -------------------------------------------------------------
    def admit(self, request: web.BaseRequest) -> web.Response | None:
        """A refusal (403 for a foreign origin, 429 over the rate), or None to go on."""
        origin = request.headers.get("Origin")
        if origin is not None and self.cors is not None and not self.cors.allows(origin):
            self._refused_origin.inc()
            logger.debug("source %s: refused origin %.100s", self.source_name, origin)
            return error_response(403, f"origin {origin[:100]} is not allowed here")
        if self.limiter is not None:
            wait = self.limiter.take(self.address.of(request))
            if wait > 0:
                self._refused_rate.inc()
                retry_after = str(max(1, int(wait + 0.999)))
                return error_response(
                    429, "too many requests from this address", {"Retry-After": retry_after}
                )
        return None

    # -- after parsing -----------------------------------------------------------------------
    def screen(self, request: web.BaseRequest, parsed: Parsed) -> None:
        """Apply max_events (SourceError 413), allowed_events and user_ip to parsed events."""
        events = parsed.events
        if self.max_events is not None:
            # Every message counts, also those a source drops (Segment identify calls).
            count = len(events) + parsed.error_count + sum(parsed.dropped.values())
            if count > self.max_events:
                self._refused_size.inc()
                raise SourceError(
                    413,
                    f"{count} events in one request; this source takes at most {self.max_events}",
                    "too_many_events",
                )
        if self._filter_names and events:
            kept = [e for e in events if self._allowed(e["eventName"])]
            if len(kept) != len(events):
                parsed.dropped[NOT_ALLOWED] = len(events) - len(kept)
                if parsed.dedup_keys:
                    keys = parsed.dedup_keys
                    parsed.dedup_keys = [
                        k
                        for e, k in zip(events, keys, strict=True)
                        if self._allowed(e["eventName"])
                    ]
                parsed.events = events = kept
        if self.user_ip:
            ip = self.address.of(request)
            if ip:
                for event in events:
                    user = event.get("user")
                    if not isinstance(user, dict):
                        event["user"] = {"ip": ip}
                    elif not user.get("ip"):
                        user["ip"] = ip

    def _allowed(self, name: str) -> bool:
        return name in self._names or name.startswith(self._prefixes)

    # -- answers -----------------------------------------------------------------------------
    def decorate(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        """CORS headers on any answer to an allowed origin, errors included."""
        origin = request.headers.get("Origin")
        if origin is not None and self.cors is not None and self.cors.allows(origin):
            response.headers.update(self.cors.answer_headers(origin))

    async def preflight(self, request: web.BaseRequest) -> web.Response:
        """``OPTIONS``: 204 with what the browser may send, or 403 for a foreign origin."""
        origin = request.headers.get("Origin")
        if origin is None or self.cors is None:  # not a CORS preflight
            return web.Response(status=204, headers={"Allow": "POST, OPTIONS"})
        if not self.cors.allows(origin):
            self._refused_origin.inc()
            return error_response(403, f"origin {origin[:100]} is not allowed here")
        headers = self.cors.preflight_headers(origin)
        if request.headers.get("Access-Control-Request-Private-Network") == "true":
            # Chrome asks before a public page reaches a private address (a relay on a LAN
            # or localhost); the origin is one the config lists.
            headers["Access-Control-Allow-Private-Network"] = "true"
        return web.Response(status=204, headers=headers)


def describe_public(config: SourceConfig) -> str:
    """One line of a source's public-endpoint settings for ``statsig-relay check``."""
    parts = []
    if config.cors is not None:
        parts.append(f"cors {', '.join(config.cors.origins)}")
    if config.rate_limit is not None:
        limit = config.rate_limit
        parts.append(f"{limit.per_second:g} requests/s per IP (burst {limit.burst})")
    if config.max_events is not None:
        parts.append(f"≤{config.max_events} events/request")
    if config.allowed_events is not None:
        parts.append(f"{len(config.allowed_events)} allowed event names")
    if user_ip_on(config):
        parts.append("client IP → user.ip")
    return "; ".join(parts)


def check_source(name: str, source: Source) -> None:
    """Config load: the public-endpoint settings of one source; errors name the field.

    ``cors.origins: ["*"]`` is refused unless the source's credentials are public: any page
    on the web could then post with them, and a secret in a page is no secret."""
    config = source.config
    where = f"sources.{name}"
    if config.max_events is not None and config.max_events < 1:
        raise ConfigError(f"{where}.max_events", f"must be 1 or more, got {config.max_events}")
    for i, event_name in enumerate(config.allowed_events or ()):
        if not event_name or "*" in event_name[:-1]:
            raise ConfigError(
                f"{where}.allowed_events[{i}]",
                f"expected a name, or a prefix ending in *; got {event_name!r}",
            )
    cors = config.cors
    if cors is not None and cors.any_origin and not source.credentials_are_public():
        raise ConfigError(
            f"{where}.cors.origins",
            '"*" would let any web page post with this source\'s credentials, which are '
            "secrets here; list the origins of your pages instead",
        )


__all__ = ["NOT_ALLOWED", "ClientAddress", "Guard", "check_source", "describe_public"]
