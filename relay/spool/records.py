"""The spool's records: plain data that crosses from the relay to the spool's writer process and
back, so this module imports nothing heavier than dataclasses (the writer process imports it)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class NewRow:
    """A batch of events for one target, about to be enqueued."""

    target: str
    route: str
    body: bytes  # JSON array of events
    count: int
    first_received_ms: int
    attempts: int = 0
    next_attempt_ms: int = 0
    last_error: str = ""


@dataclass(slots=True)
class SpoolRow:
    """A claimed row; ``id`` is backend-specific (int for SQLite, stream id for Redis)."""

    id: int | str
    target: str
    route: str
    body: bytes
    count: int
    first_received_ms: int
    attempts: int
    # Epoch ms the claim holds the row until; renew() extends it only while it is still ours.
    lease_until_ms: int = 0


@dataclass(slots=True)
class DeadRow:
    """A dead-lettered batch with why it died."""

    id: int | str
    target: str
    route: str
    body: bytes
    count: int
    first_received_ms: int
    attempts: int
    dead_at_ms: int
    reason: str


@dataclass(slots=True)
class TargetDepth:
    rows: int = 0
    events: int = 0
    oldest_received_ms: int | None = None


@dataclass(slots=True)
class SpoolStats:
    queued: dict[str, TargetDepth] = field(default_factory=dict)
    dead: dict[str, TargetDepth] = field(default_factory=dict)
    bytes_used: int = 0


def dead_from(
    row: SpoolRow | NewRow,
    reason: str,
    now_ms: int,
    body: bytes | None = None,
    count: int | None = None,
    attempts: int | None = None,
) -> DeadRow:
    """A DeadRow for (part of) a row; ``body``/``count`` narrow it to the events that failed;
    ``attempts`` counts the attempt that killed it (a claimed row's count excludes it)."""
    return DeadRow(
        id=getattr(row, "id", 0),
        target=row.target,
        route=row.route,
        body=row.body if body is None else body,
        count=row.count if count is None else count,
        first_received_ms=row.first_received_ms,
        attempts=row.attempts if attempts is None else attempts,
        dead_at_ms=now_ms,
        reason=reason[:500],
    )
