"""Heap: events through the bulk track API, gate and experiment assignments as user properties.

What Statsig's own Heap integration does, from the relay: every event becomes a Heap server-side
event (``POST /api/track``, ≤ 1000 a request) for the user the event is about, and exposures set
user properties (``POST /api/add_user_properties``) so Heap can segment users by the gates they
pass and the experiment groups they are in.

Wire facts (developers.heap.io): ``identity`` ≤ 255 characters; property keys and string
values under 1024 characters, values strings or numbers; ``idempotency_key`` makes a resent
event count once; 15,000 events/minute per app_id; no user property may be named ``id``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from ..events import (
    EXPERIMENT_EXPOSURE,
    EXPOSURE_CATEGORIES,
    GATE_EXPOSURE,
    Event,
    category_of,
    exposure_metadata,
    iso8601_from_ms,
    now_ms,
    to_epoch_ms,
    unit_id,
)
from ..schema import ConfigError
from .base import DELIVERED, Batch, Outcome, Target, TargetConfig, hide_password, json_headers
from .ratelimit import TokenBucket

logger = logging.getLogger(__name__)

REGIONS = {"us": "https://heapanalytics.com", "eu": "https://c.eu.heap-api.com"}
MAX_EVENTS = 1000  # per bulk track request, and users per add_user_properties request
MAX_CHARS = 1023  # property keys and string values must be under 1024 characters
MAX_IDENTITY = 255
DROP_LOG_INTERVAL = 60.0  # seconds between warnings about events without an identity


@dataclass(kw_only=True)
class HeapConfig(TargetConfig):
    type: Literal["heap"] = "heap"
    app_id: str
    region: Literal["us", "eu"] = "us"
    base_url: str | None = None  # overrides region (tests, proxies)
    user_properties: bool = True  # gate → "true"/"false", experiment → group name
    gate_property_prefix: str = "Statsig Gate: "
    experiment_property_prefix: str = "Statsig Experiment: "
    rate_limit_per_minute: int = 15_000  # Heap's documented limit per app_id
    batch_max_events: int = MAX_EVENTS

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.app_id.strip():
            raise ConfigError("app_id", "must not be empty")
        if self.batch_max_events > MAX_EVENTS:
            raise ConfigError("batch_max_events", f"at most {MAX_EVENTS} (Heap's bulk track limit)")
        if self.rate_limit_per_minute < 1:
            raise ConfigError("rate_limit_per_minute", "must be at least 1")
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            raise ConfigError("base_url", f"expected an http(s) URL, got {self.base_url!r}")

    def api_base(self) -> str:
        return (self.base_url or REGIONS[self.region]).rstrip("/")


def cut(text: str, limit: int = MAX_CHARS) -> str:
    return text if len(text) <= limit else text[:limit]


def _put(props: dict[str, Any], key: str, value: Any) -> None:
    """Store one property as Heap takes it: a number, or a string under 1024 characters."""
    if value is None:
        return
    if isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return
        props[cut(key)] = value
        return
    elif isinstance(value, list | tuple):
        # Heap itself joins arrays with "||"; doing it here keeps the 1024 limit ours to apply.
        value = "||".join(str(v) for v in value if v is not None and not isinstance(v, dict))
    elif not isinstance(value, str):
        value = orjson.dumps(value).decode()
    props[cut(key)] = cut(value)


def flatten(
    props: dict[str, Any], source: dict[str, Any], prefix: str = "", depth: int = 0
) -> None:
    """Nested objects become dotted keys (``a.b``); Heap's properties are one level deep."""
    for key, value in source.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and depth < 4:
            flatten(props, value, f"{name}.", depth + 1)
        else:
            _put(props, name, value)


def idempotency_key(event: Event) -> str:
    """The event's timeUUID; else a digest of its content. Either is stable across redelivery."""
    time_uuid = event.get("timeUUID")
    if time_uuid:
        return cut(str(time_uuid), 255)
    digest = hashlib.blake2b(orjson.dumps(event, option=orjson.OPT_SORT_KEYS), digest_size=16)
    return "relay-" + digest.hexdigest()


def _timestamp(event: Event) -> str:
    value = event.get("timestamp")
    try:
        ms = value if type(value) is int else to_epoch_ms(value)
    except ValueError:
        ms = now_ms()
    return iso8601_from_ms(ms)


@dataclass(slots=True)
class Encoded:
    """One batch in Heap's shapes: track events, users' properties, and what was left out."""

    events: list[dict[str, Any]]
    users: list[dict[str, Any]]
    no_identity: int = 0
    identity_too_long: int = 0


