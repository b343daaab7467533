"""Fake HTTP targets for tests: real aiohttp servers on 127.0.0.1, never mock objects.

A target under test talks real HTTP to a ``FakeTarget``, so encoding, gzip, headers, timeouts
and retry classification are exercised exactly as in production. The fake records what it
received and answers from a script, so a test reads like the story it proves::

    async with FakeTarget() as fake:
        fake.script(Answer(429, headers={"Retry-After": "1"}), 500, 200)
        ...  # point the relay at fake.url
        await fake.wait_for_requests(3)
        assert fake.failures == []
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import inspect
import time
import zlib
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
)
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDictProxy

__all__ = [
    "Answer",
    "AnswerLike",
    "Check",
    "FakeTarget",
    "FakeTargetFactory",
    "RecordedRequest",
    "fake_targets_fixture",
    "poll_until",
]


@dataclass(slots=True)
class RecordedRequest:
    """One request as the fake saw it; ``body`` is gunzipped when the sender gzipped it."""

    method: str
    path: str
    query: MultiDictProxy[str]
    headers: CIMultiDictProxy[str]
    raw: bytes
    body: bytes
    json: Any = None
    """Parsed body (orjson), or None when the body is not JSON (see ``is_json``)."""
    is_json: bool = False
    status: int | None = None
    """Status the fake answered with, set once the answer is chosen."""
    check_error: str | None = None
    received_at: float = 0.0
    """``time.monotonic()`` when the request arrived, to check the gaps between retries."""
    streamed: int = 0
    """Bytes of a streamed answer (``Answer.stream``) written before it ended or the client
    hung up."""

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def events(self) -> list[dict[str, Any]]:
        """The event objects in this body: a bare list, or the list under "events" or "data"."""
        return _events_of(self.json)

    def summary(self) -> str:
        return f"{self.method} {self.path} -> {self.status} ({len(self.body)} B)"


@dataclass(slots=True)
class Answer:
    """What the fake replies. ``body`` (raw bytes) wins over ``json``; ``delay`` simulates a slow
    target, and a delay longer than the test (e.g. ``float("inf")``) simulates a hang; pending
    delays end when the fake closes so teardown never waits for them. ``stream`` (wins over
    both) is written chunk by chunk, without a length, until it ends or the client hangs up: a
    long one is an answer too large or endless to be read whole, an async one that waits is an
    answer that stops arriving."""

    status: int = 200
    headers: Mapping[str, str] | None = None
    json: Any = field(default_factory=dict)
    body: bytes | None = None
    delay: float = 0.0
    stream: Iterable[bytes] | AsyncIterable[bytes] | None = None


Check: TypeAlias = Callable[[RecordedRequest], "Awaitable[None] | None"]
AnswerLike: TypeAlias = (
    "int | Answer | Callable[[RecordedRequest], AnswerLike | Awaitable[AnswerLike]]"
)
"""A status code, an ``Answer``, or a (sync or async) callable choosing one per request."""


def _events_of(doc: Any) -> list[dict[str, Any]]:
    if isinstance(doc, dict):
        for key in ("events", "data"):
            if isinstance(doc.get(key), list):
                doc = doc[key]
                break
    if isinstance(doc, list):
        return [item for item in doc if isinstance(item, dict)]
    return []


async def poll_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str | Callable[[], str] = "",
) -> None:
    """Wait until ``predicate()`` is truthy, or fail with AssertionError after ``timeout`` s.

    Tests wait for work this way, never with a fixed sleep: fast when the work is fast, and a
    clear failure instead of a flaky pass when it is not. ``message`` (or a callable building it
    at timeout, to show the state then) is added to the failure.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        remaining = deadline - loop.time()
        if remaining <= 0:
            detail = message() if callable(message) else message
            name = getattr(predicate, "__qualname__", repr(predicate))
            raise AssertionError(
                f"condition {name} still false after {timeout:g}s"
                + (f": {detail}" if detail else "")
            )
        await asyncio.sleep(min(interval, remaining))


