"""A fake Statsig log_event server: a real aiohttp server on 127.0.0.1 (tests/fakes.FakeTarget).

It checks what Statsig documents for ``POST /v1/log_event``: the ``statsig-api-key`` header
(a wrong key gets 401, as Statsig answers), the SDK headers, a gzipped JSON body
``{"events": [...]}`` in which every event has a string ``eventName``, ``time`` as an int epoch
in **milliseconds**, a ``user`` object and ``metadata`` whose values are all strings, within the
documented field limits. A request that breaks the shape is answered 400 and recorded in
``failures`` (tests assert there are none). Good requests get ``202 {"success": true}`` unless a
scripted answer says otherwise.

    async with FakeStatsig("secret-a") as statsig:
        statsig.script(503, 503)        # then 202 for everything
        statsig.script(statsig.reject_event("bad"))   # 400 when an event is named "bad"
"""

from __future__ import annotations

from typing import Any

import orjson

from tests.fakes import Answer, AnswerLike, FakeTarget, RecordedRequest

ACCEPTED = Answer(202, json={"success": True})
EVENT_KEYS = frozenset(
    {"eventName", "user", "value", "time", "metadata", "secondaryExposures", "statsigMetadata"}
)
MS_2001 = 978_307_200_000  # an epoch below this is seconds (or garbage), not milliseconds
MS_2286 = 10_000_000_000_000


class FakeStatsig(FakeTarget):
    """Statsig's log_event endpoint; ``key`` is the one server secret it accepts."""

    def __init__(
        self,
        key: str = "secret-test",
        *answers: AnswerLike,
        expect_gzip: bool = True,
        max_string_length: int = 64,
        max_object_length: int = 4096,
    ) -> None:
        super().__init__(*answers, default=ACCEPTED, check=self._check_shape)
        self.key = key
        self.expect_gzip = expect_gzip
        self.max_string_length = max_string_length
        self.max_object_length = max_object_length
        self.refused_keys = 0

    @property
    def log_event_url(self) -> str:
        return f"{self.url}/v1/log_event"

    # -- what Statsig accepted -------------------------------------------------------------
    def delivered(self) -> list[dict[str, Any]]:
        """Events of the requests answered 2xx, in arrival order."""
        return [
            event
            for req in self.requests
            if req.status is not None and 200 <= req.status < 300
            for event in req.events()
        ]

    # -- scripted answers ------------------------------------------------------------------
    @staticmethod
    def reject_event(name: str) -> Any:
        """An answer: 400 while the request holds an event named ``name``, else 202; repeats."""

        def answer(rec: RecordedRequest) -> Answer:
            if any(e.get("eventName") == name for e in rec.events()):
                return Answer(400, json={"error": f"invalid event {name}"})
            return ACCEPTED

        return answer

    @staticmethod
    def too_large_over(max_events: int) -> Any:
        """An answer: 413 while the request holds more than ``max_events`` events, else 202."""

        def answer(rec: RecordedRequest) -> Answer:
            if len(rec.events()) > max_events:
                return Answer(413, json={"error": "payload too large"})
            return ACCEPTED

        return answer

    # -- serving ---------------------------------------------------------------------------
    async def _resolve(self, answer: AnswerLike, rec: RecordedRequest) -> Answer:
        presented = rec.headers.get("statsig-api-key")
        if presented != self.key:
            self.refused_keys += 1
            if answer is not self.default:  # a scripted answer is for a request we take
                self._script.insert(0, answer)
            return Answer(401, json={"error": "Invalid key provided"})
        return await super()._resolve(answer, rec)

    def _check_shape(self, rec: RecordedRequest) -> None:
        headers = rec.headers
        assert rec.method == "POST", f"method {rec.method}, expected POST"
        assert rec.path == "/v1/log_event", f"path {rec.path}, expected /v1/log_event"
        assert headers.get("statsig-api-key"), "no statsig-api-key header"
        assert headers.get("Content-Type", "").startswith("application/json"), "not JSON"
        if self.expect_gzip:
            assert headers.get("Content-Encoding") == "gzip", "body is not gzipped"
            assert rec.raw[:2] == b"\x1f\x8b", "Content-Encoding: gzip but no gzip magic"
        client_time = headers.get("STATSIG-CLIENT-TIME", "")
        assert client_time.isdigit(), f"STATSIG-CLIENT-TIME {client_time!r} is not an int"
        assert MS_2001 < int(client_time) < MS_2286, "STATSIG-CLIENT-TIME is not epoch ms"
        assert headers.get("STATSIG-SDK-TYPE"), "no STATSIG-SDK-TYPE"
        assert headers.get("STATSIG-SDK-VERSION"), "no STATSIG-SDK-VERSION"
        assert rec.is_json and isinstance(rec.json, dict), "body is not a JSON object"
        events = rec.json.get("events")
        assert isinstance(events, list) and events, "events is not a non-empty list"
        assert len(events) <= 1000, f"{len(events)} events in one request (max 1000)"
        assert len(rec.body) <= 10_000_000, "request over 10 MB"
        count = headers.get("STATSIG-EVENT-COUNT")
        assert count == str(len(events)), f"STATSIG-EVENT-COUNT {count} != {len(events)}"
        meta = rec.json.get("statsigMetadata")
        assert meta is None or isinstance(meta, dict), "statsigMetadata is not an object"
        for i, event in enumerate(events):
            self._check_event(i, event)

    def _check_event(self, i: int, event: Any) -> None:
        assert isinstance(event, dict), f"event {i} is not an object"
        unknown = set(event) - EVENT_KEYS
        assert not unknown, f"event {i} has keys log_event does not take: {sorted(unknown)}"
        name = event.get("eventName")
        assert isinstance(name, str) and name, f"event {i}: eventName is not a string"
        assert len(name) <= self.max_string_length, f"event {i}: eventName over the limit"
        stamp = event.get("time")
        assert type(stamp) is int, f"event {i}: time {stamp!r} is not an int"
        assert MS_2001 < stamp < MS_2286, f"event {i}: time {stamp} is not epoch milliseconds"
        user = event.get("user")
        assert isinstance(user, dict), f"event {i}: user is not an object"
        assert "privateAttributes" not in user, f"event {i}: privateAttributes logged"
        assert len(orjson.dumps(user)) <= self.max_object_length, f"event {i}: user too big"
        value = event.get("value")
        assert value is None or type(value) in (str, int, float), f"event {i}: bad value"
        if isinstance(value, str):
            assert len(value) <= self.max_string_length, f"event {i}: value over the limit"
        metadata = event.get("metadata")
        if metadata is not None:
            assert isinstance(metadata, dict), f"event {i}: metadata is not an object"
            bad = [k for k, v in metadata.items() if not isinstance(v, str)]
            assert not bad, f"event {i}: metadata values not strings: {bad}"
            size = len(orjson.dumps(metadata))
            assert size <= self.max_object_length, f"event {i}: metadata of {size} B"
        exposures = event.get("secondaryExposures")
        assert exposures is None or isinstance(exposures, list), f"event {i}: bad exposures"
        meta = event.get("statsigMetadata")
        assert meta is None or isinstance(meta, dict), f"event {i}: bad statsigMetadata"
