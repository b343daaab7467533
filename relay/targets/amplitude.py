"""Amplitude: events through the HTTP V2 API, exposures also as user properties.

``POST {base}/2/httpapi`` with ``{"api_key", "events": [...], "options": {"min_id_length": 1}}``.
Every event keeps its Statsig name as ``event_type``; its ``metadata`` (and ``value``) become
``event_properties``; a gate or experiment exposure also sets ``user_properties`` (``Statsig
Gate: <gate>`` → "true"/"false", ``Statsig Experiment: <experiment>`` → group), as the Heap
target does. ``user_id`` is the user's ID; ``device_id`` the ``stableID`` when there is no user
ID; an event with neither is dropped and counted (Amplitude refuses it). ``insert_id`` is the
``timeUUID`` (else a digest of the event), so a resent event counts once.

Wire facts relied on (Amplitude's HTTP V2 page, amplitude/amplitude-docs ``http-v2.md``, and the
batching guide amplitude.com/docs/apis/analytics/http-api-batching-retries):

* hosts ``https://api2.amplitude.com`` and, for EU residency, ``https://api.eu.amplitude.com``;
  the key goes in the body, there is no auth header;
* a request under 1 MB with at most 2000 events (the page says "fewer than 2000", the
  batching guide "up to 2,000"; a 413 splits either way); ``time`` in epoch milliseconds;
  string values up to 1024 characters, objects at most 40 levels deep;
* user and device IDs shorter than 5 characters are refused unless ``options.min_id_length``
  says otherwise: it is set to 1, as Statsig IDs can be short;
* 400 names the bad events: ``events_with_invalid_fields`` and ``events_with_missing_fields``
  map a field to the indexes of the events (the JSON schema of the error response says a list of
  indexes; older copies of the page show a single index: both are read), ``silenced_events``
  lists indexes. The request is refused as a whole, so the events not named are resent at once.
  ``error: "Invalid API key"`` (or ``missing_field: "api_key"``) is our credential, not data;
* 413 too large: split; 429 a user or device over its rate: pause 30 s; 500/502/504 may have
  been ingested, 503 was not: both retried (``insert_id`` makes a duplicate count once).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from ..events import (
    CONFIG_CHANGE,
    EXPERIMENT_EXPOSURE,
    EXPOSURE_CATEGORIES,
    GATE_EXPOSURE,
    Event,
    category_of,
    content_digest,
    event_time_ms,
    exposure_metadata,
    user_and_stable_id,
)
from ..schema import ByteSize, ConfigError, secret
from .base import (
    DELIVERED,
    Batch,
    Outcome,
    Target,
    TargetConfig,
    Verdict,
    classify_response,
    hide_password,
    json_headers,
    parse_retry_after,
)

logger = logging.getLogger(__name__)

REGIONS = {"us": "https://api2.amplitude.com", "eu": "https://api.eu.amplitude.com"}
PATH = "/2/httpapi"
MAX_EVENTS = 2000  # per request
MAX_REQUEST_BYTES = 1_000_000  # a request must be under 1 MB (decimal, the safer reading)
MAX_CHARS = 1024  # string values
MAX_DEPTH = 40  # object nesting; deeper values are sent as JSON text
THROTTLE_WAIT = 30.0  # seconds: Amplitude asks a throttled user or device to pause 30 s
GATE_PREFIX = "Statsig Gate: "
EXPERIMENT_PREFIX = "Statsig Experiment: "
# The lists of bad events in a 400 answer, and what each says about the events it names.
REFUSAL_LISTS = {
    "events_with_invalid_fields": "invalid",
    "events_with_missing_fields": "missing",
    "silenced_events": "silenced device",
}
DROP_LOG_INTERVAL = 60.0


@dataclass(kw_only=True)
class AmplitudeConfig(TargetConfig):
    type: Literal["amplitude"] = "amplitude"
    api_key: str = secret()  # the project's API key, sent in the request body
    region: Literal["us", "eu"] = "us"
    base_url: str | None = None  # overrides region (a proxy, tests)
    batch_max_events: int = 1000
    batch_max_bytes: ByteSize = ByteSize(800_000)  # stored bytes; the request is kept < 1 MB

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.api_key.strip():
            raise ConfigError("api_key", "must not be empty")
        if self.batch_max_events > MAX_EVENTS:
            raise ConfigError(
                "batch_max_events", f"at most {MAX_EVENTS} (Amplitude's per-request limit)"
            )
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            raise ConfigError("base_url", f"expected an http(s) URL, got {self.base_url!r}")

    def api_url(self) -> str:
        return (self.base_url or REGIONS[self.region]).rstrip("/") + PATH


def cut(text: str, limit: int = MAX_CHARS) -> str:
    return text if len(text) <= limit else text[:limit]


def clean(value: Any, depth: int = 1) -> Any:
    """A property value within Amplitude's limits: strings cut, nulls and non-finite numbers
    left out, objects deeper than 40 levels sent as JSON text."""
    if isinstance(value, str):
        return cut(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict | list) and depth >= MAX_DEPTH:
        return cut(orjson.dumps(value).decode())
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            item = clean(item, depth + 1)
            if item is not None:
                out[cut(str(key))] = item
        return out
    if isinstance(value, list):
        return [item for item in (clean(v, depth + 1) for v in value) if item is not None]
    return value


def insert_id(event: Event) -> str:
    """The event's timeUUID; else a digest of its content. Both survive a redelivery."""
    time_uuid = event.get("timeUUID")
    if time_uuid:
        return cut(str(time_uuid), 128)
    return "relay-" + content_digest(event)


