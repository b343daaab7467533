"""Mixpanel: events through ``/import`` in strict mode, exposures as ``$experiment_started``.

``POST {base}/import?strict=1``, HTTP Basic with the project token as user and an empty
password, a gzipped JSON array of ``{"event", "properties"}``. A custom event keeps its name;
its ``metadata`` entries and ``value`` become properties. A gate, config or experiment exposure
becomes ``$experiment_started`` with ``Experiment name`` and ``Variant name`` (gate → gate name
and "true"/"false"; config → config name and rule; experiment → experiment name and group), the
event Mixpanel's Experiments report reads, plus the exposure's metadata. Every event carries
``time`` (epoch ms), ``distinct_id`` (the user ID, else the stableID, else "") and
``$insert_id`` (the ``timeUUID`` when Mixpanel takes it as one, else a digest of the event).

Wire facts relied on (mixpanel/docs ``reference/import-events.mdx``, the troubleshooting pages
docs.mixpanel.com/troubleshooting/errors/400-bad-request and 429-rate-limit-exceeded, and the
LaunchDarkly integration guide for ``$experiment_started``):

* hosts ``api.mixpanel.com``, ``api-eu.mixpanel.com``, ``api-in.mixpanel.com``; gzip accepted;
* at most 2000 events a request; the size limit is given as 2 MB (older page, and its 413) and
  10 MB (newer page): requests are kept to 2 MB uncompressed and a 413 splits; gzip does not
  raise the limit;
* required per event: ``event``, ``properties.time`` (s or ms; before 1971 or more than an hour
  ahead is refused), ``properties.distinct_id`` ("" allowed; placeholders such as "null" are
  refused), ``properties.$insert_id`` (at most 36 characters, letters, digits and "-");
  at most 255 properties, objects nested at most 3 levels, lists under 255 items;
* strict mode: a 400 lists ``failed_records`` (``index``, the insert id, ``field``,
  ``message``) and the other events **were** imported; Mixpanel says not to resend a 400
  (it counts against the rate limit), so only the listed events are dead-lettered;
* 401 bad credentials; 413 too large; 429 over the project's rate, with no Retry-After: back
  off from 2 s, doubling to 60 s, plus 1-5 s of jitter; 502/503 transient.
"""

from __future__ import annotations

import asyncio
import gzip
import math
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from ..events import (
    CONFIG_CHANGE,
    CONFIG_EXPOSURE,
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
    basic_auth,
    classify_response,
    hide_password,
    parse_retry_after,
)

REGIONS = {
    "us": "https://api.mixpanel.com",
    "eu": "https://api-eu.mixpanel.com",
    "in": "https://api-in.mixpanel.com",
}
MAX_EVENTS = 2000
MAX_REQUEST_BYTES = 2_000_000  # uncompressed, the safer of the documented figures
MAX_PROPERTIES = 248  # of metadata: Mixpanel takes fewer than 255, and the relay adds up to 6
MAX_DEPTH = 3  # nesting of property objects; deeper values are sent as JSON text
MAX_LIST = 254  # list items
EXPERIMENT_STARTED = "$experiment_started"
GZIP_IN_THREAD_BYTES = 64 * 1024
BACKOFF_FIRST, BACKOFF_MAX = 2.0, 60.0  # 429: seconds, doubled per 429 in a row
JITTER = (1.0, 5.0)
_INSERT_ID = re.compile(r"^[A-Za-z0-9-]{1,36}$")


@dataclass(kw_only=True)
class MixpanelConfig(TargetConfig):
    type: Literal["mixpanel"] = "mixpanel"
    project_token: str = secret()  # Basic auth user (empty password)
    region: Literal["us", "eu", "in"] = "us"
    base_url: str | None = None  # overrides region (a proxy, tests)
    batch_max_events: int = MAX_EVENTS
    batch_max_bytes: ByteSize = ByteSize(1_500_000)  # stored bytes; requests stay ≤ 2 MB

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.project_token.strip():
            raise ConfigError("project_token", "must not be empty")
        if self.batch_max_events > MAX_EVENTS:
            raise ConfigError(
                "batch_max_events", f"at most {MAX_EVENTS} (Mixpanel's per-request limit)"
            )
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            raise ConfigError("base_url", f"expected an http(s) URL, got {self.base_url!r}")

    def import_url(self) -> str:
        return (self.base_url or REGIONS[self.region]).rstrip("/") + "/import?strict=1"


def insert_id(event: Event) -> str:
    """The timeUUID when Mixpanel takes it (≤ 36 letters, digits, "-"), else 32 hex
    characters of the event's digest: the same for the same event, redelivered or retried."""
    time_uuid = event.get("timeUUID")
    if isinstance(time_uuid, str) and _INSERT_ID.match(time_uuid):
        return time_uuid
    return content_digest(event)