class FakeTarget:
    """A real HTTP server on 127.0.0.1 that records requests and answers from a script.

    Answers given to ``script()`` are consumed one per request, in order; after them every
    request gets ``default`` (200 ``{}``). ``check`` validates each request's shape: when it
    raises AssertionError the fake answers 400 with the message, does not consume a scripted
    answer, and appends the message to ``failures`` so a test can assert there were none. Bodies
    that claim gzip but do not gunzip are failures too. Any path and method are accepted.
    """

    def __init__(
        self,
        *answers: AnswerLike,
        default: AnswerLike = 200,
        check: Check | None = None,
        client_max_size: int = 64 * 1024 * 1024,
        port: int = 0,
    ) -> None:
        self.requests: list[RecordedRequest] = []
        self.failures: list[str] = []
        self.default: AnswerLike = default
        self.check: Check | None = check
        self._script: list[AnswerLike] = list(answers)
        self._client_max_size = client_max_size
        self._runner: web.AppRunner | None = None
        self._closing: asyncio.Event | None = None
        self._port: int | None = None
        self._want_port = port  # 0: any free port

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> FakeTarget:
        if self._runner is not None:
            return self
        self._closing = asyncio.Event()
        app = web.Application(client_max_size=self._client_max_size)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # auto_decompress=False: keep the bytes exactly as sent, so tests can check the gzip.
        runner = web.AppRunner(app, access_log=None, auto_decompress=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self._want_port)
        await site.start()
        self._runner = runner
        self._port = runner.addresses[0][1]
        return self

    async def close(self) -> None:
        if self._runner is None:
            return
        assert self._closing is not None
        self._closing.set()  # release delayed answers so cleanup does not wait for them
        runner, self._runner = self._runner, None
        await runner.cleanup()

    async def __aenter__(self) -> FakeTarget:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeTarget is not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- script ----------------------------------------------------------------------------

    def script(self, *answers: AnswerLike) -> FakeTarget:
        """Append answers for the next requests (after any still pending); returns self."""
        self._script.extend(answers)
        return self

    @property
    def pending_answers(self) -> int:
        return len(self._script)

    # -- inspection ------------------------------------------------------------------------

    def events(self) -> list[dict[str, Any]]:
        """Every event received, in arrival order, flattened across all request bodies."""
        return [event for req in self.requests for event in req.events()]

    async def wait_for_requests(self, n: int, timeout: float = 10.0) -> list[RecordedRequest]:
        """Wait until at least ``n`` requests arrived; returns all recorded requests."""
        await poll_until(
            lambda: len(self.requests) >= n,
            timeout,
            message=lambda: f"{self.url} got {len(self.requests)}/{n} requests{self._tail()}",
        )
        return self.requests

    async def wait_for(
        self, predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0
    ) -> None:
        """``poll_until`` with this fake's recent requests in the failure message."""
        await poll_until(
            predicate,
            timeout,
            message=lambda: f"{self.url} got {len(self.requests)} requests{self._tail()}",
        )

    def _tail(self, n: int = 5) -> str:
        lines = [req.summary() for req in self.requests[-n:]]
        lines += [f"check failed: {msg}" for msg in self.failures[-n:]]
        return "".join(f"\n  {line}" for line in lines)

    # -- serving ---------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body, gzip_error = raw, None
        if request.headers.get("Content-Encoding", "").strip().lower() == "gzip":
            try:
                body = gzip.decompress(raw)
            except (OSError, EOFError, zlib.error) as exc:
                gzip_error = f"body is not valid gzip: {exc}"
        parsed, is_json = None, False
        if body:
            with contextlib.suppress(orjson.JSONDecodeError):
                parsed, is_json = orjson.loads(body), True
        rec = RecordedRequest(
            method=request.method,
            path=request.path,
            query=request.query,
            headers=CIMultiDictProxy(CIMultiDict(request.headers)),
            raw=raw,
            body=body,
            json=parsed,
            is_json=is_json,
            received_at=time.monotonic(),
        )
        self.requests.append(rec)

        error = gzip_error or await self._run_check(rec)
        if error is not None:
            rec.check_error = error
            self.failures.append(f"{rec.method} {rec.path}: {error}")
            answer = Answer(400, json={"error": error})
        else:
            answer = await self._resolve(self._script.pop(0) if self._script else self.default, rec)
        rec.status = answer.status

        if answer.delay > 0:
            assert self._closing is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), answer.delay)
        if answer.stream is not None:
            return await _stream(request, answer, answer.stream, rec)
        return _response(answer)

    async def _run_check(self, rec: RecordedRequest) -> str | None:
        if self.check is None:
            return None
        try:
            result = self.check(rec)
            if inspect.isawaitable(result):
                await result
        except AssertionError as exc:
            return str(exc) or "check failed"
        except Exception as exc:  # a broken check is a test bug: surface it, don't hide it
            return f"check raised {exc!r}"
        return None

    async def _resolve(self, answer: AnswerLike, rec: RecordedRequest) -> Answer:
        for _ in range(10):
            if isinstance(answer, Answer):
                return answer
            if isinstance(answer, int):
                return Answer(answer)
            if callable(answer):
                answer = answer(rec)
                if inspect.isawaitable(answer):
                    answer = await answer
                continue
            break
        raise TypeError(f"not an answer: {answer!r}")


def _response(answer: Answer) -> web.Response:
    headers = dict(answer.headers or {})
    if answer.status < 200 or answer.status in (204, 304):
        return web.Response(status=answer.status, headers=headers)
    if answer.body is not None:
        return web.Response(status=answer.status, headers=headers, body=answer.body)
    headers.setdefault("Content-Type", "application/json")
    return web.Response(status=answer.status, headers=headers, body=orjson.dumps(answer.json))


async def _stream(
    request: web.Request,
    answer: Answer,
    chunks: Iterable[bytes] | AsyncIterable[bytes],
    rec: RecordedRequest,
) -> web.StreamResponse:
    response = web.StreamResponse(status=answer.status, headers=answer.headers)
    await response.prepare(request)
    with contextlib.suppress(ConnectionError):  # the client hung up: what it read is counted
        async for chunk in _each(chunks):
            await response.write(chunk)
            rec.streamed += len(chunk)
        await response.write_eof()
    return response


async def _each(chunks: Iterable[bytes] | AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    if isinstance(chunks, AsyncIterable):
        async for chunk in chunks:
            yield chunk
    else:
        for chunk in chunks:
            yield chunk


FakeTargetFactory: TypeAlias = Callable[..., Awaitable[FakeTarget]]
"""``await make(*answers, default=..., check=...)``: a started FakeTarget."""


@pytest.fixture(name="fake_targets")
async def fake_targets_fixture() -> AsyncIterator[FakeTargetFactory]:
    """Factory fixture ``fake_targets``: ``fake = await fake_targets(200, check=...)``; every
    fake it made is closed at teardown.

    Pytest finds it wherever it is imported: ``from tests.fakes import fake_targets_fixture``
    in a test module or conftest.py (or ``pytest_plugins = ["tests.fakes"]`` in the root
    conftest). Or skip it and use ``async with FakeTarget() as fake``.
    """
    made: list[FakeTarget] = []

    async def make(*answers: AnswerLike, **kwargs: Any) -> FakeTarget:
        fake = await FakeTarget(*answers, **kwargs).start()
        made.append(fake)
        return fake

    yield make
    for fake in made:
        await fake.close()
