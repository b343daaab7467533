"""Delivery: one loop per target, from the spool to the target, with retries and dead letters.

The loop claims due rows (leased), lingers briefly for a fuller batch, and sends with a bounded
number of requests in flight. A target answers for the whole batch or, when it can tell, for each
event (relay/targets/base.py). One place, :meth:`Deliverer._settle`, turns those answers into
spool actions:

* delivered → ack;
* retryable (network, timeout, 408, 429, 5xx but 501) → a few quick retries in process
  (tenacity: exponential backoff with jitter, Retry-After honoured), then back to the spool with
  a later next-attempt time; past ``max_attempts`` or ``max_age`` → dead-letter;
* named by the target as bad (Amplitude's invalid fields, Mixpanel's failed records) → exactly
  those are dead-lettered; the rest is delivered or resent at once, as the target says;
* rejected as a batch (other 4xx) → bisected, breadth first, to isolate the bad events; they are
  dead-lettered only once the target has shown it takes other events. If no request of the batch
  is delivered within ``2·log2(n) + 10`` rejected requests, or a target that has delivered
  nothing rejects every event, the target is the problem: it is marked failing, not the events;
* cannot be encoded (the target's ``send`` raised) → an event that cannot even be read back is
  dead-lettered alone (reason ``encode_error``, naming why); otherwise bisection isolates the
  events the target cannot encode; the rest are delivered;
* too large (413) → split and resend; a single event too large is dead-lettered;
* target failing (credential refused, misconfigured, rejects everything, or unreachable for
  ``failing_after``; relay/health.py) → the events are held in the spool, attempts not counted,
  and one probe batch at a time goes out after a growing backoff; held events past ``max_age``
  are dead-lettered with the reason the target was failing.

A slow or failing target only ever holds its own loop's slots: targets never share a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from tenacity import AsyncRetrying, RetryCallState, retry_if_result, stop_after_attempt
from tenacity.wait import wait_random_exponential

from .events import now_ms
from .health import State, TargetHealth
from .logs import LogThrottle
from .metrics import RelayMetrics
from .spool.base import Spool
from .spool.records import DeadRow, NewRow, SpoolRow, dead_from
from .targets.base import Batch, Outcome, Target, Verdict

logger = logging.getLogger(__name__)

POLL_SECONDS = 1.0  # fallback poll for rows made due by time (retries) or by other processes
IN_PROCESS_WAIT_CAP = 10.0  # longer Retry-After waits go back to the spool instead
ENCODE_ERROR = "encode_error"  # dead-letter reason (and metric label): the target could not encode
# Why a target is failing: the first word of a held event's dead-letter reason past max_age.
UNAUTHORIZED = "unauthorized"  # 401/403: our credential is refused
MISCONFIGURED = "misconfigured"  # the target says it is not the service's API
REJECTING = "rejecting"  # the target rejects every event it is sent
UNREACHABLE = "unreachable"  # transient failures for longer than failing_after
_TARGET_FAILURES = (Verdict.UNAUTHORIZED, Verdict.FATAL)  # the target's fault, not the events'


def rejection_budget(events: int) -> int:
    """Rejected requests, with nothing delivered, before a batch's rejections are blamed on the
    target rather than its events: enough to bisect a few bad events out of ``events``."""
    return 2 * math.ceil(math.log2(max(events, 1))) + 10


@dataclass(slots=True)
class _Result:
    """What happened to each part of a claimed batch."""

    delivered: int = 0
    retried: int = 0  # events that needed a retry (counted once per claim)
    retry: list[tuple[Batch, Outcome]] = field(default_factory=list)
    dead: list[tuple[Batch, str]] = field(default_factory=list)
    # Single events a target refused without saying why: dead if the target takes others.
    blamed: list[tuple[Batch, str]] = field(default_factory=list)
    held: list[Batch] = field(default_factory=list)  # the target is failing: kept for later
    hold: bool = False  # the target is failing: hold what is left of the batch


class Deliverer:
    """The delivery loop of one target."""

    def __init__(
        self,
        target: Target,
        spool: Spool,
        metrics: RelayMetrics,
        redact: Callable[[str], str] = str,
    ) -> None:
        self.target = target
        # Applied to every failure reason before it is logged, kept or dead-lettered: a target
        # may echo our credential back in its error body.
        self._redact = redact
        target.metrics = metrics
        self.spool = spool
        self.name = target.name
        self.config = target.config
        self.health = target.health
        # The claim lease (the Redis spool's `lease:`): replicas take over a dead replica's rows
        # after it; a live send renews it, so it is never taken over while it runs.
        self._lease = spool.lease_s
        self._slots = asyncio.Semaphore(self.config.concurrency)
        self._inflight: dict[asyncio.Task[None], int] = {}  # send → its events
        self._stopping = asyncio.Event()
        self._gate = asyncio.Event()  # set when a probe ends or the loop stops
        self._task: asyncio.Task[None] | None = None
        self.last_error = ""
        self._retry_at = 0.0  # epoch s of the next attempt of a batch put back; 0 when none
        self._claim_failures = LogThrottle()
        self._hold_kind = ""  # why the target is failing (UNAUTHORIZED, …) while it is
        m = metrics
        self._m_delivered = m.events_delivered.labels(self.name)
        self._m_retried = m.events_retried.labels(self.name)
        self._m_dead = m.events_dead_lettered
        self._m_requests = m.delivery_requests
        self._m_latency = m.delivery_latency.labels(self.name)
        self._m_batch = m.batch_size.labels(self.name)
        self._m_failing = m.target_failing.labels(self.name)
        self._m_state = {state: m.target_state.labels(self.name, state.value) for state in State}
        self._m_lease_lost = m.leases_lost.labels(self.name)
        self.health.on_change = self._publish
        self._publish(self.health)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"deliver-{self.name}")

    def backoff_s(self, now: float) -> float:
        """How long until the next attempt: the next probe while the target is failing, else
        the batch last put back (0 once delivering)."""
        if self.health.failing:
            return max(0.0, self.health.probe_at - now)
        return max(0.0, self._retry_at - now)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def stop_claiming(self) -> None:
        """No new send from now on (the first thing a shutdown does); sends in flight go on."""
        self._stopping.set()
        self._gate.set()
        self.spool.wakeup(self.name).set()

    @property
    def sends_in_flight(self) -> tuple[int, int]:
        """(sends, events) in flight."""
        return len(self._inflight), sum(self._inflight.values())

    async def stop(self, grace: float) -> None:
        """Stop claiming; let sends in flight finish within ``grace``; cancel the rest.

        Cancelled sends leave their rows leased in the spool; they are claimed again after a
        restart (at-least-once). :meth:`abandon` ends the wait at once.
        """
        self.stop_claiming()
        deadline = asyncio.get_running_loop().time() + grace
        if self._task is not None:
            # The loop ends at its next step; a claim from a spool that does not answer (a
            # frozen Redis) is cancelled at the deadline (rows it leased are claimed again).
            await asyncio.wait((self._task,), timeout=grace)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if not self._inflight:
            return
        grace = max(0.0, deadline - asyncio.get_running_loop().time())
        sends, events = self.sends_in_flight
        logger.info(
            "stopping: waiting up to %.1fs for %d sends (%d events) to target %s",
            grace,
            sends,
            events,
            self.name,
            extra={"target": self.name, "count": events},
        )
        _, pending = await asyncio.wait(self._inflight, timeout=grace)
        if pending:
            left = sum(self._inflight.get(task, 0) for task in pending)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            logger.warning(
                "stopping: cancelled %d sends (%d events) to target %s; their rows stay in "
                "the spool and are sent again at the next start",
                len(pending),
                left,
                self.name,
                extra={"target": self.name, "count": left},
            )

    def abandon(self) -> None:
        """Cancel every send in flight now (a second SIGTERM/SIGINT); rows stay in the spool."""
        self.stop_claiming()
        for task in self._inflight:
            task.cancel()

    def _publish(self, health: TargetHealth) -> None:
        self._m_failing.set(1 if health.failing else 0)
        for state, gauge in self._m_state.items():
            gauge.set(1 if health.state is state else 0)

    # -- the loop --------------------------------------------------------------------------
    async def _run(self) -> None:
        wakeup = self.spool.wakeup(self.name)
        cfg = self.config
        while not self._stopping.is_set():
            # While the target is failing its events stay in the spool: no claim before the
            # next probe, and one probe at a time.
            delay = self.health.claim_delay(time.time())
            if delay > 0:
                self._gate.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._gate.wait(), delay)
                continue
            if not await self._take_slot():
                break
            if self.health.claim_delay(time.time()) > 0:  # another batch became the probe
                self._slots.release()
                continue
            probe = self.health.failing
            if probe:
                self.health.probing = True
            try:
                wakeup.clear()
                rows = await self.spool.claim(
                    self.name, cfg.batch_max_events, cfg.batch_max_bytes, self._lease
                )
                if rows and cfg.linger > 0 and not probe:
                    rows = await self._linger(rows, wakeup)
            except Exception as exc:
                self._slots.release()
                self._probe_done(probe)
                left_out = self._claim_failures.due()
                if left_out is not None:  # a store that is down fails every second: one a minute
                    logger.error(
                        "target %s: claiming from the spool failed (retrying every %gs; %d more "
                        "such failures in the last minute)",
                        self.name,
                        POLL_SECONDS,
                        left_out,
                        exc_info=exc,
                        extra={"target": self.name, "reason": "spool_claim_failed"},
                    )
                await self._sleep(wakeup, POLL_SECONDS)
                continue
            if not rows:
                self._slots.release()
                self._probe_done(probe)
                await self._sleep(wakeup, POLL_SECONDS)
                continue
            if self._stopping.is_set():  # claimed as the stop began: given back, unsent
                self._slots.release()
                self._probe_done(probe)
                with contextlib.suppress(Exception):  # else the lease lapses on its own
                    await self.spool.release(rows)
                break
            task = asyncio.create_task(self._deliver(rows, probe))
            self._inflight[task] = sum(r.count for r in rows)
            task.add_done_callback(self._finished)

    async def _take_slot(self) -> bool:
        """A send slot, or False once stopping: a slot held by a hung send may take the
        target's whole timeout to free, and no send may start after stop begins."""
        if self._slots.locked() and not self._stopping.is_set():
            acquire = asyncio.ensure_future(self._slots.acquire())
            stopping = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait((acquire, stopping), return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not acquire.done():
                acquire.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await acquire
            if acquire.done() and not acquire.cancelled():
                if not self._stopping.is_set():
                    return True
                self._slots.release()
            return False
        if self._stopping.is_set():
            return False
        await self._slots.acquire()
        if self._stopping.is_set():
            self._slots.release()
            return False
        return True

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "target %s: delivery task failed",
                self.name,
                exc_info=task.exception(),
                extra={"target": self.name},
            )

    def _probe_done(self, probe: bool) -> None:
        if probe:
            self.health.probing = False
            self._gate.set()

    async def _sleep(self, wakeup: asyncio.Event, seconds: float) -> None:
        if self._stopping.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wakeup.wait(), seconds)

    async def _linger(self, rows: list[SpoolRow], wakeup: asyncio.Event) -> list[SpoolRow]:
        """Top up a small fresh batch with rows arriving within the linger time."""
        cfg = self.config
        events = sum(r.count for r in rows)
        size = sum(len(r.body) for r in rows)
        deadline = min(r.first_received_ms for r in rows) / 1000 + cfg.linger
        while events < cfg.batch_max_events and size < cfg.batch_max_bytes:
            # A claim returns at least one row: stop once a row of the average size would no
            # longer fit, or the batch would go out as a full request plus a small one.
            if (cfg.batch_max_events - events) * len(rows) < events or (
                cfg.batch_max_bytes - size
            ) * len(rows) < size:
                break
            remaining = deadline - time.time()
            if remaining <= 0 or self._stopping.is_set():
                break
            wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), remaining)
            if self._stopping.is_set():
                break
            more = await self.spool.claim(
                self.name,
                cfg.batch_max_events - events,
                cfg.batch_max_bytes - size,
                self._lease,
            )
            rows.extend(more)
            events += sum(r.count for r in more)
            size += sum(len(r.body) for r in more)
        return rows

    # -- one claimed batch -----------------------------------------------------------------
    async def _deliver(self, rows: list[SpoolRow], probe: bool) -> None:
        renewing = asyncio.create_task(self._renew_leases(rows))
        try:
            await self._deliver_claimed(rows, probe)
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            self._probe_done(probe)

    async def _renew_leases(self, rows: list[SpoolRow]) -> None:
        """Keep the claim while the batch is sent (with its in-process retries): renew at a
        third of the lease, so one late renewal still lands before it runs out."""
        interval = self._lease / 3
        while True:
            await asyncio.sleep(interval)
            try:
                renewed = await self.spool.renew(rows, self._lease)
            except Exception as exc:
                logger.warning(
                    "target %s: renewing a claim failed: %s",
                    self.name,
                    exc,
                    extra={"target": self.name, "reason": str(exc)},
                )
                continue
            if renewed < len(rows):
                lost = len(rows) - renewed
                self._m_lease_lost.inc(lost)
                logger.warning(
                    "target %s: the claim on %d rows ran out before it was renewed; another "
                    "replica may deliver them too",
                    self.name,
                    lost,
                    extra={"target": self.name, "count": lost, "reason": "lease_lost"},
                )

    async def _deliver_claimed(self, rows: list[SpoolRow], probe: bool) -> None:
        if probe:
            rows = await self._expire_held(rows)
            if not rows:
                return
        batch = Batch(
            [r.body for r in rows], sum(r.count for r in rows), counts=[r.count for r in rows]
        )
        result = _Result()
        attempts = 1 if probe else self.config.retries_in_process
        queue: deque[Batch] = deque(self._chunks(rows, batch, result))
        budget = rejection_budget(batch.count)
        while queue:
            part = queue.popleft()
            if result.hold:
                result.held.append(part)
                continue
            if not result.delivered and self.health.reject_streak >= budget:
                # Nothing taken, every request refused: the target, not the events.
                self._fail(REJECTING, f"rejects every event it is sent: {self.last_error}")
                result.hold = True
                result.held.append(part)
                continue
            await self._send_part(part, result, queue, attempts)
        await self._settle(rows, batch, result)

    async def _expire_held(self, rows: list[SpoolRow]) -> list[SpoolRow]:
        """Dead-letter held rows past ``max_age`` without sending them; the rest is the probe."""
        now = now_ms()
        max_age_ms = self.config.max_age * 1000
        expired = [r for r in rows if now - r.first_received_ms >= max_age_ms]
        if expired:
            reason = self._held_too_long_reason()
            await self.spool.dead_letter(expired, reason, now)
            self._m_dead.labels(self.name, self._hold_kind or REJECTING).inc(
                sum(r.count for r in expired)
            )
            logger.warning(
                "target %s: dead-lettered %d held events: %s",
                self.name,
                sum(r.count for r in expired),
                reason,
                extra={
                    "target": self.name,
                    "route": expired[0].route,
                    "count": sum(r.count for r in expired),
                    "reason": reason,
                },
            )
        return [r for r in rows if now - r.first_received_ms < max_age_ms]

    def _chunks(self, rows: list[SpoolRow], batch: Batch, result: _Result) -> list[Batch]:
        """The batch within the target's limits; a stored row that cannot even be cut into
        events is dead-lettered alone as an encode error instead of failing the whole claim."""
        cfg = self.config
        try:
            return batch.chunks(cfg.batch_max_events, cfg.batch_max_bytes)
        except Exception:
            chunks: list[Batch] = []
            for row in rows:
                one = Batch([row.body], row.count, counts=[row.count])
                try:
                    chunks.extend(one.chunks(cfg.batch_max_events, cfg.batch_max_bytes))
                except Exception as exc:
                    logger.warning(
                        "target %s: a stored row cannot be read: %s",
                        self.name,
                        exc,
                        extra={"target": self.name, "reason": str(exc)},
                    )
                    result.dead.append((one, f"{ENCODE_ERROR}: unreadable row: {exc}"[:300]))
            return chunks

    async def _send_part(
        self, batch: Batch, result: _Result, queue: deque[Batch], attempts: int
    ) -> None:
        """Send one part and record what became of it; parts to send next go on ``queue``
        (breadth first, so a good half is tried before a bad half is cut further)."""
        try:
            outcome = await self._send_with_retries(batch, attempts, result)
        except Exception as exc:
            self._unencodable(batch, exc, result, queue)
            return
        verdict = outcome.verdict
        if verdict is Verdict.OK:
            result.delivered += batch.count
            self._m_batch.observe(batch.count)
        elif verdict is Verdict.PARTIAL:
            self._per_event(batch, outcome, result, queue)
        elif verdict is Verdict.RETRY:
            if self.health.failing:  # unreachable for failing_after, or refused meanwhile
                result.hold = True
                result.held.append(batch)
            else:
                result.retry.append((batch, outcome))
        elif verdict in _TARGET_FAILURES:
            result.hold = True
            result.held.append(batch)
        elif batch.count == 1:
            if outcome.status is not None:  # the service refused it (400, or 413 alone)
                result.blamed.append((batch, outcome.reason or verdict.value))
            else:  # refused by the target's own check before sending (too large, …)
                result.dead.append((batch, outcome.reason or verdict.value))
        else:  # REJECT or TOO_LARGE: cut in two and try each half
            queue.extend(batch.halves())

    def _unencodable(
        self, batch: Batch, exc: Exception, result: _Result, queue: deque[Batch]
    ) -> None:
        """The target could not encode (some of) these events: permanent for them. An event
        that cannot even be read back is dead-lettered alone; otherwise bisect."""
        reason = f"{ENCODE_ERROR}: {type(exc).__name__}: {exc}"[:300]
        if batch.count == 1:
            logger.warning(
                "target %s: cannot encode an event: %s",
                self.name,
                exc,
                exc_info=exc,
                extra={"target": self.name, "reason": "encode_error"},
            )
            result.dead.append((batch, reason))
            return
        readable, unreadable = batch.readable()
        if unreadable:
            for one, why in unreadable:
                logger.warning(
                    "target %s: cannot read a stored event: %s",
                    self.name,
                    why,
                    extra={"target": self.name, "reason": why},
                )
                result.dead.append((one, f"{ENCODE_ERROR}: {why}"[:300]))
            if readable.count:
                queue.append(readable)
            return
        queue.extend(batch.halves())

    def _per_event(
        self, batch: Batch, outcome: Outcome, result: _Result, queue: deque[Batch]
    ) -> None:
        """The target named the events it did not take: act on exactly those."""
        named = {i: o for i, o in (outcome.events or {}).items() if 0 <= i < batch.count}
        if not named:  # nothing to act on: the answer says nothing usable
            result.retry.append((batch, replace(outcome, verdict=Verdict.RETRY, events=None)))
            return
        retry = [i for i, o in named.items() if o.verdict is Verdict.RETRY]
        held = [i for i, o in named.items() if o.verdict in _TARGET_FAILURES]
        dead = [i for i in named if i not in retry and i not in held]
        for i in dead:
            result.dead.append((batch.subset((i,)), named[i].reason or outcome.reason))
        if held:  # a later request of the batch found the target failing: keep those events
            first = named[held[0]]
            kind = UNAUTHORIZED if first.verdict is Verdict.UNAUTHORIZED else MISCONFIGURED
            self._fail(kind, first.reason or outcome.reason)
            result.hold = True
            result.held.append(batch.subset(held))
        if retry:
            wait = max((named[i].retry_after or 0.0 for i in retry), default=0.0)
            first = named[retry[0]]
            if not self.health.failing:  # as for a batch-level retry: counts toward failing
                self._hold_kind = UNREACHABLE
            self.health.transient(first.reason or outcome.reason)
            result.retry.append(
                (batch.subset(retry), Outcome(Verdict.RETRY, first.reason, wait or None))
            )
        others = [i for i in range(batch.count) if i not in named]
        if not others:
            return
        if outcome.others_delivered:
            result.delivered += len(others)
            self._m_batch.observe(len(others))
            self.health.delivered()
        else:
            queue.append(batch.subset(others))  # refused because of the named ones: resend

    async def _send_with_retries(self, batch: Batch, attempts: int, result: _Result) -> Outcome:
        def wait(state: RetryCallState) -> float:
            outcome = state.outcome.result() if state.outcome else None
            backoff = wait_random_exponential(multiplier=0.25, max=IN_PROCESS_WAIT_CAP)(state)
            if outcome is not None and outcome.retry_after is not None:
                return max(outcome.retry_after, 0.0)
            return backoff

        def give_up(state: RetryCallState) -> bool:
            outcome = state.outcome.result() if state.outcome else None
            if outcome is not None and (outcome.retry_after or 0) > IN_PROCESS_WAIT_CAP:
                return True  # a long Retry-After: let the spool wait, not a slot
            return (
                self._stopping.is_set()
                or self.health.failing
                or stop_after_attempt(attempts)(state)
            )

        # Most first attempts are answered for good: only a retry builds the retry loop (its
        # set-up costs as much as a small target's request), which starts from this answer.
        answers: list[Outcome] = [await self._send_once(batch)]
        if answers[0].verdict is not Verdict.RETRY:
            return answers[0]
        calls = 0

        async def attempt(part: Batch) -> Outcome:
            nonlocal calls
            calls += 1
            if calls == 1 or self._stopping.is_set():
                return answers[-1]  # the first answer; or stopping: no new request
            answers.append(await self._send_once(part))
            return answers[-1]

        async def pause(seconds: float) -> None:  # a stop ends the wait between attempts
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), seconds)

        retrying = AsyncRetrying(
            stop=give_up,
            wait=wait,
            sleep=pause,
            retry=retry_if_result(lambda o: o.verdict is Verdict.RETRY),
            retry_error_callback=lambda state: state.outcome.result(),  # type: ignore[union-attr]
            reraise=True,
        )
        outcome: Outcome = await retrying(attempt, batch)
        if retrying.statistics.get("attempt_number", 1) > 1 or outcome.verdict is Verdict.RETRY:
            result.retried += batch.count
        return outcome

    async def _send_once(self, batch: Batch) -> Outcome:
        """One request; raises only when the target cannot encode the events."""
        outcome = await self.target.send(batch)
        if outcome.reason and not outcome.ok:
            outcome = replace(outcome, reason=self._redact(outcome.reason))
        self._m_requests.labels(self.name, outcome.verdict.value).inc()
        verdict = outcome.verdict
        if verdict is Verdict.OK:
            self.health.delivered()
            return outcome
        self.last_error = outcome.reason
        if verdict is Verdict.RETRY:
            logger.debug(
                "target %s: %d events not delivered, will retry: %s",
                self.name,
                batch.count,
                outcome.reason,
                extra={
                    "target": self.name,
                    "count": batch.count,
                    "reason": outcome.reason,
                    "status": outcome.status,
                },
            )
            if not self.health.failing:
                self._hold_kind = UNREACHABLE  # the kind, should failing_after pass
            self.health.transient(outcome.reason)
        elif verdict is Verdict.UNAUTHORIZED:
            self._fail(UNAUTHORIZED, outcome.reason)
        elif verdict is Verdict.FATAL:
            self._fail(MISCONFIGURED, outcome.reason)
        elif verdict in (Verdict.REJECT, Verdict.TOO_LARGE) and outcome.status is not None:
            # The service refused them (not a check of the target's own). A 413 counts too: a
            # proxy that refuses every body is a target that rejects everything.
            self.health.rejected()
        return outcome

    def _fail(self, kind: str, reason: str) -> None:
        self._hold_kind = kind
        self.health.fail(reason)

    async def _settle(self, rows: list[SpoolRow], batch: Batch, result: _Result) -> None:
        now = now_ms()
        first_received = min(r.first_received_ms for r in rows)
        attempts = max(r.attempts for r in rows) + 1
        if result.blamed:
            if result.delivered or self.health.proven:  # it takes events: these are bad
                result.dead.extend(result.blamed)
            else:  # it has taken nothing: blame the target, keep the events
                if not self.health.failing:
                    reason = f"rejects every event it is sent: {self.last_error}"
                    self._fail(REJECTING, reason)
                result.hold = True
                result.held.extend(part for part, _ in result.blamed)
        if result.retried:
            self._m_retried.inc(result.retried)
        if result.delivered:
            self._retry_at = 0.0
            self._m_delivered.inc(result.delivered)
            self._m_latency.observe(max(0.0, (now - first_received) / 1000))
        if not result.retry and not result.dead and not result.held:
            await self.spool.ack(rows)
            return
        if not result.retry and not result.dead and not result.delivered:
            await self._hold(rows, now)  # all held: the rows go back untouched
            return
        # Whole batch failed transiently: keep the rows, count the attempt.
        if not result.dead and not result.held and not result.delivered and len(result.retry) == 1:
            outcome = result.retry[0][1]
            if self._exhausted(attempts, first_received, now):
                reason = self._exhausted_reason(attempts, outcome)
                await self.spool.dead_letter(rows, reason, now, attempts)
                self._m_dead.labels(self.name, "exhausted").inc(batch.count)
                logger.warning(
                    "target %s: dead-lettered %d events: %s",
                    self.name,
                    batch.count,
                    reason,
                    extra={
                        "target": self.name,
                        "route": rows[0].route,
                        "count": batch.count,
                        "reason": reason,
                        "status": outcome.status,
                    },
                )
                return
            next_attempt = now + self._backoff_ms(attempts, outcome)
            self._retry_at = next_attempt / 1000
            await self.spool.retry(rows, next_attempt, outcome.reason)
            return
        # Mixed: replace the claimed rows by what is left to retry, what is held, what is dead.
        template = rows[0]
        requeue: list[NewRow] = []
        dead: list[DeadRow] = []
        for part, outcome in result.retry:
            if self._exhausted(attempts, first_received, now):
                result.dead.append((part, self._exhausted_reason(attempts, outcome)))
                continue
            at = now + self._backoff_ms(attempts, outcome)
            self._retry_at = at / 1000
            requeue.append(
                self._requeued(template.route, part, first_received, attempts, at, outcome.reason)
            )
        probe_ms = self._probe_ms()
        for part in result.held:
            requeue.append(
                self._requeued(
                    template.route,
                    part,
                    first_received,
                    attempts - 1,  # the target's failure is not the events' attempt
                    probe_ms,
                    self.health.reason,
                )
            )
        for part, reason in result.dead:
            dead.append(dead_from(template, reason, now, part.stored_json(), part.count, attempts))
        await self.spool.settle(rows, requeue, dead)
        # Counted once stored: a reader of the metric finds the dead rows in the spool.
        for part, reason in result.dead:
            self._m_dead.labels(self.name, _reason_label(reason)).inc(part.count)
            logger.warning(
                "target %s: dead-lettered %d events: %s",
                self.name,
                part.count,
                reason,
                extra={
                    "target": self.name,
                    "route": template.route,
                    "count": part.count,
                    "reason": reason,
                },
            )

    async def _hold(self, rows: list[SpoolRow], now: int) -> None:
        """Put rows back untouched (attempts not counted) until the next probe."""
        next_attempt = self._probe_ms()
        requeue = [
            NewRow(
                row.target,
                row.route,
                row.body,
                row.count,
                row.first_received_ms,
                attempts=row.attempts,
                next_attempt_ms=next_attempt,
                last_error=self.health.reason,
            )
            for row in rows
        ]
        await self.spool.settle(rows, requeue, ())

    def _probe_ms(self) -> int:
        """When held rows are due again: just before the probe, so the probe finds them."""
        return int(self.health.probe_at * 1000) - 50

    def _held_too_long_reason(self) -> str:
        kind = self._hold_kind or REJECTING
        return f"{kind}: held past max_age {self.config.max_age:g}s: {self.health.reason}"

    def _requeued(
        self, route: str, part: Batch, first_received: int, attempts: int, at_ms: int, error: str
    ) -> NewRow:
        """What is left of a claimed batch, back in the spool to be tried at ``at_ms``."""
        return NewRow(
            self.name,
            route,
            part.stored_json(),
            part.count,
            first_received,
            attempts=attempts,
            next_attempt_ms=at_ms,
            last_error=error,
        )

    def _exhausted(self, attempts: int, first_received_ms: int, now: int) -> bool:
        return (
            attempts >= self.config.max_attempts
            or now - first_received_ms >= self.config.max_age * 1000
        )

    def _exhausted_reason(self, attempts: int, outcome: Outcome) -> str:
        return (
            f"gave up after {attempts} attempts or max_age "
            f"{self.config.max_age:g}s: {outcome.reason}"
        )

    def _backoff_ms(self, attempts: int, outcome: Outcome) -> int:
        """Exponential backoff with full jitter, never sooner than the target's Retry-After."""
        cfg = self.config
        ceiling = min(cfg.retry_max, cfg.retry_initial * (2 ** min(attempts - 1, 30)))
        delay = random.uniform(ceiling / 2, ceiling)
        if outcome.retry_after is not None:
            delay = max(delay, outcome.retry_after)
        return int(delay * 1000)


def _reason_label(reason: str) -> str:
    """A low-cardinality metric label for a dead-letter reason."""
    if reason.startswith("HTTP "):
        return reason[:8].strip(": ").replace(" ", "_").lower()  # e.g. http_400
    if reason.startswith("gave up"):
        return "exhausted"
    return reason.split(":", 1)[0].strip().replace(" ", "_").lower()[:32] or "rejected"
