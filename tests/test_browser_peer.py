"""The browser peer itself: Debian's Chromium under Playwright clicks a real form on a real
aiohttp server, and a screenshot is saved. The page tests of the review page and the
console build on these fixtures (`chromium`, `tab` in conftest.py)."""

from __future__ import annotations

import html
import subprocess

from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import Page, expect

from .conftest import free_port
from .peers.browser import CHROMIUM, Chromium, Tab

FORM = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Note</title></head>
<body><h1>Leave a note</h1>
<form method="post" action="/notes"><label>Note <input name="note"></label>
<button type="submit" id="send">Send</button></form></body></html>"""


async def test_a_click_posts_the_form_and_shows_the_answer(tab: Tab) -> None:
    seen: list[dict[str, str]] = []

    async def form(request: web.Request) -> web.Response:
        return web.Response(text=FORM, content_type="text/html")

    async def notes(request: web.Request) -> web.Response:
        data = await request.post()
        seen.append({"method": request.method, "content_type": request.content_type,
                     "user_agent": request.headers.get("User-Agent", ""), "note": str(data["note"])})
        return web.Response(text=f"<title>Saved</title><p id=result>Saved: {html.escape(str(data['note']))}</p>",
                            content_type="text/html")

    app = web.Application()
    app.router.add_get("/", form)
    app.router.add_post("/notes", notes)
    server = TestServer(app, host="127.0.0.1", port=free_port())
    await server.start_server()
    start, posted = str(server.make_url("/")), str(server.make_url("/notes"))
    try:
        async def fill(page: Page) -> None:
            await page.goto(start)
            await page.get_by_label("Note").fill("Kind regards, <b>Ann</b>")

        async def send(page: Page) -> tuple[str, str]:
            await page.get_by_role("button", name="Send").click()
            await expect(page.locator("#result")).to_have_text("Saved: Kind regards, <b>Ann</b>")
            return page.url, await page.title()

        await tab.run(fill)
        before = await tab.screenshot("filled")
        assert seen == []  # only the GET so far
        url, title = await tab.run(send)
        after = await tab.screenshot("saved")
    finally:
        await server.close()

    assert url == posted and title == "Saved"
    assert len(seen) == 1, seen
    assert seen[0]["method"] == "POST" and seen[0]["content_type"] == "application/x-www-form-urlencoded"
    assert seen[0]["note"] == "Kind regards, <b>Ann</b>"
    major = tab.chromium.version.split(".")[0]  # the User-Agent carries only the major version
    assert f"HeadlessChrome/{major}." in seen[0]["user_agent"], seen[0]
    for shot in (before, after):
        assert shot.is_file() and shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), shot
    assert tab.screenshots == [before, after]


def test_the_browser_is_debians_chromium(chromium: Chromium) -> None:
    printed = subprocess.run([str(CHROMIUM), "--version"], capture_output=True, text=True, check=True).stdout
    assert printed.startswith(f"Chromium {chromium.version} "), (printed, chromium.version)
