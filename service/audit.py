"""The audit log's hash chain. Pure: how an event's hash is made and how a chain is checked.

Each event's hash covers its own fields and the previous event's hash, so changing,
removing or reordering any stored event breaks every hash after it. Since migration 0005
the hash is an HMAC-SHA256 keyed with COUNTERSIGN_AUDIT_KEY (kept outside the database),
so someone who can write the database but lacks the key cannot recompute a chain after
changing it. Each event records the rule that made it (`alg`): NULL for the plain SHA-256
of events written before keying. The switch is one `audit.keyed` marker, the first keyed
event, which names the number of legacy events before it; legacy events are accepted only
before the marker, keyed events only from it on, and a chain without a marker fails. The
marker's MAC covers the last legacy hash, so the legacy part is anchored by the key too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

GENESIS_HASH = "0" * 64
KEYED_ALG = "hmac-sha256"
MARKER_KIND = "audit.keyed"
MIN_KEY_LENGTH = 32


class AuditKeyError(ValueError):
    """No usable audit key: the service cannot write a trustworthy chain."""


@dataclass(frozen=True, slots=True)
class AuditEvent:
    seq: int
    at: datetime
    run_id: str | None
    kind: str
    actor: str
    data: dict[str, Any]
    prev_hash: str
    hash: str
    alg: str | None = None  # None: legacy plain SHA-256

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at.isoformat(),
            "run_id": self.run_id,
            "kind": self.kind,
            "actor": self.actor,
            "data": self.data,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
            "alg": self.alg,
        }


def _canonical(fields: list[Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")


def event_hash(
    prev_hash: str, seq: int, at: datetime, run_id: str | None, kind: str, actor: str, data: dict[str, Any]
) -> str:
    """The legacy rule (events written before migration 0005): plain SHA-256."""
    return hashlib.sha256(_canonical(
        [prev_hash, seq, at.isoformat(timespec="microseconds"), run_id, kind, actor, data])).hexdigest()


class ChainKey:
    """HMAC-SHA256 with the audit key. The rule's name is inside the MAC'd bytes."""

    def __init__(self, key: str) -> None:
        if len(key) < MIN_KEY_LENGTH:
            raise AuditKeyError(f"COUNTERSIGN_AUDIT_KEY must be at least {MIN_KEY_LENGTH} characters "
                                f"(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        self._mac = hmac.new(key.encode("utf-8"), digestmod=hashlib.sha256)

    def event_hash(self, prev_hash: str, seq: int, at: datetime, run_id: str | None, kind: str, actor: str,
                   data: dict[str, Any]) -> str:
        mac = self._mac.copy()
        mac.update(_canonical([KEYED_ALG, prev_hash, seq, at.isoformat(timespec="microseconds"), run_id, kind,
                               actor, data]))
        return mac.hexdigest()

    def check(self, event: AuditEvent) -> bool:
        expected = self.event_hash(event.prev_hash, event.seq, event.at, event.run_id, event.kind, event.actor,
                                   event.data)
        return hmac.compare_digest(expected, event.hash)


def marker_data(legacy_events: int) -> dict[str, Any]:
    return {"alg": KEYED_ALG, "legacy_events": legacy_events}


@dataclass(frozen=True, slots=True)
class ChainReport:
    ok: bool
    events: int
    first_bad_seq: int | None = None
    problem: str | None = None
    legacy_events: int = 0


def verify_chain(events: Iterable[AuditEvent], key: ChainKey, head_seq: int | None = None,
                 head_hash: str | None = None, expect: tuple[int, str] | None = None) -> ChainReport:
    """Check links, rules, hashes and sequence numbers; compare the end with the stored head,
    and (`expect`) an event with a (seq, hash) anchored outside the database."""
    prev = GENESIS_HASH
    expected_seq = 1
    count = 0
    legacy: int | None = None  # the marker's count, once seen
    expect_seen = False

    def bad(seq: int, problem: str) -> ChainReport:
        return ChainReport(False, count, seq, problem, legacy or 0)

    for event in events:
        count += 1
        if event.seq != expected_seq:
            return bad(event.seq, f"expected seq {expected_seq}, found {event.seq} (event removed?)")
        if event.prev_hash != prev:
            return bad(event.seq, "prev_hash does not match the previous event's hash")
        if event.alg is None:
            if legacy is not None:
                return bad(event.seq, "a legacy (unkeyed) event after the chain was keyed (relabelled?)")
            if event.hash != event_hash(prev, event.seq, event.at, event.run_id, event.kind, event.actor, event.data):
                return bad(event.seq, "hash does not match the event's content (event altered)")
        elif event.alg == KEYED_ALG:
            if legacy is None:
                if event.kind != MARKER_KIND or event.data != marker_data(event.seq - 1):
                    return bad(event.seq, f"the first keyed event must be an {MARKER_KIND} marker "
                                          f"naming {event.seq - 1} legacy events")
                legacy = event.seq - 1
            elif event.kind == MARKER_KIND:
                return bad(event.seq, f"a second {MARKER_KIND} marker")
            if not key.check(event):
                return bad(event.seq, "keyed hash does not match the event's content "
                                      "(event altered, or a different COUNTERSIGN_AUDIT_KEY)")
        else:
            return bad(event.seq, f"unknown hash rule {event.alg!r}")
        if expect is not None and event.seq == expect[0]:
            if not hmac.compare_digest(event.hash, expect[1]):
                return bad(event.seq, "the anchored head does not match this event (history rewritten)")
            expect_seen = True
        prev = event.hash
        expected_seq += 1
    if count and legacy is None:
        return bad(expected_seq - 1, f"no {MARKER_KIND} marker: the chain was never keyed, or its keyed events "
                                     "were relabelled as legacy (start this version once to key a new chain)")
    if expect is not None and not expect_seen:
        return bad(expected_seq, f"the anchored head {expect[0]} is past the end of the chain "
                                 f"({expected_seq - 1} events: tail removed?)")
    if head_seq is not None and head_seq != expected_seq - 1:
        return bad(expected_seq, f"head says {head_seq} events, chain has {expected_seq - 1} (tail removed?)")
    if head_hash is not None and head_hash != prev:
        return bad(expected_seq - 1, "head hash does not match the last event")
    return ChainReport(True, count, legacy_events=legacy or 0)
