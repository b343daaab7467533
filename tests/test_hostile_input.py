"""Hostile requests get a clear 4xx, never a 5xx: corrupt compressed bodies, credential headers
with bytes that are not ASCII, wrongly typed Segment messages.

Headers with raw non-ASCII bytes cannot be sent with aiohttp's client, so these tests speak
HTTP/1.1 over a plain socket (``raw_post``).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import zlib
from collections.abc import AsyncIterator

import orjson
import pytest

try:
    from compression import zstd  # Python 3.14+
except ImportError:
    from backports import zstd

from relay.app import Relay
from relay.events import now_ms
from tests.conftest import RelayFactory, post_json, signed_headers
from tests.fakes import FakeTarget, poll_until

SECRET = "whsec-hostile"
SEGMENT_KEY = "seg-write-key"
STATSIG_KEY = "client-hostile"
JSON_KEY = "json-key"


def config(sink: str) -> str:
    return f"""
sources:
  statsig: {{type: statsig_webhook, path: /webhooks/statsig, signing_secret: {SECRET}}}
  web: {{type: segment, path_prefix: /segment, write_keys: [{SEGMENT_KEY}]}}
  sdk: {{type: statsig_events, path_prefix: /statsig, api_keys: [{STATSIG_KEY}]}}
  app: {{type: json, path: /ingest/app, api_keys: [{JSON_KEY}],
         mapping: {{event_name: type, timestamp: ts}}}}
targets:
  out: {{type: webhook, url: "{sink}/in", linger: 0s}}
routes:
  - {{name: all, from: [statsig, web, sdk, app], to: out}}
