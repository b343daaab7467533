"""Statsig's outgoing Generic Webhook: signed batches of exports from a Statsig project.

Accepts both documented bodies (a bare array and ``{"data": [...]}``), timestamps as numbers or
numeric strings, exposure keys under ``metadata`` or the older ``statsigMetadata``. Verifies
``X-Statsig-Signature`` = ``v0=`` + hex HMAC-SHA256(secret, ``v0:{timestamp}:{body}``) against
every configured secret (rotation) and rejects timestamps outside the tolerance (replays).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from aiohttp import web

from ..events import (
    EXPOSURE_CATEGORIES,
    EXPOSURE_KEYS,
    MAX_MS,
    MIN_MS,
    Event,
    category_of,
    identity_problem,
    to_epoch_ms,
)
from ..numbers import NumberScreen
from ..raw import decode_exports
from ..schema import ConfigError, Duration
from ..schema import secret as secret_field
from .base import (
    Endpoint,
    Parsed,
    Source,
    SourceConfig,
    SourceError,
    event_problem,
    header_bytes,
    load_json,
    may_nest_too_deep,
)

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Statsig-Signature"
TIMESTAMP_HEADER = "X-Statsig-Request-Timestamp"
# The event names whose exposure keys normalise_export may have to lift.
_EXPOSURE_NAMES = frozenset(
    name
    for name in (f"statsig::{category}" for category in EXPOSURE_CATEGORIES)
    if category_of(name) in EXPOSURE_CATEGORIES
)
# Fields that, when present and not null, must be JSON objects: a target reads keys from them,
# and a string or array there would fail at delivery instead of at ingest. relay/raw.py's
# views check the same fields.
_OBJECT_FIELDS = ("user", "metadata")


@dataclass(kw_only=True)
class StatsigWebhookConfig(SourceConfig):
    type: Literal["statsig_webhook"] = "statsig_webhook"
    path: str = "/webhooks/statsig"
    signing_secret: str | None = secret_field(default=None)
    signing_secrets: list[str] = secret_field(default_factory=list)  # several, while rotating
    tolerance: Duration = Duration(300.0)  # accepted clock difference of the signature time
    # With no secret configured, unsigned requests are accepted (and a warning is logged).
    require_signature: bool | None = None
    # Keep events that need no normalisation as their JSON bytes (relay/raw.py); false decodes
    # every event into a dict (the reference path; same output, more CPU).
    forward_raw: bool = True

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ConfigError("path", f"must start with '/', got {self.path!r}")
        if self.require_signature and not self.secrets():
            raise ConfigError("signing_secret", "require_signature is on but no secret is set")

    def secrets(self) -> list[bytes]:
        found = [self.signing_secret] if self.signing_secret else []
        return [s.encode() for s in [*found, *self.signing_secrets] if s]


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Statsig-Signature`` value Statsig sends for ``body`` at ``timestamp`` (ms)."""
    mac = hmac.new(secret, b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256)
    return "v0=" + mac.hexdigest()


