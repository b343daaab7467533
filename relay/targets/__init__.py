"""Targets by ``type`` name. Adding a target: one module here and one line in TARGETS."""

from __future__ import annotations

from .amplitude import AmplitudeTarget
from .base import Batch, Outcome, Target, TargetConfig, Verdict
from .chronosphere import ChronosphereTarget
from .datadog import DatadogTarget
from .file import FileTarget
from .fivetran import FivetranTarget
from .grafana import GrafanaTarget
from .heap import HeapTarget
from .mixpanel import MixpanelTarget
from .segment import SegmentTarget
from .slack import SlackTarget
from .statsig import StatsigTarget
from .webhook import WebhookTarget

TARGETS: dict[str, type[Target]] = {
    "webhook": WebhookTarget,
    "fivetran": FivetranTarget,
    "file": FileTarget,
    "heap": HeapTarget,
    "chronosphere": ChronosphereTarget,
    "statsig": StatsigTarget,
    "segment": SegmentTarget,
    "datadog": DatadogTarget,
    "slack": SlackTarget,
    "grafana": GrafanaTarget,
    "amplitude": AmplitudeTarget,
    "mixpanel": MixpanelTarget,
}

__all__ = ["TARGETS", "Batch", "Outcome", "Target", "TargetConfig", "Verdict"]
