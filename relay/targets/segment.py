"""Segment: events as ``track`` calls to the Segment HTTP Tracking API, or any collector that
speaks it (Segment US or EU, a RudderStack data plane, other Segment-compatible collectors).

The shape follows Statsig's own Segment export (docs.statsig.com, integrations/data-connectors/
segment, "Outbound event schema"): every event is a ``track`` with ``userId``, ``event`` (the
Statsig ``eventName``, so exposures keep their ``statsig::…_exposure`` names),
``properties{value, metadata}`` and ``context{user, library, stableID}``. The relay differs on
purpose in four places: ``timestamp`` is ISO 8601 (Segment's spec) rather than epoch ms;
``context.library`` names ``statsig-relay``; ``value`` and ``metadata`` are sent once, in
``properties`` (Statsig also copies them into ``context``, which halves what fits in 32 KB);
and every message carries ``anonymousId`` from ``user.customIDs.stableID`` when there is one,
since Segment needs ``userId`` or ``anonymousId``. With neither, ``anonymousId`` is another
custom ID (``<idType>:<value>``) or else ``relay-`` + a digest of the user object: stable for
the same user, never random.

Wire facts relied on:

* Segment HTTP Tracking API (segment.com/docs/connections/sources/catalog/libraries/server/
  http-api, and the segment-docs history of its "Errors" section): ``POST /v1/batch`` with
  ``{"batch": [...]}``, Basic auth with the write key as user and an empty password, JSON
  content type; at most 500 KB per request, 2500 messages per batch, 32 KB per message;
  ``messageId`` deduplicates; ``userId`` or ``anonymousId`` required, ``event`` required for
  ``track``. Segment answers 200 to everything but JSON errors and oversize requests, which get
  400 ("Exceed payload limit", per the analytics.js FAQ); a batch over 2500 messages or a message
  without an identifier is answered 200 and dropped unseen, so the relay never sends one.
  Sizes are taken as decimal (500,000 and 32,000 bytes).
* RudderStack (rudderlabs/rudder-server ``gateway/response/response.go``; rudderstack.com/docs
  /api/http-api): the same ``/v1/batch`` on the data plane URL with the same Basic auth, success
  is 200 ``OK`` in plain text. Errors are plain text: 401 "Invalid Write Key" (400 in older
  releases), 401 "Failed to read writeKey from header", 404 "Source is disabled", 413 "Request
  size exceeds max limit", 429 "Max Requests Limit reached", 400 "Invalid JSON" / "Request
  neither has anonymousId nor userId".

How answers are read (:meth:`SegmentTarget.classify`): 2xx delivered; 401, 403, a 400 saying
"Invalid Write Key" and a 404 "Source is disabled" mean the write key is refused (the target is
marked failing, its events held); any other 404 means ``base_url`` is not a tracking API
(failing, held); 413 or a 400 about the payload size splits; 429 and 5xx retry (Retry-After
honoured); other 400s reject the batch and the deliverer bisects it to the bad events.

Limits are kept before sending: a message over 32 KB once encoded is dead-lettered alone with
reason ``message_too_large`` and the rest of its batch is sent; a batch is cut into requests of
at most 2500 messages and 500 KB.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from .. import __version__
from ..events import (
    CONFIG_CHANGE,
    EXPOSURE_CATEGORIES,
    Event,
    category_of,
    exposure_metadata,
    iso8601_from_ms,
    now_ms,
    to_epoch_ms,
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
    for_the_rest,
    hide_password,
    json_headers,
)

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.segment.io"
MAX_MESSAGES = 2500  # per /v1/batch request
MAX_REQUEST_BYTES = 500_000  # per request
MAX_MESSAGE_BYTES = 32_000  # per message, encoded
LIBRARY = {"name": "statsig-relay", "version": __version__}
TOO_LARGE_PHRASES = ("exceed payload limit", "request size exceeds", "too large")
_ENVELOPE = len(b'{"batch":[]}')


@dataclass(kw_only=True)
class SegmentConfig(TargetConfig):
    type: Literal["segment"] = "segment"
    write_key: str = secret()  # the source's write key, sent as the Basic auth user
    # Segment EU: https://events.eu1.segmentapis.com; RudderStack: the data plane URL.
    base_url: str = DEFAULT_BASE_URL
    batch_max_events: int = 500
    batch_max_bytes: ByteSize = ByteSize(400_000)

    def __post_init__(self) -> None:
        super().__post_init__()
        key = self.write_key
        if not key.strip():
            raise ConfigError("write_key", "must not be empty")
        if key != key.strip() or any(c in key for c in "\r\n\t "):
            raise ConfigError("write_key", "contains whitespace; check how the key is set")
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError("base_url", f"expected an http(s) URL, got {self.base_url!r}")
        if self.batch_max_events > MAX_MESSAGES:
            raise ConfigError(
                "batch_max_events", f"at most {MAX_MESSAGES} (messages per Segment batch)"
            )

    def batch_url(self) -> str:
        return f"{self.base_url.rstrip('/')}/v1/batch"


# -- mapping ----------------------------------------------------------------------------------


def _digest(value: Any) -> str:
    data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def message_id(event: Event) -> str:
    """The event's timeUUID; else a digest of its content, the same on every redelivery."""
    time_uuid = event.get("timeUUID")
    if isinstance(time_uuid, str) and time_uuid:
        return time_uuid
    return "relay-" + _digest(event)