def clean(value: Any, depth: int = 1) -> Any:
    """A property value Mixpanel takes: objects nested at most 3 levels (deeper as JSON text),
    lists cut to 254 items, nulls and non-finite numbers left out."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict | list) and depth > MAX_DEPTH:
        return orjson.dumps(value).decode()
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            item = clean(item, depth + 1)
            if item is not None:
                out[str(key)] = item
        return out
    if isinstance(value, list):
        return [
            item for item in (clean(v, depth + 1) for v in value[:MAX_LIST]) if item is not None
        ]
    return value


def experiment(category: str, metadata: Mapping[str, Any]) -> tuple[str, str] | None:
    """(Experiment name, Variant name) of an exposure, as Mixpanel's Experiments report reads
    them; None when the exposure does not say."""
    if category == GATE_EXPOSURE and metadata.get("gate"):
        passed = metadata.get("gateValue")
        passed = passed if isinstance(passed, bool) else str(passed).lower() == "true"
        return str(metadata["gate"]), "true" if passed else "false"
    if category == CONFIG_EXPOSURE and metadata.get("config"):
        return str(metadata["config"]), str(metadata.get("ruleID") or "")
    if category == EXPERIMENT_EXPOSURE and metadata.get("config"):
        group = metadata.get("experimentGroupName") or metadata.get("ruleID") or ""
        return str(metadata["config"]), str(group)
    return None


def encode_event(event: Event) -> dict[str, Any]:
    """One Statsig event as an /import record."""
    name = str(event.get("eventName") or "")
    category = category_of(name)
    exposure = category in EXPOSURE_CATEGORIES
    metadata = exposure_metadata(event) if exposure else event.get("metadata")
    props: dict[str, Any] = {}
    if isinstance(metadata, dict):
        for key, item in metadata.items():
            if len(props) >= MAX_PROPERTIES:
                break
            item = clean(item)
            if item is not None:
                props[str(key)] = item
    value = event.get("value")
    if value is not None and value != "":
        value = clean(value)
        if value is not None:
            props["value"] = value
    started = experiment(category, metadata) if exposure and isinstance(metadata, dict) else None
    if started is not None:
        name = EXPERIMENT_STARTED
        props["Experiment name"], props["Variant name"] = started
    user_id, stable_id = user_and_stable_id(event)
    # Set last, so a metadata key of the same name never replaces them.
    props["time"] = event_time_ms(event)
    props["distinct_id"] = user_id or stable_id or ""
    props["$insert_id"] = insert_id(event)
    return {"event": name or "(unnamed)", "properties": props}


def throttle_wait(streak: int, rng: Callable[[float, float], float] = random.uniform) -> float:
    """Seconds to wait after the ``streak``-th 429 in a row (1, 2, …): 2 s doubling to 60 s,
    plus 1-5 s of jitter so several relays do not come back in step."""
    base = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(max(streak - 1, 0), 16))
    return base + rng(*JITTER)


def _read_json(body: str) -> dict[str, Any]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


class MixpanelTarget(Target):
    """/import in strict mode; see the module docstring for the wire format and answers."""

    kind = "mixpanel"
    config_class = MixpanelConfig
    # A strict 400 lists a record (~200 B: index, insert id, field, message) per failed event:
    # 2000 of them, with room for messages that quote the value, must parse whole.
    answer_limit = 1024 * 1024
    config: MixpanelConfig

    def __init__(self, name: str, config: MixpanelConfig) -> None:
        super().__init__(name, config)
        self.url = config.import_url()
        self._headers = {
            "Authorization": basic_auth(config.project_token),
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        }
        # 429s in a row, for Mixpanel's backoff: the deliverer's own backoff does not start at
        # 2 s or add whole seconds of jitter, so the wait travels as the Outcome's retry_after.
        self.throttled = 0

    def accepts(self, category: str) -> bool:
        return category != CONFIG_CHANGE  # a console edit is not a user's event

    async def send(self, batch: Batch) -> Outcome:
        body = orjson.dumps([encode_event(event) for event in batch.events()])
        if len(body) > MAX_REQUEST_BYTES:
            return Outcome(
                Verdict.TOO_LARGE,
                f"request of {len(body)} bytes; Mixpanel takes up to 2 MB uncompressed",
            )
        if len(body) > GZIP_IN_THREAD_BYTES:
            data = await asyncio.to_thread(gzip.compress, body, 5, mtime=0)
        else:
            data = gzip.compress(body, 5, mtime=0)
        return await self.post(self.url, data, self._headers)

    def classify(self, status: int, headers: Mapping[str, str], body: str) -> Outcome:
        if status == 429:
            self.throttled += 1
            wait = throttle_wait(self.throttled)
            hinted = parse_retry_after(headers.get("Retry-After"))
            return Outcome(
                Verdict.RETRY, f"HTTP 429: {body[:200]}", max(wait, hinted or 0.0), status
            )
        self.throttled = 0
        if 200 <= status < 300:
            return DELIVERED
        if status == 401:
            return Outcome(
                Verdict.UNAUTHORIZED,
                f"HTTP 401: Mixpanel refused targets.{self.name}.project_token",
                status=status,
            )
        if status == 400:
            answer = _read_json(body)
            failed = answer.get("failed_records")
            named: dict[int, Outcome] = {}
            if isinstance(failed, list):
                for record in failed:
                    if not isinstance(record, dict) or type(record.get("index")) is not int:
                        continue
                    why = f"{record.get('field') or 'event'}: {record.get('message') or ''}"
                    named[record["index"]] = Outcome(
                        Verdict.REJECT, f"HTTP 400: {why}"[:300], status=status
                    )
            if named:
                # Strict mode imported the others: they must not be sent again.
                return Outcome.per_event(
                    named,
                    others_delivered=True,
                    reason=f"HTTP 400: {len(named)} records failed validation",
                    status=status,
                )
        return classify_response(status, headers, body)

    def describe(self) -> str:
        return f"mixpanel /import (strict) at {hide_password(self.url)} (token: project_token)"
