"""Sources by ``type`` name. Adding a source: one module here and one line in SOURCES."""

from __future__ import annotations

from .base import Endpoint, Parsed, Source, SourceConfig, SourceError
from .statsig_events import StatsigEventsSource
from .statsig_webhook import StatsigWebhookSource

SOURCES: dict[str, type[Source]] = {
    "statsig_webhook": StatsigWebhookSource,
    "statsig_events": StatsigEventsSource,
}

__all__ = ["SOURCES", "Endpoint", "Parsed", "Source", "SourceConfig", "SourceError"]
