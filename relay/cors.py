"""Cross-origin access to a source, so browser SDKs can post to the relay from a web page.

A source with ``cors: {origins: [...]}`` answers the browser's preflight (``OPTIONS``) with 204
and the methods and request headers the Statsig and Segment browser SDKs send, and puts
``Access-Control-Allow-Origin`` on every answer to an allowed origin, errors included (without
it the page cannot read why it was refused, nor honour ``Retry-After``). A request from any
other origin gets no CORS headers and is refused with 403 by the ingest handler.

Origins are exact (``https://app.example.com``, scheme and port included), a wildcard over
subdomains (``https://*.example.com`` matches ``https://a.example.com`` and
``https://a.b.example.com``, not ``https://example.com``), or ``"*"`` for any origin, which
config load allows only on sources whose credentials are not secrets (see relay/guard.py).
Requests without an ``Origin`` header (servers, curl) are not cross-origin requests and pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .schema import ConfigError, Duration

# What the SDKs put on their requests (read from their source; docs/browser-sdks.md):
# @statsig/js-client sends the statsig-* headers; analytics-next sends Authorization (Basic,
# the write key) and X-Retry-Count; server SDKs add statsig-api-key and the client time.
SDK_HEADERS = (
    "Content-Type",
    "Content-Encoding",
    "Authorization",
    "X-Retry-Count",
    "statsig-api-key",
    "statsig-client-time",
    "statsig-event-count",
    "statsig-retry-count",
    "statsig-sdk-type",
    "statsig-sdk-version",
)
ALLOW_METHODS = "POST, OPTIONS"
# A page's fetch() cannot read a response header outside the CORS safelist unless it is
# exposed; the SDKs read Retry-After on 429 and 503.
EXPOSE_HEADERS = "Retry-After"
ANY = "*"


@dataclass(kw_only=True)
class CorsConfig:
    origins: list[str] = field(default_factory=list)
    max_age: Duration = Duration(600.0)  # how long a browser may cache a preflight answer
    headers: list[str] = field(default_factory=list)  # request headers to allow beyond the SDKs'

    def __post_init__(self) -> None:
        if not self.origins:
            raise ConfigError("origins", "list at least one origin, e.g. https://app.example.com")
        for i, origin in enumerate(self.origins):
            problem = _origin_problem(origin)
            if problem:
                raise ConfigError(f"origins[{i}]", problem)
        for i, header in enumerate(self.headers):
            if not header or any(c in header for c in " ,:\r\n"):
                raise ConfigError(f"headers[{i}]", f"not a header name: {header!r}")

    @property
    def any_origin(self) -> bool:
        return ANY in self.origins


def _origin_problem(origin: str) -> str | None:
    if origin == ANY:
        return None
    scheme, sep, rest = origin.partition("://")
    if not sep or scheme not in ("http", "https") or not rest:
        return f"expected scheme://host[:port] such as https://app.example.com, got {origin!r}"
    if "/" in rest or "?" in rest or "#" in rest:
        return f"an origin has no path: {origin!r} (browsers send scheme://host[:port] only)"
    host = rest.removeprefix("*.")
    if "*" in host or not host:
        return f"a wildcard may only start the host (https://*.example.com): {origin!r}"
    return None


class CorsPolicy:
    """The compiled ``cors`` block of one source: which origins, and the headers to answer."""

    def __init__(self, config: CorsConfig) -> None:
        self.any_origin = config.any_origin
        self._exact = frozenset(o.lower() for o in config.origins if "://*." not in o)
        # "https://*.example.com" → ("https://", ".example.com", ":port" or "")
        self._wildcards: list[tuple[str, str]] = []
        for origin in config.origins:
            scheme, sep, rest = origin.lower().partition("://*.")
            if sep:
                self._wildcards.append((scheme + "://", "." + rest))
        allowed = dict.fromkeys(h.lower() for h in (*SDK_HEADERS, *config.headers))
        self.allow_headers = ", ".join(allowed)
        self.max_age = str(int(config.max_age))

    def allows(self, origin: str) -> bool:
        if self.any_origin:
            return True
        origin = origin.lower()
        if origin in self._exact:
            return True
        for scheme, suffix in self._wildcards:
            if origin.startswith(scheme) and origin.endswith(suffix):
                label = origin[len(scheme) : -len(suffix)]
                if label and "/" not in label and ":" not in label:
                    return True
        return False

    def answer_headers(self, origin: str) -> dict[str, str]:
        """The headers every answer to an allowed ``origin`` carries."""
        if self.any_origin:
            return {
                "Access-Control-Allow-Origin": ANY,
                "Access-Control-Expose-Headers": EXPOSE_HEADERS,
            }
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Expose-Headers": EXPOSE_HEADERS,
            "Vary": "Origin",
        }

    def preflight_headers(self, origin: str) -> dict[str, str]:
        """The headers of the 204 answer to an allowed preflight."""
        headers = self.answer_headers(origin)
        headers.update(
            {
                "Access-Control-Allow-Methods": ALLOW_METHODS,
                "Access-Control-Allow-Headers": self.allow_headers,
                "Access-Control-Max-Age": self.max_age,
            }
        )
        if not self.any_origin:
            headers["Vary"] = (
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
            )
        return headers


__all__ = ["ANY", "SDK_HEADERS", "CorsConfig", "CorsPolicy"]
