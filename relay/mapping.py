"""Mapping third-party events onto the Statsig event: what the inbound sources share.

Segment-spec messages and arbitrary JSON both become ``{eventName, user, userID, timestamp,
value, metadata}``. The pieces here are the parts every such source needs: a Statsig user built
from declared paths, properties flattened to Statsig's string → string metadata, a numeric
``value`` lifted out of the properties, and timestamps corrected for client clock skew. They are
plain functions over dicts (no per-event objects) because they run once per event on ingest.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from .events import Event, get_path, in_range_ms, to_epoch_ms
from .schema import ConfigError

# Top-level fields of a Statsig user that hold one string, and those that hold a map.
USER_STRING_FIELDS = frozenset(
    {"userID", "email", "ip", "userAgent", "country", "locale", "appVersion"}
)
USER_MAP_FIELDS = frozenset({"custom", "customIDs", "privateAttributes"})

Path = tuple[str, ...]


def split_path(dotted: str) -> Path:
    """``"context.traits.email"`` → ``("context", "traits", "email")``."""
    return tuple(part for part in dotted.split(".") if part)


def user_target(target: str, where: str) -> Path:
    """Check a Statsig user path (``email``, ``custom.plan``, ``customIDs.companyID``).

    Raises ConfigError naming ``where`` when the path is not a field of a Statsig user, so a
    typo such as ``customID.x`` fails at load instead of silently landing nowhere.
    """
    parts = split_path(target)
    if len(parts) == 1 and parts[0] in USER_STRING_FIELDS:
        return parts
    if len(parts) == 2 and parts[0] in USER_MAP_FIELDS:
        return parts
    raise ConfigError(
        where,
        f"{target!r} is not a Statsig user field; use one of "
        f"{', '.join(sorted(USER_STRING_FIELDS))}, or custom.<key>, customIDs.<idType>, "
        "privateAttributes.<key>",
    )


def compile_user_mapping(mapping: Mapping[str, str], where: str) -> list[tuple[Path, Path]]:
    """``{statsig user path: source path}`` → ``[(target parts, source parts)]``, checked once."""
    compiled = []
    for target, source in mapping.items():
        parts = split_path(source)
        if not parts:
            raise ConfigError(f"{where}.{target}", "expected a dotted source path")
        compiled.append((user_target(target, f"{where}.{target}"), parts))
    return compiled


def apply_user_mapping(
    user: dict[str, Any], message: Mapping[str, Any], compiled: list[tuple[Path, Path]]
) -> None:
    """Copy each mapped value that is present in ``message`` into ``user``.

    IDs and top-level fields become strings (Statsig compares them as strings); ``custom`` and
    ``privateAttributes`` keep the JSON type, which Statsig's targeting understands.
    """
    for target, source in compiled:
        value = get_path(message, source)  # type: ignore[arg-type]
        if value is None or value == "":
            continue
        if len(target) == 1:
            if target[0] == "userID":
                value = id_string(value)
                if value is None:
                    continue
            user[target[0]] = value if isinstance(value, str) else string_value(value)
            continue
        section, key = target
        if section == "customIDs":
            value = id_string(value)
            if value is None:
                continue
        inner = user.get(section)
        if not isinstance(inner, dict):
            inner = user[section] = {}
        inner[key] = value


def id_string(value: Any) -> str | None:
    """A user or custom ID as a string; None for what cannot be an ID (bool, object, "")."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    return None


def string_value(value: Any) -> str:
    """One metadata value as Statsig wants it: a string.

    Booleans are ``"true"``/``"false"`` (as JSON and Statsig's SDKs write them), whole floats lose
    their ``.0`` (JSON does not tell 1 from 1.0, and the router's ``where`` compares that way),
    objects and arrays are compact JSON.
    """
    if isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return orjson.dumps(value).decode()


def string_map(values: Mapping[str, Any], skip: str | None = None) -> dict[str, str]:
    """``properties`` → Statsig metadata: every value a string; nulls (and ``skip``) left out."""
    out: dict[str, str] = {}
    for key, value in values.items():
        if value is None or key == skip:
            continue
        out[key] = value if type(value) is str else string_value(value)
    return out


def numeric_value(value: Any) -> int | float | None:
    """A number for Statsig's ``value`` from a number or numeric string; None otherwise."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            whole = int(text)
        except ValueError:
            pass
        else:  # a number over 64 bits cannot be stored (orjson, SQLite); a float can
            if -(2**63) <= whole < 2**64:
                return whole
        try:
            number = float(text)
        except ValueError:
            return None
        return number if number == number and abs(number) != float("inf") else None
    return None


def skew_corrected_ms(original: Any, sent_at: Any, received_ms: int) -> int:
    """The event time of a client timestamp, corrected for the client's clock skew.

    Segment's rule: ``receivedAt - (sentAt - originalTimestamp)``: the delay the client measured
    on its own clock, taken back from our clock. Without a usable ``sentAt`` the client time is
    used as given. Raises ValueError when ``original`` is not a timestamp, or the corrected time
    is outside the years 2000 to 2100.
    """
    original_ms = to_epoch_ms(original)
    if sent_at is None:
        return original_ms
    try:
        sent_ms = to_epoch_ms(sent_at)
    except ValueError:
        return original_ms
    return in_range_ms(received_ms - (sent_ms - original_ms), original)


def has_user_id(event: Event) -> bool:
    """Whether Statsig can join the event to a unit: a userID or any non-empty custom ID."""
    if event.get("userID"):
        return True
    user = event.get("user")
    if not isinstance(user, dict):
        return False
    if user.get("userID"):
        return True
    custom_ids = user.get("customIDs")
    return isinstance(custom_ids, dict) and any(custom_ids.values())


__all__ = [
    "USER_MAP_FIELDS",
    "USER_STRING_FIELDS",
    "apply_user_mapping",
    "compile_user_mapping",
    "has_user_id",
    "id_string",
    "numeric_value",
    "skew_corrected_ms",
    "split_path",
    "string_map",
    "string_value",
    "user_target",
]
