"""Property-based fuzzing of every source with hypothesis.

Each example is one request built from the source's real grammar (the shared fixtures and the
README's examples) with mutations: wrong types at any path, extreme numbers (over 64 bits,
1e400, NaN spelled as a string), nesting up to past the parser's limit, invalid UTF-8, bad or
corrupt Content-Encoding, odd and non-ASCII headers. Next to the hostile events each request
carries one valid "canary" event with a unique name.

Invariants: no answer is a 5xx (the tests never fill the spool); the relay stays up and logs no
internal error; every canary of an accepted (2xx) request reaches both fake targets exactly
once, and no canary of a refused request does. Target ``a`` takes any body; target ``b`` is a
strict receiver that answers 400 to a body its JSON parser refuses (a number beyond a double,
as a 400-digit integer or ``1e400`` is), so the deliverer must isolate such an event without
holding back or losing the canaries stored with it.

CI runs ``DEFAULT_EXAMPLES`` per source, derandomized (the same bodies every run). Set
``RELAY_FUZZ_EXAMPLES=20000`` to run that many per source, and ``RELAY_FUZZ_SEED=N`` for other
bodies than CI's; ``-s`` shows the figures.

The relay and the fakes run on an event loop in a thread of their own (hypothesis drives a
synchronous test), in process; ``test_fuzz_daemon_process`` sends the same kind of bodies to
the daemon run as a process, and ``test_fuzz_canaries_reach_every_destination_exactly_once``
to the Amplitude, Mixpanel and Segment targets, whose fakes enforce those APIs' fields and limits.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import gzip
import json
import os
import re
import threading
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from relay.app import Relay
from relay.config import parse_config
from relay.sources.statsig_webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from tests.conftest import fixture_json, relay_yaml
from tests.daemon import DaemonProcess, free_port
from tests.fake_amplitude import FakeAmplitude
from tests.fake_change_targets import FakeDatadog, FakeGrafana, FakeSlack
from tests.fake_mixpanel import FakeMixpanel
from tests.fake_segment import FakeSegment
from tests.fakes import FakeTarget, RecordedRequest, poll_until

DEFAULT_EXAMPLES = 250
EXAMPLES = int(os.environ.get("RELAY_FUZZ_EXAMPLES") or DEFAULT_EXAMPLES)
SEED = os.environ.get("RELAY_FUZZ_SEED") or None

SECRET = "whsec-fuzz"
WRITE_KEY = "seg-fuzz"
SDK_KEY = "client-fuzz"
JSON_KEY = "json-fuzz"

SOURCES = """
sources:
  statsig: {{type: statsig_webhook, path: /webhooks/statsig, signing_secret: {secret}}}
  web: {{type: segment, path_prefix: /segment, write_keys: [{write_key}]}}
  sdk: {{type: statsig_events, path_prefix: /statsig, api_keys: [{sdk_key}]}}
  app:
    type: json
    path: /ingest/app
    api_keys: [{json_key}]
    mapping:
      event_name: type
      user_id: user.id
      custom_ids: {{stableID: anon}}
      value: amount
      timestamp: ts
      metadata: props
targets:
  a: {{type: webhook, url: "{a}/in", linger: 0s}}
  b: {{type: webhook, url: "{b}/in", linger: 0s, batch_max_events: 7}}
routes:
  - {{name: to-a, from: [statsig, web, sdk, app], to: a}}
  - {{name: to-b, from: [statsig, web, sdk, app], to: b}}
