"""`countersign serve` as a real process, tried as an attacker or a careless operator would:
slow clients are cut off within the configured bounds while /healthz stays quick; the data
directory and everything in it are the owner's alone; an unknown COUNTERSIGN_* variable is
named at start-up with the setting it probably meant."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from service.env_check import unknown_variable_warnings

from .conftest import email_action, free_port
from .processes import ServiceProcess

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
SLACK = 2.0  # scheduling on a loaded two-core machine


def _clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.upper().startswith(("COUNTERSIGN_", "OPENAI_", "MICROSOFTAPP"))}


@pytest.fixture
async def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ServiceProcess]:
    for name in list(os.environ):
        if name.upper().startswith(("COUNTERSIGN_", "OPENAI_", "MICROSOFTAPP")):
            monkeypatch.delenv(name)
    port = free_port()
    service = ServiceProcess({
        "COUNTERSIGN_DATA_DIR": str(tmp_path / "data"), "COUNTERSIGN_PORT": str(port),
        "COUNTERSIGN_HTTP_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "COUNTERSIGN_HTTP_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
        "COUNTERSIGN_WORKER_CONCURRENCY": "0",
        "COUNTERSIGN_WEBHOOK_SECRT": "a-typo-whose-value-must-not-be-logged",
    }, port, tmp_path / "serve.log")
    old = os.umask(0o022)  # the usual umask, inherited by the service: it must not depend on it
    try:
        await service.start()
        yield service
    finally:
        os.umask(old)
        service.kill()
        await service.wait_dead()


async def _healthz_seconds(url: str) -> float:
    started = time.monotonic()
    async with aiohttp.ClientSession() as http, http.get(url + "/healthz") as r:
        assert r.status == 200
    return time.monotonic() - started


async def _trickle_until_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                drip: bytes, limit: float) -> tuple[float, bytes]:
    """Send `drip` every 0.3 s (so no idle timer could be what closes it) until the server
    closes the connection; (seconds it took, what the server answered)."""
    started = time.monotonic()
    answer = b""
    while time.monotonic() - started < limit:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), 0.3)
        except TimeoutError:
            try:
                writer.write(drip)
                await writer.drain()
            except ConnectionError:
                break
            continue
        except ConnectionError:
            break
        if not chunk:
            break
        answer += chunk
    else:
        raise AssertionError(f"the connection was still open after {limit} s")
    writer.close()
    return time.monotonic() - started, answer


async def test_slow_headers_are_cut_off_and_healthz_stays_quick(served: ServiceProcess) -> None:
    connections = []
    for _ in range(50):
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: countersign.test\r\nX-Slow: ")
        connections.append((reader, writer))
    assert await _healthz_seconds(served.url) < 1.0  # 50 slow clients do not slow anyone else
    results = await asyncio.gather(*(_trickle_until_closed(r, w, b"a", HEADER_TIMEOUT + SLACK + 5)
                                     for r, w in connections))
    for seconds, answer in results:
        assert seconds < HEADER_TIMEOUT + SLACK, seconds
        assert b"200 OK" not in answer  # the request never completed
    assert await _healthz_seconds(served.url) < 1.0


async def test_slow_body_gets_a_408_and_the_connection_is_closed(served: ServiceProcess) -> None:
    token = (Path(served.env["COUNTERSIGN_DATA_DIR"]) / "api-token").read_text().strip()
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(b"POST /api/runs HTTP/1.1\r\nHost: countersign.test\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + token.encode() + b"\r\nContent-Length: 100000\r\n\r\n{\"act")
    started = time.monotonic()
    seconds, answer = await _trickle_until_closed(reader, writer, b" ", BODY_TIMEOUT + SLACK + 5)
    assert seconds < BODY_TIMEOUT + SLACK + 1.0, seconds  # + the grace for the answer to go out
    assert time.monotonic() - started >= BODY_TIMEOUT - 0.5
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"application/problem+json" in head
    problem = json.loads(body)
    assert problem["status"] == 408 and problem["type"].endswith("/request_timeout"), problem
    async with aiohttp.ClientSession() as http, http.get(served.url + "/api/runs",
                                                         headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200 and (await r.json())["items"] == []  # nothing was stored


async def test_a_slow_handler_after_the_body_arrived_is_not_cut_off(served: ServiceProcess) -> None:
    """The body deadline is about the client sending: a complete request within the bound
    is answered normally (a keep-alive connection reused for a second request too)."""
    token = (Path(served.env["COUNTERSIGN_DATA_DIR"]) / "api-token").read_text().strip()
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.post(served.url + "/api/runs", json={"action": email_action()},
                                 headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 202, await r.text()
            await asyncio.sleep(BODY_TIMEOUT / 2)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_data_dir_and_files_are_private(served: ServiceProcess) -> None:
    data = Path(served.env["COUNTERSIGN_DATA_DIR"])
    token = (data / "api-token").read_text().strip()
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http, http.post(served.url + "/api/runs", json={"action": email_action()},
                                                          headers=headers) as r:
        assert r.status == 202  # a write: SQLite now has its -wal and -shm files
    db = data / "countersign.db"
    assert _mode(data) == 0o700
    for path in (db, db.with_name("countersign.db-wal"), db.with_name("countersign.db-shm"), data / "api-token",
                 data / "callback-signing-secret"):
        assert path.exists(), path
        assert _mode(path) == 0o600, (path, oct(_mode(path)))
    # The index the agent searches, built by `countersign index` into the same data dir.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "index", "-q", env={**_clean_environ(), "COUNTERSIGN_DATA_DIR": str(data)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, out.decode()[-2000:]
    index_paths = list((data / "index").rglob("*"))
    assert index_paths
    assert _mode(data / "index") == 0o700
    for path in index_paths:
        assert _mode(path) == (0o700 if path.is_dir() else 0o600), (path, oct(_mode(path)))
    # Every other file anywhere in the data dir: nothing readable by group or others.
    for path in data.rglob("*"):
        assert not _mode(path) & 0o077, (path, oct(_mode(path)))


async def test_loose_modes_left_by_an_older_version_are_tightened_with_a_warning(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    service = ServiceProcess({"COUNTERSIGN_DATA_DIR": str(data), "COUNTERSIGN_PORT": str(port),
                              "COUNTERSIGN_WORKER_CONCURRENCY": "0"}, port, tmp_path / "serve.log")
    old = os.umask(0o022)
    try:
        await service.start()
        service.kill()
        await service.wait_dead()
        os.chmod(data, 0o755)
        for path in (data / "countersign.db", data / "api-token", data / "countersign.db-wal"):
            if path.exists():
                os.chmod(path, 0o644)
        await service.start()
    finally:
        os.umask(old)
        service.kill()
        await service.wait_dead()
    assert _mode(data) == 0o700
    for path in data.iterdir():
        assert not _mode(path) & 0o077, (path, oct(_mode(path)))
    log = service.log.read_text()
    assert "was readable by others (mode 755); made it 700" in log, log[-3000:]
    assert "countersign.db was readable by others (mode 644); made it 600" in log, log[-3000:]


async def test_an_unknown_variable_is_named_with_the_setting_it_probably_meant(served: ServiceProcess) -> None:
    log = served.log.read_text()
    assert "COUNTERSIGN_WEBHOOK_SECRT is not a setting; did you mean COUNTERSIGN_WEBHOOK_SECRET?" in log, log[-3000:]
    assert "a-typo-whose-value-must-not-be-logged" not in log


def test_unknown_variable_warnings() -> None:
    env = {
        "COUNTERSIGN_WEBHOOK_SECRT": "x", "countersign_smtp_hots": "x", "COUNTERSIGN_MAX_BODY_BYTE": "1",
        "COUNTERSIGN_MICROSOFT_APP_ID": "x", "COUNTERSIGN_OPENAI_API_KEY": "x", "COUNTERSIGN_CONFG": "x",
        "COUNTERSIGN_ZZZ": "x",
        # Read by the service: no warning.
        "COUNTERSIGN_CONFIG": "x", "COUNTERSIGN_API_TOKEN": "x", "countersign_port": "1", "MicrosoftAppId": "x",
        "OPENAI_API_KEY": "x", "COUNTERSIGN_HTTP_BODY_TIMEOUT_SECONDS": "1", "PATH": "/bin",
    }
    assert unknown_variable_warnings(env) == [
        "COUNTERSIGN_CONFG is not a setting; did you mean COUNTERSIGN_CONFIG?",
        "COUNTERSIGN_MAX_BODY_BYTE is not a setting; did you mean COUNTERSIGN_MAX_BODY_BYTES?",
        "COUNTERSIGN_MICROSOFT_APP_ID is not a setting; did you mean MicrosoftAppId?",
        "COUNTERSIGN_OPENAI_API_KEY is not a setting; did you mean OPENAI_API_KEY?",
        "COUNTERSIGN_WEBHOOK_SECRT is not a setting; did you mean COUNTERSIGN_WEBHOOK_SECRET?",
        "COUNTERSIGN_ZZZ is not a setting (see the settings table in README.md)",
        "countersign_smtp_hots is not a setting; did you mean COUNTERSIGN_SMTP_HOST?",
    ]


def test_a_shared_data_dir_is_left_alone_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """COUNTERSIGN_DATA_DIR=/tmp must not make /tmp 0700: a sticky or world-writable
    directory is not the service's to change (nor private), so it is only warned about."""
    from service.private_files import ensure_private_dir

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    (shared / "someone-elses-file").write_text("x")
    os.chmod(shared / "someone-elses-file", 0o644)
    ensure_private_dir(shared)
    assert _mode(shared) == 0o1777 and _mode(shared / "someone-elses-file") == 0o644
    assert "is shared (mode 1777" in caplog.text


async def test_a_second_serve_on_the_same_sqlite_file_is_refused_until_the_first_dies(
        served: ServiceProcess, tmp_path: Path) -> None:
    port = free_port()
    env = {**_clean_environ(), **{k: v for k, v in served.env.items() if k != "COUNTERSIGN_PORT"},
           "COUNTERSIGN_PORT": str(port)}
    second = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "serve", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(second.communicate(), 60)
    assert second.returncode == 2
    message = err.decode()
    assert served.proc is not None and f"pid {served.proc.pid}" in message
    assert "one process per SQLite file" in message and "PostgreSQL" in message

    # SIGKILL leaves the lock file behind, but not the lock: the next process starts.
    served.kill()
    await served.wait_dead()
    third = ServiceProcess({**served.env, "COUNTERSIGN_PORT": str(port)}, port, tmp_path / "third.log")
    await third.start()
    third.kill()
    await third.wait_dead()
