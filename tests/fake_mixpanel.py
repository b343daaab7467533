"""A fake Mixpanel ``/import`` endpoint: a real aiohttp server enforcing what Mixpanel documents.

    async with FakeMixpanel() as mp:            # project token "mp-token-…" by default
        ...  # a target with base_url: mp.url
        await mp.wait_for(lambda: len(mp.accepted) == 3)

It checks HTTP Basic auth with the project token and an empty password (401 otherwise),
``strict=1``, the limits (413 beyond 2000 events or 2 MB uncompressed, with Mixpanel's body),
and in strict mode each record: ``event``; ``properties.time`` in seconds or ms, not before
1971 nor more than an hour ahead; ``properties.distinct_id`` a string ("" allowed) that is not
a placeholder such as "null" or "anon"; ``properties.$insert_id`` at most 36 letters, digits or
"-". Valid records are imported even when others fail, and the answer is the documented strict
400: ``code``, ``error``, ``status``, ``num_records_imported`` and ``failed_records``
(``index``, ``$insert_id``, ``field``, ``message``). Imported records are appended to
``accepted`` in arrival order, duplicates included, so a test can assert exactly-once delivery.
Answers given to ``script()`` (429, 503, …) override the checks for the next requests.
"""

from __future__ import annotations

import base64
import re
import time
from typing import Any

from tests.fakes import Answer, FakeTarget, RecordedRequest

TOKEN = "mp-token-0123456789abcdef"
PATH = "/import"
MAX_EVENTS = 2000
MAX_BYTES = 2_000_000
MIN_TIME_S = 31_536_000  # 1971-01-01
PLACEHOLDER_IDS = frozenset(
    {
        "anon",
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
        "true",
        "false",
        "[]",
        "{}",
        "00000000-0000-0000-0000-000000000000",
        "<nil>",
        "lmy47d",
    }
)
_INSERT_ID = re.compile(r"^[A-Za-z0-9-]{1,36}$")


class FakeMixpanel(FakeTarget):
    """Mixpanel's ``/import``; see the module docstring."""

    def __init__(self, token: str = TOKEN, **kwargs: Any) -> None:
        super().__init__(default=self._answer, **kwargs)
        self.token = token
        self.accepted: list[dict[str, Any]] = []

    def insert_ids(self) -> list[str]:
        return [e["properties"]["$insert_id"] for e in self.accepted]

    def _answer(self, req: RecordedRequest) -> Answer:
        if req.method != "POST" or req.path != PATH:
            return Answer(404, json={"error": "not found", "status": 0})
        if (
            req.headers.get("Authorization")
            != "Basic " + base64.b64encode(f"{self.token}:".encode()).decode()
        ):
            return Answer(
                401, json={"code": 401, "error": "Invalid credentials", "status": "Unauthorized"}
            )
        if req.query.get("strict") != "1":
            return _error(400, "the relay must import in strict mode (strict=1)")
        if len(req.body) > MAX_BYTES:
            return _error(413, "request body too large; limit is 2MB uncompressed")
        records = req.json
        if not isinstance(records, list):
            return _error(400, "body must be a JSON array of events")
        if len(records) > MAX_EVENTS:
            return _error(413, "too many events in the request; limit is 2000")
        failed: list[dict[str, Any]] = []
        imported: list[dict[str, Any]] = []
        now_s = time.time()
        for index, record in enumerate(records):
            problem = _problem(record, now_s)
            if problem is None:
                imported.append(record)
                continue
            field, message = problem
            props = record.get("properties") if isinstance(record, dict) else None
            failed.append(
                {
                    "index": index,
                    "$insert_id": (props or {}).get("$insert_id", ""),
                    "field": field,
                    "message": message,
                }
            )
        self.accepted.extend(imported)
        if failed:
            return Answer(
                400,
                json={
                    "code": 400,
                    "error": "some data points in the request failed validation",
                    "status": "Bad Request",
                    "num_records_imported": len(imported),
                    "failed_records": failed,
                },
            )
        return Answer(
            200, json={"code": 200, "num_records_imported": len(imported), "status": "OK"}
        )


def _error(status: int, error: str) -> Answer:
    names = {400: "Bad Request", 413: "Payload Too Large"}
    return Answer(status, json={"code": status, "error": error, "status": names.get(status, "")})


def _problem(record: Any, now_s: float) -> tuple[str, str] | None:
    """(field, message) for the first thing strict mode refuses in one record, or None."""
    if not isinstance(record, dict):
        return "event", "record must be an object"
    if not isinstance(record.get("event"), str) or not record["event"]:
        return "event", "'event' must be a non-empty string"
    props = record.get("properties")
    if not isinstance(props, dict):
        return "properties", "'properties' must be an object"
    when = props.get("time")
    if isinstance(when, bool) or not isinstance(when, int | float):
        return "properties.time", "'properties.time' is missing or not a number"
    seconds = when / 1000 if when > 10**11 else when
    if seconds < MIN_TIME_S or seconds > now_s + 3600:
        return "properties.time", "'properties.time' is before 1971 or more than 1h in the future"
    distinct = props.get("distinct_id")
    if not isinstance(distinct, str):
        return "properties.distinct_id", "'properties.distinct_id' must be a string"
    if distinct.strip().lower() in PLACEHOLDER_IDS:
        return "properties.distinct_id", f"'properties.distinct_id' is an invalid value: {distinct}"
    insert_id = props.get("$insert_id")
    if not isinstance(insert_id, str) or not _INSERT_ID.match(insert_id):
        return "properties.$insert_id", "'properties.$insert_id' must be 1-36 alphanumeric or -"
    if len(props) >= 255:
        return "properties", "too many properties (limit 255)"
    if _too_deep(props):
        return "properties", "nested deeper than 3 levels or a list of 255 or more items"
    return None


def _too_deep(value: Any, depth: int = 0) -> bool:
    if isinstance(value, dict):
        return depth > 3 or any(_too_deep(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return len(value) >= 255 or depth > 3 or any(_too_deep(v, depth + 1) for v in value)
    return False
