"""Grafana annotations: a Statsig config change becomes an annotation at the time it happened.

Wire facts relied on (grafana/grafana ``docs/sources/developer-resources/api-reference/
http-api/api-legacy/annotations.md``; grafana.com "Annotations HTTP API"; summarised in
docs/targets/grafana.md):

* ``POST <grafana>/api/annotations`` with ``Authorization: Bearer <service account token>``
  (permission ``annotations:create``); body ``{"text" (required), "time" (epoch ms), "tags",
  "dashboardUID"?}``. Without a ``dashboardUID`` it is an organisation annotation, shown on any
  dashboard through the annotations data source filtered by tag. Answer
  ``200 {"message": "Annotation added", "id": N}``.
* There is no batch endpoint: one annotation per request. 400 refuses that annotation; 401/403
  refuse the token; no rate limit is documented for self-hosted Grafana. The legacy ``/api``
  routes keep working in Grafana 13, which adds ``/apis`` alongside.

A batch is sent one annotation at a time, in order, and answered per event
(``Verdict.PARTIAL``): an annotation Grafana refuses is dead-lettered alone, the ones it took
are never sent again, and a refused token or a transient failure stops the batch and leaves
the rest to the deliverer (held or retried).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from ..schema import ConfigError, secret
from .base import (
    DELIVERED,
    Batch,
    Outcome,
    TargetConfig,
    Verdict,
    for_the_rest,
    hide_password,
    json_headers,
)
from .changes import ChangeTarget, ConfigChange, is_config_change, read_change, shorten

TEXT_MAX = 10_000  # no limit is documented; keep an annotation readable


@dataclass(kw_only=True)
class GrafanaConfig(TargetConfig):
    type: Literal["grafana"] = "grafana"
    url: str  # Grafana's base URL, e.g. https://grafana.example.com
    token: str = secret()  # a service account token with annotations:create
    dashboard_uid: str | None = None  # omit for an organisation annotation
    batch_max_events: int = 50  # annotations sent one by one within a batch

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError("url", f"expected Grafana's http(s) base URL, got {self.url!r}")
        if not self.token.strip():
            raise ConfigError("token", "must not be empty")
        if self.dashboard_uid is not None and not self.dashboard_uid.strip():
            raise ConfigError("dashboard_uid", "must not be empty when set")

    def annotations_url(self) -> str:
        return f"{self.url.rstrip('/')}/api/annotations"


def annotation_text(change: ConfigChange) -> str:
    text = f"Statsig {change.kind} {change.name} {change.action}"
    if change.author_display:
        text += f" by {change.author_display}"
    lines = [text]
    if change.environments:
        lines.append("env: " + ", ".join(change.environments))
    if change.description:
        lines.append(change.description)
    if change.link:
        lines.append(change.link)
    return shorten("\n".join(lines), TEXT_MAX)


def annotation(change: ConfigChange, dashboard_uid: str | None = None) -> dict[str, Any]:
    """The annotation for one config change (the mapping in docs/targets/grafana.md)."""
    tags = ["statsig", change.kind.lower(), change.action]
    body: dict[str, Any] = {"time": change.time_ms, "tags": tags, "text": annotation_text(change)}
    if dashboard_uid:
        body["dashboardUID"] = dashboard_uid
    return body


class GrafanaTarget(ChangeTarget):
    """Statsig config changes as Grafana annotations, one request each."""

    kind = "grafana"
    config_class = GrafanaConfig
    config: GrafanaConfig

    def __init__(self, name: str, config: GrafanaConfig) -> None:
        super().__init__(name, config)
        self.url = config.annotations_url()

    async def send(self, batch: Batch) -> Outcome:
        headers = json_headers({"Authorization": f"Bearer {self.config.token}"})
        failed: dict[int, Outcome] = {}
        events = batch.events()
        for index, event in enumerate(events):
            if not is_config_change(event):
                failed[index] = Outcome(
                    Verdict.REJECT, "not a config change: grafana carries only those"
                )
                continue
            body = orjson.dumps(annotation(read_change(event), self.config.dashboard_uid))
            outcome = await self.post(self.url, body, headers)
            if outcome.ok:
                continue
            if outcome.verdict in (Verdict.REJECT, Verdict.TOO_LARGE):
                failed[index] = Outcome(Verdict.REJECT, outcome.reason, status=outcome.status)
                continue
            # The token is refused, Grafana is away or throttling: the rest would fare the same.
            if index == 0 and not failed:
                return outcome  # nothing taken: the batch's answer (held or retried whole)
            failed.update(dict.fromkeys(range(index, len(events)), for_the_rest(outcome)))
            break
        if not failed:
            return DELIVERED
        return Outcome.per_event(failed, others_delivered=True, reason="some annotations refused")

    def describe(self) -> str:
        where = f" on dashboard {self.config.dashboard_uid}" if self.config.dashboard_uid else ""
        return f"grafana annotations to {hide_password(self.url)}{where}"
