"""A fake Segment (or RudderStack) tracking API: a real aiohttp server on 127.0.0.1.

It enforces what Segment documents for ``POST /v1/batch`` (see relay/targets/segment.py):

* HTTP Basic auth with the write key as user and an empty password; a wrong or missing key is
  answered ``invalid_key_status`` (401 by default; 400 is what older RudderStack releases say).
* A JSON body ``{"batch": [...]}`` of at most ``max_request_bytes`` (500 KB), every message at
  most ``max_message_bytes`` (32 KB) once serialised: Segment answers 400 "Exceed payload
  limit"; RudderStack answers 413 "Request size exceeds max limit" for the request size.
* Required fields: ``type``, ``userId`` or ``anonymousId``, ``messageId``, and ``event`` for a
  ``track``. Segment answers 200 and drops such a message unseen (as it does for messages past
  2500 in one batch): the fake keeps those in ``dropped``. RudderStack answers 400 "Request
  neither has anonymousId nor userId".

Segment documents the statuses and the "Exceed payload limit" message, not the body's form
nor its answer to a wrong key: the fake answers JSON ``{"success": false, "message": …}``, and
the relay reads statuses and phrases only. RudderStack's answers are its plain-text messages
(rudder-server ``gateway/response/response.go``).

Anything the relay should never send (a message over the limits, a missing field, a batch over
2500 messages, bad JSON) is also noted in ``failures``, so tests assert ``failures == []``.
Messages of requests answered 2xx are in ``accepted``. Scripted answers (``script()``) are
given before the enforcement, as with every FakeTarget.

    async with FakeSegment("wk") as segment:
        segment.script(Answer(429, headers={"Retry-After": "1"}))
        ...  # base_url: segment.url, write_key: wk
        await segment.wait_for(lambda: len(segment.accepted) == 5)
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

import orjson

from tests.fakes import Answer, AnswerLike, FakeTarget, RecordedRequest

BATCH_PATH = "/v1/batch"


class FakeSegment(FakeTarget):
    """Segment's (or RudderStack's) ``/v1/batch``; ``write_key`` is the one key it accepts."""

    def __init__(
        self,
        write_key: str = "wk-test",
        *answers: AnswerLike,
        flavor: Literal["segment", "rudderstack"] = "segment",
        invalid_key_status: int = 401,
        max_request_bytes: int = 500_000,
        max_messages: int = 2500,
        max_message_bytes: int = 32_000,
    ) -> None:
        super().__init__(*answers, default=self._enforce)
        self.write_key = write_key
        self.flavor = flavor
        self.invalid_key_status = invalid_key_status
        self.max_request_bytes = max_request_bytes
        self.max_messages = max_messages
        self.max_message_bytes = max_message_bytes
        self.accepted: list[dict[str, Any]] = []
        self.dropped: list[tuple[str, dict[str, Any]]] = []
        self.refused_keys = 0

    # -- inspection ------------------------------------------------------------------------
    def message_ids(self) -> list[str]:
        return [m["messageId"] for m in self.accepted]

    def events(self) -> list[dict[str, Any]]:
        """Every message received in a batch, answered or not, in arrival order."""
        return [
            m
            for req in self.requests
            if isinstance(req.json, dict) and isinstance(req.json.get("batch"), list)
            for m in req.json["batch"]
            if isinstance(m, dict)
        ]

    # -- answers ---------------------------------------------------------------------------
    def _error(self, status: int, message: str) -> Answer:
        if self.flavor == "rudderstack":
            return Answer(
                status, body=f"{message}\n".encode(), headers={"Content-Type": "text/plain"}
            )
        return Answer(status, json={"success": False, "message": message})

    def _ok(self) -> Answer:
        if self.flavor == "rudderstack":
            return Answer(200, body=b"OK", headers={"Content-Type": "text/plain"})
        return Answer(200, json={"success": True})

    def _key_of(self, rec: RecordedRequest) -> str | None:
        header = rec.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, sep, password = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return user if sep and password == "" else None

    def _enforce(self, rec: RecordedRequest) -> Answer:
        if rec.method != "POST" or rec.path != BATCH_PATH:
            self.failures.append(f"{rec.method} {rec.path}: not POST {BATCH_PATH}")
            return Answer(404, body=b"404 page not found\n", headers={"Content-Type": "text/plain"})
        if self._key_of(rec) != self.write_key:
            self.refused_keys += 1
            if self.flavor == "rudderstack" or self.invalid_key_status == 400:
                return self._error(self.invalid_key_status, "Invalid Write Key")
            return self._error(self.invalid_key_status, "Invalid write key")
        if not rec.headers.get("Content-Type", "").startswith("application/json"):
            self.failures.append("Content-Type is not application/json")
            return self._error(400, "Invalid JSON")
        if len(rec.body) > self.max_request_bytes:
            self.failures.append(f"request of {len(rec.body)} bytes")
            if self.flavor == "rudderstack":
                return self._error(413, "Request size exceeds max limit")
            return self._error(400, "Exceed payload limit")
        doc = rec.json
        if not rec.is_json or not isinstance(doc, dict) or not isinstance(doc.get("batch"), list):
            self.failures.append('body is not {"batch": [...]}')
            return self._error(400, "Invalid JSON")
        batch = doc["batch"]
        for message in batch:
            size = len(orjson.dumps(message))
            if size > self.max_message_bytes:
                self.failures.append(f"a message of {size} bytes")
                if self.flavor == "rudderstack":
                    return self._error(413, "Request size exceeds max limit")
                return self._error(400, "Exceed payload limit")
        if self.flavor == "rudderstack" and len(batch) > self.max_messages:
            self.failures.append(f"{len(batch)} messages in one batch")
            return self._error(413, "Request size exceeds max limit")
        taken: list[dict[str, Any]] = []
        for position, message in enumerate(batch):
            why = self._invalid(message) or (
                f"past {self.max_messages} messages" if position >= self.max_messages else None
            )
            if why is None:
                taken.append(message)
                continue
            self.failures.append(f"message {position}: {why}")
            if self.flavor == "rudderstack":
                return self._error(400, "Request neither has anonymousId nor userId")
            self.dropped.append((why, message))  # Segment: 200, dropped unseen
        self.accepted.extend(taken)
        return self._ok()

    @staticmethod
    def _invalid(message: Any) -> str | None:
        if not isinstance(message, dict):
            return "not an object"
        kind = message.get("type")
        if kind not in ("track", "identify", "page", "screen", "group", "alias"):
            return f"bad type {kind!r}"
        if not any(
            isinstance(message.get(k), str) and message[k] for k in ("userId", "anonymousId")
        ):
            return "no_user_anon_id"
        if not isinstance(message.get("messageId"), str) or not message["messageId"]:
            return "no messageId"
        if kind == "track" and not (isinstance(message.get("event"), str) and message["event"]):
            return "track without event"
        return None