"""


def sources_yaml(a: str, b: str) -> str:
    return SOURCES.format(
        secret=SECRET, write_key=WRITE_KEY, sdk_key=SDK_KEY, json_key=JSON_KEY, a=a, b=b
    )


# -- JSON with what orjson will not write: deep nesting, raw number spellings ------------------

_TOKEN = re.compile(rb'"\\u0000(deep|raw):([^"]*)"')


def deep(levels: int) -> str:
    """A stand-in for a value ``levels`` containers deep (see :func:`to_json`)."""
    return f"\x00deep:{levels}"


def raw(literal: str) -> str:
    """A stand-in for JSON text written as is (``1e400``, a 30-digit integer, ``"\\ud800"``)."""
    return f"\x00raw:{base64.urlsafe_b64encode(literal.encode()).decode()}"


def _expand(match: re.Match[bytes]) -> bytes:
    if match[1] == b"deep":
        levels = int(match[2])
        opening = b"".join(b"[" if i % 2 else b'{"d":' for i in range(levels))
        closing = b"".join(b"]" if i % 2 else b"}" for i in reversed(range(levels)))
        return opening + b"0" + closing
    return base64.urlsafe_b64decode(match[2])


def to_json(value: Any) -> bytes:
    return _TOKEN.sub(_expand, orjson.dumps(value))


# -- strategies --------------------------------------------------------------------------------

EDGE_NUMBERS = [
    0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), 1e11, 1e14, 1e17, 1e25,
    1e300, -1e300, 5e-324, 946_684_800_000, 4_102_444_800_000, 4_102_444_800_001, 1717628400,
    1717628400.5, 1717628400000000, 1717628400000000000,
]  # fmt: skip
RAW_NUMBERS = [
    "1e400", "-1e400", "123456789012345678901234567890", "-0", "1E-400", "0.0e0", "-0.0",
    "18446744073709551616", "-9223372036854775809", "9007199254740993", "1" + "0" * 400,
    "-" + "9" * 400, "0." + "0" * 400 + "1", "1" + "0" * 308, "1.7976931348623157e308",
    "1.7976931348623159e308", "4.9e-324", "2.4e-324",
    '"\\ud800"', '"\\u0000"', '"nan"', '"Infinity"', '"-1e25"',
]  # fmt: skip
LIMIT_NUMBERS = ["1" + "0" * 400, "-" + "9" * 400, "1e400", "-1e400", "-0", "1e-400", "-0.0"]
"""Numbers at and beyond what a double holds; one of them goes into about one event in four."""
EDGE_STRINGS = [
    "", " ", "2024-06-05T23:00:00Z", "2024-06-05T23:00:00+14:00", "9999-12-31T23:59:59Z",
    "0001-01-01T00:00:00", "1717628400000", "1e25", "nan", "inf", "statsig::gate_exposure",
    "statsig::config_exposure", "track", "page", "identify", "batch", "userID", "url_verification",
    "x" * 5000, "é" * 50, "\u2028", "\x7f", "true",
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(EDGE_NUMBERS),
    st.sampled_from(RAW_NUMBERS).map(raw),
    st.text(max_size=20),
    st.sampled_from(EDGE_STRINGS),
)
deep_values = st.sampled_from([150, 199, 200, 201, 254, 256, 300, 1000, 1023, 1100]).map(deep)
keys = st.one_of(st.text(max_size=8), st.sampled_from(["", "user", "metadata", "gate", "k"]))


def values(deep_ok: bool = True) -> st.SearchStrategy[Any]:
    leaves = st.one_of(scalars, deep_values) if deep_ok else scalars
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
        max_leaves=10,
    )


# what a mutation puts in place: anything, with the extremes more often
hostile = st.one_of(
    values(), deep_values, st.sampled_from(EDGE_NUMBERS), st.sampled_from(RAW_NUMBERS).map(raw)
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for key, child in value.items():
            yield (*prefix, key)
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield (*prefix, index)
            yield from _paths(child, (*prefix, index))


_DELETE = object()


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        value = value[part]
    return value


def _set(value: Any, path: tuple[Any, ...], new: Any) -> None:
    for part in path[:-1]:
        value = value[part]
    if new is _DELETE:
        del value[path[-1]]
    else:
        value[path[-1]] = new


@st.composite
def mutated(draw: st.DrawFn, templates: list[Any], field_names: list[str]) -> Any:
    """A template of the source's grammar with 0-3 mutations: a value at any path replaced or
    deleted, or a known field set to anything; sometimes not an object at all."""
    if draw(st.integers(0, 15)) == 0:
        return draw(values())
    event = copy.deepcopy(draw(st.sampled_from(templates)))
    for _ in range(draw(st.integers(0, 3))):
        paths = list(_paths(event))
        if paths and draw(st.booleans()):
            path = draw(st.sampled_from(paths))
        else:
            path = (draw(st.sampled_from(field_names)),)
        new = _DELETE if draw(st.integers(0, 4)) == 0 else draw(hostile)
        # an earlier mutation may have changed the shape under this path
        with contextlib.suppress(KeyError, IndexError, TypeError):
            _set(event, path, new)
    if isinstance(event, dict) and draw(st.integers(0, 3)) == 0:
        # a number at or past a double's limits, otherwise a valid event: at a leaf or a new key
        paths = [p for p in _paths(event) if not isinstance(_get(event, p), dict | list)]
        path = draw(st.sampled_from(paths)) if paths and draw(st.booleans()) else ("n",)
        with contextlib.suppress(KeyError, IndexError, TypeError):
            _set(event, path, raw(draw(st.sampled_from(LIMIT_NUMBERS))))
    return event


# -- requests ----------------------------------------------------------------------------------

Header = tuple[bytes, bytes]


@dataclass
class Request:
    source: str
    path: str
    headers: list[Header]
    body: bytes
    canary: str | None  # the valid event's name, when the request carries one


@dataclass
class Plan:
    """One source's request: its document (with the canary in place), path and credentials,
    before the body mutations."""

    source: str
    path: str
    document: Any
    credentials: list[Header]
    canary: str | None
    signed: bool = False


STATSIG_TEMPLATES: list[Any] = [
    *fixture_json("statsig_export_batch.json"),
    *fixture_json("statsig_config_changes.json")["data"],
]
SEGMENT_TEMPLATES: list[Any] = [
    *fixture_json("segment_batch.json")["batch"],
    {"type": "screen", "name": "Home", "userId": "u", "messageId": "s-1"},
]


SDK_TEMPLATES = [
    {"eventName": "add_to_cart", "user": {"userID": "u1"}, "value": "sku_1",
     "time": 1717628400000, "metadata": {"price": "9.99"}},
    {"eventName": "statsig::gate_exposure",
     "user": {"userID": "u1", "customIDs": {"stableID": "s"}}, "time": 1717628400000,
     "metadata": {"gate": "g", "gateValue": "true", "ruleID": "r"}, "secondaryExposures": []},
]  # fmt: skip
JSON_TEMPLATES = [
    {"type": "signup", "user": {"id": "u1"}, "anon": "a1", "amount": "12.5",
     "ts": "2024-06-05T23:00:00Z", "props": {"plan": "pro", "seats": 3}},
    {"type": "click", "user": {"id": 7}, "ts": 1717628400, "props": {"x": [1, 2]}},
]  # fmt: skip
STATSIG_FIELDS = ["eventName", "timestamp", "user", "userID", "metadata", "value", "unitID",
                  "statsigMetadata", "timeUUID"]  # fmt: skip
SEGMENT_FIELDS = ["type", "event", "name", "userId", "anonymousId", "timestamp",
                  "originalTimestamp", "sentAt", "properties", "context", "traits",
                  "messageId"]  # fmt: skip
SDK_FIELDS = ["eventName", "event", "time", "timestamp", "user", "metadata", "value"]
JSON_FIELDS = ["type", "user", "anon", "amount", "ts", "props"]


class Canaries:
    """Unique names for the valid events (hypothesis replays examples: names come from here)."""

    def __init__(self) -> None:
        self.n = 0

    def next(self, source: str) -> str:
        self.n += 1
        return f"canary-{source}-{self.n:08d}"


CANARY_MS = 1_717_628_400_000  # 2024-06-05


def canary_event(source: str, name: str) -> dict[str, Any]:
    now = CANARY_MS
    if source == "statsig":
        return {"eventName": name, "user": {"userID": "c"}, "userID": "c", "timestamp": now}
    if source == "web":
        return {"type": "track", "event": name, "userId": "c", "messageId": name,
                "timestamp": "2024-06-05T23:00:00Z"}  # fmt: skip
    if source == "sdk":
        return {"eventName": name, "user": {"userID": "c"}, "time": now}
    return {"type": name, "user": {"id": "c"}, "ts": now}


def with_canary(draw: st.DrawFn, events: list[Any], canary: dict[str, Any]) -> list[Any]:
    at = draw(st.integers(0, len(events)))
    return [*events[:at], canary, *events[at:]]


def change_canary(name: str) -> dict[str, Any]:
    """A valid config change named after the request's canary, for the config-change targets."""
    return {
        "eventName": "statsig::config_change",
        "timestamp": CANARY_MS,
        "user": {"name": "c"},
        "metadata": {"type": "Gate", "name": f"{name}-change", "action": "updated"},
    }


