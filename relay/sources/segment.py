"""Segment's HTTP Tracking API, so Segment and RudderStack SDKs can point their host here.

``POST {path_prefix}/v1/{track,page,screen,identify,group,alias,batch}``, answered like Segment:
200 ``{"success": true}``, 400 for bad JSON or an oversize request, 401 for a wrong write key.
The write key comes as the HTTP Basic user (empty password) or as ``writeKey`` in the body.

Each message becomes a Statsig event (the table in docs/sources.md): ``track`` → its ``event``,
``page``/``screen`` → ``page``/``screen`` with the page name in metadata; ``userId`` →
``userID``, ``anonymousId`` → ``customIDs.stableID``; ``properties`` → string metadata with
``revenue`` lifted into ``value``. ``identify``/``group``/``alias`` carry no event: they are
dropped and counted unless configured to become events. In a batch a bad message (not an
object, no ID, unknown type, over 32 KB) is rejected alone and the rest go on; a repeated
``messageId`` within ``dedup_window`` is dropped as a duplicate by the ingest handler.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import web

from ..events import Event, to_epoch_ms
from ..mapping import (
    apply_user_mapping,
    compile_user_mapping,
    has_user_id,
    id_string,
    numeric_value,
    skew_corrected_ms,
    string_map,
)
from ..rename import RenameSetting, compile_rename
from ..schema import ByteSize, ConfigError, Duration, secret
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

CALLS = ("track", "page", "screen", "identify", "group", "alias")
PROFILE_CALLS = ("identify", "group", "alias")  # no event of their own; dropped by default
_KNOWN_CALLS = frozenset(CALLS)
_CONSENT = {True: "granted", False: "denied"}
# analytics.js / @segment/analytics-next post each call to the first letter of its type
# (``/v1/t`` …) and a batch to ``/v1/b`` (docs/browser-sdks.md).
SHORT_PATHS = {call[0]: call for call in CALLS} | {"b": "batch"}


@dataclass(kw_only=True)
class SegmentConfig(SourceConfig):
    type: Literal["segment"] = "segment"
    path_prefix: str = "/segment"
    write_key: str | None = secret(default=None)
    write_keys: list[str] = secret(default_factory=list)  # several, while rotating
    rename: RenameSetting = None  # same forms as a route's rename
    # Extra Statsig user fields: {"custom.plan": "traits.plan", "customIDs.companyID": ...}
    user_mapping: dict[str, str] = field(default_factory=dict)
    value_property: str = "revenue"  # the property that becomes the numeric value
    identify: Literal["drop", "event"] = "drop"
    group: Literal["drop", "event"] = "drop"
    alias: Literal["drop", "event"] = "drop"
    dedup: bool = True  # by messageId
    dedup_window: Duration = Duration(86400.0)
    max_message_size: ByteSize = ByteSize(32 * 1024)  # Segment's documented limits
    max_batch_size: ByteSize = ByteSize(500 * 1024)

    def __post_init__(self) -> None:
        prefix = self.path_prefix.rstrip("/")
        if prefix and not prefix.startswith("/"):
            raise ConfigError("path_prefix", f"must start with '/', got {self.path_prefix!r}")
        self.path_prefix = prefix
        compile_rename(self.rename)
        compile_user_mapping(self.user_mapping, "user_mapping")
        if not self.value_property:
            raise ConfigError("value_property", "must name a property")

    def keys(self) -> list[str]:
        found = [self.write_key] if self.write_key else []
        return [k for k in [*found, *self.write_keys] if k]


def basic_user(header: str) -> str | None:
    """The user part of an HTTP Basic ``Authorization`` header (Segment's write key), or None."""
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "basic" or not credentials:
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode()
    except ValueError:  # not base64, not ASCII, not UTF-8 (binascii.Error, UnicodeError)
        return ""  # present but unreadable: a wrong key, not a missing one
    return decoded.partition(":")[0]


class SegmentSource(Source):
    kind = "segment"
    config_class = SegmentConfig
    config: SegmentConfig
    accepts_gzip = True

    def __init__(self, name: str, config: SegmentConfig) -> None:
        super().__init__(name, config)
        self._keys = config.keys()
        self._basic_users: dict[str, str | None] = {}
        self._rename = compile_rename(config.rename)
        self._user_mapping = compile_user_mapping(config.user_mapping, "user_mapping")
        self._as_event = frozenset(c for c in PROFILE_CALLS if getattr(config, c) == "event")
        self.dedup_window = config.dedup_window if config.dedup else None

    def endpoints(self) -> list[Endpoint]:
        prefix = self.config.path_prefix
        return [Endpoint(f"{prefix}/v1/{call}", kind=call) for call in (*CALLS, "batch")] + [
            Endpoint(f"{prefix}/v1/{short}", kind=call) for short, call in SHORT_PATHS.items()
        ]

    def credentials_are_public(self) -> bool:
        return True  # a write key ships in every web page that loads analytics.js

    def describe(self) -> str:
        keys = f"{len(self._keys)} write key(s)" if self._keys else "no write key (open)"
        calls = ",".join((*CALLS, "batch", *SHORT_PATHS))
        return f"POST {self.config.path_prefix}/v1/{{{calls}}}; {keys}"

    def warnings(self) -> list[str]:
        if not self._keys:
            return [f"source {self.name!r} accepts any write key: set write_keys"]
        return []

    def _basic_user(self, request: web.BaseRequest) -> str | None:
        """:func:`basic_user` of the request, remembered per header value: an SDK sends the
        same header with every call (a few at most, so the memory is bounded)."""
        header = request.headers.get("Authorization", "")
        users = self._basic_users
        if header not in users:
            if len(users) >= 64:
                users.clear()
            users[header] = basic_user(header)
        return users[header]

    def authenticate(self, request: web.BaseRequest, endpoint: Endpoint, body: bytes) -> None:
        if not self._keys:
            return
        presented = self._basic_user(request)
        if presented is not None and not key_matches(presented, self._keys):
            raise SourceError(401, "write key does not match")
        # No Basic header: the key may be writeKey in the body, which parse() checks.

    def parse(
        self, request: web.BaseRequest, endpoint: Endpoint, body: bytes, received_ms: int
    ) -> Parsed:
        limit = self.config.max_batch_size if endpoint.kind == "batch" else None
        if limit is not None and len(body) > limit:
            raise SourceError(400, f"batch of {len(body)} bytes is over the {limit} byte limit")
        document, deep = load_json(body)
        if not isinstance(document, dict):
            raise SourceError(400, "expected a JSON object")
        if self._keys and self._basic_user(request) is None:
            key = document.get("writeKey")
            if not key_matches(key if isinstance(key, str) else None, self._keys):
                raise SourceError(
                    401, "missing or wrong write key: send it as the HTTP Basic user or writeKey"
                )
        return self.parse_document(document, endpoint.kind, received_ms, len(body), deep)

    def parse_document(
        self,
        document: dict[str, Any],
        kind: str,
        received_ms: int,
        size: int = 0,
        deep: bool = False,
    ) -> Parsed:
        """Map one request body (``kind`` is the endpoint: a call type or ``batch``). ``deep``:
        the body may nest too deep (relay/sources/base.py), check each message."""
        parsed = Parsed()
        if kind != "batch":
            if size > self.config.max_message_size:
                raise SourceError(
                    400,
                    f"message of {size} bytes is over the {self.config.max_message_size} byte "
                    "limit",
                    "too_large",
                )
            problem = (
                (event_problem(document) if deep else None)
                or _wrong_typed(document)
                or self._add(parsed, document, kind, None, received_ms)
            )
            if problem is not None:
                raise SourceError(400, problem)
            return parsed
        items = document.get("batch")
        if not isinstance(items, list):
            raise SourceError(400, 'expected {"batch": [...]}')
        sent_at = document.get("sentAt")
        shared = document.get("context")
        shared_context = shared if isinstance(shared, dict) and shared else None
        if deep and shared_context is not None:  # the batch's context is every message's
            refuse_shared(shared_context, "context")
        # Only a body over the message limit can hold an oversize message: skip the re-encoding
        # of every message otherwise.
        max_message = self.config.max_message_size
        check_size = size > max_message
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                parsed.reject(index, f"expected an object, got {type(item).__name__}")
                continue
            call = item.get("type")
            if type(call) is not str:  # a list or object here once made a 500
                parsed.reject(index, f"type must be a string, got {type(call).__name__}")
                continue
            if call not in _KNOWN_CALLS:
                parsed.reject(index, f"unknown type {call[:40]!r}")
                continue
            if (problem := _wrong_typed(item)) is not None:
                parsed.reject(index, problem)
                continue
            if shared_context is not None:
                own = item.get("context")
                context = {**shared_context, **own} if isinstance(own, dict) else shared_context
                item = {**item, "context": context}
            if deep and (problem := event_problem(item)) is not None:
                parsed.reject(index, problem)
                continue
            if check_size and len(orjson.dumps(item)) > max_message:
                parsed.reject(index, f"message is over the {max_message} byte limit")
                continue
            problem = self._add(parsed, item, call, sent_at, received_ms)
            if problem is not None:
                parsed.reject(index, problem)
        return parsed

    def _add(
        self, parsed: Parsed, message: dict[str, Any], call: str, sent_at: Any, received_ms: int
    ) -> str | None:
        """Append the event of one message (or count its drop); returns why it is unusable."""
        if call in PROFILE_CALLS and call not in self._as_event:
            parsed.dropped[call] = parsed.dropped.get(call, 0) + 1
            return None
        event = self.to_event(message, call, sent_at, received_ms)
        if isinstance(event, str):
            return event
        parsed.events.append(event)
        if not has_user_id(event):
            # Segment's API answers 200 here too; Statsig logs it but cannot join it to a user.
            parsed.without_user += 1
        if self.dedup_window is not None:
            parsed.dedup_keys.append(id_string(message.get("messageId")))
        return None

    def to_event(
        self, message: dict[str, Any], call: str, sent_at: Any, received_ms: int
    ) -> Event | str:
        """The Statsig event of one Segment message, or the reason it has none."""
        user_id = id_string(message.get("userId"))
        anonymous_id = id_string(message.get("anonymousId"))
        if call == "track":
            name = message.get("event")
            if not isinstance(name, str) or not name:
                return "track call without an event name"
        else:
            name = call
        try:
            timestamp = _event_time(message, sent_at, received_ms)
        except ValueError as exc:
            return str(exc)

        context = message.get("context")
        if not isinstance(context, dict):
            context = {}
        traits = message.get("traits") if call == "identify" else None
        user: dict[str, Any] = {}
        if user_id is not None:
            user["userID"] = user_id
        email = _email(traits) or _email(context.get("traits"))
        if email:
            user["email"] = email
        for key in ("ip", "userAgent", "locale"):
            value = context.get(key)
            if isinstance(value, str) and value:
                user[key] = value
        if anonymous_id is not None:
            user["customIDs"] = {"stableID": anonymous_id}
        consent = context.get("consent")
        if isinstance(consent, dict):
            preferences = consent.get("categoryPreferences")
            marketing = preferences.get("marketing") if isinstance(preferences, dict) else None
            if isinstance(marketing, bool):
                user["custom"] = {"marketing_consent": _CONSENT[marketing]}
        if self._user_mapping:
            apply_user_mapping(user, message, self._user_mapping)

        value = None
        if call in ("track", "page", "screen"):
            properties = message.get("properties")
            if isinstance(properties, dict) and properties:
                value_key = self.config.value_property
                value = numeric_value(properties.get(value_key))
                metadata = string_map(properties, value_key if value is not None else None)
            else:
                metadata = {}
            if call != "track":
                for key in ("name", "category"):
                    text = message.get(key)
                    if isinstance(text, str) and text:
                        metadata[key] = text
        else:
            metadata = _profile_metadata(message, call)

        event: Event = {
            "eventName": self._rename(name) if self._rename is not None else name,
            "user": user,
            "timestamp": timestamp,
            "metadata": metadata,
        }
        if user_id is not None:
            event["userID"] = user_id
        if value is not None:
            event["value"] = value
        return event

    def answer(self, parsed: Parsed, accepted: int) -> web.Response:
        payload: dict[str, Any] = {"success": True}
        if parsed.error_count:  # not in Segment's answer; helps whoever reads it with curl
            payload["rejected"] = parsed.error_count
            payload["errors"] = parsed.errors
        return web.Response(body=orjson.dumps(payload), content_type="application/json")


# Fields of a Segment message that, when present and not null, must have these JSON types.
# Segment's API refuses such a message; mapping it anyway would silently drop what it carried.
_ID_FIELDS = ("userId", "anonymousId", "previousId", "groupId", "messageId")
_OBJECT_FIELDS = ("properties", "context", "traits", "integrations")


def _wrong_typed(message: dict[str, Any]) -> str | None:
    """Why one message's fields have the wrong JSON types (an ID that is an object, properties
    that are a list); None when they are usable. The message is then rejected alone."""
    for key in _ID_FIELDS:
        value = message.get(key)
        if value is not None and (type(value) is bool or not isinstance(value, str | int | float)):
            return f"{key} must be a string, got {type(value).__name__}"
    for key in _OBJECT_FIELDS:
        value = message.get(key)
        if value is not None and not isinstance(value, dict):
            return f"{key} must be an object, got {type(value).__name__}"
    return None


def _event_time(message: dict[str, Any], sent_at: Any, received_ms: int) -> int:
    """``timestamp`` as given; else ``originalTimestamp`` corrected for clock skew; else now."""
    timestamp = message.get("timestamp")
    if timestamp is not None:
        return to_epoch_ms(timestamp)
    original = message.get("originalTimestamp")
    if original is None:
        return received_ms
    own_sent_at = message.get("sentAt")
    return skew_corrected_ms(
        original, own_sent_at if own_sent_at is not None else sent_at, received_ms
    )


def _email(traits: Any) -> str | None:
    if isinstance(traits, dict):
        email = traits.get("email")
        if isinstance(email, str) and email:
            return email
    return None


def _profile_metadata(message: dict[str, Any], call: str) -> dict[str, str]:
    """identify/group/alias as an event: the traits, plus the group or previous ID."""
    traits = message.get("traits")
    metadata = string_map(traits) if isinstance(traits, dict) else {}
    if call == "group":
        group_id = id_string(message.get("groupId"))
        if group_id is not None:
            metadata["groupId"] = group_id
    elif call == "alias":
        previous_id = id_string(message.get("previousId"))
        if previous_id is not None:
            metadata["previousId"] = previous_id
    return metadata
