"""The raw path: one request's events kept as their original JSON bytes until someone needs more.

Most Statsig export events are only filtered and forwarded, so building a dict per event (and
freeing it) was over half of the event loop's time. A source that can (the Statsig webhook)
decodes its body as ``list[msgspec.Raw]`` — each event's bytes, not parsed — plus, per event, a
small typed view (``eventName``, ``timestamp``, the exposure keys). An event whose view shows it
needs no normalisation stays as its bytes and is spliced into the spool row as is; every other
event takes the dict path (the source's own normalisation, then ``orjson.dumps``), alone, so the
row is what the dict path would have written (same events, order and values).

:class:`RawEvents` is what ingest routes for every source: dict sources wrap their events with
:meth:`RawEvents.of_dicts`. Per event it holds either the bytes or the dict; anything that needs
a field outside the view (a route's ``where``, a renamed event, dedup keys) decodes that event
once, on demand.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
import orjson

from .events import EXPOSURE_CATEGORIES, MAX_MS, MAX_NESTING, MIN_MS, Event, category_of
from .numbers import NumberScreen

# Timestamps the raw path keeps as they are: epoch ms strictly between MIN_MS and MAX_MS
# (relay/events.py; the edges go to the dict path, whichever way it treats them). Anything
# else (seconds, µs, strings, out of range) goes to the dict path to be normalised or refused.
# An event that may nest deeper than MAX_NESTING goes to the dict path, which refuses it alone.
# Nesting n deep takes 2n bytes, so only events longer than 2 * DEPTH_BOUND bytes have their
# brackets counted (~0.5 µs per event); Statsig events nest about three deep.
DEPTH_BOUND = MAX_NESTING

# What _shallow deletes: every byte but the opening brackets and the line break.
_NOT_OPENING_OR_BREAK = bytes(c for c in range(256) if c not in b"[{\n")

_EXPOSURE_NAMES = frozenset(
    name
    for name in (f"statsig::{category}" for category in EXPOSURE_CATEGORIES)
    if category_of(name) in EXPOSURE_CATEGORIES
)


class _Exposure(msgspec.Struct, gc=False):
    gate: Any = msgspec.UNSET
    config: Any = msgspec.UNSET
    gateValue: Any = msgspec.UNSET


_Id = str | int | float | None  # what Statsig takes as a unit's ID (events.identity_problem)


class _User(msgspec.Struct, gc=False):
    """``user``, its other fields skipped: checks it is an object whose IDs are strings or
    numbers without building it (anything else fails the view, so the event takes the dict
    path, whose normalisation refuses it with the field named)."""

    userID: _Id = None
    customIDs: dict[str, _Id] | None = None


class _View(msgspec.Struct, gc=False):
    """The fields that decide whether an export event can stay as its bytes."""

    eventName: str = ""
    timestamp: int = -1
    metadata: _Exposure | None = None
    user: _User | None = None
    userID: _Id = None


class _PlainView(msgspec.Struct, gc=False):
    """The same view, refusing (so the whole body takes the per-event loop) any event whose
    name or time rules it out of the raw path; exposure keys are checked after."""

    eventName: Annotated[str, msgspec.Meta(min_length=1)]
    timestamp: Annotated[int, msgspec.Meta(gt=MIN_MS, lt=MAX_MS)]
    metadata: _Exposure | None = None
    user: _User | None = None
    userID: _Id = None


class _KeyView(msgspec.Struct, gc=False):
    """The fields dedup and first-exposure keys read (relay/state.py ``route_keys``)."""

    eventName: str = ""
    timeUUID: Any = None
    userID: Any = None
    unitID: Any = None
    user: Any = None
    metadata: Any = None
    statsigMetadata: Any = None


class _Wrapped(msgspec.Struct, gc=False):
    data: list[msgspec.Raw]


class _WrappedPlain(msgspec.Struct, gc=False):
    data: list[_PlainView]


_BODY = msgspec.json.Decoder(list[msgspec.Raw] | _Wrapped)
_PLAIN = msgspec.json.Decoder(list[_PlainView] | _WrappedPlain)
_VIEW = msgspec.json.Decoder(_View)
_KEYS = msgspec.json.Decoder(_KeyView)
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)


class RawEvents:
    """One request's events: per event its JSON bytes or its dict, and its name."""

    __slots__ = ("dicts", "names", "raws")

    def __init__(self, raws: list[Any], dicts: list[Event | None], names: list[str]) -> None:
        # Each event's JSON as received (bytes or msgspec.Raw, a view of the request body);
        # None: the event is a dict (below).
        self.raws = raws
        self.dicts = dicts  # the event as a dict: built by the source, or decoded on demand
        self.names = names

    @classmethod
    def of_dicts(cls, events: list[Event]) -> RawEvents:
        """Events a source built as dicts (every source but the Statsig webhook)."""
        return cls([None] * len(events), list(events), [e["eventName"] for e in events])

    def __len__(self) -> int:
        return len(self.names)

    def event(self, index: int) -> Event:
        """The event as a dict, decoded on first use."""
        event = self.dicts[index]
        if event is None:
            raw = memoryview(self.raws[index])
            try:
                event = orjson.loads(raw)
            except orjson.JSONDecodeError:
                event = lenient_loads(raw)
            self.dicts[index] = event
        return event

    def key_fields(self, index: int) -> Event:
        """The fields dedup / first-exposure keys read, without decoding the whole event."""
        event = self.dicts[index]
        if event is not None:
            return event
        try:
            return msgspec.structs.asdict(_KEYS.decode(self.raws[index]))
        except _DECODE_ERRORS:
            return self.event(index)

    def json(self, index: int, new_name: Callable[[str], str | None] | None = None) -> bytes:
        """The event's JSON for a spool row: its own bytes unless it is a dict or renamed
        (``new_name(name)``: the route's new name, None when it keeps the name)."""
        if new_name is not None:
            new = new_name(self.names[index])
            if new is not None:
                return orjson.dumps({**self.event(index), "eventName": new})
        raw = self.raws[index]
        return raw if raw is not None else orjson.dumps(self.dicts[index])