@st.composite
def statsig_plans(draw: st.DrawFn, names: Canaries) -> Plan:
    events = draw(st.lists(mutated(STATSIG_TEMPLATES, STATSIG_FIELDS), max_size=4))
    name = names.next("statsig")
    events = with_canary(draw, events, canary_event("statsig", name))
    events = with_canary(draw, events, change_canary(name))
    document: Any = {"data": events} if draw(st.booleans()) else events
    return Plan("statsig", "/webhooks/statsig", document, [], name, signed=True)


@st.composite
def segment_plans(draw: st.DrawFn, names: Canaries) -> Plan:
    auth = (b"Authorization", b"Basic " + base64.b64encode(WRITE_KEY.encode() + b":"))
    if draw(st.integers(0, 4)) == 0:  # one call on its own endpoint: nothing alongside it
        call = draw(st.sampled_from(["track", "page", "screen", "identify", "group", "alias"]))
        message = draw(mutated(SEGMENT_TEMPLATES, SEGMENT_FIELDS))
        path = draw(st.sampled_from([f"/segment/v1/{call}", f"/segment/v1/{call[0]}"]))
        return Plan("web", path, message, [auth], None)
    messages = draw(st.lists(mutated(SEGMENT_TEMPLATES, SEGMENT_FIELDS), max_size=4))
    name = names.next("web")
    document: dict[str, Any] = {"batch": with_canary(draw, messages, canary_event("web", name))}
    for key in ("sentAt", "context", "integrations"):
        if draw(st.integers(0, 3)) == 0:
            document[key] = draw(values(deep_ok=False))  # shared by every message
    credentials: list[Header] = [auth]
    if draw(st.booleans()):
        document["writeKey"] = WRITE_KEY
        credentials = []
    path = draw(st.sampled_from(["/segment/v1/batch", "/segment/v1/b"]))
    return Plan("web", path, document, credentials, name)


