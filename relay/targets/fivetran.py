"""Fivetran Webhooks connector: the raw event batch as a JSON array, optionally HMAC-signed.

This is what Statsig's own Fivetran export sends; Fivetran lands each event as a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..schema import secret
from .base import Batch, Outcome, Target, TargetConfig, json_headers, redact_url
from .signing import hmac_digest


@dataclass(kw_only=True)
class FivetranConfig(TargetConfig):
    type: Literal["fivetran"] = "fivetran"
    url: str = secret()  # https://webhooks.fivetran.com/webhooks/<endpoint id>: a credential
    hmac_secret: str | None = secret(default=None)  # sets X-Fivetran-Hmac-Sign when given
    hmac_algorithm: Literal["sha256", "sha1", "md5"] = "sha256"
    hmac_encoding: Literal["base64", "hex"] = "base64"
    headers: dict[str, str] = secret(default_factory=dict)  # e.g. a token header


class FivetranTarget(Target):
    kind = "fivetran"
    config_class = FivetranConfig
    config: FivetranConfig

    async def send(self, batch: Batch) -> Outcome:
        body = batch.json_array()
        headers = json_headers(self.config.headers)
        if self.config.hmac_secret:
            headers["X-Fivetran-Hmac-Sign"] = hmac_digest(
                self.config.hmac_secret.encode(),
                body,
                self.config.hmac_algorithm,
                self.config.hmac_encoding,
            )
        return await self.post(self.config.url, body, headers)

    def describe(self) -> str:
        signed = " (HMAC-signed)" if self.config.hmac_secret else ""
        return f"fivetran {redact_url(self.config.url)}{signed}"
