"""Request signing for outbound webhooks: a plain HMAC header, or Standard Webhooks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Literal

from ..schema import ConfigError
from ..schema import secret as secret_field

_ALGORITHMS = {
    "sha256": hashlib.sha256,
    "sha1": hashlib.sha1,
    "sha512": hashlib.sha512,
    "md5": hashlib.md5,
}


@dataclass(kw_only=True)
class SigningConfig:
    """``scheme: hmac`` signs the body into ``header``; ``scheme: standard`` follows
    standardwebhooks.com (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``) with a
    ``whsec_`` secret."""

    scheme: Literal["hmac", "standard"] = "hmac"
    secret: str = secret_field()
    header: str = "X-Relay-Signature"
    algorithm: Literal["sha256", "sha1", "sha512", "md5"] = "sha256"
    encoding: Literal["hex", "base64"] = "hex"
    prefix: str = ""  # e.g. "sha256=" for GitHub-style receivers

    def __post_init__(self) -> None:
        if not self.secret:
            raise ConfigError("secret", "must not be empty")
        if self.scheme == "standard":
            try:
                standard_key(self.secret)
            except ValueError:
                raise ConfigError(
                    "secret", "a Standard Webhooks secret is whsec_ followed by base64"
                ) from None


def standard_key(secret: str) -> bytes:
    """The key bytes of a ``whsec_`` secret; padding is optional, as in the reference library."""
    encoded = secret.removeprefix("whsec_").rstrip("=")
    key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    if not key:
        raise ValueError("empty key")
    return key


def hmac_digest(secret: bytes, message: bytes, algorithm: str, encoding: str) -> str:
    digest = hmac.new(secret, message, _ALGORITHMS[algorithm]).digest()
    return digest.hex() if encoding == "hex" else base64.b64encode(digest).decode()


def signature_headers(config: SigningConfig, body: bytes) -> dict[str, str]:
    """Headers that let the receiver verify ``body`` came from us, unchanged."""
    if config.scheme == "hmac":
        value = hmac_digest(config.secret.encode(), body, config.algorithm, config.encoding)
        return {config.header: config.prefix + value}
    # The id is derived from the content so a redelivered batch keeps its id (receivers dedup).
    message_id = "msg_" + hashlib.sha256(body).hexdigest()[:32]
    timestamp = str(int(time.time()))
    to_sign = f"{message_id}.{timestamp}.".encode() + body
    signature = hmac_digest(standard_key(config.secret), to_sign, "sha256", "base64")
    return {
        "webhook-id": message_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": f"v1,{signature}",
    }
