"""Shortcuts on the ingest hot path give the same answers as the slow path they skip."""

from __future__ import annotations

import copy
from typing import Any

import orjson

from relay.sources.statsig_webhook import (
    StatsigWebhookConfig,
    StatsigWebhookSource,
    normalise_export,
)

RECEIVED = 1_700_000_000_000

CASES: list[Any] = [
    {"eventName": "add_to_cart", "timestamp": 1_700_000_000_001, "value": "3"},
    {"eventName": "add_to_cart", "timestamp": "1700000000002"},  # numeric string
    {"eventName": "add_to_cart", "timestamp": 1_700_000_000.5},  # seconds as a float
    {"eventName": "add_to_cart"},  # no timestamp: the receive time
    {"eventName": "add_to_cart", "timestamp": True},  # not a time
    {"eventName": "", "timestamp": 1},
    {"timestamp": 1},
    {"eventName": 7, "timestamp": 1},
    "not an object",
    {"eventName": "statsig::diagnostics", "timestamp": 1_700_000_000_003},
    {
        "eventName": "statsig::gate_exposure",
        "timestamp": 1_700_000_000_004,
        "metadata": {"gate": "g", "gateValue": "true", "ruleID": "r"},
    },
    {
        "eventName": "statsig::gate_exposure",
        "timestamp": 1_700_000_000_005,
        "metadata": {"gate": "g", "gateValue": False},  # a boolean to normalise
    },
    {
        "eventName": "statsig::experiment_exposure",
        "timestamp": 1_700_000_000_006,
        "metadata": {},
        "statsigMetadata": {"config": "exp", "ruleID": "r"},  # the legacy place
    },
    {"eventName": "statsig::config_exposure", "timestamp": 1_700_000_000_007},  # no metadata
    {
        "eventName": "statsig::layer_exposure",
        "timestamp": 1_700_000_000_008,
        "metadata": {"config": "layer", "parameterName": "p"},
    },
]


def test_parse_matches_normalise_export_event_by_event() -> None:
    source = StatsigWebhookSource("statsig", StatsigWebhookConfig())
    parsed = source.parse(None, source.endpoints()[0], orjson.dumps(CASES), RECEIVED)  # type: ignore[arg-type]

    expected_events, expected_errors = [], []
    for index, item in enumerate(copy.deepcopy(CASES)):
        problem = normalise_export(item, RECEIVED)
        if problem is None:
            expected_events.append(item)
        else:
            expected_errors.append(index)
    assert parsed.events == expected_events
    assert parsed.error_count == len(expected_errors) == 5
    assert parsed.events[6]["metadata"]["gateValue"] == "false"
    assert parsed.events[7]["metadata"]["config"] == "exp"
