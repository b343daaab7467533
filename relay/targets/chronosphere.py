"""Chronosphere change events: a Statsig config change becomes a ``feature_flags`` change event.

One change event per request (``POST {base}/api/v1/data/events``, header ``API-Token``), so
the target defaults to ``batch_max_events: 1`` and allows no more: each event then succeeds,
retries or dead-letters on its own, and a failure never resends changes already accepted.

Chronosphere refuses what breaks its limits, so they are kept here, not by rejection: title
≤ 100, source and type ≤ 50, label keys ≤ 500 and values ≤ 5000 characters (cut, ending in
"…"), ≤ 200 labels, ≤ 300 events/minute (a token bucket). ``happened_at`` must lie within
±24 h of now: an older (or future) change is sent with ``happened_at`` clamped into the window
and its real time in the label ``original_happened_at``, so it is visible rather than lost.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from ..events import CONFIG_CHANGE, Event, category_of, now_ms
from ..schema import ConfigError, secret
from .base import (
    DELIVERED,
    Batch,
    Outcome,
    Target,
    TargetConfig,
    Verdict,
    hide_password,
    json_headers,
)
from .changes import clamp_ms, event_time_ms, read_change, rfc3339, shorten
from .ratelimit import TokenBucket

__all__ = ["ChronosphereConfig", "ChronosphereTarget", "change_event", "event_time_ms", "rfc3339"]

TITLE_MAX, SOURCE_MAX, TYPE_MAX = 100, 50, 50
LABEL_KEY_MAX, LABEL_VALUE_MAX, LABELS_MAX = 500, 5000, 200
WINDOW_MS = 24 * 3600 * 1000
# Clamp a little inside the window: the clock of the relay and of Chronosphere may differ, and
# the request takes time.
CLAMP_MARGIN_MS = 10 * 60 * 1000
_TENANT = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


@dataclass(kw_only=True)
class ChronosphereConfig(TargetConfig):
    type: Literal["chronosphere"] = "chronosphere"
    url: str | None = None  # tenant base, e.g. https://TENANT.chronosphere.io
    tenant: str | None = None  # or just the tenant: https://{tenant}.chronosphere.io
    api_token: str = secret()
    source: str = "statsig"
    category: str = "feature_flags"
    rate_limit_per_minute: int = 300  # Chronosphere's documented limit per tenant
    batch_max_events: int = 1  # one change event per request; see the module docstring

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.url is None) == (self.tenant is None):
            raise ConfigError("url", "set either url (https://TENANT.chronosphere.io) or tenant")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ConfigError("url", f"expected an http(s) URL, got {self.url!r}")
        if self.tenant is not None and not _TENANT.match(self.tenant):
            raise ConfigError("tenant", f"expected a tenant name like acme, got {self.tenant!r}")
        if not self.api_token.strip():
            raise ConfigError("api_token", "must not be empty")
        if self.batch_max_events != 1:
            raise ConfigError(
                "batch_max_events", "must be 1: Chronosphere takes one change event per request"
            )
        if self.rate_limit_per_minute < 1:
            raise ConfigError("rate_limit_per_minute", "must be at least 1")
        if not self.source or len(self.source) > SOURCE_MAX:
            raise ConfigError("source", f"1 to {SOURCE_MAX} characters")

    def events_url(self) -> str:
        base = self.url.rstrip("/") if self.url else f"https://{self.tenant}.chronosphere.io"
        return f"{base}/api/v1/data/events"


def change_event(
    event: Event, source: str = "statsig", category: str = "feature_flags"
) -> dict[str, Any]:
    """The change event for one Statsig config change (docs/targets/chronosphere.md)."""
    change = read_change(event)
    labels: dict[str, str] = {"type": change.kind, "name": change.name, "action": change.action}
    if change.description is not None:
        labels["description"] = change.description
    return {
        "category": category,
        "type": shorten(f"{change.kind.lower()}_{change.action}", TYPE_MAX),
        "source": shorten(source, SOURCE_MAX),
        "happened_at": rfc3339(change.time_ms),
        "title": shorten(f"{change.name} {change.action}", TITLE_MAX),
        "labels": limit_labels(labels),
    }


def limit_labels(labels: dict[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in labels.items():
        if len(out) >= LABELS_MAX:
            break
        out[shorten(key, LABEL_KEY_MAX)] = shorten(value, LABEL_VALUE_MAX)
    return out


def clamp_to_window(change: dict[str, Any], happened_ms: int, now: int) -> None:
    """Keep ``happened_at`` inside the API's ±24 h window; the real time goes to a label."""
    clamped = clamp_ms(happened_ms, now, WINDOW_MS, CLAMP_MARGIN_MS)
    if clamped == happened_ms:
        return
    change["happened_at"] = rfc3339(clamped)
    labels = change["labels"]
    if len(labels) >= LABELS_MAX:
        labels.pop(next(reversed(labels)))
    labels["original_happened_at"] = rfc3339(happened_ms)


class ChronosphereTarget(Target):
    """Statsig config changes as Chronosphere change events; nothing else is carried."""

    kind = "chronosphere"
    config_class = ChronosphereConfig
    config: ChronosphereConfig

    def __init__(self, name: str, config: ChronosphereConfig) -> None:
        super().__init__(name, config)
        self.url = config.events_url()
        self.bucket = TokenBucket.per_minute(config.rate_limit_per_minute, burst=10)

    def accepts(self, category: str) -> bool:
        return category == CONFIG_CHANGE

    async def send(self, batch: Batch) -> Outcome:
        # Normally one event (batch_max_events is 1); several are sent in order and the first
        # failure answers for the batch.
        cfg = self.config
        headers = json_headers({"API-Token": cfg.api_token})
        for event in batch.events():
            if category_of(event.get("eventName") or "") != CONFIG_CHANGE:
                return Outcome(
                    Verdict.REJECT, "not a config change: chronosphere carries only those"
                )
            change = change_event(event, cfg.source, cfg.category)
            clamp_to_window(change, event_time_ms(event), now_ms())
            await self.bucket.acquire(1)
            outcome = await self.post(self.url, orjson.dumps({"event": change}), headers)
            if not outcome.ok:
                return outcome
        return DELIVERED

    def describe(self) -> str:
        return f"chronosphere change events to {hide_password(self.url)}"
