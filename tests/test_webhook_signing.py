"""Generic webhook target with Standard Webhooks signing, verified by the reference library
(standardwebhooks), which no one here wrote."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from relay.schema import ConfigError
from relay.targets.signing import SigningConfig
from tests.conftest import RelayFactory, post_export
from tests.fakes import FakeTarget, poll_until

EVENTS = [
    {"eventName": "page_view", "userID": "u1", "timestamp": 1_700_000_000_000, "timeUUID": "a"},
    {"eventName": "café ☕", "userID": "u2", "timestamp": 1_700_000_000_001, "timeUUID": "b"},
]


def new_secret(padded: bool = True) -> str:
    encoded = base64.b64encode(os.urandom(32)).decode()  # 44 chars, ends in "="
    return "whsec_" + (encoded if padded else encoded.rstrip("="))


def config(url: str, secret: str, fmt: str = "array") -> str:
    return f"""
sources:
  statsig: {{type: statsig_webhook}}
targets:
  hook:
    type: webhook
    url: "{url}/receive"
    format: {fmt}
    linger: 0s
    signing: {{scheme: standard, secret: "{secret}"}}
routes:
  - {{name: all, from: statsig, to: hook}}
"""


def standard_headers(headers: Any) -> dict[str, str]:
    return {k: headers[k] for k in ("webhook-id", "webhook-timestamp", "webhook-signature")}


@pytest.mark.parametrize("fmt", ["array", "object", "ndjson"])
async def test_delivered_request_verifies_with_the_standardwebhooks_library(
    relay_factory: RelayFactory, fmt: str
) -> None:
    secret = new_secret()
    async with FakeTarget() as fake:
        relay = await relay_factory(config(fake.url, secret, fmt), shutdown_grace="2s")
        assert await post_export(relay, EVENTS) == 200
        (req,) = await fake.wait_for_requests(1)
    verified = Webhook(secret).verify(req.body, standard_headers(req.headers), json_parse=False)
    assert verified is None  # no exception: the signature matches
    if fmt == "array":
        assert Webhook(secret).verify(req.body, standard_headers(req.headers)) == EVENTS
    assert req.headers["webhook-id"].startswith("msg_")
    assert req.headers["webhook-signature"].startswith("v1,")


async def test_a_changed_body_or_another_secret_fails_verification(
    relay_factory: RelayFactory,
) -> None:
    secret = new_secret()
    async with FakeTarget() as fake:
        relay = await relay_factory(config(fake.url, secret), shutdown_grace="2s")
        await post_export(relay, EVENTS)
        (req,) = await fake.wait_for_requests(1)
    headers = standard_headers(req.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(req.body.replace(b"u1", b"u9"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(req.body, headers)


async def test_unpadded_secret_is_accepted_as_the_library_does(relay_factory: RelayFactory) -> None:
    secret = new_secret(padded=False)
    Webhook(secret)  # the reference library takes it
    async with FakeTarget() as fake:
        relay = await relay_factory(config(fake.url, secret), shutdown_grace="2s")
        await post_export(relay, EVENTS)
        (req,) = await fake.wait_for_requests(1)
    assert Webhook(secret).verify(req.body, standard_headers(req.headers)) == EVENTS


async def test_redelivery_keeps_the_message_id(relay_factory: RelayFactory) -> None:
    secret = new_secret()
    async with FakeTarget() as fake:
        relay = await relay_factory(config(fake.url, secret), shutdown_grace="2s")
        await post_export(relay, EVENTS)
        await fake.wait_for_requests(1)
        await post_export(relay, EVENTS)
        first, second = await fake.wait_for_requests(2)
        await poll_until(lambda: len(fake.requests) == 2)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]  # receivers dedup on it
    for req in (first, second):
        Webhook(secret).verify(req.body, standard_headers(req.headers))


def test_a_secret_that_is_not_base64_or_empty_is_a_config_error() -> None:
    for bad in ("whsec_not base64!", "whsec_", "whsec_a"):
        with pytest.raises(ConfigError, match="secret"):
            SigningConfig(scheme="standard", secret=bad)
