"""Fake Datadog, Slack and Grafana endpoints for the config-change targets.

Each is a real aiohttp server on 127.0.0.1 (tests/fakes.FakeTarget) that enforces what the
vendor documents (relay/targets/datadog.py, slack.py, grafana.py name the sources): its auth,
required fields and size limits, answering a request that breaks them with the vendor's own
error status and body. A broken request is also recorded in ``failures`` so a test can assert
there were none. A refused credential is never a failure: it is the vendor's answer. Scripted
answers (``script(...)``) apply only to requests that pass auth and the checks.

    async with FakeDatadog("dd-key") as datadog:
        datadog.script(datadog.rate_limited(reset=1))
        ...
        assert [e["data"]["attributes"]["title"] for e in datadog.accepted()] == [...]
"""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

from tests.fakes import Answer, AnswerLike, FakeTarget, RecordedRequest

__all__ = ["FakeDatadog", "FakeGrafana", "FakeSlack"]


class _VendorFake(FakeTarget):
    """Auth, then the shape, then the script: the order a real service answers in."""

    def __init__(self, *answers: AnswerLike, default: AnswerLike) -> None:
        super().__init__(*answers, default=default)
        self.refused = 0  # requests refused for their credential

    def accepted(self) -> list[Any]:
        """Bodies of the requests answered 2xx, in arrival order."""
        return [
            req.json if req.is_json else req.text
            for req in self.requests
            if req.status is not None and 200 <= req.status < 300
        ]

    def refuse(self, rec: RecordedRequest) -> Answer | None:
        """The answer to a request whose credential is not taken, else None."""
        return None

    def problem(self, rec: RecordedRequest) -> str | None:
        """What is wrong with the request's shape, else None."""
        return None

    def invalid(self, problem: str) -> Answer:
        raise NotImplementedError

    async def _resolve(self, answer: AnswerLike, rec: RecordedRequest) -> Answer:
        refused = self.refuse(rec)
        problem = None if refused else self.problem(rec)
        if refused is None and problem is None:
            return await super()._resolve(answer, rec)
        if answer is not self.default:  # a scripted answer is for a request we take
            self._script.insert(0, answer)
        if refused is not None:
            self.refused += 1
            return refused
        assert problem is not None
        rec.check_error = problem
        self.failures.append(f"{rec.method} {rec.path}: {problem}")
        return self.invalid(problem)


def _text_ok(value: Any, limit: int, empty: bool = False) -> bool:
    return isinstance(value, str) and (empty or value != "") and len(value) <= limit


# -- Datadog -------------------------------------------------------------------------------

DD_PATH = "/api/v2/events"
DD_TOP = {"title", "category", "attributes", "message", "tags", "timestamp", "aggregation_key",
          "integration_id", "host"}  # fmt: skip
DD_CHANGE = {"changed_resource", "author", "prev_value", "new_value", "impacted_resources",
             "change_metadata"}  # fmt: skip
DD_WINDOW_S = 18 * 3600


