"""A real headless Chromium for tests, driven by Playwright (Python, async).

Debian's ``chromium`` package (on the PATH, installed by tests/run.sh) is used as is:
Playwright's own browser download is never needed. Each test gets a fresh browser (Playwright
gives every launch its own temporary profile) with the network quietened: no background
services, no component updates, no QUIC. Use it with loopback URLs only::

    from tests.browser import browser  # noqa: F401  (the fixture)

    async def test_page(browser: Browser) -> None:
        page = await browser.new_page()
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, async_playwright

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    """Debian's Chromium on the PATH; tests/run.sh installs it."""
    found = shutil.which("chromium")
    if found is None:
        raise RuntimeError("chromium is not installed: tests/run.sh installs Debian's chromium")
    return found


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


__all__ = ["CHROMIUM_ARGS", "browser", "chromium_path"]