def lenient_loads(data: bytes | memoryview) -> Any:
    """JSON orjson refuses although it is valid: numbers out of a double's range (``1e400``),
    which ingest refuses now but rows stored by older versions may hold. Python's parser reads
    them (as inf, which orjson writes as null); integers beyond 64 bits become floats, as
    orjson reads them."""

    def parse_int(text: str) -> int | float:
        value = int(text)
        return value if -(2**63) <= value < 2**64 else float(value)

    return json.loads(bytes(data), parse_int=parse_int)


def decode_exports(
    body: bytes,
    normalise: Callable[[Any], str | None],
    reject: Callable[[int, str], None],
    numbers: NumberScreen | None = None,
) -> RawEvents | None:
    """Statsig export events of a body (an array or ``{"data": [...]}``), kept as bytes where
    they can be.

    Events that need normalising are decoded and given to ``normalise`` (in place; it returns
    why an event is unusable, then ``reject(index, reason)`` is called). Returns None when the
    body must take the dict path whole: neither shape, not valid UTF-8, or anything the raw
    decoder doubts (so errors and answers are exactly the dict path's), and a body that may hold
    a number beyond a double (relay/numbers.py: the dict path refuses those events alone;
    ``numbers`` is the caller's screen, one is made when it has none).

    The common case, every event plain, costs two C-level decodes of the body (the events'
    bytes, then their views) and a few list passes; the per-event loop runs only for bodies
    holding an event that needs a closer look.
    """
    if not body.isascii():
        try:
            body.decode()
        except UnicodeDecodeError:
            return None
    if (numbers or NumberScreen()).may_hold_unrepresentable(body):
        return None  # the dict path refuses each event holding a number beyond a double
    try:
        document = _BODY.decode(body)
    except _DECODE_ERRORS:
        return None
    items = document.data if isinstance(document, _Wrapped) else document
    # Rows hold no line breaks outside strings (line formats split them); JSON strings cannot
    # hold one, so an event with a break in its bytes is re-encoded.
    breaks = b"\n" in body or b"\r" in body
    if not breaks and _shallow(items):
        plain = _all_plain(body)
        if plain is not None:
            return RawEvents(items, [None] * len(items), plain)
    raws: list[Any] = []
    dicts: list[Event | None] = []
    names: list[str] = []
    exposures = _EXPOSURE_NAMES
    for index, raw in enumerate(items):
        try:
            view = _VIEW.decode(raw)
        except _DECODE_ERRORS:
            view = None
        if view is not None and _as_is(view, exposures) and _compact(raw, breaks):
            raws.append(raw)
            dicts.append(None)
            names.append(view.eventName)
            continue
        try:
            item = orjson.loads(memoryview(raw))
        except orjson.JSONDecodeError:
            return None
        problem = normalise(item)
        if problem is None:
            raws.append(None)
            dicts.append(item)
            names.append(item["eventName"])
        else:
            reject(index, problem)
    return RawEvents(raws, dicts, names)