"""


@pytest.fixture
async def relay(relay_factory: RelayFactory) -> Relay:
    fake = FakeTarget()
    await fake.start()
    relay = await relay_factory(config(fake.url))
    yield relay
    await fake.close()


async def raw_post(
    relay: Relay, path: str, headers: list[tuple[bytes, bytes]], body: bytes
) -> tuple[int, str]:
    """POST with headers as raw bytes; return the answer's status and its error reason."""
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.public_port)
    try:
        head = [f"POST {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
        head += [name + b": " + value for name, value in headers]
        head.append(b"Content-Length: " + str(len(body)).encode())
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status = int(answer.split(b" ", 2)[1])
    payload = answer.partition(b"\r\n\r\n")[2]
    try:
        reason = str(orjson.loads(payload).get("error", ""))
    except (orjson.JSONDecodeError, AttributeError):
        reason = payload.decode(errors="replace")
    return status, reason


def segment_track() -> bytes:
    return orjson.dumps({"type": "track", "event": "Signed Up", "userId": "u1"})


def statsig_events() -> bytes:
    return orjson.dumps({"events": [{"eventName": "click", "user": {"userID": "u1"}}]})


EXPORT = orjson.dumps([{"eventName": "click", "user": {"userID": "u1"}, "timestamp": 1}])

# (path, credential headers that are valid, body) per source
SOURCES: dict[str, tuple[str, list[tuple[bytes, bytes]], bytes]] = {
    "segment": (
        "/segment/v1/track",
        [(b"Authorization", b"Basic " + base64.b64encode(SEGMENT_KEY.encode() + b":"))],
        segment_track(),
    ),
    "statsig_events": (
        "/statsig/v1/log_event",
        [(b"statsig-api-key", STATSIG_KEY.encode())],
        statsig_events(),
    ),
    "json": (
        "/ingest/app",
        [(b"Authorization", b"Bearer " + JSON_KEY.encode())],
        orjson.dumps({"type": "x"}),
    ),
}

CORRUPT = {
    "gzip": gzip.compress(b'{"a": 1}')[:12] + b"\x00garbage-after-a-valid-header" * 3,
    "x-gzip": b"[]",  # not gzip at all, though it reads as JSON
    "deflate": b"\x78\x9c" + b"not deflate at all",
    "br": b"\xff\xfe\xfd not brotli",
    "zstd": b"\x28\xb5\x2f\xfd garbage",
    "x-unknown": b"{}",
}


@pytest.mark.parametrize("encoding", sorted(CORRUPT))
@pytest.mark.parametrize("source", sorted(SOURCES))
async def test_a_corrupt_compressed_body_is_a_400_naming_the_encoding_never_a_5xx(
    relay: Relay, source: str, encoding: str
) -> None:
    path, creds, _ = SOURCES[source]
    headers = [*creds, (b"Content-Type", b"application/json")]
    headers.append((b"Content-Encoding", encoding.encode()))
    status, reason = await raw_post(relay, path, headers, CORRUPT[encoding])
    if encoding == "x-unknown":
        assert status == 415 and "'x-unknown' is not supported" in reason, reason
    else:
        assert status == 400, (source, encoding, status)
        assert f"could not decode the {encoding} body" in reason


@pytest.mark.parametrize("encoding", sorted(CORRUPT))
async def test_a_compressed_body_to_the_signed_webhook_is_a_415_or_400(
    relay: Relay, encoding: str
) -> None:
    body = CORRUPT[encoding]
    headers = [(k.encode(), v.encode()) for k, v in signed_headers(SECRET, body).items()]
    headers.append((b"Content-Encoding", encoding.encode()))
    status, reason = await raw_post(relay, "/webhooks/statsig", headers, body)
    assert status == 415, reason


async def test_a_truncated_gzip_stream_is_a_400(relay: Relay) -> None:
    path, creds, body = SOURCES["segment"]
    truncated = gzip.compress(body)[: len(gzip.compress(body)) // 2]
    headers = [*creds, (b"Content-Encoding", b"gzip")]
    assert (await raw_post(relay, path, headers, truncated))[0] == 400
    whole = zlib.compress(body)
    deflated = [*creds, (b"Content-Encoding", b"deflate")]
    assert (await raw_post(relay, path, deflated, whole))[0] == 200


async def test_a_zstd_stream_cut_short_is_a_400_that_says_so(relay: Relay) -> None:
    """zstd's decoder returns nothing, not an error, for a stream cut after its header."""
    path, creds, body = SOURCES["statsig_events"]
    headers = [*creds, (b"Content-Encoding", b"zstd")]
    whole = zstd.compress(body)
    assert (await raw_post(relay, path, headers, whole))[0] == 202
    status, reason = await raw_post(relay, path, headers, whole[:6])
    assert status == 400, reason
    assert reason == "the zstd body decoded to nothing: truncated, or not zstd", reason


@pytest.mark.parametrize("source", sorted(SOURCES))
async def test_x_gzip_is_inflated_like_gzip_and_bounded_by_max_body(
    relay: Relay, source: str
) -> None:
    """aiohttp hands an ``x-gzip`` body over undecoded: the relay inflates it itself."""
    path, creds, body = SOURCES[source]
    headers = [*creds, (b"Content-Type", b"application/json"), (b"Content-Encoding", b"x-gzip")]
    status, reason = await raw_post(relay, path, headers, gzip.compress(body))
    assert status in (200, 202), reason
    bomb = gzip.compress(b" " * (relay.config.server.max_body + 10))  # a few KB, inflating past
    status, reason = await raw_post(relay, path, headers, bomb)
    assert status == 413 and "byte limit" in reason, reason
    status, reason = await raw_post(relay, path, headers, gzip.compress(body) + b"trailing")
    assert status == 400 and "could not decode the x-gzip body" in reason, reason


BAD_CREDENTIALS = {
    "segment": [
        (b"Authorization", b"Basic \xe9\xe9\xe9"),
        (b"Authorization", b"Basic " + base64.b64encode(b"\xff\xfe:")),
        (b"Authorization", b"Basic !!!not-base64"),
        (b"Authorization", b"\xff"),
    ],
    "statsig_events": [
        (b"statsig-api-key", b"\xff"),
        (b"statsig-api-key", "clé".encode()),
        (b"STATSIG-API-KEY", b"client-\xe9"),
    ],
    "json": [
        (b"X-API-Key", b"\xff\xfe"),
        (b"Authorization", b"Bearer \xe9"),
        (b"Authorization", b"Basic \xe9"),
    ],
}


@pytest.mark.parametrize(
    ("source", "header"),
    [(s, h) for s, headers in sorted(BAD_CREDENTIALS.items()) for h in headers],
)
async def test_non_ascii_credentials_are_a_401(
    relay: Relay, source: str, header: tuple[bytes, bytes]
) -> None:
    path, _, body = SOURCES[source]
    headers = [header, (b"Content-Type", b"application/json")]
    status, reason = await raw_post(relay, path, headers, body)
    assert status == 401, reason


async def test_a_non_ascii_signature_or_timestamp_is_a_401(relay: Relay) -> None:
    good = signed_headers(SECRET, EXPORT)
    signature = next(k for k in good if "Signature" in k)
    timestamp = next(k for k in good if "Timestamp" in k)

    def headers(**replace: bytes) -> list[tuple[bytes, bytes]]:
        named = {signature: good[signature].encode(), timestamp: good[timestamp].encode()}
        named.update({signature if k == "signature" else timestamp: v for k, v in replace.items()})
        return [(k.encode(), v) for k, v in named.items()]

    for bad in (b"\xff", b"v0=\xe9\xe9", "v0=é".encode()):
        status, _ = await raw_post(relay, "/webhooks/statsig", headers(signature=bad), EXPORT)
        assert status == 401
    for bad in (b"\xff", "١٢٣".encode()):
        status, _ = await raw_post(relay, "/webhooks/statsig", headers(timestamp=bad), EXPORT)
        assert status == 401
    status, _ = await raw_post(relay, "/webhooks/statsig", headers(), EXPORT)
    assert status == 200  # the same request, signed as Statsig signs it, is taken


@pytest.mark.parametrize("bad_type", [["track"], {"t": "track"}, 7, None, True])
async def test_a_segment_message_with_a_wrongly_typed_type_is_rejected_alone(
    relay: Relay, bad_type: object
) -> None:
    batch = {
        "batch": [
            {"type": bad_type, "event": "Bad", "userId": "u1"},
            {"type": "track", "event": "Good", "userId": "u2"},
        ]
    }
    auth = base64.b64encode(SEGMENT_KEY.encode() + b":").decode()
    headers = {"Authorization": f"Basic {auth}", "Content-Type": "application/json"}
    status, answer = await post_json(relay, "/segment/v1/batch", batch, headers)
    assert status == 200, answer
    single = {"type": bad_type, "event": "Ok", "userId": "u1"}
    # On a call's own path the path says what the call is; its body's type is not read.
    status, answer = await post_json(relay, "/segment/v1/track", single, headers)
    assert status == 200, answer


WRONG_FIELDS: list[dict[str, object]] = [
    {"properties": [1]},
    {"properties": "x"},
    {"context": ["x"]},
    {"integrations": "all"},
    {"userId": {"id": "u1"}},
    {"userId": True},
    {"anonymousId": ["a"]},
    {"messageId": {"m": 1}},
    {"type": "identify", "traits": "x"},
    {"type": "group", "groupId": [1]},
    {"type": "alias", "previousId": {"p": 1}},
]


@pytest.mark.parametrize("bad", WRONG_FIELDS, ids=[repr(b) for b in WRONG_FIELDS])
async def test_a_segment_message_with_a_wrongly_typed_field_is_rejected_alone(
    relay_and_sink: tuple[Relay, FakeTarget], bad: dict[str, object]
) -> None:
    """Mapping such a message would silently drop what it carried (properties that are a list
    became no metadata, an object userId no user): it is refused with the field's name."""
    relay, fake = relay_and_sink
    field = next(k for k in bad if k != "type")
    message = {"type": "track", "event": "wrong-field", "userId": "u", **bad}
    batch = {"batch": [message, {"type": "track", "event": "typed-ok", "userId": "u"}]}
    auth = base64.b64encode(SEGMENT_KEY.encode() + b":").decode()
    headers = {"Authorization": f"Basic {auth}"}
    status, answer = await post_json(relay, "/segment/v1/batch", batch, headers)
    assert status == 200 and answer["rejected"] == 1, answer
    assert answer["errors"][0].startswith(f"event 0: {field} must be"), answer
    call = str(message["type"])
    status, answer = await post_json(relay, f"/segment/v1/{call}", message, headers)
    assert status == 400 and field in answer["error"], answer
    await delivered_names(fake, {"typed-ok"})
    assert "wrong-field" not in {e.get("eventName") for e in fake.events()}


# -- one bad event is rejected alone, never a 5xx for the request ---------------------------------
def deep(levels: int) -> bytes:
    """A JSON value nested ``levels`` deep: more than the encoder writes, less than the parser
    reads."""
    return b'{"a":' * levels + b"1" + b"}" * levels


def good_event(name: str) -> dict[str, object]:
    return {"eventName": name, "user": {"userID": "u1"}, "timestamp": now_ms()}


async def delivered_names(fake: FakeTarget, names: set[str]) -> None:
    await poll_until(lambda: names <= {e.get("eventName") for e in fake.events()}, timeout=10)


@pytest.fixture
async def relay_and_sink(relay_factory: RelayFactory) -> AsyncIterator[tuple[Relay, FakeTarget]]:
    fake = FakeTarget()
    await fake.start()
    relay = await relay_factory(config(fake.url))
    yield relay, fake
    await fake.close()


async def test_an_event_nested_deeper_than_the_encoder_writes_is_rejected_alone(
    relay_and_sink: tuple[Relay, FakeTarget],
) -> None:
    relay, fake = relay_and_sink
    now = now_ms()
    bad = b'{"eventName":"deep","timestamp":%d,"metadata":%s}' % (now, deep(300))
    body = b"[" + bad + b"," + orjson.dumps(good_event("webhook-ok")) + b"]"
    status, answer = await post_json(relay, "/webhooks/statsig", body, signed_headers(SECRET, body))
    assert status == 200, answer
    assert (answer["accepted"], answer["rejected"]) == (1, 1), answer

    message = b'{"type":"track","event":"deep","userId":"u","properties":%s}' % deep(300)
    batch = b'{"batch":[%s,{"type":"track","event":"segment-ok","userId":"u"}]}' % message
    auth = base64.b64encode(SEGMENT_KEY.encode() + b":").decode()
    status, answer = await post_json(
        relay, "/segment/v1/batch", batch, {"Authorization": f"Basic {auth}"}
    )
    assert status == 200, answer

    items = b'[{"type":%s},{"type":"json-ok"}]' % deep(300)
    status, answer = await post_json(
        relay, "/ingest/app", items, {"Authorization": f"Bearer {JSON_KEY}"}
    )
    assert status == 200, answer
    sdk = b'{"events":[{"eventName":"deep","metadata":%s},{"eventName":"sdk-ok"}]}' % deep(300)
    status, answer = await post_json(
        relay, "/statsig/v1/log_event", sdk, {"statsig-api-key": STATSIG_KEY}
    )
    assert status < 500, answer
    await delivered_names(fake, {"webhook-ok", "json-ok", "sdk-ok"})
    names = {e.get("eventName") for e in fake.events()}
    assert "deep" not in names
    assert any(str(n).lower().startswith("segment") for n in names), names


BAD_TIMES: list[object] = [1e25, -1.0, 10**18 * 9, "1e25", "9999-12-31T23:59:59Z", 1e-3]


@pytest.mark.parametrize("stamp", BAD_TIMES, ids=[repr(s) for s in BAD_TIMES])
async def test_a_timestamp_outside_2000_to_2100_is_rejected_alone_on_every_source(
    relay_and_sink: tuple[Relay, FakeTarget], stamp: object
) -> None:
    relay, fake = relay_and_sink
    body = orjson.dumps([{**good_event("bad-time"), "timestamp": stamp}, good_event("w-ok")])
    status, answer = await post_json(relay, "/webhooks/statsig", body, signed_headers(SECRET, body))
    assert status == 200 and answer["rejected"] == 1, answer
    assert "timestamp" in answer["errors"][0]

    events = {"events": [{"eventName": "bad-time", "time": stamp}, {"eventName": "e-ok"}]}
    status, answer = await post_json(
        relay, "/statsig/v1/log_event", events, {"statsig-api-key": STATSIG_KEY}
    )
    assert status < 500, answer

    auth = base64.b64encode(SEGMENT_KEY.encode() + b":").decode()
    segment = {
        "batch": [
            {"type": "track", "event": "bad-time", "userId": "u", "timestamp": stamp},
            {"type": "track", "event": "bad-time", "userId": "u", "originalTimestamp": stamp},
            {"type": "track", "event": "s-ok", "userId": "u", "sentAt": stamp},
        ]
    }
    status, answer = await post_json(
        relay, "/segment/v1/batch", segment, {"Authorization": f"Basic {auth}"}
    )
    assert status == 200, answer

    app = [{"type": "bad-time", "ts": stamp}, {"type": "j-ok"}]
    status, answer = await post_json(
        relay, "/ingest/app", app, {"Authorization": f"Bearer {JSON_KEY}"}
    )
    assert status < 500, answer
    await delivered_names(fake, {"w-ok", "e-ok", "j-ok"})
    assert "bad-time" not in {e.get("eventName") for e in fake.events()}


async def test_a_truncated_gz_query_body_is_a_400_naming_gzip(relay: Relay) -> None:
    """@statsig/js-client's ``gz=1`` flag (gzip without Content-Encoding): a stream that stops
    early was inflated to what zlib had and answered as empty or malformed JSON."""
    path = f"/statsig/v1/rgstr?k={STATSIG_KEY}&gz=1"
    whole = gzip.compress(statsig_events())
    for cut in (whole[:10], whole[: len(whole) // 2], whole[:-4]):
        status, reason = await raw_post(relay, path, [], cut)
        assert (status, reason) == (400, "gz=1 but the gzip stream is truncated"), cut
    assert (await raw_post(relay, path, [], whole))[0] == 202
