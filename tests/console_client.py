"""A browser-less console user for tests: its own cookie jar, the forms' CSRF tokens read
from the pages, redirects not followed (so each answer can be checked)."""

from __future__ import annotations

import re
from typing import Any

import aiohttp

from .conftest import Service

CSRF = re.compile(r'name="csrf" value="([^"]*)"')
# Plain http on loopback: the development rule, so the session cookie is not Secure.
LOOPBACK_URL = "http://127.0.0.1:3978"


class ConsoleClient:
    def __init__(self, service: Service) -> None:
        self.service = service
        # unsafe: keep cookies of an IP-address host (the test server is 127.0.0.1)
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def close(self) -> None:
        await self.http.close()

    async def get(self, path: str) -> tuple[int, str, Any]:
        async with self.http.get(self.service.url + path, allow_redirects=False) as r:
            return r.status, await r.text(), r.headers

    async def post(self, path: str, data: dict[str, str]) -> tuple[int, str, Any]:
        async with self.http.post(self.service.url + path, data=data, allow_redirects=False) as r:
            return r.status, await r.text(), r.headers

    async def csrf(self, path: str = "/console") -> str:
        status, text, _ = await self.get(path)
        assert status == 200, (status, text[:500])
        return CSRF.findall(text)[0]

    async def login(self, key: str, *, expect: int = 303) -> tuple[int, str, Any]:
        token = await self.csrf("/console/login")
        answer = await self.post("/console/login", {"csrf": token, "key": key, "next": "/console"})
        assert answer[0] == expect, (answer[0], answer[1][:500])
        return answer

    async def action(self, path: str, **fields: str) -> tuple[int, str, Any]:
        """A POST with this session's CSRF token, as a console form sends it."""
        return await self.post(path, {"csrf": await self.csrf(), **fields})
