"""The audit log's hash chain. Pure: how an event's hash is made and how a chain is checked.

Each event's hash covers its own fields and the previous event's hash, so changing,
removing or reordering any stored event breaks every hash after it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

GENESIS_HASH = "0" * 64


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
        }


def event_hash(
    prev_hash: str, seq: int, at: datetime, run_id: str | None, kind: str, actor: str, data: dict[str, Any]
) -> str:
    body = json.dumps(
        [prev_hash, seq, at.isoformat(timespec="microseconds"), run_id, kind, actor, data],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainReport:
    ok: bool
    events: int
    first_bad_seq: int | None = None
    problem: str | None = None


def verify_chain(events: Iterable[AuditEvent], head_seq: int | None = None, head_hash: str | None = None) -> ChainReport:
    """Check links, hashes and sequence numbers; compare the end with the stored head."""
    prev = GENESIS_HASH
    expected_seq = 1
    count = 0
    for event in events:
        count += 1
        if event.seq != expected_seq:
            return ChainReport(False, count, event.seq, f"expected seq {expected_seq}, found {event.seq} (event removed?)")
        if event.prev_hash != prev:
            return ChainReport(False, count, event.seq, "prev_hash does not match the previous event's hash")
        recomputed = event_hash(prev, event.seq, event.at, event.run_id, event.kind, event.actor, event.data)
        if recomputed != event.hash:
            return ChainReport(False, count, event.seq, "hash does not match the event's content (event altered)")
        prev = event.hash
        expected_seq += 1
    if head_seq is not None and head_seq != expected_seq - 1:
        return ChainReport(False, count, expected_seq, f"head says {head_seq} events, chain has {expected_seq - 1} (tail removed?)")
    if head_hash is not None and head_hash != prev:
        return ChainReport(False, count, expected_seq - 1, "head hash does not match the last event")
    return ChainReport(True, count)