@st.composite
def sdk_plans(draw: st.DrawFn, names: Canaries) -> Plan:
    events = draw(st.lists(mutated(SDK_TEMPLATES, SDK_FIELDS), max_size=4))
    name = names.next("sdk")
    events = with_canary(draw, events, canary_event("sdk", name))
    document: Any = {"events": events}
    for key in ("user", "statsigMetadata"):
        if draw(st.integers(0, 2)) == 0:
            document[key] = draw(values(deep_ok=False))
    if draw(st.integers(0, 5)) == 0:
        document = events
    path = draw(st.sampled_from(["/statsig/v1/rgstr", "/statsig/v1/log_event"]))
    return Plan("sdk", path, document, [(b"statsig-api-key", SDK_KEY.encode())], name)


@st.composite
def json_plans(draw: st.DrawFn, names: Canaries) -> Plan:
    events = draw(st.lists(mutated(JSON_TEMPLATES, JSON_FIELDS), max_size=4))
    name = names.next("app")
    events = with_canary(draw, events, canary_event("app", name))
    document: Any = {"events": events} if draw(st.booleans()) else events
    key = draw(st.sampled_from([(b"X-API-Key", b""), (b"Authorization", b"Bearer ")]))
    return Plan("app", "/ingest/app", document, [(key[0], key[1] + JSON_KEY.encode())], name)


GARBAGE_ENCODINGS = ["gzip", "x-gzip", "deflate", "br", "zstd", "compress", "gzip, br", "GZIP"]
NON_ASCII = [b"\xff", b"\xe9t\xe9", b"\xc3\x28", b"k\x80ey", b"\xf0\x9f\x98"]