def _shallow(items: list[msgspec.Raw]) -> bool:
    """Whether no event can nest deeper than DEPTH_BOUND, for events holding no line break.

    Nesting n deep takes n opening brackets and 2n bytes, so an event of at most
    2 * DEPTH_BOUND bytes cannot, nor can one with at most DEPTH_BOUND opening brackets (those
    inside strings counted too: they only make the test stricter). The long events are counted
    in one C-level pass: joined by line breaks, stripped of everything else, split again. Bench
    events are ~400 B, so this decides for most bodies (~0.3 µs per event; the per-event loop
    it saves costs ~2 µs per event).
    """
    if max(map(len, items), default=0) <= 2 * DEPTH_BOUND:
        return True
    long = [raw for raw in items if len(raw) > 2 * DEPTH_BOUND]
    openings = b"\n".join(long).translate(None, _NOT_OPENING_OR_BREAK)
    return max(map(len, openings.split(b"\n"))) <= DEPTH_BOUND


def _all_plain(body: bytes) -> list[str] | None:
    """The events' names when every event may stay as its bytes; else None."""
    try:
        document = _PLAIN.decode(body)
    except _DECODE_ERRORS:
        return None
    views = document.data if isinstance(document, _WrappedPlain) else document
    names = [view.eventName for view in views]
    exposures = _EXPOSURE_NAMES
    for index, name in enumerate(names):
        if name in exposures and not _exposure_keys_in_place(views[index].metadata):
            return None
    return names


def _exposure_keys_in_place(meta: _Exposure | None) -> bool:
    """Exposure keys already under ``metadata`` and no boolean gateValue to stringify."""
    return (
        meta is not None
        and (meta.gate is not msgspec.UNSET or meta.config is not msgspec.UNSET)
        and type(meta.gateValue) is not bool
    )


def _as_is(view: _View, exposures: frozenset[str]) -> bool:
    """Whether the source's normalisation would leave the event as it is (the same test as
    the dict path's shortcut in relay/sources/statsig_webhook.py) and its time is in range."""
    if not view.eventName or not MIN_MS < view.timestamp < MAX_MS:
        return False
    return view.eventName not in exposures or _exposure_keys_in_place(view.metadata)


def _compact(raw: msgspec.Raw, breaks: bool) -> bool:
    """No line break, and not possibly nested deeper than DEPTH_BOUND."""
    if len(raw) <= 2 * DEPTH_BOUND and not breaks:
        return True
    data = bytes(raw)
    return data.count(b"{") + data.count(b"[") <= DEPTH_BOUND and not (
        breaks and (b"\n" in data or b"\r" in data)
    )
