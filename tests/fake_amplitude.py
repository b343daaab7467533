"""A fake Amplitude HTTP V2 API: a real aiohttp server that enforces what Amplitude documents.

    async with FakeAmplitude() as amp:          # api_key "amp-key-…" by default
        ...  # a target with base_url: amp.url
        await amp.wait_for(lambda: len(amp.accepted) == 3)
        assert amp.insert_ids() == [...]        # each accepted event once

It checks the key (400 ``Invalid API key``), the request limits (413 beyond 2000 events or at
1 MB and more), and each event: ``event_type``; ``user_id`` or ``device_id`` at least
``options.min_id_length`` (default 5) long and not a placeholder such as "anonymous" or "null";
``time`` an integer of milliseconds. A request with a bad event is refused as a whole with the
documented 400 body (``code``, ``error``, ``events_with_invalid_fields`` /
``events_with_missing_fields``: field → indexes, ``silenced_events``), so nothing of it is
ingested. ``silence(device_id)`` makes a device's events come back in ``silenced_events``.
Accepted events are appended to ``accepted`` in arrival order, duplicates included, so a test
can assert exactly-once delivery. Answers given to ``script()`` (429, 500, …) override the
checks for the next requests, as for every FakeTarget.
"""

from __future__ import annotations

from typing import Any

from tests.fakes import Answer, FakeTarget, RecordedRequest

API_KEY = "amp-key-0123456789abcdef"
PATH = "/2/httpapi"
MAX_EVENTS = 2000
MAX_BYTES = 1_000_000
PLACEHOLDER_IDS = frozenset(
    {
        "anonymous",
        "nil",
        "none",
        "null",
        "n/a",
        "na",
        "undefined",
        "unknown",
        "0",
        "-1",
        "{}",
        "[]",
        "00000000-0000-0000-0000-000000000000",
    }
)


def too_large() -> Answer:
    return Answer(413, json={"code": 413, "error": "Payload too large"})


class FakeAmplitude(FakeTarget):
    """Amplitude's HTTP V2 endpoint; see the module docstring."""

    def __init__(self, api_key: str = API_KEY, **kwargs: Any) -> None:
        super().__init__(default=self._answer, **kwargs)
        self.api_key = api_key
        self.accepted: list[dict[str, Any]] = []
        self.silenced: set[str] = set()

    def silence(self, *device_ids: str) -> None:
        self.silenced.update(device_ids)

    def insert_ids(self) -> list[str]:
        return [e.get("insert_id") for e in self.accepted]

    def _answer(self, req: RecordedRequest) -> Answer:
        if req.method != "POST" or req.path != PATH:
            return Answer(404, json={"code": 404, "error": "Not found"})
        if not req.headers.get("Content-Type", "").startswith("application/json"):
            return _bad("Invalid content type")
        body = req.json
        if not isinstance(body, dict):
            return _bad("Invalid JSON request body")
        if not body.get("api_key"):
            return Answer(
                400,
                json={
                    "code": 400,
                    "error": "Request missing required field",
                    "missing_field": "api_key",
                },
            )
        if body["api_key"] != self.api_key:
            # Amplitude quotes the key it was given: the relay must not log it.
            return _bad(f"Invalid API key: {body['api_key']}")
        events = body.get("events")
        if not isinstance(events, list) or not events:
            return Answer(
                400,
                json={
                    "code": 400,
                    "error": "Request missing required field",
                    "missing_field": "events",
                },
            )
        if len(events) > MAX_EVENTS or len(req.body) >= MAX_BYTES:
            return too_large()
        options = body.get("options") or {}
        min_id = options.get("min_id_length", 5) if isinstance(options, dict) else 5
        invalid: dict[str, list[int]] = {}
        missing: dict[str, list[int]] = {}
        silenced: list[int] = []
        for i, event in enumerate(events):
            problem = _problem(event, min_id)
            if problem is not None:
                kind, field = problem
                (invalid if kind == "invalid" else missing).setdefault(field, []).append(i)
            elif event.get("device_id") in self.silenced:
                silenced.append(i)
        if invalid or missing or silenced:
            answer: dict[str, Any] = {"code": 400, "error": "Request contains invalid events"}
            if invalid:
                answer["events_with_invalid_fields"] = invalid
            if missing:
                answer["events_with_missing_fields"] = missing
            if silenced:
                answer["silenced_events"] = silenced
                answer["silenced_devices"] = sorted({events[i]["device_id"] for i in silenced})
            return Answer(400, json=answer)
        self.accepted.extend(events)
        return Answer(
            200,
            json={
                "code": 200,
                "events_ingested": len(events),
                "payload_size_bytes": len(req.body),
                "server_upload_time": 1_700_000_000_000,
            },
        )


def _bad(error: str) -> Answer:
    return Answer(400, json={"code": 400, "error": error})


def _problem(event: Any, min_id: int) -> tuple[str, str] | None:
    """("invalid" | "missing", field) for the first thing wrong with one event, or None."""
    if not isinstance(event, dict):
        return "invalid", "event"
    name = event.get("event_type")
    if not isinstance(name, str) or not name:
        return "missing", "event_type"
    ids = [event.get(k) for k in ("user_id", "device_id")]
    for key, value in zip(("user_id", "device_id"), ids, strict=True):
        if value is None:
            continue
        if not isinstance(value, str) or len(value) > 1024:
            return "invalid", key
        if value.strip().lower() in PLACEHOLDER_IDS:
            return "invalid", key
    usable = [v for v in ids if isinstance(v, str) and len(v) >= min_id]
    if not usable:
        return "missing", "user_id"
    when = event.get("time")
    if when is not None and (type(when) is not int or when < 10**11):
        return "invalid", "time"
    for key in ("event_properties", "user_properties"):
        props = event.get(key)
        if props is not None and not isinstance(props, dict):
            return "invalid", key
        if props and _too_long(props):
            return "invalid", key
    return None


def _too_long(value: Any, depth: int = 1) -> bool:
    """A string over 1024 characters, or nesting over 40 levels."""
    if depth > 40:
        return True
    if isinstance(value, str):
        return len(value) > 1024
    if isinstance(value, dict):
        return any(_too_long(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return any(_too_long(v, depth + 1) for v in value)
    return False
