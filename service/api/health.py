"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..store.migrate import NotMigrated, check_migrated
from .deps import SERVICES


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "checks": {}})


async def readyz(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    try:
        async with asyncio.timeout(5):
            await check_migrated(services.store.reader_engine)
    except NotMigrated as exc:
        return web.json_response({"status": "unavailable", "checks": {"database": str(exc)}}, status=503)
    except Exception as exc:  # unreachable database: say so, never 500
        return web.json_response({"status": "unavailable", "checks": {"database": f"unreachable: {type(exc).__name__}"}},
                                 status=503)
    return web.json_response({"status": "ok", "checks": {"database": "ok"}})


async def metrics(request: web.Request) -> web.Response:
    response = web.Response(body=generate_latest())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
