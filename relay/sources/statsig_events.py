"""Statsig's own ingest shapes, so Statsig SDKs and scripts log through the relay.

Point an SDK's events API at ``http://relay{path_prefix}/v1`` and it posts here unchanged:

* ``{prefix}/v1/log_event`` (server SDKs) and ``{prefix}/v1/rgstr`` (client SDKs): body
  ``{"events": [...], "user"?, "statsigMetadata"?}``, usually gzipped (the ingest handler
  inflates it). An event's ``time`` (epoch ms, or an ISO 8601 string) becomes ``timestamp``;
  ``eventName``, ``user``, ``value``, ``metadata``, ``secondaryExposures`` and
  ``statsigMetadata`` are carried over; a top-level ``user`` fills events that have none.
* ``{prefix}/v1/webhooks/event_webhook`` (Statsig's incoming event webhook): one object or a
  list of ``{"user", "event", "value", "metadata", "timestamp"}``; ``event`` becomes
  ``eventName``.

The SDK key comes in the ``statsig-api-key`` header (any case), or the ``k`` query parameter
that Statsig's browser SDKs use; it is compared in constant time with ``api_keys``.

The browser SDK (``@statsig/js-client``, docs/browser-sdks.md) encodes ``rgstr`` bodies its own
way, flagged in the query string rather than in headers (so that ``sendBeacon`` and simple
requests work): ``gz=1`` is a gzip body without ``Content-Encoding``; ``se=1`` is the JSON in
base64, reversed. Both are undone here (gzip first, as the SDK applies it last), inflating at
most ``MAX_INFLATED`` bytes. The SDK keeps the stable ID once per request, in the top-level
``statsigMetadata.stableID``; it is copied into ``user.customIDs.stableID`` of each event that
has none, and the request's whole ``statsigMetadata`` (the SDK's type and version) is kept on each
event, since a batch to Statsig's log_event mixes requests from many SDKs. SDKs send
their own internal events (``statsig::diagnostics``, exposures) too: they are accepted like any
event and routes filter them. A malformed event is skipped and counted, never the request.
Answers look like Statsig's: ``202 {"success": true}``.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from aiohttp import web

from ..events import MAX_MS, MIN_MS, Event, identity_problem, to_epoch_ms
from ..schema import ConfigError, secret
from .base import (
    Endpoint,
    Parsed,
    Source,
    SourceConfig,
    SourceError,
    event_problem,
    key_matches,
    load_json,
    refuse_shared,
)

KEY_HEADER = "statsig-api-key"
KEY_QUERY = "k"
LOG_EVENT = "log_event"
GZIPPED_QUERY = "gz"  # @statsig/js-client: the body is gzip (no Content-Encoding header)
ENCODED_QUERY = "se"  # @statsig/js-client: the body is reversed base64 of the JSON
MAX_INFLATED = 10_000_000  # Statsig's own request limit (docs/sources.md); more is refused 413
EVENT_WEBHOOK = "event_webhook"


@dataclass(kw_only=True)
class StatsigEventsConfig(SourceConfig):
    type: Literal["statsig_events"] = "statsig_events"
    path_prefix: str = "/statsig"
    api_keys: list[str] = secret(default_factory=list)  # SDK keys senders present
    # Without api_keys every request is refused unless this is set to false (open endpoint).
    require_key: bool = True

    def __post_init__(self) -> None:
        prefix = self.path_prefix.rstrip("/")
        if prefix and not prefix.startswith("/"):
            raise ConfigError("path_prefix", f"must start with '/', got {self.path_prefix!r}")
        self.path_prefix = prefix
        if self.require_key and not [k for k in self.api_keys if k]:
            raise ConfigError(
                "api_keys",
                "no key set: list the SDK keys senders use (e.g. the project's server secret), "
                "or set require_key: false to accept unauthenticated events",
            )
        for i, key in enumerate(self.api_keys):
            if key != key.strip():
                raise ConfigError(f"api_keys[{i}]", "has leading or trailing whitespace")


class StatsigEventsSource(Source):
    kind = "statsig_events"
    config_class = StatsigEventsConfig
    config: StatsigEventsConfig

    def __init__(self, name: str, config: StatsigEventsConfig) -> None:
        super().__init__(name, config)
        self._keys = [k for k in config.api_keys if k]

    def endpoints(self) -> list[Endpoint]:
        base = f"{self.config.path_prefix}/v1"
        return [
            Endpoint(f"{base}/log_event", kind=LOG_EVENT),
            Endpoint(f"{base}/rgstr", kind=LOG_EVENT),
            Endpoint(f"{base}/webhooks/event_webhook", kind=EVENT_WEBHOOK),
        ]

    def warnings(self) -> list[str]:
        if not self._keys:
            return [f"source {self.name!r} accepts events without an API key: set api_keys"]
        return []

    def authenticate(self, request: web.BaseRequest, endpoint: Endpoint, body: bytes) -> None:
        if not self._keys and not self.config.require_key:
            return
        presented = request.headers.get(KEY_HEADER) or request.query.get(KEY_QUERY)
        if not presented:
            raise SourceError(401, f"missing {KEY_HEADER} header")
        if not key_matches(presented.strip(), self._keys):
            raise SourceError(401, f"{KEY_HEADER} is not one of this source's api_keys")

    def credentials_are_public(self) -> bool:
        """Client keys (``client-…``) are made to ship in web pages; server secrets are not."""
        return all(key.startswith("client-") for key in self._keys)

    def parse(
        self, request: web.BaseRequest, endpoint: Endpoint, body: bytes, received_ms: int
    ) -> Parsed:
        query = request.query
        if query.get(GZIPPED_QUERY) == "1":
            body = _gunzip(body)
        if query.get(ENCODED_QUERY) == "1":
            body = _unreverse_base64(body)
        document, deep = load_json(body)
        if endpoint.kind == EVENT_WEBHOOK:
            if isinstance(document, dict):
                items = [document]
            elif isinstance(document, list):
                items = document
            else:
                raise SourceError(400, "expected an event object or a list of them")
            return _parse_items(items, received_ms, None, webhook=True, deep=deep)
        shared_user: Any = None
        if isinstance(document, dict):
            items = document.get("events")
            if not isinstance(items, list):
                raise SourceError(400, 'expected {"events": [...]}')
            shared_user = document.get("user")
            if not isinstance(shared_user, dict):
                shared_user = None
            request_meta = document.get("statsigMetadata")
            stable_id = request_meta.get("stableID") if isinstance(request_meta, dict) else None
            if deep and isinstance(request_meta, dict):
                refuse_shared(request_meta, "statsigMetadata")
        elif isinstance(document, list):
            items = document
            stable_id = request_meta = None
        else:
            raise SourceError(400, 'expected {"events": [...]}')
        parsed = _parse_items(items, received_ms, shared_user, webhook=False, deep=deep)
        if isinstance(stable_id, str) and stable_id:
            for event in parsed.events:
                _add_stable_id(event, stable_id)
        if isinstance(request_meta, dict) and request_meta:
            for event in parsed.events:
                _keep_sdk_identity(event, request_meta)
        return parsed

    def answer(self, parsed: Parsed, accepted: int) -> web.Response:
        payload: dict[str, Any] = {"success": True}
        if parsed.error_count:
            payload["rejected"] = parsed.error_count
            payload["errors"] = parsed.errors
        return web.Response(status=202, body=orjson.dumps(payload), content_type="application/json")

    def describe(self) -> str:
        auth = f"{len(self._keys)} API key(s)" if self._keys else "no API key"
        return f"{super().describe()} ({auth})"


def _parse_items(
    items: Sequence[Any],
    received_ms: int,
    shared_user: dict[str, Any] | None,
    webhook: bool,
    deep: bool,
) -> Parsed:
    """``deep``: check each event (relay/sources/base.py ``load_json``)."""
    parsed = Parsed()
    events = parsed.events
    if deep and shared_user is not None:
        # The request's user is every event's that has none.
        refuse_shared(shared_user, "user")
    for index, item in enumerate(items):
        problem = (deep and event_problem(item)) or normalise_sdk_event(
            item, received_ms, shared_user, webhook
        )
        if problem is None:
            events.append(item)
        else:
            parsed.reject(index, problem)
    if parsed.error_count and not events:
        reasons = "; ".join(parsed.errors)
        raise SourceError(400, f"no usable event in the request: {reasons}")
    return parsed


def normalise_sdk_event(
    item: Any, received_ms: int, shared_user: dict[str, Any] | None, webhook: bool
) -> str | None:
    """Turn one SDK / webhook event into the internal model in place; why not, or None."""
    if not isinstance(item, dict):
        return f"expected an object, got {type(item).__name__}"
    event: Event = item
    if webhook and "event" in event:
        event["eventName"] = event.pop("event")
    name = event.get("eventName")
    if not isinstance(name, str) or not name:
        return "missing event name (event)" if webhook else "missing eventName"
    stamp = event.pop("time") if "time" in event else event.get("timestamp")
    if stamp is None or stamp == "":
        event["timestamp"] = received_ms
    elif type(stamp) is int and MIN_MS <= stamp <= MAX_MS:
        event["timestamp"] = stamp  # already epoch ms: the SDKs' case, kept cheap
    else:
        try:
            event["timestamp"] = to_epoch_ms(stamp)
        except ValueError as exc:
            return str(exc)
    user = event.get("user")
    if user is None:
        if shared_user is not None:
            event["user"] = shared_user
        elif "user" in event:
            del event["user"]
    elif not isinstance(user, dict):
        return f"user must be an object, got {type(user).__name__}"
    metadata = event.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        return f"metadata must be an object, got {type(metadata).__name__}"
    return identity_problem(event)


def _gunzip(body: bytes) -> bytes:
    """A ``gz=1`` body. aiohttp already inflated it if the sender also set Content-Encoding."""
    if body[:2] != b"\x1f\x8b":
        return body
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, MAX_INFLATED)
    except zlib.error as exc:
        raise SourceError(400, f"gz=1 but the body is not valid gzip: {exc}") from None
    if inflater.unconsumed_tail:
        raise SourceError(413, f"body inflates to more than {MAX_INFLATED} bytes")
    if not inflater.eof:  # zlib returns what it could without an error when the stream stops
        raise SourceError(400, "gz=1 but the gzip stream is truncated")
    return out


def _unreverse_base64(body: bytes) -> bytes:
    """A ``se=1`` body: the SDK's btoa(json), reversed."""
    try:
        return base64.b64decode(body.strip()[::-1], validate=True)
    except (binascii.Error, ValueError):
        raise SourceError(400, "se=1 but the body is not reversed base64") from None


def _keep_sdk_identity(event: Event, request_meta: dict[str, Any]) -> None:
    """The request's ``statsigMetadata`` (which SDK sent it: ``sdkType``, ``sdkVersion``, …)
    onto each event, under the event's own keys: a batch to Statsig mixes requests from many
    SDKs, and Statsig's log_event reads the identity per event."""
    own = event.get("statsigMetadata")
    if isinstance(own, dict) and own:
        event["statsigMetadata"] = {**request_meta, **own}
    else:
        event["statsigMetadata"] = request_meta


def _add_stable_id(event: Event, stable_id: str) -> None:
    """``user.customIDs.stableID`` from the request's statsigMetadata, unless set already."""
    user = event.get("user")
    if not isinstance(user, dict):
        event["user"] = {"customIDs": {"stableID": stable_id}}
        return
    ids = user.get("customIDs")
    if isinstance(ids, dict):
        if ids.get("stableID"):
            return
        ids = {**ids, "stableID": stable_id}
    else:
        ids = {"stableID": stable_id}
    # A copy: the user object may be shared by every event of the request.
    event["user"] = {**user, "customIDs": ids}