@st.composite
def requests(draw: st.DrawFn, plans: st.SearchStrategy[Plan]) -> Request:
    """A plan's document as bytes, with at most one body or header mutation."""
    plan = draw(plans)
    body = to_json(plan.document)
    logical = body  # what the relay sees after inflating; the Statsig signature covers it
    headers: list[Header] = [(b"Content-Type", b"application/json"), *plan.credentials]
    mutation = draw(
        st.sampled_from(
            ["none"] * 6
            + ["truncate", "bad_utf8", "gzip", "deflate", "corrupt", "encoding", "credential"]
            + ["content_type", "noise_header"]
        )
    )
    if mutation == "truncate":
        # positions as a share of the length: what is drawn never depends on the canary's name
        body = logical = body[: len(body) * draw(st.integers(0, 999)) // 1000]
    elif mutation == "bad_utf8":
        at = len(body) * draw(st.integers(0, 1000)) // 1000
        body = logical = body[:at] + draw(st.sampled_from(NON_ASCII)) + body[at:]
    elif mutation == "gzip":
        body = gzip.compress(body)
        headers.append((b"Content-Encoding", b"gzip"))
    elif mutation == "deflate":
        body = zlib.compress(body)
        headers.append((b"Content-Encoding", b"deflate"))
    elif mutation == "corrupt":
        encoding = draw(st.sampled_from(GARBAGE_ENCODINGS))
        prefix = gzip.compress(body)[:10] if draw(st.booleans()) else b""
        body = prefix + draw(st.binary(min_size=1, max_size=64))
        headers.append((b"Content-Encoding", encoding.encode()))
    elif mutation == "encoding":
        headers.append((b"Content-Encoding", draw(st.sampled_from([b"identity", b"", b"br;q=1"]))))
    elif mutation == "credential":
        name = draw(
            st.sampled_from(
                [b"statsig-api-key", b"X-API-Key", b"Authorization", SIGNATURE_HEADER.encode()]
            )
        )
        value = draw(st.sampled_from([b"Basic ", b"Bearer ", b"v0=", b""]))
        value += draw(st.sampled_from(NON_ASCII))
        headers = [h for h in headers if h[0].lower() != name.lower()] + [(name, value)]
    elif mutation == "content_type":
        headers[0] = (b"Content-Type", draw(st.sampled_from([b"text/plain", b"", b"\xff/\xfe"])))
    elif mutation == "noise_header":
        name = draw(st.sampled_from([b"X-Forwarded-For", b"Origin", b"Cookie", b"X-Noise"]))
        noise = draw(st.binary(max_size=40)).translate(None, b"\r\n\x00")
        headers.append((name, noise))
    if plan.signed and not any(h[0] == SIGNATURE_HEADER.encode() for h in headers):
        stamp = str(int(time.time() * 1000))
        headers.append((TIMESTAMP_HEADER.encode(), stamp.encode()))
        headers.append((SIGNATURE_HEADER.encode(), sign(SECRET.encode(), stamp, logical).encode()))
    return Request(plan.source, plan.path, headers, body, plan.canary)


# -- the relay under test, on its own loop -----------------------------------------------------

T = TypeVar("T")


@dataclass
class Tally:
    """What one source's run did, for the figures and the final checks."""

    tried: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    acknowledged: set[str] = field(default_factory=set)  # canaries of 2xx answers
    refused: set[str] = field(default_factory=set)  # canaries of 4xx answers
    sent: dict[str, tuple[Request, bytes]] = field(default_factory=dict)  # canary: request, answer

    def figures(self, fakes: list[FakeTarget]) -> str:
        delivered = [self.acknowledged & names(fake) for fake in fakes]
        fivexx = sum(n for status, n in self.statuses.items() if status >= 500)
        return (
            f"{self.tried} bodies, {fivexx} 5xx, statuses {dict(sorted(self.statuses.items()))}, "
            f"canaries acknowledged {len(self.acknowledged)}, delivered "
            f"{' / '.join(str(len(d)) for d in delivered)}, lost "
            f"{' / '.join(str(len(self.acknowledged - d)) for d in delivered)}, bodies the "
            f"strict receiver refused {sum(r.status == 400 for r in fakes[1].requests)}"
        )


def strict_json(request: RecordedRequest) -> None:
    """The strict receiver: a body orjson cannot read (a number beyond a double) is a 400."""
    assert request.is_json, "body is not JSON this receiver can read"


def received(fake: FakeTarget) -> list[Any]:
    """Every event the fake took (answered 2xx). A body orjson refuses is read with Python's
    parser: the relay forwards a number beyond a double (``1e400``, 400 digits) as stored,
    which is valid JSON; the strict receiver refuses such a batch and the deliverer isolates
    the event."""
    events: list[Any] = []
    for request in fake.requests:
        if request.status is None or not 200 <= request.status < 300:
            continue
        if request.is_json:
            events.extend(request.events())
        else:
            with contextlib.suppress(ValueError):  # Python's parser holds any integer, 1e400
                document = json.loads(request.body)
                events.extend(document if isinstance(document, list) else [document])
    return [e for e in events if isinstance(e, dict)]


def names(fake: FakeTarget) -> set[str]:
    return {e.get("eventName") for e in received(fake)}


class LiveRelay:
    """Fake targets, and the relay in process unless ``port`` is given (a daemon's), on an
    event loop in a thread of their own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.fakes = [FakeTarget(), FakeTarget(check=strict_json)]
        self.relay: Relay | None = None
        self.port = 0

    def run(self, work: Awaitable[T], timeout: float = 60) -> T:
        async def wrapped() -> T:
            return await work

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(timeout)

    def start(self, tmp_path: Path) -> None:
        self.thread.start()
        for fake in self.fakes:
            self.run(fake.start())
        yaml = relay_yaml(sources_yaml(self.fakes[0].url, self.fakes[1].url), tmp_path)
        self.relay = Relay(parse_config(yaml, {}))
        self.run(self.relay.start())
        assert self.relay.public_port is not None
        self.port = self.relay.public_port

    def close(self) -> None:
        if self.relay is not None:
            self.run(self.relay.stop())
        for fake in self.fakes:
            self.run(fake.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def send(self, request: Request) -> tuple[int, bytes]:
        return self.run(post_raw(self.port, request))

    def check(self, tally: Tally) -> None:
        """Every acknowledged canary at both fakes exactly once; no refused one anywhere."""

        def all_there() -> bool:
            return all(tally.acknowledged <= names(fake) for fake in self.fakes)

        with contextlib.suppress(AssertionError):  # the figures below say what is missing
            self.run(poll_until(all_there, timeout=60, message="canaries not delivered"), 90)
        figures = tally.figures(self.fakes)
        print(figures)
        for fake in self.fakes:
            for canary in sorted(tally.acknowledged - names(fake))[:3]:
                request, answer = tally.sent[canary]
                figures += f"\nlost {canary}: {request} answered {answer[:500]!r}"
        assert not [s for s in tally.statuses if s >= 500], figures
        assert all_there(), figures
        for fake in self.fakes:
            counts = Counter(e.get("eventName") for e in received(fake))
            duplicated = {n for n in tally.acknowledged if counts[n] > 1}
            assert not duplicated, f"delivered twice: {sorted(duplicated)[:5]}"
            assert not (tally.refused & names(fake)), "a refused request's canary was delivered"


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        return await response.text()


async def post_raw(port: int, request: Request) -> tuple[int, bytes]:
    """POST over a plain socket (aiohttp's client will not send raw non-ASCII header bytes);
    the answer's status. A closed connection without an answer fails the test."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = [f"POST {request.path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
        head += [name + b": " + value for name, value in request.headers]
        head.append(b"Content-Length: " + str(len(request.body)).encode())
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + request.body)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 30)
        # aiohttp's own parser answers HTTP/1.0 400 to a request line or header it refuses
        assert status_line.startswith(b"HTTP/1."), f"no answer: {status_line!r}"
        rest = await asyncio.wait_for(reader.read(), 30)
        return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]
    finally:
        writer.close()


