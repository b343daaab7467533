"""A Statsig config change as the change targets read it, and what those targets share.

Statsig sends a change made in its console (a gate, experiment or dynamic config created,
updated or deleted) as ``statsig::config_change``::

    {"eventName": "statsig::config_change", "timestamp": 1709660061095,
     "user": {"name": "…", "email": "…"},
     "metadata": {"type": "Gate", "name": "…", "action": "updated", "description": "…",
                  "environment"?, "environments"?, "projectName"?, "projectID"?}}

``user`` may be missing. Statsig documents no link to the changed config; when an export
carries one (``metadata.url``, ``link`` or ``consoleURL``, an http(s) address) it is read.
Every target that carries only config changes (chronosphere, datadog, slack, grafana) reads a
change through :func:`read_change`, so they agree on names, defaults and times.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from ..events import CONFIG_CHANGE, Event, category_of, event_time_ms
from .base import Target

MARK = "…"
_LINK_KEYS = ("url", "link", "consoleURL", "consoleUrl")
# Statsig's type names, lowercased without spaces or underscores, that are feature flags in the
# sense of the change-tracking tools (a switch or an allocation), not a value store.
_FLAG_KINDS = frozenset({"gate", "featuregate", "experiment", "holdout", "layer"})


def shorten(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters; a cut one ends in "…" so readers see it was cut."""
    return text if len(text) <= limit else text[: limit - len(MARK)] + MARK


def rfc3339(ms: int) -> str:
    """UTC RFC 3339, with milliseconds only when there are any (as Statsig's examples)."""
    seconds, millis = divmod(ms, 1000)
    text = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{millis:03d}Z" if millis else f"{text}Z"


def clamp_ms(ms: int, now: int, window_ms: int, margin_ms: int) -> int:
    """``ms`` moved inside ``now ± window_ms``, ``margin_ms`` short of either edge."""
    return min(max(ms, now - window_ms + margin_ms), now + window_ms - margin_ms)


def is_config_change(event: Event) -> bool:
    return category_of(event.get("eventName") or "") == CONFIG_CHANGE


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    text = str(value).strip()
    return text or None


@dataclass(slots=True, frozen=True)
class ConfigChange:
    """The fields of one ``statsig::config_change``, with the defaults every target uses."""

    kind: str  # metadata.type: Gate, Experiment, DynamicConfig, …; "config" when missing
    name: str  # "(unnamed)" when missing
    action: str  # created | updated | deleted | …; "changed" when missing
    time_ms: int
    description: str | None = None
    user_name: str | None = None
    user_email: str | None = None
    environments: tuple[str, ...] = ()
    project: str | None = None
    link: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def author(self) -> str | None:
        """Who made the change, as one short string: the email, else the name."""
        return self.user_email or self.user_name

    @property
    def author_display(self) -> str | None:
        """Who made the change, for a person to read: ``Name (email)`` when both are known."""
        if self.user_name and self.user_email and self.user_name != self.user_email:
            return f"{self.user_name} ({self.user_email})"
        return self.author

    @property
    def is_flag(self) -> bool:
        """A gate or an experiment (a feature flag), as opposed to a dynamic config."""
        return self.kind.lower().replace(" ", "").replace("_", "") in _FLAG_KINDS


def read_change(event: Event) -> ConfigChange:
    """The config change in ``event``; never raises for missing or oddly typed fields."""
    metadata = event.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    user = event.get("user")
    user = user if isinstance(user, dict) else {}
    description = metadata.get("description")
    environments: list[str] = []
    for key in ("environment", "environments"):
        value = metadata.get(key)
        items = value if isinstance(value, list) else str(value or "").split(",")
        for item in items:
            text = _text(item)
            if text and text not in environments:
                environments.append(text)
    link = None
    for key in _LINK_KEYS:
        text = _text(metadata.get(key))
        if text and text.startswith(("https://", "http://")):
            link = text
            break
    return ConfigChange(
        kind=str(metadata.get("type") or "config"),
        name=str(metadata.get("name") or "(unnamed)"),
        action=str(metadata.get("action") or "changed"),
        time_ms=event_time_ms(event),
        description=None if description in (None, "") else str(description),
        user_name=_text(user.get("name")),
        user_email=_text(user.get("email")),
        environments=tuple(environments),
        project=_text(metadata.get("projectName")),
        link=link,
        metadata=metadata,
    )


class ChangeTarget(Target):
    """A target that carries config changes and nothing else; a route to it must filter to
    them (checked at load: relay/config.py), so nothing else reaches it by accident."""

    only_config_changes: ClassVar[bool] = True

    def accepts(self, category: str) -> bool:
        return category == CONFIG_CHANGE
