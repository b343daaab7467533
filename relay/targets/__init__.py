"""Targets by ``type`` name. Adding a target: one module here and one line in TARGETS."""

from __future__ import annotations

from .amplitude import AmplitudeTarget
from .base import Batch, Outcome, Target, TargetConfig, Verdict
from .chronosphere import ChronosphereTarget
from .file import FileTarget
from .fivetran import FivetranTarget
from .heap import HeapTarget
from .mixpanel import MixpanelTarget
from .statsig import StatsigTarget
from .webhook import WebhookTarget

TARGETS: dict[str, type[Target]] = {
    "webhook": WebhookTarget,
    "fivetran": FivetranTarget,
    "file": FileTarget,
    "heap": HeapTarget,
    "chronosphere": ChronosphereTarget,
    "statsig": StatsigTarget,
    "amplitude": AmplitudeTarget,
    "mixpanel": MixpanelTarget,
}

__all__ = ["TARGETS", "Batch", "Outcome", "Target", "TargetConfig", "Verdict"]
