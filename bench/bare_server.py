"""The bare baselines: the least an aiohttp server can do for the same requests.

    POST /api/runs  parse the JSON body, answer 202                  (intake baseline)
    POST /send      parse the JSON body, send one prebuilt message over an already open,
                    authenticated STARTTLS SMTP connection, answer 200 (decision-to-email
                    baseline; needs the --smtp-* options)
    GET  /healthz   200

Started by the benchmarks as its own process, like the service.
"""

from __future__ import annotations

import argparse
import ssl
import uuid
from collections.abc import AsyncIterator, Callable

import aiosmtplib
from aiohttp import web

SMTP = web.AppKey("smtp", aiosmtplib.SMTP)
MESSAGE = (b"From: bench@example.com\r\nTo: a@example.com\r\nSubject: @SUBJECT@\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\n\r\nHello\r\n")


async def accept(request: web.Request) -> web.Response:
    await request.json()
    return web.json_response({"id": str(uuid.uuid4()), "status": "accepted"}, status=202)


async def send(request: web.Request) -> web.Response:
    data = await request.json()
    await request.app[SMTP].sendmail("bench@example.com", ["a@example.com"],
                                     MESSAGE.replace(b"@SUBJECT@", data["subject"].encode()))
    return web.json_response({"status": "sent"})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def smtp_connection(args: argparse.Namespace) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        client = aiosmtplib.SMTP(hostname=args.smtp_host, port=args.smtp_port, start_tls=True,
                                 tls_context=ssl.create_default_context(cafile=args.smtp_ca_file))
        await client.connect()
        await client.login(args.smtp_username, args.smtp_password)
        app[SMTP] = client
        yield
        await client.quit()

    return ctx


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--smtp-host", default="127.0.0.1")
    parser.add_argument("--smtp-port", type=int)
    parser.add_argument("--smtp-username")
    parser.add_argument("--smtp-password")
    parser.add_argument("--smtp-ca-file")
    args = parser.parse_args()

    app = web.Application()
    app.router.add_post("/api/runs", accept)
    app.router.add_get("/healthz", healthz)
    if args.smtp_port:
        app.router.add_post("/send", send)
        app.cleanup_ctx.append(smtp_connection(args))
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
