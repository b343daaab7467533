"""Datadog change events: a Statsig config change becomes a v2 ``change`` event.

Wire facts relied on (Datadog "Post an event" v2, docs.datadoghq.com/api/latest/events/
post-an-event, and the datadog-api-client models ``EventPayload``,
``ChangeEventCustomAttributes``; summarised in docs/targets/datadog.md):

* ``POST https://event-management-intake.<site>/api/v2/events``, header ``DD-API-KEY``; one
  event per request, answered ``202``. Body ``{"data": {"type": "event", "attributes": {…}}}``
  with ``title`` (≤ 500 characters, required), ``category: "change"`` (required), ``message``
  (≤ 4000), ``tags``, ``timestamp`` (ISO 8601, **no older than 18 hours**),
  ``integration_id: "custom-events"`` and ``attributes`` (required): ``changed_resource``
  ``{name, type}`` (required; type ``feature_flag`` or ``configuration``), ``author``
  ``{name ≤ 128, type: user|system|api}`` (optional, both keys when given) and
  ``change_metadata`` (a free object, ≤ 100 properties).
* 400 names a schema error (permanent for that event); 403 a refused key; 429 carries
  ``X-RateLimit-Reset``, the seconds until the limit resets (docs: api/latest/rate-limits), read
  here like Retry-After.

A change older than 18 h (one held through an outage) is sent with its ``timestamp`` clamped
to just inside the window and its real time in ``change_metadata.original_timestamp``, as the
chronosphere target does. Statsig sends no before/after values, so ``prev_value`` and
``new_value`` are left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from ..events import Event, now_ms
from ..schema import ConfigError, secret
from .base import (
    DELIVERED,
    Batch,
    Outcome,
    TargetConfig,
    Verdict,
    classify_response,
    hide_password,
    json_headers,
)
from .changes import ChangeTarget, ConfigChange, clamp_ms, is_config_change, read_change, rfc3339
from .changes import shorten as cut

SITES = (
    "datadoghq.com",
    "us3.datadoghq.com",
    "us5.datadoghq.com",
    "datadoghq.eu",
    "ap1.datadoghq.com",
    "ap2.datadoghq.com",
    "uk1.datadoghq.com",
    "ddog-gov.com",
    "us2.ddog-gov.com",
)
TITLE_MAX, MESSAGE_MAX, AUTHOR_MAX, TAG_MAX = 500, 4000, 128, 200
WINDOW_MS = 18 * 3600 * 1000
CLAMP_MARGIN_MS = 10 * 60 * 1000  # clocks differ and requests take time: stay well inside


@dataclass(kw_only=True)
class DatadogConfig(TargetConfig):
    type: Literal["datadog"] = "datadog"
    api_key: str = secret()
    site: str = "datadoghq.com"
    base_url: str | None = None  # overrides site (a proxy, tests)
    batch_max_events: int = 1  # one change event per request

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.api_key.strip():
            raise ConfigError("api_key", "must not be empty")
        if self.site not in SITES:
            raise ConfigError(
                "site", f"unknown Datadog site {self.site!r}; one of {', '.join(SITES)}"
            )
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            raise ConfigError("base_url", f"expected an http(s) URL, got {self.base_url!r}")
        if self.batch_max_events != 1:
            raise ConfigError(
                "batch_max_events", "must be 1: Datadog takes one change event per request"
            )

    def events_url(self) -> str:
        base = (self.base_url or f"https://event-management-intake.{self.site}").rstrip("/")
        return f"{base}/api/v2/events"


def _tag(key: str, value: str) -> str:
    # Datadog tags are key:value, at most 200 characters, no spaces or commas.
    text = f"{key}:{value}".replace(" ", "_").replace(",", "_")
    return text[:TAG_MAX]


def change_event(change: ConfigChange, now: int | None = None) -> dict[str, Any]:
    """The v2 request body for one config change (the mapping in docs/targets/datadog.md)."""
    now = now_ms() if now is None else now
    metadata: dict[str, Any] = {"statsig_type": change.kind, "action": change.action}
    if change.environments:
        metadata["environments"] = list(change.environments)
    if change.project:
        metadata["project"] = change.project
    if change.link:
        metadata["link"] = change.link
    happened = clamp_ms(change.time_ms, now, WINDOW_MS, CLAMP_MARGIN_MS)
    if happened != change.time_ms:
        metadata["original_timestamp"] = rfc3339(change.time_ms)
    custom: dict[str, Any] = {
        "changed_resource": {
            "name": change.name,
            "type": "feature_flag" if change.is_flag else "configuration",
        },
        "change_metadata": metadata,
    }
    if change.author:
        custom["author"] = {"name": cut(change.author, AUTHOR_MAX), "type": "user"}
    tags = [
        "source:statsig",
        _tag("statsig_type", change.kind.lower()),
        _tag("action", change.action),
    ]
    tags += [_tag("env", env) for env in change.environments]
    attributes: dict[str, Any] = {
        "title": cut(f"Statsig {change.kind} {change.name} {change.action}", TITLE_MAX),
        "category": "change",
        "integration_id": "custom-events",
        "timestamp": rfc3339(happened),
        "tags": tags,
        "attributes": custom,
    }
    if change.description:
        attributes["message"] = cut(change.description, MESSAGE_MAX)
    return {"data": {"type": "event", "attributes": attributes}}


def encode(event: Event, now: int | None = None) -> bytes:
    return orjson.dumps(change_event(read_change(event), now))


class DatadogTarget(ChangeTarget):
    """Statsig config changes as Datadog change events (Change Tracking)."""

    kind = "datadog"
    config_class = DatadogConfig
    config: DatadogConfig

    def __init__(self, name: str, config: DatadogConfig) -> None:
        super().__init__(name, config)
        self.url = config.events_url()

    async def send(self, batch: Batch) -> Outcome:
        headers = json_headers({"DD-API-KEY": self.config.api_key})
        for event in batch.events():  # one, unless a caller built a larger batch
            if not is_config_change(event):
                return Outcome(Verdict.REJECT, "not a config change: datadog carries only those")
            outcome = await self.post(self.url, encode(event), headers)
            if not outcome.ok:
                return outcome
        return DELIVERED

    def classify(self, status: int, headers: Mapping[str, str], body: str) -> Outcome:
        outcome = classify_response(status, headers, body)
        if status == 429 and outcome.retry_after is None:
            try:
                wait = max(0.0, float(headers.get("X-RateLimit-Reset", "")))
            except ValueError:
                return outcome
            return Outcome(Verdict.RETRY, outcome.reason, wait, status)
        return outcome

    def describe(self) -> str:
        return f"datadog change events to {hide_password(self.url)}"
