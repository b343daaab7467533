"""Every metric the relay exports, in one place, on a per-app registry (tests stay isolated).

Counters are incremented once per batch, never per event, to keep the hot path cheap.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_DELIVERY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)
_BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


class RelayMetrics:
    """The relay's metrics; names start with ``relay_``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # -- ingest
        self.requests = Counter(
            "relay_requests",
            "HTTP requests to sources by answer code",
            ["source", "code"],
            registry=r,
        )
        self.events_received = Counter(
            "relay_events_received",
            "Events parsed from accepted requests",
            ["source"],
            registry=r,
        )
        self.events_rejected = Counter(
            "relay_events_rejected",
            "Events refused at ingest (malformed, bad auth, spool full, body too large)",
            ["source", "reason"],
            registry=r,
        )
        self.requests_refused = Counter(
            "relay_requests_refused",
            "Requests a public source's guard refused (origin, rate_limited, too_many_events)",
            ["source", "reason"],
            registry=r,
        )
        self.internal_errors = Counter(
            "relay_internal_errors",
            "Requests answered 500: a bug in the relay (each logged with its traceback)",
            ["source"],
            registry=r,
        )
        self.bad_http_requests = Counter(
            "relay_bad_http_requests",
            "Requests aiohttp could not parse, or with a body that cannot be decoded (answered "
            "400/415; logged at most once a minute)",
            ["listener"],
            registry=r,
        )
        self.events_without_user = Counter(
            "relay_events_without_user",
            "Events accepted without a userID or custom ID (Statsig cannot join them to a unit)",
            ["source"],
            registry=r,
        )
        self.ingest_latency = Histogram(
            "relay_ingest_latency_seconds",
            "Time from request start to the answer (incl. commit)",
            ["source"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        # -- routing
        self.events_routed = Counter(
            "relay_events_routed", "Events a route passed on to its target", ["route"], registry=r
        )
        self.events_filtered = Counter(
            "relay_events_filtered", "Events a route's filter did not match", ["route"], registry=r
        )
        self.events_dropped = Counter(
            "relay_events_dropped",
            "Events a route matched but deliberately dropped (dedup, first_exposure, "
            "unsupported_by_target, statsig_internal)",
            ["route", "reason"],
            registry=r,
        )
        self.secrets_redacted = Counter(
            "relay_secrets_redacted",
            "Statsig server secrets (secret-…) replaced in events bound for a non-Statsig target",
            ["route"],
            registry=r,
        )
        # -- delivery
        self.events_delivered = Counter(
            "relay_events_delivered", "Events the target accepted", ["target"], registry=r
        )
        self.events_retried = Counter(
            "relay_events_retried",
            "Events whose delivery needed a retry, counted once per claim from the spool (the "
            'failed requests are relay_delivery_requests_total{outcome="retry"})',
            ["target"],
            registry=r,
        )
        self.events_dead_lettered = Counter(
            "relay_events_dead_lettered",
            "Events moved to the dead-letter queue",
            ["target", "reason"],
            registry=r,
        )
        self.delivery_requests = Counter(
            "relay_delivery_requests",
            "Requests to targets by outcome",
            ["target", "outcome"],
            registry=r,
        )
        self.delivery_latency = Histogram(
            "relay_delivery_latency_seconds",
            "Time from receipt to delivery, per event batch",
            ["target"],
            buckets=_DELIVERY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "relay_batch_size_events",
            "Events per request to a target",
            ["target"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.target_failing = Gauge(
            "relay_target_failing",
            "1 while a target is failing (credential refused, misconfigured, rejects every "
            "event, or unreachable for failing_after): its events are held and probed",
            ["target"],
            registry=r,
        )
        self.target_state = Gauge(
            "relay_target_state",
            "1 for a target's current health state (ok, degraded, failing), 0 for the others",
            ["target", "state"],
            registry=r,
        )
        self.target_held_events = Gauge(
            "relay_target_held_events",
            "Events waiting in the spool for a failing target (held until a probe delivers)",
            ["target"],
            registry=r,
        )
        self.leases_lost = Counter(
            "relay_spool_leases_lost",
            "Claimed rows whose lease ran out before the deliverer renewed it (another replica "
            "may deliver them too)",
            ["target"],
            registry=r,
        )
        self.fields_trimmed = Counter(
            "relay_target_fields_trimmed",
            "Events whose field a target trimmed to fit the service's documented limits",
            ["target", "field"],
            registry=r,
        )
        # -- spool
        self.spool_events = Gauge(
            "relay_spool_events", "Events waiting in the spool", ["target"], registry=r
        )
        self.spool_oldest_age = Gauge(
            "relay_spool_oldest_age_seconds",
            "Age of the oldest waiting event",
            ["target"],
            registry=r,
        )
        self.dlq_events = Gauge(
            "relay_dlq_events", "Events in the dead-letter queue", ["target"], registry=r
        )
        self.spool_bytes = Gauge(
            "relay_spool_bytes", "Bytes used by the spool (queue and dead letters)", registry=r
        )
        self.spool_limit_bytes = Gauge(
            "relay_spool_limit_bytes", "The spool's configured size limit", registry=r
        )
        self.spool_writable = Gauge(
            "relay_spool_writable",
            "1 while the spool takes new events; 0 while ingest answers 503 (see the reason)",
            registry=r,
        )
        self.spool_refusing = Gauge(
            "relay_spool_refusing",
            "1 while the spool refuses new events for this reason: size_limit (spool.max_size)"
            " or disk_full (no room on the spool's disk; deliveries go on)",
            ["reason"],
            registry=r,
        )
        self.spool_commits = Counter(
            "relay_spool_commit_errors", "Spool writes that failed", registry=r
        )
        # -- process
        self.config_reloads = Counter(
            "relay_config_reloads", "Config reloads by result", ["result"], registry=r
        )