class StatsigWebhookSource(Source):
    kind = "statsig_webhook"
    config_class = StatsigWebhookConfig
    config: StatsigWebhookConfig
    accepts_gzip = False  # the signature covers the bytes as sent

    def __init__(self, name: str, config: StatsigWebhookConfig) -> None:
        super().__init__(name, config)
        self._secrets = config.secrets()
        self._require = (
            bool(self._secrets) if config.require_signature is None else (config.require_signature)
        )
        self._numbers = NumberScreen()  # the raw path's per-body check (relay/numbers.py)

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint(self.config.path)]

    def warnings(self) -> list[str]:
        if not self._require:
            return [f"source {self.name!r} accepts unsigned requests: set signing_secret"]
        return []

    def authenticate(self, request: web.BaseRequest, endpoint: Endpoint, body: bytes) -> None:
        if not self._require:
            return
        signature = request.headers.get(SIGNATURE_HEADER)
        timestamp = request.headers.get(TIMESTAMP_HEADER)
        if not signature or not timestamp:
            if is_url_verification(body):
                return  # Statsig's set-up handshake comes unsigned; parse() answers it
            raise SourceError(401, f"missing {SIGNATURE_HEADER} or {TIMESTAMP_HEADER}")
        try:
            sent_ms = int(timestamp)
        except ValueError:
            raise SourceError(401, f"{TIMESTAMP_HEADER} is not epoch milliseconds") from None
        skew = abs(time.time() * 1000 - sent_ms) / 1000
        if skew > self.config.tolerance:
            hint = ""
            if abs(time.time() - sent_ms) <= self.config.tolerance:  # the clock in seconds
                hint = f"; {TIMESTAMP_HEADER} must be epoch milliseconds, this looks like seconds"
            raise SourceError(
                401,
                f"signature timestamp is {skew:.0f}s away from now (tolerance "
                f"{self.config.tolerance:g}s){hint}",
                "stale_signature",
            )
        presented = header_bytes(signature.strip())
        if presented is None:
            raise SourceError(401, "signature does not match", "bad_signature")
        valid = False
        for secret in self._secrets:
            valid |= hmac.compare_digest(presented, sign(secret, timestamp, body).encode())
        if not valid:
            raise SourceError(401, "signature does not match", "bad_signature")

    def parse_raw(
        self, request: web.BaseRequest, endpoint: Endpoint, body: bytes, received_ms: int
    ) -> Parsed | None:
        """Exports on the raw path; anything else (the handshake, a body the raw decoder
        doubts) takes :meth:`parse`."""
        if not self.config.forward_raw or is_url_verification(body):
            return None
        parsed = Parsed()
        deep: list[bool] = []  # whether the body could nest too deep: counted at most once,
        # and only when an event needs the dict path (the plain ones are checked in raw.py)

        def normalise(item: Any) -> str | None:
            if not deep:
                deep.append(may_nest_too_deep(body))
            return (deep[0] and event_problem(item)) or normalise_export(item, received_ms)

        raw = decode_exports(body, normalise, parsed.reject, self._numbers)
        if raw is None:
            return None
        if parsed.error_count and b"url_verification" in body:
            return None  # perhaps a (signed) handshake over 4 KB: parse() answers it
        parsed.raw = raw
        return parsed

    def parse(
        self, request: web.BaseRequest, endpoint: Endpoint, body: bytes, received_ms: int
    ) -> Parsed:
        document, check_each = load_json(body)
        handshake = url_verification(document)
        if handshake is not None:
            code = handshake.get("verification_code")
            if not isinstance(code, str):
                raise SourceError(400, "url_verification without a verification_code")
            logger.info(
                "source %s: answered Statsig's url_verification",
                self.name,
                extra={"source": self.name},
            )
            return Parsed(
                reply=web.Response(
                    body=orjson.dumps({"verification_code": code}),
                    content_type="application/json",
                )
            )
        if isinstance(document, dict):
            data = document.get("data")
            if not isinstance(data, list):
                raise SourceError(400, 'expected a JSON array of events or {"data": [...]}')
            items: list[Any] = data
        elif isinstance(document, list):
            items = document
        else:
            raise SourceError(400, 'expected a JSON array of events or {"data": [...]}')
        parsed = Parsed()
        events = parsed.events
        exposures = _EXPOSURE_NAMES
        for index, item in enumerate(items):
            if check_each and (problem := event_problem(item)) is not None:
                parsed.reject(index, problem)
                continue
            # Fast path for an event normalise_export would leave as it is (most of them): the
            # per-event calls cost more than parsing the JSON did.
            if type(item) is dict:
                name = item.get("eventName")
                stamp = item.get("timestamp")
                user = item.get("user")
                metadata = item.get("metadata")
                if (
                    type(name) is str
                    and name
                    and type(stamp) is int
                    and MIN_MS <= stamp <= MAX_MS
                    and (user is None or type(user) is dict)
                    and (metadata is None or type(metadata) is dict)
                    and identity_problem(item) is None
                ):
                    if name not in exposures:
                        events.append(item)
                        continue
                    if (
                        type(metadata) is dict
                        and ("gate" in metadata or "config" in metadata)
                        and type(metadata.get("gateValue")) is not bool
                    ):
                        events.append(item)
                        continue
            problem = normalise_export(item, received_ms)
            if problem is None:
                events.append(item)
            else:
                parsed.reject(index, problem)
        return parsed


def url_verification(document: Any) -> dict[str, Any] | None:
    """The url_verification handshake object in ``document``, or None. Statsig does not document
    it; senders have been seen to put ``{"event": "url_verification", "verification_code": …}``
    under ``data``, and we also take it at the top level or as the only element of ``data``
    (the shape of a config-change batch)."""
    if not isinstance(document, dict):
        return None
    data = document.get("data", document)
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if isinstance(data, dict) and data.get("event") == "url_verification":
        return data
    return None


def is_url_verification(body: bytes) -> bool:
    """Whether ``body`` is the (unsigned) url_verification handshake and nothing else."""
    # The length first: the search costs ~12 µs on a 41 KB batch, on every request.
    if len(body) > 4096 or b"url_verification" not in body:
        return False
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return url_verification(document) is not None


def normalise_export(item: Any, received_ms: int) -> str | None:
    """Normalise one exported event in place; returns why it is unusable, or None."""
    if not isinstance(item, dict):
        return f"expected an object, got {type(item).__name__}"
    event: Event = item
    for field in _OBJECT_FIELDS:
        value = event.get(field)
        if value is not None and not isinstance(value, dict):
            return f"{field}: expected an object, got {type(value).__name__}"
    name = event.get("eventName")
    if not isinstance(name, str) or not name:
        return "missing eventName"
    timestamp = event.get("timestamp")
    if timestamp is None:
        event["timestamp"] = received_ms
    elif type(timestamp) is not int or not MIN_MS <= timestamp <= MAX_MS:
        try:
            event["timestamp"] = to_epoch_ms(timestamp)
        except ValueError as exc:
            return str(exc)
    problem = identity_problem(event)
    if problem:
        return problem
    if name.startswith("statsig::") and category_of(name) in EXPOSURE_CATEGORIES:
        _lift_legacy_exposure(event)
    return None


def _lift_legacy_exposure(event: Event) -> None:
    """Older exports keep exposure keys under statsigMetadata: copy them into metadata."""
    metadata = event.get("metadata")
    if not isinstance(metadata, dict):
        metadata = event["metadata"] = {}
    legacy = event.get("statsigMetadata")
    if isinstance(legacy, dict) and "gate" not in metadata and "config" not in metadata:
        for key in EXPOSURE_KEYS:
            if key in legacy and key not in metadata:
                metadata[key] = legacy[key]
    gate_value = metadata.get("gateValue")
    if isinstance(gate_value, bool):
        metadata["gateValue"] = "true" if gate_value else "false"
