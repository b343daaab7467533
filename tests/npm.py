"""The npm packages of the real JavaScript SDKs (tests/js/package.json and its lock file).

tests/run.sh installs them with ``npm ci``; the fixture does the same when a checkout runs
pytest directly and tests/js/node_modules is missing or older than the lock file, so the SDK
tests never run against packages other than the locked ones.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

JS = Path(__file__).resolve().parent / "js"
NODE_MODULES = JS / "node_modules"
INSTALL_TIMEOUT = 300.0


def installed() -> bool:
    marker = NODE_MODULES / ".package-lock.json"  # npm writes it on every install
    lock = JS / "package-lock.json"
    return marker.exists() and marker.stat().st_mtime >= lock.stat().st_mtime


@pytest.fixture(scope="session")
def js_packages() -> Path:
    """tests/js/node_modules, installed from the lock file if it is not already."""
    if not installed():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=JS,
            check=True,
            timeout=INSTALL_TIMEOUT,
        )
    return NODE_MODULES


__all__ = ["JS", "NODE_MODULES", "js_packages"]