def user_properties(category: str, metadata: Mapping[str, Any]) -> dict[str, str] | None:
    """What an exposure says about its user: a gate passed or not, an experiment's group."""
    if category == GATE_EXPOSURE and metadata.get("gate"):
        passed = metadata.get("gateValue")
        passed = passed if isinstance(passed, bool) else str(passed).lower() == "true"
        return {cut(GATE_PREFIX + str(metadata["gate"])): "true" if passed else "false"}
    if category == EXPERIMENT_EXPOSURE and metadata.get("config"):
        group = metadata.get("experimentGroupName")
        if group:
            return {cut(EXPERIMENT_PREFIX + str(metadata["config"])): cut(str(group))}
    return None


def encode_event(event: Event) -> dict[str, Any] | None:
    """One Statsig event as an HTTP V2 event; None when it has neither a user ID nor a
    stableID (Amplitude needs one)."""
    user_id, stable_id = user_and_stable_id(event)
    if not user_id and not stable_id:
        return None
    name = str(event.get("eventName") or "")
    category = category_of(name)
    exposure = category in EXPOSURE_CATEGORIES
    metadata = exposure_metadata(event) if exposure else event.get("metadata")
    props: dict[str, Any] = clean(metadata) if isinstance(metadata, dict) else {}
    value = event.get("value")
    if value is not None and value != "":
        value = clean(value)
        if value is not None:
            props["value"] = value
    out: dict[str, Any] = {"event_type": cut(name) or "(unnamed)"}
    if user_id:
        out["user_id"] = cut(user_id)
    else:
        out["device_id"] = cut(stable_id or "")
    out["time"] = event_time_ms(event)
    out["insert_id"] = insert_id(event)
    if props:
        out["event_properties"] = props
    if exposure and isinstance(metadata, dict):
        users = user_properties(category, metadata)
        if users:
            out["user_properties"] = users
    return out


def named_events(answer: Mapping[str, Any]) -> dict[int, str]:
    """Index of each event a 400 answer names → why, from its lists of bad events."""
    named: dict[int, str] = {}
    for key, what in REFUSAL_LISTS.items():
        listed = answer.get(key)
        if isinstance(listed, Mapping):  # field → indexes (or one index)
            for field, indexes in listed.items():
                for i in _indexes(indexes):
                    named.setdefault(i, f"{what} field {field}")
        else:
            for i in _indexes(listed):
                named.setdefault(i, what)
    return named