def _text(value: Any) -> str | None:
    """An ID as Segment takes it: a non-empty string (numbers stringified), else None."""
    if value is None or isinstance(value, bool | dict | list):
        return None
    text = str(value)
    return text or None


def identities(event: Event, user: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``userId`` and ``anonymousId`` (customIDs.stableID); at least one is set. Without either,
    ``anonymousId`` is another custom ID as ``<idType>:<value>``, else a digest of the user
    object (see the module docstring)."""
    user_id = _text(event.get("userID")) or _text(user.get("userID"))
    custom = user.get("customIDs")
    custom = custom if isinstance(custom, dict) else {}
    stable = _text(custom.get("stableID"))
    if stable is None:
        legacy = event.get("statsigMetadata")
        if isinstance(legacy, dict):
            stable = _text(legacy.get("stableID"))
    if stable is not None or user_id is not None:
        return user_id, stable
    unit = event.get("unitID")
    names = ([unit] if isinstance(unit, str) and unit in custom else []) + sorted(
        k for k in custom if isinstance(k, str)
    )
    for name in names:
        value = _text(custom.get(name))
        if value is not None:
            return user_id, f"{name}:{value}"
    return user_id, "relay-" + _digest(user)


def _timestamp(event: Event) -> str:
    value = event.get("timestamp")
    try:
        ms = value if type(value) is int else to_epoch_ms(value)
    except ValueError:
        ms = now_ms()
    return iso8601_from_ms(ms)


def _properties(event: Event, category: str) -> dict[str, Any]:
    metadata = event.get("metadata")
    if category in EXPOSURE_CATEGORIES:
        metadata = exposure_metadata(event)
    metadata = metadata if isinstance(metadata, dict) else {}
    props: dict[str, Any] = {}
    if category == CONFIG_CHANGE:
        # Statsig's own export: author, configName, description, environment.
        user = event.get("user")
        user = user if isinstance(user, dict) else {}
        author = user.get("name") or user.get("email")
        for key, value in (
            ("author", author),
            ("configName", metadata.get("name")),
            ("description", metadata.get("description")),
            ("environment", metadata.get("environment")),
            ("type", metadata.get("type")),
            ("action", metadata.get("action")),
        ):
            if value is not None:
                props[key] = value
    value = event.get("value")
    if value is not None:
        props["value"] = value
    props["metadata"] = metadata
    return props


def track_message(event: Event) -> dict[str, Any]:
    """One Statsig event as a Segment ``track`` message (the mapping in the module docstring)."""
    name = event.get("eventName")
    name = name if isinstance(name, str) and name else "(unnamed)"
    category = category_of(name)
    user = event.get("user")
    user = user if isinstance(user, dict) else {}
    user_id, anonymous_id = identities(event, user)
    context: dict[str, Any] = {"library": LIBRARY}
    if category != CONFIG_CHANGE and user:
        context["user"] = {k: v for k, v in user.items() if k != "privateAttributes"}
        for ours, theirs in (("ip", "ip"), ("userAgent", "userAgent"), ("locale", "locale")):
            if isinstance(user.get(theirs), str) and user[theirs]:
                context[ours] = user[theirs]
    custom = user.get("customIDs")
    if isinstance(custom, dict) and _text(custom.get("stableID")):
        context["stableID"] = _text(custom.get("stableID"))
    message: dict[str, Any] = {"type": "track", "event": name}
    if user_id is not None:
        message["userId"] = user_id
    if anonymous_id is not None:
        message["anonymousId"] = anonymous_id
    message["messageId"] = message_id(event)
    message["timestamp"] = _timestamp(event)
    message["properties"] = _properties(event, category)
    message["context"] = context
    return message


def pack(messages: list[tuple[int, bytes]]) -> list[list[tuple[int, bytes]]]:
    """Cut encoded messages into requests of ≤ MAX_MESSAGES and ≤ MAX_REQUEST_BYTES."""
    requests: list[list[tuple[int, bytes]]] = []
    current: list[tuple[int, bytes]] = []
    size = _ENVELOPE
    for item in messages:
        extra = len(item[1]) + 1
        if current and (len(current) >= MAX_MESSAGES or size + extra > MAX_REQUEST_BYTES):
            requests.append(current)
            current, size = [], _ENVELOPE
        current.append(item)
        size += extra
    if current:
        requests.append(current)
    return requests


def batch_body(part: list[tuple[int, bytes]]) -> bytes:
    return b'{"batch":[' + b",".join(data for _, data in part) + b"]}"


# -- the target -------------------------------------------------------------------------------


class SegmentTarget(Target):
    """``track`` calls to ``{base_url}/v1/batch``; see the module docstring."""

    kind = "segment"
    config_class = SegmentConfig
    config: SegmentConfig

    def __init__(self, name: str, config: SegmentConfig) -> None:
        super().__init__(name, config)
        self.url = config.batch_url()
        self._headers = json_headers({"Authorization": basic_auth(config.write_key)})

    async def send(self, batch: Batch) -> Outcome:
        too_large: dict[int, Outcome] = {}
        messages: list[tuple[int, bytes]] = []
        for index, event in enumerate(batch.events()):
            data = orjson.dumps(track_message(event))
            if len(data) > MAX_MESSAGE_BYTES:
                too_large[index] = Outcome(
                    Verdict.REJECT,
                    f"message_too_large: {len(data)} bytes as a Segment message; "
                    f"Segment takes at most {MAX_MESSAGE_BYTES} bytes (32 KB) per message",
                )
            else:
                messages.append((index, data))
        if too_large:
            logger.warning(
                "target %s: %d events over Segment's 32 KB per message are dead-lettered",
                self.name,
                len(too_large),
            )
        requests = pack(messages)
        delivered = 0
        for number, part in enumerate(requests):
            outcome = await self.post(self.url, batch_body(part), self._headers)
            if outcome.ok:
                delivered += len(part)
                continue
            if not delivered:
                return outcome  # nothing taken: the answer holds for the whole batch
            # Some requests were taken: only what was not sent yet goes back, as a batch of its
            # own, where the answer again holds for all of it; a refused key holds it at once.
            rest = [index for later in requests[number:] for index, _ in later]
            return Outcome.per_event(
                {**too_large, **dict.fromkeys(rest, for_the_rest(outcome))},
                others_delivered=True,
                reason=outcome.reason,
                status=outcome.status,
            )
        if too_large:
            return Outcome.per_event(too_large, others_delivered=True, reason="message_too_large")
        return DELIVERED

    def classify(self, status: int, headers: Mapping[str, str], body: str) -> Outcome:
        text = body.lower()
        reason = f"HTTP {status}" + (f": {body[:200]}" if body else "")
        if (status == 400 and "invalid write key" in text) or (
            status == 404 and "source is disabled" in text
        ):
            return Outcome(Verdict.UNAUTHORIZED, reason, status=status)
        if status == 404:
            return Outcome(
                Verdict.FATAL, f"{reason} (is base_url a tracking API? {self.url})", status=status
            )
        if status == 400 and any(phrase in text for phrase in TOO_LARGE_PHRASES):
            return Outcome(Verdict.TOO_LARGE, reason, status=status)
        return classify_response(status, headers, body)

    def describe(self) -> str:
        return f"segment track calls to {hide_password(self.url)}"
