"""The one internal event model: a Statsig event as a plain dict.

Keys: ``eventName``, ``user``, ``userID``, ``timestamp`` (int epoch ms), ``value``, ``metadata``,
``statsigMetadata``, ``timeUUID``, ``unitID``. Sources normalise into it, targets encode from it.
Events stay plain dicts (no per-event objects) so the hot path is dict look-ups and orjson.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime
from typing import Any

import orjson

Event = dict[str, Any]

GATE_EXPOSURE = "gate_exposure"
CONFIG_EXPOSURE = "config_exposure"
EXPERIMENT_EXPOSURE = "experiment_exposure"
LAYER_EXPOSURE = "layer_exposure"
CONFIG_CHANGE = "config_change"
STATSIG_INTERNAL = "statsig_internal"
CUSTOM = "custom"

CATEGORIES = frozenset(
    {
        GATE_EXPOSURE,
        CONFIG_EXPOSURE,
        EXPERIMENT_EXPOSURE,
        LAYER_EXPOSURE,
        CONFIG_CHANGE,
        STATSIG_INTERNAL,
        CUSTOM,
    }
)
EXPOSURE_CATEGORIES = frozenset(
    {GATE_EXPOSURE, CONFIG_EXPOSURE, EXPERIMENT_EXPOSURE, LAYER_EXPOSURE}
)

_KNOWN_NAMES = {
    "statsig::gate_exposure": GATE_EXPOSURE,
    "statsig::config_exposure": CONFIG_EXPOSURE,
    "statsig::experiment_exposure": EXPERIMENT_EXPOSURE,
    "statsig::layer_exposure": LAYER_EXPOSURE,
    "statsig::config_change": CONFIG_CHANGE,
}

# Keys that older Statsig exports put under statsigMetadata instead of metadata.
EXPOSURE_KEYS = (
    "gate",
    "gateValue",
    "config",
    "ruleID",
    "reason",
    "time",
    "experimentGroupName",
    "gateGroupName",
    "rulePassed",
    "allocatedExperiment",
    "parameterName",
    "isExplicitParameter",
)


def category_of(event_name: str) -> str:
    """The routing category of an event name (the table in docs/configuration.md, routes)."""
    known = _KNOWN_NAMES.get(event_name)
    if known is not None:
        return known
    return STATSIG_INTERNAL if event_name.startswith("statsig::") else CUSTOM


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# The event times the relay accepts, in epoch ms: 2000-01-01 to 2100-01-01 (both included),
# after unit detection. Outside it an event is refused alone: such a time is a sender's bug, and
# e.g. 1e25 does not fit the 64-bit integers that stores and targets use.
MIN_MS = 946_684_800_000
MAX_MS = 4_102_444_800_000


# How deep an event may nest (the event object is level 1). orjson writes at most 255 levels and
# a spool row or a target's request wraps events in a few more, so deeper events are refused
# alone at ingest with a reason (they once made the spool commit fail: a 503 that told the
# sender to resend them forever). The raw path (relay/raw.py) keeps only events it can prove
# are within it.
MAX_NESTING = 200


def in_range_ms(ms: float, given: Any) -> int:
    """``ms`` as an int, or ValueError naming ``given`` (what the sender wrote) when it is
    outside MIN_MS..MAX_MS (NaN and infinities included)."""
    if not MIN_MS <= ms <= MAX_MS:
        big = isinstance(given, int) and given.bit_length() > 100  # repr of a huge int fails
        shown = f"of {given.bit_length()} bits" if big else repr(given)[:40]
        raise ValueError(f"timestamp {shown} is outside the years 2000 to 2100")
    return int(ms)


def epoch_ms_from_number(value: float) -> int:
    """Epoch seconds, ms, µs or ns, told apart by magnitude, as epoch milliseconds within
    MIN_MS..MAX_MS (ValueError otherwise)."""
    magnitude = abs(value)
    if magnitude < 1e11:  # seconds until year 5138
        return in_range_ms(value * 1000, value)
    if magnitude < 1e14:
        return in_range_ms(value, value)
    if magnitude < 1e17:
        return in_range_ms(value // 1000, value)
    return in_range_ms(value // 1_000_000, value)


def parse_iso8601_ms(text: str) -> int:
    """An ISO 8601 / RFC 3339 date-time with any offset (``Z`` or none meaning UTC) as epoch ms
    within MIN_MS..MAX_MS; ValueError otherwise."""
    stripped = text.strip()
    if stripped.endswith(("Z", "z")):
        stripped = stripped[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(stripped)
    except ValueError:
        raise ValueError(f"timestamp {text[:40]!r} is not epoch time or ISO 8601") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return in_range_ms(parsed.timestamp() * 1000, text)


def to_epoch_ms(value: Any) -> int:
    """Normalise a timestamp (number, numeric string, ISO 8601 string) to epoch ms.

    Raises ValueError with a reason when it is none of those, or outside MIN_MS..MAX_MS.
    """
    if isinstance(value, bool):
        raise ValueError(f"timestamp must be a number or a date string, got {value!r}")
    if isinstance(value, int | float):
        return epoch_ms_from_number(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return parse_iso8601_ms(value)
        return epoch_ms_from_number(number)
    raise ValueError(f"timestamp must be a number or a date string, got {type(value).__name__}")


def iso8601_from_ms(ms: int) -> str:
    """RFC 3339 in UTC with milliseconds, e.g. ``2024-03-05T17:34:21.095Z``."""
    return (
        datetime.fromtimestamp(ms / 1000, tz=UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def exposure_metadata(event: Event) -> dict[str, Any]:
    """The exposure keys of an event, read from ``metadata`` or the older ``statsigMetadata``."""
    metadata = event.get("metadata")
    if isinstance(metadata, dict) and ("gate" in metadata or "config" in metadata):
        return metadata
    legacy = event.get("statsigMetadata")
    if isinstance(legacy, dict):
        merged = {k: legacy[k] for k in EXPOSURE_KEYS if k in legacy}
        if isinstance(metadata, dict):
            merged.update(metadata)
        return merged
    return metadata if isinstance(metadata, dict) else {}


def get_path(event: Event, dotted: tuple[str, ...]) -> Any:
    """The value at a dotted path (already split), or None when any part is missing."""
    value: Any = event
    for part in dotted:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def identity_problem(event: Event) -> str | None:
    """Why the event's IDs cannot name a unit, or None.

    Statsig keys a unit by a string (a number is read as its digits); an object, a list or a
    boolean in ``userID`` or ``user.customIDs`` would reach every target as a unit nobody has,
    so the event is refused with the field named. ``user`` is known to be an object or absent.
    """
    problem = _id_problem("userID", event.get("userID"))
    if problem:
        return problem
    user = event.get("user")
    if not isinstance(user, dict):
        return None
    problem = _id_problem("user.userID", user.get("userID"))
    if problem:
        return problem
    custom_ids = user.get("customIDs")
    if custom_ids is None:
        return None
    if not isinstance(custom_ids, dict):
        return f"user.customIDs must be an object, got {_json_kind(custom_ids)}"
    for key, value in custom_ids.items():
        problem = _id_problem(f"user.customIDs.{str(key)[:64]}", value)
        if problem:
            return problem
    return None


def _id_problem(field: str, value: Any) -> str | None:
    if value is None or (isinstance(value, str | int | float) and not isinstance(value, bool)):
        return None
    return f"{field} must be a string or a number, got {_json_kind(value)}"


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def unit_id(event: Event) -> str | None:
    """The ID of the unit the event is about: the ID type named by ``unitID`` if present."""
    user = event.get("user")
    user = user if isinstance(user, dict) else {}
    unit = event.get("unitID")
    if unit and unit != "userID":
        custom_ids = user.get("customIDs")
        if isinstance(custom_ids, dict) and custom_ids.get(unit):
            return str(custom_ids[unit])
    uid = event.get("userID") or user.get("userID")
    if uid:
        return str(uid)
    custom_ids = user.get("customIDs")
    if isinstance(custom_ids, dict):
        for value in custom_ids.values():
            if value:
                return str(value)
    return None


def user_and_stable_id(event: Event) -> tuple[str | None, str | None]:
    """The event's user ID (top-level ``userID`` or ``user.userID``) and its
    ``user.customIDs.stableID``, each None when absent or empty: the two IDs analytics
    services key a person and a device by."""
    user = event.get("user")
    user = user if isinstance(user, dict) else {}
    uid = event.get("userID") or user.get("userID")
    custom_ids = user.get("customIDs")
    stable = custom_ids.get("stableID") if isinstance(custom_ids, dict) else None
    return (str(uid) if uid else None), (str(stable) if stable else None)


def content_digest(event: Event) -> str:
    """32 hex characters that depend only on the event's content: a stable dedup key for an
    event without ``timeUUID`` (the same event redelivered gets the same key)."""
    digest = hashlib.blake2b(orjson.dumps(event, option=orjson.OPT_SORT_KEYS), digest_size=16)
    return digest.hexdigest()


def event_time_ms(event: Event) -> int:
    """The event's time in epoch ms; now when it has none that can be read."""
    value = event.get("timestamp")
    if type(value) is int:
        return value
    try:
        return to_epoch_ms(value)
    except ValueError:
        return now_ms()