def _indexes(value: Any) -> Iterable[int]:
    items = value if isinstance(value, list) else [value]
    return [i for i in items if type(i) is int and i >= 0]


def _read_json(body: str) -> dict[str, Any]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


class AmplitudeTarget(Target):
    """HTTP V2 API; see the module docstring for the wire format and how answers are read."""

    kind = "amplitude"
    config_class = AmplitudeConfig
    # A 400 lists the indexes of the bad events per field and per list: 2000 events under a
    # handful of fields each must parse whole.
    answer_limit = 256 * 1024
    config: AmplitudeConfig

    def __init__(self, name: str, config: AmplitudeConfig) -> None:
        super().__init__(name, config)
        self.url = config.api_url()
        self._last_drop_log = -math.inf

    def accepts(self, category: str) -> bool:
        return category != CONFIG_CHANGE  # a console edit is not a user's event

    async def send(self, batch: Batch) -> Outcome:
        encoded: list[dict[str, Any]] = []
        positions: list[int] = []  # request index → batch index
        for position, event in enumerate(batch.events()):
            item = encode_event(event)
            if item is not None:
                encoded.append(item)
                positions.append(position)
        self._count_drops(batch.count - len(encoded))
        if not encoded:
            return DELIVERED
        body = orjson.dumps(
            {"api_key": self.config.api_key, "events": encoded, "options": {"min_id_length": 1}}
        )
        if len(body) >= MAX_REQUEST_BYTES:
            return Outcome(
                Verdict.TOO_LARGE,
                f"request of {len(body)} bytes; Amplitude takes requests under 1 MB",
            )
        outcome = await self.post(self.url, body, json_headers())
        if outcome.verdict is Verdict.PARTIAL and outcome.events is not None:
            outcome = Outcome.per_event(
                {positions[i]: o for i, o in outcome.events.items() if i < len(positions)},
                others_delivered=outcome.others_delivered,
                reason=outcome.reason,
                status=outcome.status,
            )
        return outcome

    def classify(self, status: int, headers: Mapping[str, str], body: str) -> Outcome:
        if 200 <= status < 300:
            return DELIVERED
        if status == 400:
            answer = _read_json(body)
            error = str(answer.get("error") or "")
            if "invalid api key" in error.lower() or answer.get("missing_field") == "api_key":
                return Outcome(
                    Verdict.UNAUTHORIZED,
                    f"HTTP 400: Amplitude refused the key in targets.{self.name}.api_key",
                    status=status,
                )
            named = named_events(answer)
            if named:
                # Amplitude took none of the request: the events not named go again at once.
                return Outcome.per_event(
                    {
                        i: Outcome(Verdict.REJECT, f"HTTP 400: {why}"[:300], status=status)
                        for i, why in named.items()
                    },
                    others_delivered=False,
                    reason=f"HTTP 400: {len(named)} events refused: {error}"[:300],
                    status=status,
                )
        if status == 429:
            wait = max(THROTTLE_WAIT, parse_retry_after(headers.get("Retry-After")) or 0.0)
            return Outcome(Verdict.RETRY, f"HTTP 429: {body[:200]}", wait, status)
        outcome = classify_response(status, headers, body)
        key = self.config.api_key
        if key in outcome.reason:  # an answer must never carry the key into a log
            outcome = Outcome(
                outcome.verdict,
                outcome.reason.replace(key, "[key]"),
                outcome.retry_after,
                outcome.status,
            )
        return outcome

    def _count_drops(self, dropped: int) -> None:
        """Events with no user ID and no stableID are dropped here, counted, never sent."""
        if not dropped:
            return
        if self.metrics is not None:
            self.metrics.events_dropped.labels(f"target:{self.name}", "no_identity").inc(dropped)
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_INTERVAL:
            self._last_drop_log = now
            logger.warning(
                "target %s: dropped %d events with neither a user ID nor a stableID; "
                "counted in relay_events_dropped_total",
                self.name,
                dropped,
            )

    def describe(self) -> str:
        return f"amplitude HTTP V2 at {hide_password(self.url)} (key: api_key)"
