"""Batch: how the deliverer cuts claimed rows into requests within a target's limits."""

from __future__ import annotations

import orjson

from relay.targets.base import Batch

BIG = 1 << 30


def test_a_batch_over_the_limits_splits_between_rows_without_parsing() -> None:
    bodies = [orjson.dumps([{"n": f"{b}-{i}"} for i in range(3)]) for b in range(5)]
    batch = Batch(bodies, 15, counts=[3] * 5)
    parts = batch.chunks(7, BIG)
    assert [p.count for p in parts] == [6, 6, 3]
    assert batch._events is None  # nothing was parsed
    spliced = [e["n"] for p in parts for e in orjson.loads(p.json_array())]
    assert spliced == [f"{b}-{i}" for b in range(5) for i in range(3)]
    by_bytes = Batch(bodies, 15, counts=[3] * 5).chunks(100, 2 * len(bodies[0]) - 1)
    assert [p.count for p in by_bytes] == [6, 6, 3]
    assert all(len(p.json_array()) <= 2 * len(bodies[0]) - 1 for p in by_bytes)
    # One row alone over the limit: the events are split instead.
    assert [p.count for p in Batch(bodies, 15, counts=[3] * 5).chunks(2, BIG)] == [2] * 7 + [1]


def test_json_array_splices_stored_arrays_and_skips_empty_ones() -> None:
    one, two = orjson.dumps([{"a": 1}]), orjson.dumps([{"b": 2}, {"c": 3}])
    assert Batch([one], 1).json_array() == one
    assert orjson.loads(Batch([one, b"[]", two], 3).json_array()) == [{"a": 1}, {"b": 2}, {"c": 3}]
    assert Batch([one, b"[]", two], 3).json_array() == b'[{"a":1},{"b":2},{"c":3}]'
    assert Batch([b"[]", one], 1).json_array() == one
    assert Batch([b"[]"], 0).json_array() == b"[]"
    assert Batch([], 0).json_array() == b"[]"
