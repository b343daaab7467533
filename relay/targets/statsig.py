"""Statsig log_event: relayed events into a Statsig project, as its own SDKs send them.

``POST {url}`` with ``statsig-api-key: <server secret>``, the SDK headers
(``STATSIG-CLIENT-TIME``, ``STATSIG-EVENT-COUNT``, ``STATSIG-SDK-TYPE``, ``STATSIG-SDK-VERSION``)
and a gzipped body ``{"events": [...], "statsigMetadata": {...}}``. Each event is encoded from the
internal model: ``timestamp`` → ``time`` (epoch ms), ``metadata`` values as strings (numbers and
booleans stringified, nested values as JSON), ``user`` without ``privateAttributes``.

Statsig documents field limits (docs.statsig.com/guides/logging-events): string fields up to 64
characters, object fields up to 4096 characters once stringified. The relay enforces them before
sending, so Statsig never silently truncates: ``eventName`` and a string ``value`` are cut to
``max_string_length``; a ``metadata`` or ``user`` object over ``max_object_length`` loses its
largest entries first (the user's IDs are never dropped). Each trimmed field is counted in
``relay_target_fields_trimmed{target, field}``. Sizes are measured in UTF-8 bytes, which is never
less than Statsig's character count.

Answers: any 2xx delivered; 401/403 (a client or console key instead of a server secret) are
"unauthorized", as for every target: the deliverer holds the events in the spool and marks the
target failing until the key works; 404/405 (not a log_event URL) are fatal: the target is
failing (misconfigured) and its events held the same way until the URL is fixed; 400 rejects
(bisected to the bad events); 413 splits; 408, 429 and 5xx but 501 retry. The key never appears
in a log line, an outcome reason or ``describe()``.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from .. import __version__
from ..events import Event, now_ms
from ..mapping import string_value
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
    redact_url,
)

logger = logging.getLogger(__name__)

DEFAULT_URL = "https://events.statsigapi.net/v1/log_event"
MAX_EVENTS_PER_REQUEST = 1000  # Statsig: batches of up to 1000 events are safe
MAX_REQUEST_BYTES = 10 * 1000 * 1000  # Statsig: a request up to 10 MB
GZIP_IN_THREAD_BYTES = 64 * 1024  # compress larger bodies off the event loop
EXPECTED_KEY = "a server secret key (secret-…), not a client (client-…) or console (console-…) key"
# Fields the user object keeps even when it is over the size limit: they join events to users.
_USER_IDS = frozenset({"userID", "customIDs"})


@dataclass(kw_only=True)
class StatsigConfig(TargetConfig):
    type: Literal["statsig"] = "statsig"
    server_secret: str = secret()  # the project's server secret key, secret-…
    url: str = DEFAULT_URL
    gzip: bool = True
    batch_max_events: int = MAX_EVENTS_PER_REQUEST
    batch_max_bytes: ByteSize = ByteSize(4 * 1024**2)
    max_string_length: int = 64  # eventName and string value
    max_object_length: int = 4096  # metadata and user, serialised
    sdk_type: str = "statsig-relay"
    sdk_version: str = __version__

    def __post_init__(self) -> None:
        super().__post_init__()
        key = self.server_secret
        if not key:
            raise ConfigError("server_secret", f"is empty; set {EXPECTED_KEY}")
        if key != key.strip() or any(c in key for c in "\r\n\t "):
            raise ConfigError("server_secret", "contains whitespace; check how the key is set")
        if key.startswith("console-"):
            raise ConfigError(
                "server_secret",
                f"is a console API key; log_event needs {EXPECTED_KEY}",
            )
        if self.batch_max_events > MAX_EVENTS_PER_REQUEST:
            raise ConfigError(
                "batch_max_events",
                f"Statsig takes at most {MAX_EVENTS_PER_REQUEST} events per request",
            )
        if self.batch_max_bytes > MAX_REQUEST_BYTES:
            raise ConfigError("batch_max_bytes", "Statsig takes requests up to 10 MB")
        if self.max_string_length < 8:
            raise ConfigError("max_string_length", "must be at least 8")
        if self.max_object_length < 64:
            raise ConfigError("max_object_length", "must be at least 64")
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError("url", "must be an http:// or https:// URL")

    def key_warning(self) -> str | None:
        """Why the key looks wrong though it might work, or None; never includes the key."""
        if self.server_secret.startswith("secret-"):
            return None
        if self.server_secret.startswith("client-"):
            return (
                "server_secret is a client SDK key; Statsig may refuse or limit it for "
                f"server-side logging: use {EXPECTED_KEY}"
            )
        return f"server_secret does not look like a Statsig key: expected {EXPECTED_KEY}"


@dataclass(slots=True)
class Trimmed:
    """How many events had each field trimmed while encoding one batch."""

    event_name: int = 0
    value: int = 0
    metadata: int = 0
    user: int = 0

    def items(self) -> list[tuple[str, int]]:
        return [
            (name, count)
            for name, count in (
                ("eventName", self.event_name),
                ("value", self.value),
                ("metadata", self.metadata),
                ("user", self.user),
            )
            if count
        ]


def fit_object(obj: dict[str, Any], limit: int, keep: frozenset[str] = frozenset()) -> bool:
    """Drop the largest entries of ``obj`` (in place) until it serialises within ``limit``.

    Entries named in ``keep`` stay. Returns whether anything was dropped. Bounded by the number
    of keys; sizes are UTF-8 bytes of the JSON.
    """
    size = len(orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS))
    if size <= limit:
        return False
    entries = sorted(
        (
            (len(orjson.dumps({k: v}, option=orjson.OPT_NON_STR_KEYS)) - 1, k)
            for k, v in obj.items()
            if k not in keep
        ),
        reverse=True,
    )
    for entry_size, key in entries:
        if size <= limit:
            break
        del obj[key]
        size -= entry_size  # "key":value plus its comma
    while size > limit and obj.keys() - keep:  # estimate was off: drop one more, re-measure
        del obj[next(k for k in obj if k not in keep)]
        size = len(orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS))
    return True


class StatsigTarget(Target):
    """One Statsig project; several projects are several ``statsig`` targets."""

    kind = "statsig"
    takes_statsig_internal = True
    config_class = StatsigConfig
    config: StatsigConfig

    def __init__(self, name: str, config: StatsigConfig) -> None:
        super().__init__(name, config)
        self._key = config.server_secret
        self._statsig_metadata = orjson.dumps(
            {"sdkType": config.sdk_type, "sdkVersion": config.sdk_version}
        )
        self.trimmed_total: dict[str, int] = {}  # field → events trimmed, since start
        warning = config.key_warning()
        if warning:
            logger.warning("target %s: %s", name, warning)

    # -- encoding --------------------------------------------------------------------------
    def encode_event(self, event: Event, trimmed: Trimmed) -> dict[str, Any]:
        """One internal event as a log_event entry, within Statsig's field limits."""
        cfg = self.config
        max_str = cfg.max_string_length
        name = str(event.get("eventName") or "")
        if len(name) > max_str:
            name = name[:max_str]
            trimmed.event_name += 1
        timestamp = event.get("timestamp")
        if type(timestamp) is not int:
            try:
                timestamp = int(timestamp) if timestamp is not None else now_ms()
            except (TypeError, ValueError):
                timestamp = now_ms()
        out: dict[str, Any] = {
            "eventName": name,
            "user": self._user(event, trimmed),
            "time": timestamp,
        }
        value = event.get("value")
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                value = string_value(value)
            if isinstance(value, str) and len(value) > max_str:
                value = value[:max_str]
                trimmed.value += 1
            out["value"] = value
        metadata = event.get("metadata")
        if isinstance(metadata, dict) and metadata:
            strings = {}
            for key, item in metadata.items():
                if item is not None:  # a null says nothing: leave the key out
                    strings[str(key)] = string_value(item)
            if fit_object(strings, cfg.max_object_length):
                trimmed.metadata += 1
            out["metadata"] = strings
        secondary = event.get("secondaryExposures")
        if isinstance(secondary, list) and secondary:
            out["secondaryExposures"] = secondary
        statsig_metadata = event.get("statsigMetadata")
        if isinstance(statsig_metadata, dict) and statsig_metadata:
            out["statsigMetadata"] = statsig_metadata
        return out

    def _user(self, event: Event, trimmed: Trimmed) -> dict[str, Any]:
        user = event.get("user")
        user = dict(user) if isinstance(user, dict) else {}
        user.pop("privateAttributes", None)  # never logged, as the SDKs do
        if not user.get("userID") and event.get("userID"):
            user["userID"] = str(event["userID"])
        limit = self.config.max_object_length
        if len(user) > 1 and len(orjson.dumps(user, option=orjson.OPT_NON_STR_KEYS)) > limit:
            custom = user.get("custom")
            if isinstance(custom, dict):  # shrink the free-form part before dropping fields
                user["custom"] = custom = dict(custom)
                others = len(orjson.dumps({k: v for k, v in user.items() if k != "custom"}))
                fit_object(custom, max(2, limit - others - len('"custom":,')))
            fit_object(user, limit, _USER_IDS)
            trimmed.user += 1
        return user

    def encode(self, batch: Batch) -> tuple[bytes, Trimmed]:
        """The uncompressed request body for a batch and what was trimmed."""
        trimmed = Trimmed()
        encode_event = self.encode_event
        events = [encode_event(event, trimmed) for event in batch.events()]
        body = (
            b'{"events":'
            + orjson.dumps(events, option=orjson.OPT_NON_STR_KEYS)
            + b',"statsigMetadata":'
            + self._statsig_metadata
            + b"}"
        )
        return body, trimmed

    # -- sending ---------------------------------------------------------------------------
    async def send(self, batch: Batch) -> Outcome:
        body, trimmed = self.encode(batch)
        if len(body) > MAX_REQUEST_BYTES:
            return Outcome(
                Verdict.TOO_LARGE, f"request of {len(body)} bytes is over Statsig's 10 MB limit"
            )
        headers = {
            "statsig-api-key": self._key,
            "STATSIG-CLIENT-TIME": str(now_ms()),
            "STATSIG-EVENT-COUNT": str(batch.count),
            "STATSIG-SDK-TYPE": self.config.sdk_type,
            "STATSIG-SDK-VERSION": self.config.sdk_version,
            "Content-Type": "application/json",
            "User-Agent": f"statsig-relay/{__version__}",
        }
        if self.config.gzip:
            if len(body) > GZIP_IN_THREAD_BYTES:
                body = await asyncio.to_thread(gzip.compress, body, 5, mtime=0)
            else:
                body = gzip.compress(body, 5, mtime=0)
            headers["Content-Encoding"] = "gzip"
        outcome = await self.post(self.config.url, body, headers)
        if outcome.ok and (trimmed.event_name or trimmed.value or trimmed.metadata or trimmed.user):
            self._count_trimmed(trimmed)  # once per delivered event, not per attempt
        return outcome

    def _count_trimmed(self, trimmed: Trimmed) -> None:
        for name, count in trimmed.items():
            if name not in self.trimmed_total:  # say it once; the metric counts the rest
                logger.warning(
                    "target %s: trimming %s to Statsig's limits (max_string_length %d, "
                    "max_object_length %d); counted in relay_target_fields_trimmed",
                    self.name,
                    name,
                    self.config.max_string_length,
                    self.config.max_object_length,
                )
            self.trimmed_total[name] = self.trimmed_total.get(name, 0) + count
            metrics = getattr(self, "metrics", None)  # set by the deliverer
            if metrics is not None:
                metrics.fields_trimmed.labels(self.name, name).inc(count)

    def classify(self, status: int, headers: Mapping[str, str], body: str) -> Outcome:
        if 200 <= status < 300:
            return DELIVERED
        if status in (401, 403):  # the shared rule (held, target failing), Statsig's hint
            return Outcome(
                Verdict.UNAUTHORIZED,
                f"HTTP {status}: Statsig refused the key in targets.{self.name}.server_secret; "
                f"log_event needs {EXPECTED_KEY}",
                status=status,
            )
        if status in (404, 405):
            return Outcome(
                Verdict.FATAL,
                f"HTTP {status}: {redact_url(self.config.url)} is not a Statsig log_event "
                f"endpoint; check targets.{self.name}.url",
                status=status,
            )
        outcome = classify_response(status, headers, body)
        if self._key in outcome.reason:  # an answer must never carry the key into a log
            outcome = Outcome(
                outcome.verdict,
                outcome.reason.replace(self._key, "[key]"),
                outcome.retry_after,
                outcome.status,
            )
        return outcome

    def describe(self) -> str:
        gz = ", gzip" if self.config.gzip else ""
        return f"statsig log_event {hide_password(self.config.url)}{gz} (key: server_secret)"
