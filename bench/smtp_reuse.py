"""SMTP benchmark: 1,000 approved emails to a real aiosmtpd server (tests/peers/smtp.py,
STARTTLS + AUTH, run as its own process), through service.mail.smtp.SmtpTransport.

Modes, all measured in the same run, interleaved in rounds (the order rotates):

    reuse x1   SmtpTransport(smtp_pool_size=1), one send at a time: the pool keeps and reuses
               its connection
    fresh x1   SmtpTransport(smtp_pool_size=1), one send at a time, `await transport.close()`
               after every send: connect + STARTTLS + AUTH + QUIT per message (the baseline)
    reuse x4   SmtpTransport(smtp_pool_size=4, the default), 8 concurrent senders like the
               job worker (worker_concurrency=8): up to 4 pooled connections
    fresh x4   4 transports of smtp_pool_size=1, each one send at a time with close() after
               each: 4 concurrent fresh connections (the baseline for reuse x4)
    raw x1     plain aiosmtplib, one connection, sendmail in a loop: the client floor

Each message is built by service.mail.message.build_message (as a delivery does) before
timing. Rate = messages / wall time, including connecting. Target (the issue): reuse at
least 5x the rate of one connection per message.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path

import aiosmtplib

from _common import ROOT, SmtpPeer, header, median_range, verdict

sys.path.insert(0, str(ROOT))
from service.config import Settings  # noqa: E402
from service.domain import EmailAction  # noqa: E402
from service.mail.message import build_message  # noqa: E402
from service.mail.smtp import SmtpTransport  # noqa: E402

SENDER = "support@example.com"
RECIPIENTS = ["ann.customer@example.com"]
RATIO_TARGET = 5.0
Mode = Callable[[list[bytes]], Awaitable[None]]


def messages(count: int) -> list[bytes]:
    action = EmailAction(to=tuple(RECIPIENTS), cc=(), subject="Your refund",
                         body="Dear Ann,\n\nYour refund was issued today.\n\nKind regards,\nSupport",
                         in_reply_to=None, references=())
    now = datetime.now(timezone.utc)
    return [build_message(action, sender=f"Support <{SENDER}>", reply_to=None,
                          message_id=f"<bench-{i}@countersign.local>", date=now) for i in range(count)]


def modes(peer: SmtpPeer, workdir: Path) -> dict[str, Mode]:
    def settings(pool_size: int) -> Settings:
        return Settings(data_dir=workdir, smtp_pool_size=pool_size, **peer.settings)

    async def sequential(transport: SmtpTransport, mimes: list[bytes], fresh: bool) -> None:
        for mime in mimes:
            await transport.send(mime, SENDER, RECIPIENTS)
            if fresh:
                await transport.close()  # the next send must connect, STARTTLS and AUTH again

    async def reuse_1(mimes: list[bytes]) -> None:
        transport = SmtpTransport(settings(1))
        await sequential(transport, mimes, fresh=False)
        await transport.close()

    async def fresh_1(mimes: list[bytes]) -> None:
        await sequential(SmtpTransport(settings(1)), mimes, fresh=True)

    async def reuse_4(mimes: list[bytes]) -> None:
        transport = SmtpTransport(settings(4))
        queue = iter(mimes)

        async def sender() -> None:
            for mime in queue:
                await transport.send(mime, SENDER, RECIPIENTS)

        await asyncio.gather(*(sender() for _ in range(8)))
        await transport.close()

    async def fresh_4(mimes: list[bytes]) -> None:
        await asyncio.gather(*(sequential(SmtpTransport(settings(1)), mimes[i::4], fresh=True) for i in range(4)))

    async def raw_1(mimes: list[bytes]) -> None:
        s = peer.settings
        client = aiosmtplib.SMTP(hostname=s["smtp_host"], port=s["smtp_port"], start_tls=True,
                                 tls_context=ssl.create_default_context(cafile=s["smtp_ca_file"]))
        await client.connect()
        await client.login(s["smtp_username"], s["smtp_password"])
        for mime in mimes:
            await client.sendmail(SENDER, RECIPIENTS, mime)
        await client.quit()

    return {"reuse x1": reuse_1, "fresh x1": fresh_1, "reuse x4": reuse_4, "fresh x4": fresh_4, "raw x1": raw_1}


async def run(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="countersign-bench-smtp-"))
    peer = await SmtpPeer.start(workdir / "smtp", announce=False)
    mimes = messages(args.messages)
    rates: dict[str, list[float]] = {}
    client_ms: dict[str, list[float]] = {}
    server_ms: dict[str, list[float]] = {}
    conns: dict[str, list[int]] = {}
    try:
        table = modes(peer, workdir)
        await table["reuse x1"](mimes[:20])  # warm-up: imports, TLS context, server
        names = list(table)
        for round_no in range(args.rounds):
            for name in names[round_no % len(names):] + names[:round_no % len(names)]:
                before = await peer.stats()
                client_cpu, peer_cpu = time.process_time(), peer.cpu_seconds()
                started = time.perf_counter()
                await table[name](mimes)
                elapsed = time.perf_counter() - started
                client_cpu, peer_cpu = time.process_time() - client_cpu, peer.cpu_seconds() - peer_cpu
                after = await peer.stats()
                if after["messages"] - before["messages"] != len(mimes):
                    raise RuntimeError(f"{name}: the server stored {after['messages'] - before['messages']} "
                                       f"of {len(mimes)} messages")
                rates.setdefault(name, []).append(len(mimes) / elapsed)
                client_ms.setdefault(name, []).append(1000 * client_cpu / len(mimes))
                server_ms.setdefault(name, []).append(1000 * peer_cpu / len(mimes))
                conns.setdefault(name, []).append(after["connections"] - before["connections"])
                print(f"round {round_no + 1} {name:9} {len(mimes) / elapsed:8,.0f} messages/s "
                      f"connections {conns[name][-1]}", file=sys.stderr)
    finally:
        await peer.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    med = {name: statistics.median(r) for name, r in rates.items()}

    def ratio(a: str, b: str) -> str:
        per_round = [x / y for x, y in zip(rates[a], rates[b])]
        value = med[a] / med[b]
        return (f"**{value:.1f}x** (per-round {min(per_round):.1f}-{max(per_round):.1f}x; target >= "
                f"{RATIO_TARGET:g}x: {verdict(value >= RATIO_TARGET)})")

    def cpu_per(name: str) -> float:
        return statistics.median(client_ms[name]) + statistics.median(server_ms[name])

    lines = [header("SMTP: connection reuse vs one connection per message (aiosmtpd, STARTTLS + AUTH)"),
             f"{args.messages:,} messages per mode and round, {args.rounds} interleaved rounds, medians (min-max):\n",
             "| mode | messages/s | connections opened | client CPU ms/message | SMTP server CPU ms/message |",
             "|---|---|---|---|---|"]
    for name in rates:
        lines.append(f"| {name} | {median_range(rates[name])} | {median_range(conns[name])} | "
                     f"{median_range(client_ms[name], '{:.2f}')} | {median_range(server_ms[name], '{:.2f}')} |")
    lines += ["",
              "- the pool as the service runs it (reuse x4: default smtp_pool_size=4, 8 concurrent senders) vs one "
              f"connection per message (fresh x1: smtp_pool_size=1, close() after each send): {ratio('reuse x4', 'fresh x1')}",
              f"- like for like, one sender each (reuse x1 vs fresh x1): {ratio('reuse x1', 'fresh x1')}",
              f"- like for like, 4 connections at a time (reuse x4 vs fresh x4): {ratio('reuse x4', 'fresh x4')}",
              f"- CPU per message, client + server: fresh x1 / reuse x1 = **{cpu_per('fresh x1') / cpu_per('reuse x1'):.1f}x**, "
              f"fresh x4 / reuse x4 = {cpu_per('fresh x4') / cpu_per('reuse x4'):.1f}x: the most reuse can gain while "
              "client and server are CPU-bound",
              f"- SmtpTransport reuse x1 runs at {med['reuse x1'] / med['raw x1']:.0%} of plain aiosmtplib on one "
              f"connection (raw x1), with {cpu_per('reuse x1') / cpu_per('raw x1'):.0%} of its CPU per message"]
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
