"""Real headless Chromium for tests of what a browser sees, driven by Playwright.

Playwright's own browser download does not work on our machines, so the
tests drive Debian's ``chromium`` package (installed by ``scripts/browser``,
which ``scripts/test`` sources); ``NOTEBURST_TEST_CHROMIUM`` points at another
binary.  A missing browser fails the test with that hint rather than skipping:
a skipped browser test would hide exactly what it exists to show.

Every page records what its console and the page itself report as errors
(`BrowserPage.errors`), and `open_page` keeps a screenshot of the final state
in the test's temporary folder (the CI artifact) whether the test passed or
not.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Error,
    Page,
    async_playwright,
    expect,
)

__all__ = ["BrowserPage", "chromium", "open_page"]

CHROMIUM = Path(os.environ.get("NOTEBURST_TEST_CHROMIUM", "/usr/bin/chromium"))
"""The browser binary: Debian's package unless the variable names another."""

DEFAULT_TIMEOUT_MS = 30_000
"""Every Playwright wait (navigation, selector, expect) gives up after this."""

expect.set_options(timeout=DEFAULT_TIMEOUT_MS)


@dataclass
class BrowserPage:
    """A page and what went wrong on it."""

    page: Page
    errors: list[str] = field(default_factory=list)
    """Console messages of type ``error`` and uncaught page exceptions."""

    def assert_no_errors(self) -> None:
        """Fail the test if the page logged an error or threw."""
        assert not self.errors, "the page reported errors:\n" + "\n".join(self.errors)


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Launch headless Chromium for the duration of the block."""
    if not os.path.exists(CHROMIUM):  # noqa: ASYNC240 (one stat, before any I/O)
        pytest.fail(
            f"{CHROMIUM} is missing: run scripts/browser (apt install chromium "
            "chromium-driver) or set NOTEBURST_TEST_CHROMIUM"
        )
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            # No sandbox: CI runs as root, where Chromium refuses its sandbox.
            args=["--no-sandbox", "--disable-dev-shm-usage"],
            timeout=DEFAULT_TIMEOUT_MS,
        )
        try:
            yield browser
        finally:
            await browser.close()


@contextlib.asynccontextmanager
async def open_page(
    browser: Browser, artifacts: Path, name: str = "page"
) -> AsyncIterator[BrowserPage]:
    """A fresh context and page; ``artifacts/<name>.png`` is its last screenshot.

    Each call gets its own browser context (cookies, storage), like a
    separate visitor.
    """
    context: BrowserContext = await browser.new_context()
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    page = await context.new_page()
    watched = BrowserPage(page)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            watched.errors.append(f"console: {message.text} ({message.location})")

    def on_page_error(error: Error) -> None:
        watched.errors.append(f"uncaught: {error}")

    page.on("console", on_console)
    page.on("pageerror", on_page_error)
    try:
        yield watched
    finally:
        with contextlib.suppress(Error):
            await page.screenshot(path=artifacts / f"{name}.png", full_page=True)
        await context.close()
