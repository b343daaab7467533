"""Any JSON: a declared mapping from dotted paths in the sender's events to Statsig fields.

The body is an array of events, ``{"events": [...]}``, ``{"data": [...]}``, a list found at a
configured ``events_path``, or one event object. Each event is mapped by ``mapping``::

    mapping:
      event_name: type                 # or event_name_default for a constant name
      user_id: user.id
      custom_ids: {stableID: anon}
      user: {email: user.email, custom.plan: user.plan}
      value: amount
      timestamp: ts                    # ISO 8601 or epoch s/ms/µs/ns; missing: receive time
      metadata: props                  # a path to an object, or {metadata key: path}
      dedup_key: id                    # optional: drop repeats within dedup_window

Fields not mapped are not carried over. Events without any user identifier are kept (Statsig
accepts them) and counted in ``relay_events_without_user_total``. Authentication: ``api_keys``
presented as ``Authorization: Bearer <key>`` or ``X-API-Key`` (or one configured header).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from ..events import Event, get_path, to_epoch_ms
from ..mapping import (
    apply_user_mapping,
    compile_user_mapping,
    has_user_id,
    id_string,
    numeric_value,
    split_path,
    string_map,
    string_value,
)
from ..rename import RenameSetting, compile_rename
from ..schema import ConfigError, Duration, secret
from .base import (
    Endpoint,
    Parsed,
    Source,
    SourceConfig,
    SourceError,
    event_problem,
    key_matches,
    load_json,
)

DEFAULT_KEY_HEADERS = ("Authorization", "X-API-Key")


@dataclass(kw_only=True)
class JsonMapping:
    event_name: str | None = None
    user_id: str | None = None
    custom_ids: dict[str, str] = field(default_factory=dict)  # ID type: path
    user: dict[str, str] = field(default_factory=dict)  # Statsig user path: path
    value: str | None = None
    timestamp: str | None = None
    metadata: str | dict[str, str] | None = None
    dedup_key: str | None = None

    def __post_init__(self) -> None:
        compile_user_mapping(self.user, "user")
        for id_type, path in self.custom_ids.items():
            if not id_type or not split_path(path):
                raise ConfigError(f"custom_ids.{id_type}", "expected idType: dotted.path")


@dataclass(kw_only=True)
class JsonSourceConfig(SourceConfig):
    type: Literal["json"] = "json"
    path: str = "/ingest/json"
    api_keys: list[str] = secret(default_factory=list)
    # One header holding the key (a "Bearer " prefix is allowed); default: Authorization
    # (Bearer) or X-API-Key.
    api_key_header: str | None = None
    events_path: str | None = None  # dotted path to the list of events in the body
    mapping: JsonMapping = field(default_factory=JsonMapping)
    event_name_default: str | None = None
    rename: RenameSetting = None
    dedup_window: Duration = Duration(86400.0)

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ConfigError("path", f"must start with '/', got {self.path!r}")
        if not self.mapping.event_name and not self.event_name_default:
            raise ConfigError(
                "mapping.event_name", "required (or set event_name_default for a constant name)"
            )
        compile_rename(self.rename)

    def user_targets(self) -> dict[str, str]:
        """``user_id``, ``custom_ids`` and ``user`` as one {Statsig user path: source path}."""
        m = self.mapping
        targets = dict(m.user)
        targets.update({f"customIDs.{id_type}": path for id_type, path in m.custom_ids.items()})
        if m.user_id:
            targets["userID"] = m.user_id
        return targets


def _path(dotted: str | None) -> tuple[str, ...] | None:
    return split_path(dotted) if dotted else None


class JsonSource(Source):
    kind = "json"
    config_class = JsonSourceConfig
    config: JsonSourceConfig
    accepts_gzip = True

    def __init__(self, name: str, config: JsonSourceConfig) -> None:
        super().__init__(name, config)
        m = config.mapping
        self._keys = [k for k in config.api_keys if k]
        self._headers = (config.api_key_header,) if config.api_key_header else DEFAULT_KEY_HEADERS
        self._events_path = _path(config.events_path)
        self._name = _path(m.event_name)
        self._user = compile_user_mapping(config.user_targets(), "mapping")
        self._value = _path(m.value)
        self._timestamp = _path(m.timestamp)
        self._metadata_object = _path(m.metadata) if isinstance(m.metadata, str) else None
        self._metadata_fields = (
            [(key, split_path(path)) for key, path in m.metadata.items()]
            if isinstance(m.metadata, dict)
            else []
        )
        self._dedup = _path(m.dedup_key)
        self._rename = compile_rename(config.rename)
        self.dedup_window = config.dedup_window if self._dedup else None

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint(self.config.path)]

    def describe(self) -> str:
        auth = f"{len(self._keys)} API key(s)" if self._keys else "open"
        return f"POST {self.config.path}; {auth}"

    def warnings(self) -> list[str]:
        if not self._keys:
            return [f"source {self.name!r} accepts requests without a key: set api_keys"]
        return []

    def authenticate(self, request: web.BaseRequest, endpoint: Endpoint, body: bytes) -> None:
        if not self._keys:
            return
        for header in self._headers:
            value = request.headers.get(header)
            if value is None:
                continue
            scheme, _, rest = value.strip().partition(" ")
            presented = rest.strip() if scheme.lower() == "bearer" else value.strip()
            if key_matches(presented, self._keys):
                return
        raise SourceError(401, f"missing or wrong API key ({' or '.join(self._headers)})")

    def parse(
        self, request: web.BaseRequest, endpoint: Endpoint, body: bytes, received_ms: int
    ) -> Parsed:
        document, deep = load_json(body)
        return self.parse_document(document, received_ms, deep)

    def parse_document(self, document: Any, received_ms: int, deep: bool = False) -> Parsed:
        """Map a parsed body; a bad event is rejected alone. ``deep``: check each event
        (relay/sources/base.py ``load_json``)."""
        items = self._items(document)
        parsed = Parsed()
        events = parsed.events
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                parsed.reject(index, f"expected an object, got {type(item).__name__}")
                continue
            problem = event_problem(item) if deep else None
            if problem is not None:
                parsed.reject(index, problem)
                continue
            event = self.to_event(item, received_ms)
            if isinstance(event, str):
                parsed.reject(index, event)
                continue
            if not has_user_id(event):
                parsed.without_user += 1
            events.append(event)
            if self._dedup is not None:
                parsed.dedup_keys.append(id_string(get_path(item, self._dedup)))
        return parsed

    def _items(self, document: Any) -> list[Any]:
        if self._events_path is not None:
            found = get_path(document, self._events_path)
            if not isinstance(found, list):
                raise SourceError(400, f"expected a list of events at {self.config.events_path}")
            return found
        if isinstance(document, list):
            return document
        if isinstance(document, dict):
            for key in ("events", "data"):
                if isinstance(document.get(key), list):
                    return document[key]
            return [document]
        raise SourceError(400, "expected a JSON object or array of events")

    def to_event(self, item: dict[str, Any], received_ms: int) -> Event | str:
        """The Statsig event of one item, or the reason it has none."""
        name: Any = get_path(item, self._name) if self._name is not None else None
        if name is None or name == "":
            name = self.config.event_name_default
            if not name:
                return f"no event name at {self.config.mapping.event_name}"
        elif not isinstance(name, str):
            if isinstance(name, dict | list):
                return f"event name at {self.config.mapping.event_name} is not a string"
            name = string_value(name)
        timestamp = received_ms
        if self._timestamp is not None:
            raw = get_path(item, self._timestamp)
            if raw is not None:
                try:
                    timestamp = to_epoch_ms(raw)
                except ValueError as exc:
                    return str(exc)
        user: dict[str, Any] = {}
        apply_user_mapping(user, item, self._user)
        if self._metadata_object is not None:
            found = get_path(item, self._metadata_object)
            metadata = string_map(found) if isinstance(found, dict) else {}
        else:
            metadata = {}
            for key, path in self._metadata_fields:
                value = get_path(item, path)
                if value is not None:
                    metadata[key] = value if type(value) is str else string_value(value)
        event: Event = {
            "eventName": self._rename(name) if self._rename is not None else name,
            "user": user,
            "timestamp": timestamp,
            "metadata": metadata,
        }
        if "userID" in user:
            event["userID"] = user["userID"]
        if self._value is not None:
            value = numeric_value(get_path(item, self._value))
            if value is not None:
                event["value"] = value
        return event
