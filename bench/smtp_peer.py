"""tests/peers/smtp.py's real aiosmtpd server (STARTTLS + AUTH, Maildir) as its own process.

Started by the benchmarks (see `SmtpPeer` in _common.py), not by hand. Prints one JSON line
with the settings that reach it; with --announce, one line `ACCEPTED <monotonic ns>
<Subject>` per message from the server's `on_data` hook. A line `stats` on stdin answers
{"connections", "messages"}; end of stdin stops the server.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.peers.certs import make_tls_files  # noqa: E402
from tests.peers.smtp import SmtpServer  # noqa: E402

SUBJECT = re.compile(rb"^Subject: ([^\r\n]*)", re.MULTILINE)
_out = threading.Lock()


def emit(line: str) -> None:
    with _out:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--announce", action="store_true")
    args = parser.parse_args()
    logging.getLogger("mail.log").setLevel(logging.ERROR)  # aiosmtpd warns about its own deprecated login_data

    args.dir.mkdir(parents=True, exist_ok=True)
    server = SmtpServer(args.dir / "smtp", make_tls_files(args.dir), args.port)
    if args.announce:
        def on_data(content: bytes) -> None:
            now = time.monotonic_ns()
            match = SUBJECT.search(content)
            emit(f"ACCEPTED {now} {match.group(1).decode() if match else ''}")

        server.handler.on_data = on_data
    server.start()
    emit(json.dumps({"settings": server.settings()}))
    for line in sys.stdin:
        if line.strip() == "stats":
            messages = len(os.listdir(server.maildir_path / "new"))
            emit(json.dumps({"connections": server.connections, "messages": messages}))
    server.stop()


if __name__ == "__main__":
    main()