def record(tally: Tally, request: Request, answer: tuple[int, bytes]) -> None:
    status = answer[0]
    tally.tried += 1
    tally.statuses[status] += 1
    if request.canary is not None:
        (tally.acknowledged if 200 <= status < 300 else tally.refused).add(request.canary)
        tally.sent[request.canary] = (request, answer[1])
    assert status < 500, f"{status} for {request.source} {request.path}: {request.body[:300]!r}"


PLANS: dict[str, Callable[[Canaries], st.SearchStrategy[Plan]]] = {
    "statsig_webhook": statsig_plans,
    "segment": segment_plans,
    "statsig_events": sdk_plans,
    "json": json_plans,
}


def fuzz_settings(examples: int) -> Callable[[T], T]:
    """Hypothesis settings for a fuzz test: derandomized (CI is deterministic), unless
    ``RELAY_FUZZ_SEED`` asks for other bodies than CI's, e.g. a long run before a release."""
    chosen = settings(
        max_examples=examples,
        derandomize=SEED is None,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )
    if SEED is None:
        return chosen
    return lambda test: seed(int(SEED))(chosen(test))


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveRelay]:
    live = LiveRelay()
    try:
        live.start(tmp_path)
        yield live
    finally:
        live.close()


@pytest.mark.parametrize("source", list(PLANS))
def test_fuzz_source(source: str, live: LiveRelay) -> None:
    tally = Tally()
    canaries = Canaries()

    @fuzz_settings(EXAMPLES)
    @given(request=requests(PLANS[source](canaries)))
    def one(request: Request) -> None:
        record(tally, request, live.send(request))

    one()
    print(f"\nfuzz {source}: ", end="")
    live.check(tally)
    assert live.relay is not None
    internal = live.relay.metrics.registry.get_sample_value(
        "relay_internal_errors_total", {"source": {"statsig_webhook": "statsig", "segment": "web",
                                                   "statsig_events": "sdk", "json": "app"}[source]}
    )  # fmt: skip
    assert not internal


