"""Slack incoming webhook: Statsig config changes as channel messages.

Wire facts relied on (api.slack.com incoming-webhooks and block-kit docs, the 2016-05-17
changelog "changes to errors for incoming webhooks", api.slack.com/docs/rate-limits;
summarised in docs/targets/slack.md):

* ``POST <hook URL>`` with JSON ``{"text": …, "blocks": [...]}``; the URL is the credential.
  ``text`` is the fallback shown in notifications when there are blocks. A message holds at
  most 50 blocks; a section block's text at most 3000 characters. Answer ``200 ok``.
* Errors are plain-text bodies: 400 ``invalid_payload`` / ``invalid_blocks`` /
  ``user_not_found`` (the message is refused), 403 ``action_prohibited`` / ``invalid_token``,
  404 ``channel_not_found`` / ``no_service`` / ``no_team``, 410 ``channel_is_archived`` /
  ``team_disabled``, 500 ``rollup_error``. A 403, 404 or 410 is about the hook, not the
  message: the target is marked failing and the changes are held (like a refused key), never
  dead-lettered one by one.
* About one message per second per hook; above it Slack answers 429 with ``Retry-After``.

One message per delivered batch: normally one change; a burst that arrives within ``linger``
shares a message, one section block per change (so at most 50 changes a message).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from ..schema import ConfigError, Duration, secret
from .base import (
    DELIVERED,
    Batch,
    Outcome,
    TargetConfig,
    Verdict,
    classify_response,
    json_headers,
    redact_url,
)
from .changes import ChangeTarget, ConfigChange, is_config_change, read_change, shorten
from .ratelimit import TokenBucket

MAX_BLOCKS = 50
SECTION_TEXT_MAX = 3000
FALLBACK_TEXT_MAX = 3000
DESCRIPTION_MAX = 1500
# Answers about the hook itself (removed, disabled, channel gone or archived): hold, not drop.
HOOK_GONE = (403, 404, 410)


@dataclass(kw_only=True)
class SlackConfig(TargetConfig):
    type: Literal["slack"] = "slack"
    url: str = secret()  # https://hooks.slack.com/services/T…/B…/…: a credential
    base_url: str | None = None  # replaces the URL's scheme and host (a proxy, tests)
    messages_per_minute: int = 60  # Slack allows about one message a second per hook
    batch_max_events: int = 20  # changes per message (one block each); at most 50
    linger: Duration = Duration(2.0)  # a burst of changes within this shares a message
    concurrency: int = 1  # messages in order

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError("url", "expected the incoming webhook's https:// URL")
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            raise ConfigError("base_url", f"expected an http(s) URL, got {self.base_url!r}")
        if self.batch_max_events > MAX_BLOCKS:
            raise ConfigError("batch_max_events", f"at most {MAX_BLOCKS} (Slack's blocks limit)")
        if self.messages_per_minute < 1:
            raise ConfigError("messages_per_minute", "must be at least 1")

    def hook_url(self) -> str:
        if self.base_url is None:
            return self.url
        _, _, rest = self.url.partition("://")
        _, _, path = rest.partition("/")
        return f"{self.base_url.rstrip('/')}/{path}"


def escape(text: str) -> str:
    """Slack's mrkdwn reserves &, < and > (links and mentions are written with them)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _link_text(text: str) -> str:
    return escape(text).replace("|", "¦")  # "|" ends a link's address in <url|text>


def section_text(change: ConfigChange) -> str:
    """One change in mrkdwn: what, its type, the action, who; the link when there is one."""
    name = f"*{escape(change.name)}*"
    if change.link:
        name = f"<{change.link.replace('>', '%3E')}|{_link_text(change.name)}>"
    line = f"{name} ({escape(change.kind)}) *{escape(change.action)}*"
    if change.author_display:
        line += f" by {escape(change.author_display)}"
    lines = [line]
    details = []
    if change.environments:
        details.append("env: " + ", ".join(escape(e) for e in change.environments))
    if change.project:
        details.append(f"project: {escape(change.project)}")
    if details:
        lines.append(" · ".join(details))
    if change.description:
        quoted = escape(shorten(change.description, DESCRIPTION_MAX)).replace("\n", "\n>")
        lines.append(f">{quoted}")
    return shorten("\n".join(lines), SECTION_TEXT_MAX)


def fallback_text(changes: list[ConfigChange]) -> str:
    """The plain summary Slack shows in notifications (and where blocks cannot be shown)."""
    parts = [
        f"{c.kind} {c.name} {c.action}" + (f" by {c.author}" if c.author else "") for c in changes
    ]
    head = (
        "Statsig config change: "
        if len(changes) == 1
        else f"{len(changes)} Statsig config changes: "
    )
    return shorten(escape(head + "; ".join(parts)), FALLBACK_TEXT_MAX)


def message(changes: list[ConfigChange]) -> dict[str, Any]:
    blocks = [
        {"type": "section", "text": {"type": "mrkdwn", "text": section_text(change)}}
        for change in changes[:MAX_BLOCKS]
    ]
    return {"text": fallback_text(changes), "blocks": blocks}


class SlackTarget(ChangeTarget):
    """Statsig config changes as Slack messages through an incoming webhook."""

    kind = "slack"
    config_class = SlackConfig
    config: SlackConfig

    def __init__(self, name: str, config: SlackConfig) -> None:
        super().__init__(name, config)
        self.url = config.hook_url()
        self.bucket = TokenBucket.per_minute(config.messages_per_minute, burst=1)

    async def send(self, batch: Batch) -> Outcome:
        events = batch.events()
        if not all(is_config_change(event) for event in events):
            return Outcome(Verdict.REJECT, "not a config change: slack carries only those")
        body = orjson.dumps(message([read_change(event) for event in events]))
        await self.bucket.acquire(1)
        outcome = await self.post(self.url, body, json_headers())
        return DELIVERED if outcome.ok else outcome

    def classify(self, status: int, headers: Mapping[str, str], body: str) -> Outcome:
        if status in HOOK_GONE:
            reason = f"HTTP {status}: {body[:200]}" if body else f"HTTP {status}"
            return Outcome(
                Verdict.UNAUTHORIZED, reason + " (the hook or its channel)", status=status
            )
        return classify_response(status, headers, body)

    def describe(self) -> str:
        return f"slack messages to {redact_url(self.url)}"
