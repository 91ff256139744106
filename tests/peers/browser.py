"""Debian's Chromium, driven by Playwright for Python, for tests of the service's pages.

Playwright launches /usr/bin/chromium (`dev.py test` installs Debian's package as root,
like PostgreSQL) and never downloads a browser of its own: never run `playwright install`.

The browser starts once per test session, on a thread and event loop of its own. A
Playwright object belongs to the event loop that made it, and pytest-asyncio gives every
test and function-scoped fixture (the service, its HTTP client) a loop of its own
(`asyncio_default_fixture_loop_scope = "function"`); a browser on the session's loop
would need each browser test, and every async fixture it uses, moved to that loop too.
So a test hands its tab a coroutine function of the page (`await tab.run(drive)`): it runs
on the browser's loop while the test's own loop goes on serving the app under test.

Each tab is a new browser context (its own cookies, storage and cache) with one page.
`Browser.launch` gives the browser a fresh, empty user-data directory of its own (a
temporary profile that it deletes on close).
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from playwright.async_api import Browser, BrowserContext, Page, Playwright, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps calling Google's services, and
# this machine's closed network refuses each connection. As root Chromium needs
# --no-sandbox (Playwright's default, chromium_sandbox=False, adds it as well).
FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
# Screenshots and other artifacts of the page tests, one folder per test module (git-ignored).
ARTIFACTS = Path(os.environ.get("COUNTERSIGN_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "artifacts")

T = TypeVar("T")


async def launch_chromium(playwright: Playwright) -> Browser:
    """Debian's Chromium, headless, with the flags this machine needs."""
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: `python3 dev.py test` installs Debian's chromium as root "
                           "(or `apt-get install chromium`); Playwright's own browsers are never downloaded")
    return await playwright.chromium.launch(executable_path=str(CHROMIUM), args=list(FLAGS), headless=True)


class Chromium:
    """One Chromium for the test session, on its own thread and event loop."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chromium", daemon=True)
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self.version = ""
        self.launch_seconds = 0.0  # Playwright's driver and the browser, from nothing to ready

    def start(self) -> None:
        self._thread.start()
        started = time.perf_counter()
        self._playwright = self.call(async_playwright().start())
        self._browser = self.call(launch_chromium(self._playwright))
        self.launch_seconds = time.perf_counter() - started
        self.version = self._browser.version

    def stop(self) -> None:
        if self._thread.is_alive():
            try:
                if self._browser is not None:
                    self.call(self._browser.close())
                if self._playwright is not None:
                    self.call(self._playwright.stop())
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join()
        self._loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the browser's loop and wait for it (from code that is not on an event loop)."""
        return self.submit(coro).result()

    def new_tab(self, artifacts: Path) -> Tab:
        assert self._browser is not None, "start() first"
        context = self.call(self._browser.new_context())
        return Tab(self, context, self.call(context.new_page()), artifacts)


class Tab:
    """A fresh browser context with one page, for one test; screenshots go to `artifacts`."""

    def __init__(self, chromium: Chromium, context: BrowserContext, page: Page, artifacts: Path) -> None:
        self.chromium = chromium
        self.context = context
        self.page = page
        self.artifacts = artifacts
        self.screenshots: list[Path] = []

    async def run(self, drive: Callable[[Page], Awaitable[T]]) -> T:
        """`await drive(page)` on the browser's loop; the caller's loop keeps running meanwhile."""

        async def on_browser_loop() -> T:
            return await drive(self.page)

        return await asyncio.wrap_future(self.chromium.submit(on_browser_loop()))

    async def screenshot(self, name: str) -> Path:
        """Save the whole page as `<artifacts>/<name>.png` and return the path."""
        path = self.artifacts / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        await self.run(lambda page: page.screenshot(path=str(path), full_page=True))
        self.screenshots.append(path)
        return path

    def close(self) -> None:
        self.chromium.call(self.context.close())
