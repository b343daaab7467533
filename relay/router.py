"""Routes: which events go to which target, compiled once at load.

Evaluating a route on an event is a few dict and set look-ups: the category is computed once
per event name (cached), glob patterns are compiled into one regex per route, ``where``
conditions into sets of accepted values. The router's output is one spool row per route with
matching events, plus the dedup / first-exposure keys to store in the same commit.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from .events import (
    CATEGORIES,
    EXPOSURE_CATEGORIES,
    Event,
    category_of,
    exposure_metadata,
    get_path,
    unit_id,
)
from .metrics import RelayMetrics
from .schema import ConfigError, Duration
from .spool.base import NewRow
from .state import KeyLedger

# Event-name presets (API-FACTS.md, the Datafly mapping). Names not listed pass unchanged.
RENAME_PRESETS: dict[str, dict[str, str]] = {
    "default": {
        "page": "page_view",
        "Signed Up": "sign_up",
        "Logged In": "login",
        "Products Searched": "search",
    },
    "retail": {
        "page": "page_view",
        "Products Searched": "search",
        "Product Viewed": "view_item",
        "Product Added": "add_to_cart",
        "Checkout Started": "begin_checkout",
        "Order Completed": "purchase",
    },
}

_CATEGORY_CACHE_LIMIT = 10_000


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


@dataclass(kw_only=True)
class RenameConfig:
    preset: str | None = None  # default | retail
    map: dict[str, str] = field(default_factory=dict)  # wins over the preset
    snake_case: bool = False  # names neither map nor preset knows become snake_case

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset not in RENAME_PRESETS:
            raise ConfigError(
                "preset", f"unknown preset {self.preset!r}; one of {', '.join(RENAME_PRESETS)}"
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
    rename: str | RenameConfig | dict[str, str] | None = None
    first_exposure_only: bool | WindowConfig = False
    dedup: bool | WindowConfig = False  # by timeUUID

    def rename_config(self) -> RenameConfig | None:
        if self.rename is None:
            return None
        if isinstance(self.rename, str):
            if self.rename not in RENAME_PRESETS:
                raise ConfigError(
                    "rename", f"unknown preset {self.rename!r}; one of {', '.join(RENAME_PRESETS)}"
                )
            return RenameConfig(preset=self.rename)
        if isinstance(self.rename, dict):
            return RenameConfig(map=self.rename)
        return self.rename


def window_of(setting: bool | WindowConfig) -> float | None:
    if setting is True:
        return WindowConfig().window
    if isinstance(setting, WindowConfig):
        return setting.window
    return None


_SNAKE_1 = re.compile(r"(.)([A-Z][a-z]+)")
_SNAKE_2 = re.compile(r"([a-z0-9])([A-Z])")
_NON_WORD = re.compile(r"[^0-9a-zA-Z]+")


def snake_case(name: str) -> str:
    """``Order Completed`` → ``order_completed``; ``productViewed`` → ``product_viewed``."""
    name = _SNAKE_2.sub(r"\1_\2", _SNAKE_1.sub(r"\1_\2", name))
    return _NON_WORD.sub("_", name).strip("_").lower()


def compile_renamer(config: RenameConfig | None) -> Callable[[str], str] | None:
    """A function old name → new name, or None when the route renames nothing."""
    if config is None:
        return None
    table = dict(RENAME_PRESETS.get(config.preset or "", {}))
    table.update(config.map)
    if config.snake_case:
        cache: dict[str, str] = {}

        def rename(name: str) -> str:
            new = cache.get(name)
            if new is None:
                new = table.get(name) or snake_case(name)
                if len(cache) < _CATEGORY_CACHE_LIMIT:
                    cache[name] = new
            return new

        return rename
    return lambda name: table.get(name, name)


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
    """One route, ready to evaluate; see the module docstring."""

    def __init__(self, config: RouteConfig, accepts: Callable[[str], bool]) -> None:
        self.name = config.name
        self.target = config.to
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
        self._rename = compile_renamer(config.rename_config())
        self.first_exposure_window = window_of(config.first_exposure_only)
        self.dedup_window = window_of(config.dedup)
        self._name_verdicts: dict[str, str | None] = {}

    def _name_verdict(self, event_name: str) -> str | None:
        """None when the name passes; else why not ('filtered' or 'unsupported_by_target')."""
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
        elif not self._accepts(category):
            verdict = "unsupported_by_target"
        else:
            verdict = None
        if len(self._name_verdicts) >= _CATEGORY_CACHE_LIMIT:
            self._name_verdicts.clear()
        self._name_verdicts[event_name] = verdict
        return verdict

    def select(self, events: Sequence[Event]) -> tuple[list[Event], int, int]:
        """Events this route takes, and counts of those filtered / unsupported by the target."""
        selected: list[Event] = []
        filtered = unsupported = 0
        verdict_of = self._name_verdict
        where = self._where
        for event in events:
            verdict = verdict_of(event["eventName"])
            if verdict is None and where:
                for path, accepted in where:
                    value = get_path(event, path)
                    if value is None or _normalise(value) not in accepted:
                        verdict = "filtered"
                        break
            if verdict is None:
                selected.append(event)
            elif verdict == "filtered":
                filtered += 1
            else:
                unsupported += 1
        if self._rename is not None:
            rename = self._rename
            for i, event in enumerate(selected):
                new = rename(event["eventName"])
                if new != event["eventName"]:
                    selected[i] = {**event, "eventName": new}  # other routes keep the original
        return selected, filtered, unsupported

    def state_keys(self, event: Event) -> list[tuple[str, float, str]]:
        """(key, window seconds, drop reason) for the stateful transforms of this route."""
        keys: list[tuple[str, float, str]] = []
        if self.dedup_window is not None:
            time_uuid = event.get("timeUUID")
            if time_uuid:
                keys.append(
                    (_state_key("dedup", self.name, str(time_uuid)), self.dedup_window, "dedup")
                )
        if self.first_exposure_window is not None:
            category = category_of(event["eventName"])
            if category in EXPOSURE_CATEGORIES:
                meta = exposure_metadata(event)
                subject = meta.get("gate") or meta.get("config") or ""
                unit = unit_id(event) or ""
                keys.append(
                    (
                        _state_key("first", self.name, f"{category}\0{subject}\0{unit}"),
                        self.first_exposure_window,
                        "first_exposure",
                    )
                )
        return keys


def _state_key(kind: str, route: str, value: str) -> str:
    digest = hashlib.blake2b(f"{route}\0{value}".encode(), digest_size=16).hexdigest()
    return f"{kind}:{digest}"


@dataclass(slots=True)
class Routed:
    """What ingest commits for one request."""

    rows: list[NewRow]
    state_keys: list[tuple[str, int]]
    routed: int


class Router:
    """All routes, indexed by source, with their metric children bound once."""

    def __init__(
        self, routes: Sequence[CompiledRoute], ledger: KeyLedger, metrics: RelayMetrics
    ) -> None:
        self.routes = list(routes)
        self._ledger = ledger
        self._by_source: dict[str, list[CompiledRoute]] = {}
        for route in self.routes:
            for source in route.sources:
                self._by_source.setdefault(source, []).append(route)
        self._routed = {r.name: metrics.events_routed.labels(r.name) for r in self.routes}
        self._filtered = {r.name: metrics.events_filtered.labels(r.name) for r in self.routes}
        self._metrics = metrics

    def routes_for(self, source: str) -> list[CompiledRoute]:
        return self._by_source.get(source, [])

    async def route(self, source: str, events: Sequence[Event], received_ms: int) -> Routed:
        """Rows and state keys for one request; release the keys in the ledger once they are
        committed (or the commit failed)."""
        rows: list[NewRow] = []
        new_keys: list[tuple[str, int]] = []
        try:
            return await self._route(source, events, received_ms, rows, new_keys)
        except BaseException:
            self._ledger.release(new_keys)
            raise

    async def _route(
        self,
        source: str,
        events: Sequence[Event],
        received_ms: int,
        rows: list[NewRow],
        new_keys: list[tuple[str, int]],
    ) -> Routed:
        routed = 0
        for route in self._by_source.get(source, ()):
            selected, filtered, unsupported = route.select(events)
            if filtered:
                self._filtered[route.name].inc(filtered)
            if unsupported:
                self._metrics.events_dropped.labels(route.name, "unsupported_by_target").inc(
                    unsupported
                )
            if selected and (
                route.dedup_window is not None or route.first_exposure_window is not None
            ):
                selected = await self._drop_seen(route, selected, received_ms, new_keys)
            if not selected:
                continue
            rows.append(
                NewRow(route.target, route.name, orjson.dumps(selected), len(selected), received_ms)
            )
            self._routed[route.name].inc(len(selected))
            routed += len(selected)
        return Routed(rows, new_keys, routed)

    async def _drop_seen(
        self,
        route: CompiledRoute,
        events: list[Event],
        now_ms: int,
        new_keys: list[tuple[str, int]],
    ) -> list[Event]:
        """Drop events whose dedup / first-exposure key is stored or repeats in this batch."""
        per_event = [route.state_keys(event) for event in events]
        ledger = self._ledger
        seen = await ledger.seen([key for keys in per_event for key, _, _ in keys], now_ms)
        # No await from here on: checking and claiming a key is atomic.
        kept: list[Event] = []
        drops: dict[str, int] = {}
        for event, keys in zip(events, per_event, strict=True):
            reason = next((why for key, _, why in keys if key in seen), None)
            if reason is not None:
                drops[reason] = drops.get(reason, 0) + 1
                continue
            for key, window, _ in keys:
                seen.add(key)
                ledger.claim(key)
                new_keys.append((key, now_ms + int(window * 1000)))
            kept.append(event)
        for reason, count in drops.items():
            self._metrics.events_dropped.labels(route.name, reason).inc(count)
        return kept
