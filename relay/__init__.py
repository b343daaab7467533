"""statsig-relay: moves events between Statsig and other systems, durably."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("statsig-relay")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.1.0"
