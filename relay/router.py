"""Routes: which events go to which target, compiled once at load. Selection, nothing else.

Evaluating a route on an event is a few dict and set look-ups: the verdict is computed once
per event name (cached), glob patterns are compiled into one regex per route, ``where``
conditions into sets of accepted values. What happens to the selection (dedup and
first-exposure keys: relay/state.py; spool rows: relay/spool/rows.py) is the caller's
(relay/ingest.py); the rename rules live in relay/rename.py.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .events import CATEGORIES, STATSIG_INTERNAL, Event, category_of, get_path
from .metrics import RelayMetrics
from .rename import RenameConfig, RenameSetting, compile_renamer, rename_config
from .schema import ConfigError, Duration

_CATEGORY_CACHE_LIMIT = 10_000
_GLOB_CHARS = frozenset("*?[")


@dataclass(kw_only=True)
class FilterConfig:
    categories: list[str] = field(default_factory=list)  # empty: every category
    exclude_categories: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)  # eventName globs to include
    exclude_events: list[str] = field(default_factory=list)  # eventName globs to exclude
    where: dict[str, Any] = field(default_factory=dict)  # dotted field: value or [values]

    def __post_init__(self) -> None:
        for key in ("categories", "exclude_categories"):
            for i, category in enumerate(getattr(self, key)):
                if category not in CATEGORIES:
                    raise ConfigError(
                        f"{key}[{i}]",
                        f"unknown category {category!r}; one of {', '.join(sorted(CATEGORIES))}",
                    )
        for path, value in self.where.items():
            if isinstance(value, dict):
                raise ConfigError(f"where.{path}", "expected a value or a list of values")

    def names_internal(self) -> frozenset[str] | None:
        """The Statsig-internal events this filter names explicitly: None for all of them
        (``categories`` lists ``statsig_internal``), else the exact names (no globs) in
        ``events`` whose category it is (``statsig::diagnostics``); a glob names none."""
        if STATSIG_INTERNAL in self.categories:
            return None
        return frozenset(
            name
            for name in self.events
            if not _GLOB_CHARS.intersection(name) and category_of(name) == STATSIG_INTERNAL
        )

    def selects_only(self, category: str) -> bool:
        """Whether this filter lets through events of ``category`` and no other: by
        ``categories`` naming only it, or by ``events`` naming only events of it (no globs)."""
        if self.categories and set(self.categories) == {category}:
            return category not in self.exclude_categories
        return bool(self.events) and all(
            not _GLOB_CHARS.intersection(name) and category_of(name) == category
            for name in self.events
        )


@dataclass(kw_only=True)
class WindowConfig:
    window: Duration = Duration(86400.0)


@dataclass(kw_only=True)
class RouteConfig:
    name: str
    sources: list[str] = field(metadata={"key": "from"})
    to: str
    filter: FilterConfig = field(default_factory=FilterConfig)
    rename: RenameSetting = None
    first_exposure_only: bool | WindowConfig = False
    dedup: bool | WindowConfig = False  # by timeUUID

    def rename_config(self) -> RenameConfig | None:
        return rename_config(self.rename)


def window_of(setting: bool | WindowConfig) -> float | None:
    if setting is True:
        return WindowConfig().window
    if isinstance(setting, WindowConfig):
        return setting.window
    return None


def _glob_regex(patterns: Sequence[str]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


def _normalise(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class CompiledRoute:
    """One route, ready to evaluate; see the module docstring.

    Statsig-internal events (``statsig::diagnostics`` and the like: category
    ``statsig_internal``) can carry the sender's server secret (an SDK puts its config specs
    URL, key included, in their metadata). They go to a ``statsig`` target (``to_statsig``)
    like any event, and to any other target only when the route names them
    (:meth:`FilterConfig.names_internal`); otherwise they are dropped with the reason
    ``statsig_internal``.
    """

    def __init__(
        self, config: RouteConfig, accepts: Callable[[str], bool], to_statsig: bool = False
    ) -> None:
        self.name = config.name
        self.target = config.to
        self.to_statsig = to_statsig
        self.sources = frozenset(config.sources)
        flt = config.filter
        self._categories = frozenset(flt.categories) or None
        self._exclude_categories = frozenset(flt.exclude_categories)
        self._include = _glob_regex(flt.events)
        self._exclude = _glob_regex(flt.exclude_events)
        self._where = [
            (
                tuple(path.split(".")),
                frozenset(_normalise(v) for v in (value if isinstance(value, list) else [value])),
            )
            for path, value in flt.where.items()
        ]
        self._accepts = accepts
        # None: every internal event passes; else the internal names that do.
        self._internal = None if to_statsig else flt.names_internal()
        self._rename = compile_renamer(config.rename_config())
        self.first_exposure_window = window_of(config.first_exposure_only)
        self.dedup_window = window_of(config.dedup)
        self._name_verdicts: dict[str, str | None] = {}

    def _name_verdict(self, event_name: str) -> str | None:
        """None when the name passes; else why not ('filtered', 'statsig_internal' or
        'unsupported_by_target')."""
        verdict = self._name_verdicts.get(event_name, "?")
        if verdict != "?":
            return verdict
        category = category_of(event_name)
        if (
            (self._categories is not None and category not in self._categories)
            or category in self._exclude_categories
            or (self._include is not None and not self._include.fullmatch(event_name))
            or (self._exclude is not None and self._exclude.fullmatch(event_name))
        ):
            verdict = "filtered"
        elif (
            category == STATSIG_INTERNAL
            and self._internal is not None
            and event_name not in self._internal
        ):
            verdict = STATSIG_INTERNAL
        elif not self._accepts(category):
            verdict = "unsupported_by_target"
        else:
            verdict = None
        if len(self._name_verdicts) >= _CATEGORY_CACHE_LIMIT:
            self._name_verdicts.clear()
        self._name_verdicts[event_name] = verdict
        return verdict

    def pick(
        self, names: Sequence[str], event_at: Callable[[int], Event]
    ) -> tuple[list[int], int, dict[str, int]]:
        """Indices of the events this route takes, the count of those filtered, and of those
        dropped by reason (``statsig_internal``, ``unsupported_by_target``). ``names`` holds
        every event's name; ``event_at(i)`` the whole event, asked for only when a ``where``
        condition has to look inside it."""
        picked: list[int] = []
        filtered = 0
        dropped: dict[str, int] = {}
        verdict_of = self._name_verdict
        where = self._where
        for index, name in enumerate(names):
            verdict = verdict_of(name)
            if verdict is None and where:
                event = event_at(index)
                for path, accepted in where:
                    value = get_path(event, path)
                    if value is None or _normalise(value) not in accepted:
                        verdict = "filtered"
                        break
            if verdict is None:
                picked.append(index)
            elif verdict == "filtered":
                filtered += 1
            else:
                dropped[verdict] = dropped.get(verdict, 0) + 1
        return picked, filtered, dropped

    def new_name(self, name: str) -> str | None:
        """The name this route gives an event called ``name``; None when it keeps it."""
        if self._rename is None:
            return None
        new = self._rename(name)
        return new if new != name else None

    def renamed(self, event: Event) -> Event:
        """``event`` as this route sends it: a renamed copy (other routes keep the original)."""
        new = self.new_name(event["eventName"])
        return event if new is None else {**event, "eventName": new}

    @property
    def renames(self) -> bool:
        return self._rename is not None

    @property
    def stateful(self) -> bool:
        """Whether events pass only once per key (dedup, first exposure)."""
        return self.dedup_window is not None or self.first_exposure_window is not None

    def select(self, events: Sequence[Event]) -> tuple[list[Event], int, int]:
        """Events this route takes (renamed), and counts of those filtered / dropped."""
        picked, filtered, dropped = self.pick(
            [event["eventName"] for event in events], events.__getitem__
        )
        return [self.renamed(events[i]) for i in picked], filtered, sum(dropped.values())


class Router:
    """All routes, indexed by source, with their selection metrics bound once."""

    def __init__(self, routes: Sequence[CompiledRoute], metrics: RelayMetrics) -> None:
        self.routes = list(routes)
        self._by_source: dict[str, list[CompiledRoute]] = {}
        for route in self.routes:
            for source in route.sources:
                self._by_source.setdefault(source, []).append(route)
        self._filtered = {r.name: metrics.events_filtered.labels(r.name) for r in self.routes}
        self._dropped = {
            (r.name, reason): metrics.events_dropped.labels(r.name, reason)
            for r in self.routes
            for reason in ("unsupported_by_target", STATSIG_INTERNAL)
        }

    def routes_for(self, source: str) -> list[CompiledRoute]:
        return self._by_source.get(source, [])

    def select(
        self, source: str, names: Sequence[str], event_at: Callable[[int], Event]
    ) -> list[tuple[CompiledRoute, list[int]]]:
        """Per route of ``source`` that takes any, the indices of the events it takes; the
        events it filtered or its target refuses are counted here."""
        selections: list[tuple[CompiledRoute, list[int]]] = []
        for route in self._by_source.get(source, ()):
            picked, filtered, dropped = route.pick(names, event_at)
            if filtered:
                self._filtered[route.name].inc(filtered)
            for reason, count in dropped.items():
                self._dropped[route.name, reason].inc(count)
            if picked:
                selections.append((route, picked))
        return selections
