"""The status document behind ``GET /status``, ``/status.json`` and ``statsig-relay status``.

Totals come from the relay's own Prometheus registry; "last minute" figures are differences
against a small ring of counter snapshots the relay takes every few seconds (``CounterRing``,
one per Relay, no global state). Error texts pass through ``Redactor`` so a target that echoes
our credential back never puts it on the page.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry

from .schema import is_secret

if TYPE_CHECKING:
    from .config import Config

# Counters the status page reads (sample names as exported).
COUNTERS = (
    "relay_requests_total",
    "relay_events_received_total",
    "relay_events_rejected_total",
    "relay_requests_refused_total",
    "relay_events_routed_total",
    "relay_events_filtered_total",
    "relay_events_dropped_total",
    "relay_events_delivered_total",
    "relay_events_retried_total",
    "relay_events_dead_lettered_total",
)

Key = tuple[str, tuple[tuple[str, str], ...]]  # (sample name, sorted labels)


def read_counters(registry: CollectorRegistry) -> dict[Key, float]:
    """The current value of every labelled child of ``COUNTERS``."""
    values: dict[Key, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name in COUNTERS:
                values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


class CounterRing:
    """Snapshots of the counters over the last ``span`` seconds (plus one older), so a
    "last minute" figure is the current value minus the oldest snapshot in the window."""

    def __init__(self, span: float = 60.0, interval: float = 5.0) -> None:
        self.span = span
        self._ring: deque[tuple[float, dict[Key, float]]] = deque(maxlen=int(span / interval) + 2)

    def sample(self, now: float, values: dict[Key, float]) -> None:
        self._ring.append((now, values))

    def base(self, now: float) -> tuple[float, dict[Key, float]]:
        """The oldest snapshot no older than ``span`` (or the oldest there is)."""
        for at, values in self._ring:
            if now - at <= self.span:
                return at, values
        return self._ring[-1] if self._ring else (now, {})


class Redactor:
    """Replaces configured secret values in free text (a target's error body may echo them).

    The secrets are the fields the config models mark with ``schema.secret``; a URL among them
    (the Redis spool's) also gives up its password alone."""

    @classmethod
    def of(cls, config: Config) -> Redactor:
        """For everything a relay config holds: spool, sources, targets."""
        return cls([config.spool, *config.sources.values(), *config.targets.values()])

    def __init__(self, configs: Iterable[Any]) -> None:
        found: set[str] = set()
        for config in configs:
            self._collect(config, found)
        self._values = sorted((s for s in found if len(s) >= 4), key=len, reverse=True)

    def _collect(self, config: Any, found: set[str]) -> None:
        if not dataclasses.is_dataclass(config):
            return
        for f in dataclasses.fields(config):
            value = getattr(config, f.name)
            if dataclasses.is_dataclass(value):
                self._collect(value, found)
            elif is_secret(f):
                for text in _strings(value):
                    found.add(text)
                    with contextlib.suppress(ValueError):  # redis://:password@host
                        found.add(urlsplit(text).password or "")

    def __call__(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, "[redacted]")
        return text


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple | set):
        for item in value:
            yield from _strings(item)


@dataclass(kw_only=True)
class TargetState:
    """What the relay knows about one target beyond its counters."""

    name: str
    type: str
    describe: str
    queued: int
    oldest_age_s: float
    dead: int
    state: str  # ok | degraded | failing (relay/health.py)
    state_reason: str
    state_since: float
    held: int  # events waiting while the target is failing
    last_error: str
    backoff_s: float


def document(
    *,
    version: str,
    started_at: float,
    now: float,
    config_path: str,
    last_reload: dict[str, Any] | None,
    sources: Mapping[str, str],
    routes: Iterable[tuple[str, list[str], str]],
    targets: Iterable[TargetState],
    spool: dict[str, Any],
    ready: tuple[bool, list[str]],
    current: dict[Key, float],
    base: tuple[float, dict[Key, float]],
    redact: Redactor,
) -> dict[str, Any]:
    """The status as plain JSON data: what /status.json serves and the pages render."""
    base_at, base_values = base
    window = max(now - base_at, 0.0)

    def total(name: str, **labels: str) -> float:
        return _sum(current, name, labels)

    def recent(name: str, **labels: str) -> float:
        return _sum(current, name, labels) - _sum(base_values, name, labels)

    def by(name: str, label: str, **labels: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for (sample, items), value in current.items():
            d = dict(items)
            if sample == name and all(d.get(k) == v for k, v in labels.items()) and value:
                out[d[label]] = out.get(d[label], 0) + int(value)
        return dict(sorted(out.items()))

    doc_sources = {
        name: {
            "kind": kind,
            "requests_last_minute": int(recent("relay_requests_total", source=name)),
            "events_last_minute": int(recent("relay_events_received_total", source=name)),
            "events_total": int(total("relay_events_received_total", source=name)),
            "rejected_last_minute": int(recent("relay_events_rejected_total", source=name)),
            "rejected": by("relay_events_rejected_total", "reason", source=name),
            "refused_requests": by("relay_requests_refused_total", "reason", source=name),
        }
        for name, kind in sources.items()
    }
    doc_routes = {
        name: {
            "from": from_,
            "to": to,
            "routed": int(total("relay_events_routed_total", route=name)),
            "routed_last_minute": int(recent("relay_events_routed_total", route=name)),
            "filtered": int(total("relay_events_filtered_total", route=name)),
            "dropped": by("relay_events_dropped_total", "reason", route=name),
        }
        for name, from_, to in routes
    }
    doc_targets = {}
    for t in targets:
        delivered = recent("relay_events_delivered_total", target=t.name)
        doc_targets[t.name] = {
            "type": t.type,
            "describe": redact(t.describe),
            "queued": t.queued,
            "oldest_age_s": round(t.oldest_age_s, 1),
            "delivered_total": int(total("relay_events_delivered_total", target=t.name)),
            "delivered_per_s": round(delivered / window, 2) if window else 0.0,
            "retrying_last_minute": int(recent("relay_events_retried_total", target=t.name)),
            "dead_lettered": by("relay_events_dead_lettered_total", "reason", target=t.name),
            "dlq": t.dead,
            "state": t.state,
            "state_reason": redact(t.state_reason),
            "state_since": _iso(t.state_since),
            "held": t.held,
            "failing": t.state == "failing",
            "failing_reason": redact(t.state_reason) if t.state == "failing" else "",
            "last_error": redact(t.last_error),
            "backoff_s": round(t.backoff_s, 1),
        }
    ok, problems = ready
    return {
        "version": version,
        "started_at": _iso(started_at),
        "uptime_s": round(now - started_at, 1),
        "config": {"path": config_path, "last_reload": last_reload},
        "window_s": round(window, 1),
        "ready": ok,
        "problems": [redact(p) for p in problems],
        "sources": doc_sources,
        "routes": doc_routes,
        "targets": doc_targets,
        "spool": spool,
    }


def _sum(values: dict[Key, float], name: str, labels: dict[str, str]) -> float:
    total = 0.0
    for (sample, items), value in values.items():
        if sample == name:
            d = dict(items)
            if all(d.get(k) == v for k, v in labels.items()):
                total += value
    return total


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