def test_fuzz_daemon_process(tmp_path: Path) -> None:
    """The same kind of bodies, fewer, against the daemon as a process: it answers every one
    without a 5xx, stays up, and delivers every acknowledged canary."""
    live = LiveRelay()
    live.thread.start()
    try:
        for fake in live.fakes:
            live.run(fake.start())
        port, admin = free_port(), free_port()
        yaml = (
            relay_yaml(sources_yaml(live.fakes[0].url, live.fakes[1].url), tmp_path)
            .replace("127.0.0.1:0'", f"127.0.0.1:{port}'", 1)
            .replace("admin_listen: '127.0.0.1:0'", f"admin_listen: '127.0.0.1:{admin}'")
        )
        daemon = DaemonProcess(yaml, tmp_path)
        live.run(daemon.start(f"http://127.0.0.1:{admin}/readyz"))
        live.port = port
        tally = Tally()
        canaries = Canaries()
        every_source = st.one_of([requests(plans(canaries)) for plans in PLANS.values()])

        @fuzz_settings(min(EXAMPLES, 100))
        @given(request=every_source)
        def one(request: Request) -> None:
            record(tally, request, live.send(request))

        try:
            one()
            print("\nfuzz daemon: ", end="")
            live.check(tally)
            assert daemon.running, daemon.log_tail()
            metrics = live.run(scrape(f"http://127.0.0.1:{admin}/metrics"))
            internal = [line for line in metrics.splitlines() if line.startswith("relay_internal_")]
            assert internal, "relay_internal_errors_total is not exported"
            assert all(line.endswith(" 0.0") for line in internal), internal
        finally:
            live.run(daemon.terminate())
    finally:
        live.close()


