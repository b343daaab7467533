"""Delivery: one loop per target, from the spool to the target, with retries and dead letters.

The loop claims due rows (leased), lingers briefly for a fuller batch, and sends with a bounded
number of requests in flight. Each batch ends in exactly one spool operation:

* delivered → ack;
* retryable (network, timeout, 408, 429, 5xx but 501) → a few quick retries in process
  (tenacity: exponential backoff with jitter, Retry-After honoured), then back to the spool with
  a later next-attempt time; past ``max_attempts`` or ``max_age`` → dead-letter;
* rejected (other 4xx) → bisect to isolate the bad events; only those are dead-lettered;
* encode error (the target's ``send`` raised) → the same bisection: only the events that
  cannot be encoded are dead-lettered, with reason ``encode_error``; the rest are delivered;
* too large (413) → split and resend;
* unauthorized (401/403: the target refuses our credential) → no bisection; the target is
  marked failing and the events are held in the spool (attempts not counted) while one probe
  batch per backoff period tries again; the first success clears it. Held events past
  ``max_age`` are dead-lettered with reason ``unauthorized``;
* fatal (the target is misconfigured, e.g. not its API) → dead-letter, mark the target failing.

A slow or failing target only ever holds its own loop's slots: targets never share a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from tenacity import AsyncRetrying, RetryCallState, retry_if_result, stop_after_attempt
from tenacity.wait import wait_random_exponential

from .events import now_ms
from .metrics import RelayMetrics
from .spool.base import Spool
from .spool.records import DeadRow, NewRow, SpoolRow, dead_from
from .targets.base import Batch, Outcome, Target, Verdict

logger = logging.getLogger(__name__)

POLL_SECONDS = 1.0  # fallback poll for rows made due by time (retries) or by other processes
IN_PROCESS_WAIT_CAP = 10.0  # longer Retry-After waits go back to the spool instead
ENCODE_ERROR = "encode_error"  # dead-letter reason (and metric label): the target could not encode
UNAUTHORIZED = "unauthorized"  # dead-letter reason: held past max_age while our key was refused


@dataclass(slots=True)
class _Result:
    """What happened to each part of a claimed batch."""

    delivered: int = 0
    retry: list[tuple[Batch, Outcome]] = field(default_factory=list)
    dead: list[tuple[Batch, str]] = field(default_factory=list)
    held: list[Batch] = field(default_factory=list)  # the target refused our credential
    fatal: Outcome | None = None
    refused: Outcome | None = None


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
        # The claim lease (the Redis spool's `lease:`): replicas take over a dead replica's rows
        # after it; a live send renews it, so it is never taken over while it runs.
        self._lease = spool.lease_s
        self._slots = asyncio.Semaphore(self.config.concurrency)
        self._inflight: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.last_error = ""
        self._retry_at = 0.0  # epoch s of the next attempt of a batch put back; 0 when none
        # While the target refuses our credential: since when, the refusal, and when the next
        # probe may go out (batches claimed before then are held without a request).
        self._refused_since: float | None = None
        self._refusal: Outcome | None = None
        self._probe_at = 0.0
        m = metrics
        self._m_delivered = m.events_delivered.labels(self.name)
        self._m_retried = m.events_retried.labels(self.name)
        self._m_dead = m.events_dead_lettered
        self._m_requests = m.delivery_requests
        self._m_latency = m.delivery_latency.labels(self.name)
        self._m_batch = m.batch_size.labels(self.name)
        self._m_failing = m.target_failing.labels(self.name)
        self._m_lease_lost = m.leases_lost.labels(self.name)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"deliver-{self.name}")

    def backoff_s(self, now: float) -> float:
        """How long until the batch last put back is tried again (0 once delivering)."""
        return max(0.0, self._retry_at - now)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self, grace: float) -> None:
        """Stop claiming; let sends in flight finish within ``grace``; cancel the rest.

        Cancelled sends leave their rows leased in the spool; they are claimed again after a
        restart (at-least-once).
        """
        self._stopping.set()
        self.spool.wakeup(self.name).set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._inflight:
            _, pending = await asyncio.wait(self._inflight, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    # -- the loop --------------------------------------------------------------------------
    async def _run(self) -> None:
        wakeup = self.spool.wakeup(self.name)
        cfg = self.config
        while not self._stopping.is_set():
            await self._slots.acquire()
            try:
                wakeup.clear()
                rows = await self.spool.claim(
                    self.name, cfg.batch_max_events, cfg.batch_max_bytes, self._lease
                )
                if rows and cfg.linger > 0:
                    rows = await self._linger(rows, wakeup)
            except Exception:
                self._slots.release()
                logger.exception("target %s: claiming from the spool failed", self.name)
                await self._sleep(wakeup, POLL_SECONDS)
                continue
            if not rows:
                self._slots.release()
                await self._sleep(wakeup, POLL_SECONDS)
                continue
            task = asyncio.create_task(self._deliver(rows))
            self._inflight.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            logger.error("target %s: delivery task failed", self.name, exc_info=task.exception())

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
    async def _deliver(self, rows: list[SpoolRow]) -> None:
        renewing = asyncio.create_task(self._renew_leases(rows))
        try:
            await self._deliver_claimed(rows)
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing

    async def _renew_leases(self, rows: list[SpoolRow]) -> None:
        """Keep the claim while the batch is sent (with its in-process retries): renew at a
        third of the lease, so one late renewal still lands before it runs out."""
        interval = self._lease / 3
        while True:
            await asyncio.sleep(interval)
            try:
                renewed = await self.spool.renew(rows, self._lease)
            except Exception as exc:
                logger.warning("target %s: renewing a claim failed: %s", self.name, exc)
                continue
            if renewed < len(rows):
                lost = len(rows) - renewed
                self._m_lease_lost.inc(lost)
                logger.warning(
                    "target %s: the claim on %d rows ran out before it was renewed; another "
                    "replica may deliver them too",
                    self.name,
                    lost,
                )

    async def _deliver_claimed(self, rows: list[SpoolRow]) -> None:
        batch = Batch(
            [r.body for r in rows], sum(r.count for r in rows), counts=[r.count for r in rows]
        )
        result = _Result()
        if self._refusal is not None and time.time() < self._probe_at:
            result.refused = self._refusal  # not our turn to probe: hold without a request
            result.held.append(batch)
            await self._settle(rows, batch, result)
            return
        for chunk in self._chunks(rows, batch, result):
            await self._send_part(chunk, result)
        await self._settle(rows, batch, result)

    def _chunks(self, rows: list[SpoolRow], batch: Batch, result: _Result) -> list[Batch]:
        """The batch within the target's limits; a stored row that cannot even be read is
        dead-lettered alone as an encode error instead of failing the whole claim."""
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
                    logger.warning("target %s: a stored row cannot be read: %s", self.name, exc)
                    result.dead.append((one, f"{ENCODE_ERROR}: unreadable row: {exc}"[:300]))
            return chunks

    async def _send_part(self, batch: Batch, result: _Result) -> None:
        if result.fatal is not None:  # the target refuses us: don't keep knocking
            result.dead.append((batch, result.fatal.reason))
            return
        if result.refused is not None:  # our credential is refused: keep the rest for later
            result.held.append(batch)
            return
        outcome = await self._send_with_retries(batch)
        verdict = outcome.verdict
        if verdict is Verdict.OK:
            result.delivered += batch.count
            self._m_batch.observe(batch.count)
            return
        if verdict is Verdict.RETRY:
            result.retry.append((batch, outcome))
            return
        if verdict is Verdict.UNAUTHORIZED:
            result.refused = outcome
            result.held.append(batch)
            return
        if verdict is Verdict.FATAL:
            result.fatal = outcome
            result.dead.append((batch, outcome.reason))
            return
        # REJECT (an encode error too) or TOO_LARGE: bisect until the offenders stand alone.
        if batch.count > 1:
            try:
                halves = batch.halves()
            except Exception as exc:  # rows that cannot be read: nothing to split them by
                result.dead.append((batch, f"{ENCODE_ERROR}: unreadable row: {exc}"[:300]))
                return
            for half in halves:
                if half.count:
                    await self._send_part(half, result)
            return
        result.dead.append((batch, outcome.reason or verdict.value))

    async def _send_with_retries(self, batch: Batch) -> Outcome:
        attempts = self.config.retries_in_process

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
            return self._stopping.is_set() or stop_after_attempt(attempts)(state)

        retrying = AsyncRetrying(
            stop=give_up,
            wait=wait,
            retry=retry_if_result(lambda o: o.verdict is Verdict.RETRY),
            retry_error_callback=lambda state: state.outcome.result(),  # type: ignore[union-attr]
            reraise=True,
        )
        outcome: Outcome = await retrying(self._send_once, batch)
        return outcome

    async def _send_once(self, batch: Batch) -> Outcome:
        try:
            outcome = await self.target.send(batch)
        except Exception as exc:
            # The target could not encode (some of) these events: permanent for them, so
            # bisection isolates them and delivers the rest. Retrying would fail the same way
            # and hold every event batched with them.
            outcome = Outcome(Verdict.REJECT, f"{ENCODE_ERROR}: {type(exc).__name__}: {exc}"[:300])
            if batch.count == 1:
                logger.warning(
                    "target %s: cannot encode an event: %s", self.name, exc, exc_info=exc
                )
        if outcome.reason and not outcome.ok:
            outcome = replace(outcome, reason=self._redact(outcome.reason))
        self._m_requests.labels(self.name, outcome.verdict.value).inc()
        if outcome.verdict is Verdict.RETRY:
            self._m_retried.inc(batch.count)
            self.last_error = outcome.reason
            logger.warning(
                "target %s: %d events not delivered, will retry: %s",
                self.name,
                batch.count,
                outcome.reason,
            )
        elif outcome.verdict is Verdict.UNAUTHORIZED:
            self._refused(outcome)
        elif outcome.verdict is Verdict.FATAL:
            self._mark_failing(outcome)
        elif outcome.ok and self.target.health.failing:
            self.target.health.failing = False
            self._refused_since = self._refusal = None
            self._probe_at = 0.0
            self._m_failing.set(0)
            logger.info("target %s: accepting events again", self.name)
        return outcome

    def _refused(self, outcome: Outcome) -> None:
        """Our credential was refused: hold events, probe again after a backoff that grows
        with the length of the refusal (retry_initial … retry_max)."""
        now = time.time()
        if self._refused_since is None:
            self._refused_since = now
        self._refusal = outcome
        self.last_error = outcome.reason
        cfg = self.config
        delay = min(cfg.retry_max, max(cfg.retry_initial, now - self._refused_since))
        self._probe_at = now + random.uniform(delay / 2, delay)
        self._mark_failing(outcome)

    def _mark_failing(self, outcome: Outcome) -> None:
        health = self.target.health
        if not health.failing:
            logger.error("target %s: failing: %s", self.name, outcome.reason)
        health.failing = True
        health.reason = outcome.reason
        health.since = time.time()
        self._m_failing.set(1)

    async def _settle(self, rows: list[SpoolRow], batch: Batch, result: _Result) -> None:
        now = now_ms()
        first_received = min(r.first_received_ms for r in rows)
        attempts = max(r.attempts for r in rows) + 1
        if result.delivered:
            self._retry_at = 0.0
            self._m_delivered.inc(result.delivered)
            self._m_latency.observe(max(0.0, (now - first_received) / 1000))
        if not result.retry and not result.dead and not result.held:
            await self.spool.ack(rows)
            return
        refusal = result.refused
        if refusal is not None and not result.retry and not result.dead and not result.delivered:
            await self._hold(rows, refusal, now)
            return
        # Whole batch failed transiently: keep the rows, count the attempt.
        if result.retry and not result.dead and result.delivered == 0 and len(result.retry) == 1:
            outcome = result.retry[0][1]
            if self._exhausted(attempts, first_received, now):
                reason = self._exhausted_reason(attempts, outcome)
                await self.spool.dead_letter(rows, reason, now, attempts)
                self._m_dead.labels(self.name, "exhausted").inc(batch.count)
                return
            next_attempt = now + self._backoff_ms(attempts, outcome)
            self._retry_at = next_attempt / 1000
            await self.spool.retry(rows, next_attempt, outcome.reason)
            return
        # Mixed: replace the claimed rows by what is left to retry and what is dead.
        template = rows[0]
        requeue: list[NewRow] = []
        dead: list[DeadRow] = []
        for part, outcome in result.retry:
            if self._exhausted(attempts, first_received, now):
                result.dead.append((part, self._exhausted_reason(attempts, outcome)))
                continue
            requeue.append(
                self._requeued(
                    template.route,
                    part,
                    first_received,
                    attempts,
                    now + self._backoff_ms(attempts, outcome),
                    outcome.reason,
                )
            )
        for part in result.held:
            assert refusal is not None  # held only once refused
            if now - first_received >= self.config.max_age * 1000:
                result.dead.append((part, self._held_too_long_reason(refusal)))
                continue
            requeue.append(
                self._requeued(
                    template.route,
                    part,
                    first_received,
                    attempts - 1,  # a refused credential is not the events' attempt
                    int(self._probe_at * 1000),
                    refusal.reason,
                )
            )
        for part, reason in result.dead:
            dead.append(dead_from(template, reason, now, part.stored_json(), part.count, attempts))
            self._m_dead.labels(self.name, _reason_label(reason)).inc(part.count)
            logger.warning("target %s: dead-lettered %d events: %s", self.name, part.count, reason)
        await self.spool.settle(rows, requeue, dead)

    async def _hold(self, rows: list[SpoolRow], refusal: Outcome, now: int) -> None:
        """Put rows back untouched (attempts not counted) until the next probe; rows past
        ``max_age`` are dead-lettered with reason ``unauthorized``."""
        self._retry_at = self._probe_at
        next_attempt = int(self._probe_at * 1000)
        requeue: list[NewRow] = []
        dead: list[DeadRow] = []
        for row in rows:
            if now - row.first_received_ms >= self.config.max_age * 1000:
                dead.append(dead_from(row, self._held_too_long_reason(refusal), now))
                self._m_dead.labels(self.name, UNAUTHORIZED).inc(row.count)
                continue
            requeue.append(
                NewRow(
                    row.target,
                    row.route,
                    row.body,
                    row.count,
                    row.first_received_ms,
                    attempts=row.attempts,
                    next_attempt_ms=next_attempt,
                    last_error=refusal.reason,
                )
            )
        self._m_retried.inc(sum(r.count for r in requeue))
        await self.spool.settle(rows, requeue, dead)

    def _held_too_long_reason(self, refusal: Outcome) -> str:
        return f"{UNAUTHORIZED}: held past max_age {self.config.max_age:g}s: {refusal.reason}"

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