class FakeDatadog(_VendorFake):
    """Datadog's v2 event intake (``POST /api/v2/events``, ``DD-API-KEY``)."""

    def __init__(self, key: str, *answers: AnswerLike) -> None:
        self._ids = itertools.count(1)
        super().__init__(*answers, default=self._accepted)
        self.key = key

    def _accepted(self, rec: RecordedRequest) -> Answer:
        uid = f"evt-{next(self._ids)}"
        return Answer(
            202,
            json={"data": {"id": uid, "type": "event",
                           "attributes": {"attributes": {"evt": {"uid": uid}}}}},
        )  # fmt: skip

    @staticmethod
    def rate_limited(reset: int) -> Answer:
        return Answer(
            429,
            headers={"X-RateLimit-Limit": "250000", "X-RateLimit-Period": "60",
                     "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset),
                     "X-RateLimit-Name": "event_submission"},
            json={"errors": ["Too many requests"]},
        )  # fmt: skip

    def refuse(self, rec: RecordedRequest) -> Answer | None:
        if rec.headers.get("DD-API-KEY") != self.key:
            return Answer(403, json={"errors": ["Forbidden"]})
        return None

    def invalid(self, problem: str) -> Answer:
        return Answer(400, json={"errors": [problem]})

    def problem(self, rec: RecordedRequest) -> str | None:
        if (rec.method, rec.path) != ("POST", DD_PATH):
            return f"{rec.method} {rec.path}: expected POST {DD_PATH}"
        if not rec.headers.get("Content-Type", "").startswith("application/json"):
            return "Content-Type must be application/json"
        doc = rec.json
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, dict) or data.get("type") != "event":
            return "data must be an object with type event"
        attrs = data.get("attributes")
        if not isinstance(attrs, dict):
            return "data.attributes is required"
        if unknown := set(attrs) - DD_TOP:
            return f"unknown attributes {sorted(unknown)}"
        if not _text_ok(attrs.get("title"), 500):
            return "title is required, at most 500 characters"
        if attrs.get("category") not in ("change", "alert"):
            return f"invalid category {attrs.get('category')!r}"
        if "message" in attrs and not _text_ok(attrs["message"], 4000, empty=True):
            return "message is at most 4000 characters"
        if "aggregation_key" in attrs and not _text_ok(attrs["aggregation_key"], 100):
            return "aggregation_key is at most 100 characters"
        if attrs.get("integration_id", "custom-events") != "custom-events":
            return "integration_id must be custom-events"
        tags = attrs.get("tags", [])
        if not isinstance(tags, list) or not all(_text_ok(t, 200) for t in tags):
            return "tags must be strings of at most 200 characters"
        if "timestamp" in attrs:
            try:
                when = datetime.fromisoformat(str(attrs["timestamp"]).replace("Z", "+00:00"))
            except ValueError:
                return f"timestamp {attrs['timestamp']!r} is not ISO 8601"
            if when.tzinfo is None:
                return "timestamp has no time zone"
            age = datetime.now(when.tzinfo).timestamp() - when.timestamp()
            if age > DD_WINDOW_S:
                return "timestamp is older than 18 hours"
        change = attrs.get("attributes")
        if not isinstance(change, dict):
            return "attributes.attributes is required"
        if attrs["category"] != "change":
            return None
        if unknown := set(change) - DD_CHANGE:
            return f"unknown change attributes {sorted(unknown)}"
        resource = change.get("changed_resource")
        if not isinstance(resource, dict) or not _text_ok(resource.get("name"), 10_000):
            return "changed_resource.name is required"
        if resource.get("type") not in ("feature_flag", "configuration"):
            return f"changed_resource.type {resource.get('type')!r} is not allowed"
        author = change.get("author")
        if author is not None and (
            not isinstance(author, dict)
            or not _text_ok(author.get("name"), 128)
            or author.get("type") not in ("user", "system", "api")
        ):
            return "author needs name (at most 128 characters) and type user|system|api"
        meta = change.get("change_metadata", {})
        if not isinstance(meta, dict) or len(meta) > 100:
            return "change_metadata is an object of at most 100 properties"
        return None


# -- Slack ---------------------------------------------------------------------------------

SLACK_PATH = "/services/T0001/B0001/hooksecret0001"