def encode(events: list[Event], config: HeapConfig) -> Encoded:
    """Map Statsig events to Heap bulk track events and per-user properties."""
    out = Encoded([], [])
    users: dict[str, dict[str, Any]] = {}
    gate_prefix = config.gate_property_prefix
    experiment_prefix = config.experiment_property_prefix
    for event in events:
        identity = unit_id(event)
        if not identity:
            out.no_identity += 1
            continue
        if len(identity) > MAX_IDENTITY:
            out.identity_too_long += 1
            continue
        name = event.get("eventName") or ""
        category = category_of(name)
        exposure = category in EXPOSURE_CATEGORIES
        metadata = exposure_metadata(event) if exposure else event.get("metadata")
        props: dict[str, Any] = {}
        if isinstance(metadata, dict):
            flatten(props, metadata)
        value = event.get("value")
        if value is not None and value != "":
            _put(props, "value", value)
        out.events.append(
            {
                "identity": identity,
                "event": cut(name),
                "timestamp": _timestamp(event),
                "properties": props,
                "idempotency_key": idempotency_key(event),
            }
        )
        if not config.user_properties or not exposure or not isinstance(metadata, dict):
            continue
        if category == GATE_EXPOSURE and metadata.get("gate"):
            passed = metadata.get("gateValue")
            passed = passed if isinstance(passed, bool) else str(passed).lower() == "true"
            key, prop = gate_prefix + str(metadata["gate"]), "true" if passed else "false"
        elif category == EXPERIMENT_EXPOSURE and metadata.get("config"):
            group = metadata.get("experimentGroupName")
            if not group:
                continue
            key, prop = experiment_prefix + str(metadata["config"]), group
        else:
            continue
        if cut(key).lower() == "id":  # Heap reserves "id"
            continue
        _put(users.setdefault(identity, {}), key, prop)  # later exposures win
    out.users = [{"identity": who, "properties": p} for who, p in users.items()]
    return out


class HeapTarget(Target):
    """Bulk track plus user properties; see the module docstring for the wire format."""

    kind = "heap"
    config_class = HeapConfig
    config: HeapConfig

    def __init__(self, name: str, config: HeapConfig) -> None:
        super().__init__(name, config)
        base = config.api_base()
        self.track_url = f"{base}/api/track"
        self.users_url = f"{base}/api/add_user_properties"
        self.bucket = TokenBucket.per_minute(config.rate_limit_per_minute, config.batch_max_events)
        self._last_drop_log = -math.inf

    async def send(self, batch: Batch) -> Outcome:
        cfg = self.config
        encoded = encode(batch.events(), cfg)
        self._count_drops(encoded)
        headers = json_headers()
        app_id = cfg.app_id
        for start in range(0, len(encoded.events), MAX_EVENTS):
            part = encoded.events[start : start + MAX_EVENTS]
            await self.bucket.acquire(len(part))
            body = orjson.dumps({"app_id": app_id, "events": part})
            outcome = await self.post(self.track_url, body, headers)
            if not outcome.ok:
                return outcome
        # After the events: a failure here resends them, and their idempotency keys make
        # Heap count each once.
        for start in range(0, len(encoded.users), MAX_EVENTS):
            body = orjson.dumps(
                {"app_id": app_id, "users": encoded.users[start : start + MAX_EVENTS]}
            )
            outcome = await self.post(self.users_url, body, headers)
            if not outcome.ok:
                return Outcome(
                    outcome.verdict,
                    f"add_user_properties: {outcome.reason}",
                    outcome.retry_after,
                    outcome.status,
                )
        return DELIVERED

    def _count_drops(self, encoded: Encoded) -> None:
        """Events Heap cannot attribute to a user are dropped here, counted, never sent."""
        dropped = encoded.no_identity + encoded.identity_too_long
        if not dropped:
            return
        if self.metrics is not None:
            route = f"target:{self.name}"
            if encoded.no_identity:
                self.metrics.events_dropped.labels(route, "no_identity").inc(encoded.no_identity)
            if encoded.identity_too_long:
                self.metrics.events_dropped.labels(route, "identity_too_long").inc(
                    encoded.identity_too_long
                )
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_INTERVAL:
            self._last_drop_log = now
            logger.warning(
                "target %s: dropped %d events with no user ID or custom ID (or an ID over %d "
                "characters); counted in relay_events_dropped_total",
                self.name,
                dropped,
                MAX_IDENTITY,
            )

    def describe(self) -> str:
        props = "with user properties" if self.config.user_properties else "events only"
        return f"heap app {self.config.app_id} at {hide_password(self.config.api_base())}, {props}"
