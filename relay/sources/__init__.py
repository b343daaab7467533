"""Sources by ``type`` name. Adding a source: one module here and one line in SOURCES."""

from __future__ import annotations

from .base import Endpoint, Parsed, Source, SourceConfig, SourceError
from .json_source import JsonSource
from .segment import SegmentSource
from .statsig_events import StatsigEventsSource
from .statsig_webhook import StatsigWebhookSource

SOURCES: dict[str, type[Source]] = {
    "statsig_webhook": StatsigWebhookSource,
    "segment": SegmentSource,
    "json": JsonSource,
    "statsig_events": StatsigEventsSource,
}

__all__ = ["SOURCES", "Endpoint", "Parsed", "Source", "SourceConfig", "SourceError"]
