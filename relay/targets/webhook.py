"""Generic webhook target: POST the batch as JSON, with custom headers and optional signing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..schema import secret
from .base import Batch, Outcome, Target, TargetConfig, json_headers, redact_url
from .signing import SigningConfig, signature_headers


@dataclass(kw_only=True)
class WebhookConfig(TargetConfig):
    type: Literal["webhook"] = "webhook"
    url: str = secret()  # a hook URL often carries its credential (Slack, Zapier)
    headers: dict[str, str] = secret(default_factory=dict)  # often an auth token
    # array: the JSON array of events; object: {"events": [...]}; ndjson: one event a line
    format: Literal["array", "object", "ndjson"] = "array"
    signing: SigningConfig | None = None


def encode_events(batch: Batch, fmt: str) -> tuple[bytes, str]:
    """The request body and its content type for one of the generic formats."""
    if fmt == "array":
        return batch.json_array(), "application/json"
    if fmt == "object":
        return b'{"events":' + batch.json_array() + b"}", "application/json"
    return batch.json_lines() + b"\n", "application/x-ndjson"


class WebhookTarget(Target):
    """Any HTTP endpoint that takes JSON; the events go out in the Statsig event shape."""

    kind = "webhook"
    config_class = WebhookConfig
    config: WebhookConfig

    async def send(self, batch: Batch) -> Outcome:
        body, content_type = encode_events(batch, self.config.format)
        headers = json_headers(self.config.headers)
        headers["Content-Type"] = content_type
        if self.config.signing is not None:
            headers.update(signature_headers(self.config.signing, body))
        return await self.post(self.config.url, body, headers)

    def describe(self) -> str:
        signed = f", signed ({self.config.signing.scheme})" if self.config.signing else ""
        return f"webhook {redact_url(self.config.url)} as {self.config.format}{signed}"