class FakeSlack(_VendorFake):
    """A Slack incoming webhook at ``hook_url``; answers ``200 ok`` as Slack does.

    ``gone`` makes it answer as Slack does when the channel or hook went away, e.g.
    ``(410, "channel_is_archived")`` or ``(404, "channel_not_found")``; None accepts again.
    """

    def __init__(self, *answers: AnswerLike) -> None:
        super().__init__(*answers, default=Answer(200, body=b"ok"))
        self.gone: tuple[int, str] | None = None

    @property
    def hook_url(self) -> str:
        return f"https://hooks.slack.com{SLACK_PATH}"

    @staticmethod
    def error(status: int, code: str, headers: dict[str, str] | None = None) -> Answer:
        return Answer(status, headers={"Content-Type": "text/plain", **(headers or {})},
                      body=code.encode())  # fmt: skip

    def rate_limited(self, retry_after: int) -> Answer:
        return self.error(429, "rate_limited", {"Retry-After": str(retry_after)})

    def messages(self) -> list[dict[str, Any]]:
        return [m for m in self.accepted() if isinstance(m, dict)]

    def refuse(self, rec: RecordedRequest) -> Answer | None:
        if rec.path != SLACK_PATH:
            return self.error(404, "no_service")
        if self.gone is not None:
            return self.error(*self.gone)
        return None

    def invalid(self, problem: str) -> Answer:
        code, _, _ = problem.partition(":")
        return self.error(400, code)

    def problem(self, rec: RecordedRequest) -> str | None:
        if rec.method != "POST":
            return f"invalid_payload: method {rec.method}"
        if not rec.is_json or not isinstance(rec.json, dict):
            return "invalid_payload: the body is not a JSON object"
        text, blocks = rec.json.get("text"), rec.json.get("blocks")
        if text is not None and not _text_ok(text, 40_000, empty=True):
            return "invalid_payload: text is not a string of at most 40000 characters"
        if blocks is None:
            return None if text else "no_text: text or blocks is required"
        if not isinstance(blocks, list) or not 0 < len(blocks) <= 50:
            return "invalid_blocks: 1 to 50 blocks"
        for i, block in enumerate(blocks):
            if not isinstance(block, dict) or block.get("type") not in (
                "section", "context", "header", "divider"):  # fmt: skip
                return f"invalid_blocks: block {i} has no known type"
            if block["type"] == "section":
                inner = block.get("text")
                if not isinstance(inner, dict) or inner.get("type") not in ("mrkdwn", "plain_text"):
                    return f"invalid_blocks: block {i} text needs a type"
                if not _text_ok(inner.get("text"), 3000):
                    return f"invalid_blocks: block {i} text must be 1 to 3000 characters"
        return None


# -- Grafana -------------------------------------------------------------------------------

GRAFANA_PATH = "/api/annotations"
GRAFANA_KEYS = {"dashboardUID", "dashboardId", "panelId", "time", "timeEnd", "tags", "text",
                "data"}  # fmt: skip
MS_2001 = 978_307_200_000


class FakeGrafana(_VendorFake):
    """Grafana's annotations API with one service account token; ``permitted = False`` makes
    the token lack ``annotations:create`` (403)."""

    def __init__(self, token: str, *answers: AnswerLike) -> None:
        self._ids = itertools.count(1)
        super().__init__(*answers, default=self._added)
        self.token = token
        self.permitted = True

    def _added(self, rec: RecordedRequest) -> Answer:
        return Answer(200, json={"message": "Annotation added", "id": next(self._ids)})

    def refuse(self, rec: RecordedRequest) -> Answer | None:
        if rec.headers.get("Authorization") != f"Bearer {self.token}":
            return Answer(401, json={"message": "invalid API key"})
        if not self.permitted:
            return Answer(
                403,
                json={"message": "You'll need additional permissions to perform this action. "
                                 "Permissions needed: annotations:create"},
            )  # fmt: skip
        return None

    def invalid(self, problem: str) -> Answer:
        return Answer(400, json={"message": problem})

    def problem(self, rec: RecordedRequest) -> str | None:
        if (rec.method, rec.path) != ("POST", GRAFANA_PATH):
            return f"{rec.method} {rec.path}: expected POST {GRAFANA_PATH}"
        body = rec.json
        if not isinstance(body, dict):
            return "bad request data"
        if unknown := set(body) - GRAFANA_KEYS:
            return f"bad request data: unknown fields {sorted(unknown)}"
        if not isinstance(body.get("text"), str) or not body["text"]:
            return "Failed to save annotation: text field should not be empty"
        for key in ("time", "timeEnd"):
            if key in body and (type(body[key]) is not int or body[key] < MS_2001):
                return f"bad request data: {key} must be epoch milliseconds"
        tags = body.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            return "bad request data: tags must be strings"
        return None
