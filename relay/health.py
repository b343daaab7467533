"""A target's health: ``ok``, ``degraded`` or ``failing``, why, since when, and when to probe.

The deliverer reports every answer of a target here, and everything that shows a target's state
(/status, ``statsig-relay status``, the ``relay_target_*`` gauges, the alert rules) reads it. The
rules are the same for every target:

* A delivery makes the target ``ok`` and *proven*: it takes events, so an event it refuses is
  the event's fault (dead-lettered), not the target's.
* A transient failure (network error, timeout, 408, 429, 5xx) makes it ``degraded``; if no
  delivery follows within ``failing_after`` it turns ``failing``.
* A refused credential (401/403), a misconfigured endpoint, or a target that rejects every event
  it is sent turns it ``failing`` at once.
* While ``failing`` its events are *held* in the spool (no attempt counted, nothing
  dead-lettered before ``max_age``) and one probe batch at a time goes out, after a backoff that
  grows with how long it has been failing (``retry_initial`` … ``retry_max``). The first
  delivery makes it ``ok`` again and the held events are delivered in receive order.

Each change of state is logged once (not once per retry).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from enum import Enum

logger = logging.getLogger(__name__)


class State(Enum):
    OK = "ok"
    DEGRADED = "degraded"
    FAILING = "failing"


class TargetHealth:
    """The health of one target, driven by the answers its deliverer reports."""

    def __init__(
        self,
        name: str,
        *,
        failing_after: float = 30.0,
        retry_initial: float = 1.0,
        retry_max: float = 600.0,
    ) -> None:
        self.name = name
        self.failing_after = failing_after
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.state = State.OK
        self.reason = ""
        self.since = time.time()  # when the current state began
        self.proven = False  # has taken an event since start or since it last turned failing
        self.reject_streak = 0  # requests rejected (events blamed) since the last delivery
        self.probe_at = 0.0  # epoch s: while failing, no claim before this
        self.probing = False  # a probe batch is out
        self._trouble_since: float | None = None  # first transient failure since a delivery
        self.on_change: Callable[[TargetHealth], None] | None = None  # set by the deliverer

    @property
    def failing(self) -> bool:
        return self.state is State.FAILING

    # -- reports ---------------------------------------------------------------------------
    def delivered(self) -> None:
        """The target took events."""
        self.proven = True
        self.reject_streak = 0
        self._trouble_since = None
        if self.state is not State.OK:
            now = time.time()
            logger.info(
                "target %s: recovered, delivering again (was %s for %.1f s: %s)",
                self.name,
                self.state.value,
                now - self.since,
                self.reason,
                extra={"target": self.name, "reason": self.reason},
            )
            self.probe_at = 0.0
            self._set(State.OK, "", now)

    def transient(self, reason: str) -> None:
        """Network error, timeout, 408, 429 or 5xx: degraded, then failing after a while."""
        now = time.time()
        if self.state is State.FAILING:
            self.reason = reason
            self._schedule_probe(now)
            return
        if self._trouble_since is None:
            self._trouble_since = now
        if now - self._trouble_since >= self.failing_after:
            self.fail(f"no delivery for {now - self._trouble_since:.0f} s: {reason}")
            return
        if self.state is State.OK:
            logger.warning(
                "target %s: degraded, retrying: %s (failing if no delivery within %g s)",
                self.name,
                reason,
                self.failing_after,
                extra={"target": self.name, "reason": reason},
            )
            self._set(State.DEGRADED, reason, now)
        else:
            self.reason = reason
            self._changed()

    def rejected(self) -> None:
        """A request whose events the target refused (a 4xx that blames the events)."""
        self.reject_streak += 1

    def fail(self, reason: str) -> None:
        """The target, not the events, is the problem: hold its events and probe it."""
        now = time.time()
        self.proven = False
        self.reject_streak = 0  # a probe gets its own budget of rejections
        if self.state is not State.FAILING:
            logger.error(
                "target %s: failing, holding its events: %s",
                self.name,
                reason,
                extra={"target": self.name, "reason": reason},
            )
            self._set(State.FAILING, reason, now)
        else:
            self.reason = reason
            self._changed()
        self._schedule_probe(now)

    # -- probing ---------------------------------------------------------------------------
    def claim_delay(self, now: float) -> float:
        """Seconds until the deliverer may claim a batch (0: now). While failing only one
        probe batch is out at a time, and not before the probe time."""
        if self.state is not State.FAILING:
            return 0.0
        if self.probing:
            return self.retry_max
        return max(0.0, self.probe_at - now)

    def _schedule_probe(self, now: float) -> None:
        delay = min(self.retry_max, max(self.retry_initial, now - self.since))
        self.probe_at = now + random.uniform(delay / 2, delay)

    # -- state -----------------------------------------------------------------------------
    def _set(self, state: State, reason: str, now: float) -> None:
        self.state = state
        self.reason = reason
        self.since = now
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)