class DestinationsRelay(LiveRelay):
    """The relay with the vendors' fakes as targets too (each enforces its API's limits and
    fields): every acknowledged canary must reach each of them exactly once."""

    def __init__(self) -> None:
        super().__init__()
        self.amplitude = FakeAmplitude()
        self.mixpanel = FakeMixpanel()
        self.segment = FakeSegment("seg-target-key")
        self.datadog = FakeDatadog("dd-fuzz-key")
        self.slack = FakeSlack()
        self.grafana = FakeGrafana("glsa_fuzz")
        self.vendors: list[FakeTarget] = [
            self.amplitude, self.mixpanel, self.segment, self.datadog, self.slack, self.grafana
        ]  # fmt: skip

    def start(self, tmp_path: Path) -> None:
        self.thread.start()
        for fake in (*self.fakes, *self.vendors):
            self.run(fake.start())
        every = "from: [statsig, web, sdk, app]"
        extra = f"""
  amp: {{type: amplitude, api_key: "{self.amplitude.api_key}", base_url: "{self.amplitude.url}",
         linger: 0s}}
  mp: {{type: mixpanel, project_token: "{self.mixpanel.token}", base_url: "{self.mixpanel.url}",
        linger: 0s}}
  seg: {{type: segment, write_key: "seg-target-key", base_url: "{self.segment.url}", linger: 0s}}
  dd: {{type: datadog, api_key: "dd-fuzz-key", base_url: "{self.datadog.url}"}}
  slack: {{type: slack, url: "{self.slack.hook_url}", base_url: "{self.slack.url}", linger: 0s,
          messages_per_minute: 600}}
  grafana: {{type: grafana, url: "{self.grafana.url}", token: "glsa_fuzz"}}
routes:
  - {{name: to-amp, {every}, to: amp}}
  - {{name: to-mp, {every}, to: mp}}
  - {{name: to-seg, {every}, to: seg}}
  - {{name: to-dd, from: statsig, to: dd, filter: {{categories: [config_change]}}}}
  - {{name: to-slack, from: statsig, to: slack, filter: {{categories: [config_change]}}}}
  - {{name: to-grafana, from: statsig, to: grafana, filter: {{categories: [config_change]}}}}"""
        yaml = sources_yaml(self.fakes[0].url, self.fakes[1].url).replace("\nroutes:", extra, 1)
        self.relay = Relay(parse_config(relay_yaml(yaml, tmp_path), {}))
        self.run(self.relay.start())
        assert self.relay.public_port is not None
        self.port = self.relay.public_port

    def close(self) -> None:
        for fake in self.vendors:
            self.run(fake.close())
        super().close()

    def change_counts(self, names: set[str]) -> dict[str, Counter[str]]:
        """Per config-change target: how many accepted requests carry each change canary."""
        counts: dict[str, Counter[str]] = {}
        for vendor, fake in (("datadog", self.datadog), ("slack", self.slack),
                             ("grafana", self.grafana)):  # fmt: skip
            seen: Counter[str] = Counter()
            for body in fake.accepted():
                text = body if isinstance(body, str) else orjson.dumps(body).decode()
                seen.update(n for n in names if f"{n}-change" in text)
            counts[vendor] = seen
        return counts

    def vendor_names(self) -> dict[str, list[Any]]:
        return {
            "amplitude": [e.get("event_type") for e in self.amplitude.accepted],
            "mixpanel": [e.get("event") for e in self.mixpanel.accepted],
            "segment": [m.get("event") for m in self.segment.accepted],
        }


def test_fuzz_canaries_reach_every_destination_exactly_once(tmp_path: Path) -> None:
    """Bodies from every source, hostile events beside the canaries, to Amplitude, Mixpanel
    and Segment fakes as well as the two webhooks: each acknowledged canary once at each."""
    live = DestinationsRelay()
    try:
        live.start(tmp_path)
        tally = Tally()
        canaries = Canaries()
        every_source = st.one_of([requests(plans(canaries)) for plans in PLANS.values()])

        @fuzz_settings(min(EXAMPLES, 150))
        @given(request=every_source)
        def one(request: Request) -> None:
            record(tally, request, live.send(request))

        one()
        print("\nfuzz destinations: ", end="")
        live.check(tally)

        def everywhere() -> bool:
            return all(tally.acknowledged <= set(n) for n in live.vendor_names().values())

        with contextlib.suppress(AssertionError):
            live.run(poll_until(everywhere, timeout=60), 90)
        for vendor, seen in live.vendor_names().items():
            counts = Counter(seen)
            missing = sorted(tally.acknowledged - set(counts))
            twice = sorted(n for n in tally.acknowledged if counts[n] > 1)
            print(f"{vendor}: {sum(counts[n] for n in tally.acknowledged)} canaries", end="; ")
            assert not missing, f"{vendor} never got {missing[:5]} of {len(tally.acknowledged)}"
            assert not twice, f"{vendor} got twice {twice[:5]}"
            assert not (tally.refused & set(counts)), f"{vendor} got a refused request's canary"
        # Each acknowledged Statsig request's config-change canary at each change target once.
        changes = {n for n in tally.acknowledged if n.startswith("canary-statsig-")}

        def changes_everywhere() -> bool:
            return all(set(c) >= changes for c in live.change_counts(changes).values())

        with contextlib.suppress(AssertionError):
            live.run(poll_until(changes_everywhere, timeout=60), 90)
        for vendor, counts in live.change_counts(changes).items():
            print(f"{vendor}: {len(counts)} changes", end="; ")
            missing = sorted(changes - set(counts))
            assert not missing, f"{vendor} never got {missing[:5]} of {len(changes)}"
            assert not [n for n in changes if counts[n] > 1], f"{vendor} got a change twice"
        for fake in live.vendors:
            assert fake.failures == [], fake.failures[:3]
    finally:
        live.close()
