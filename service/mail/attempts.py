"""The delivery_attempts rows: one per SMTP attempt of a delivery, with the server's reply.

Numbers follow `deliveries.attempts` (bumped by the write that opens each row), so an
attempt's number is the count of attempts made so far, those before migration 0006
included (they have no row, except the one a delivery was left `sending` in: it is
recorded as interrupted when the delivery is taken up again).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ..domain import AttemptOutcome, DeliveryStatus
from ..store import tables as t
from ..store.db import Tx

A = t.delivery_attempts

# The step of an attempt that committed `sending`: from then on the server may have the message.
DATA_STEP = "DATA"


@dataclass(frozen=True, slots=True)
class Interrupted:
    """The attempt that left a delivery in `sending`, found by the next one."""

    number: int
    started_at: datetime
    outcome: AttemptOutcome  # interrupted (its process died, its lease was lost) or failed (connection lost in DATA)


async def lock_delivery(tx: Tx, delivery_id: str) -> Any:
    query = sa.select(t.deliveries.c.status, t.deliveries.c.attempts, t.deliveries.c.sending_at,
                      t.deliveries.c.created_at).where(t.deliveries.c.id == delivery_id)
    return (await tx.execute(query.with_for_update() if tx.dialect == "postgresql" else query)).one()


async def next_number(tx: Tx, delivery_id: str, **values: Any) -> int:
    """Bump `deliveries.attempts` (with `values`) and return it: the new attempt's number."""
    return (await tx.execute(
        t.deliveries.update().where(t.deliveries.c.id == delivery_id)
        .values(attempts=t.deliveries.c.attempts + 1, **values)
        .returning(t.deliveries.c.attempts)
    )).scalar_one()


def add(tx: Tx, delivery_id: str, number: int, *, step: str, started_at: datetime, outcome: AttemptOutcome,
        finished_at: datetime | None = None, smtp_reply: str | None = None, error: str | None = None,
        possible_duplicate: bool = False) -> None:
    tx.insert(A, dict(
        id=str(uuid.uuid4()), delivery_id=delivery_id, number=number, step=step, started_at=started_at,
        finished_at=finished_at, outcome=outcome.value, smtp_reply=smtp_reply, error=error,
        possible_duplicate=possible_duplicate,
    ))


async def close(tx: Tx, delivery_id: str, number: int, outcome: AttemptOutcome, *, finished_at: datetime,
                smtp_reply: str | None = None, error: str | None = None) -> None:
    await tx.execute(A.update().where(A.c.delivery_id == delivery_id, A.c.number == number).values(
        outcome=outcome.value, finished_at=finished_at, smtp_reply=smtp_reply, error=error))


async def close_interrupted(tx: Tx, delivery_id: str, delivery: Any) -> Interrupted | None:
    """The last attempt that may have delivered the message without an answer saying so (it
    committed `sending` and then its process died, its lease was lost, or its connection
    broke in DATA), unless a later attempt already sent the message again: the next send
    is a possible duplicate of it. One still `sending` is marked interrupted here.
    `delivery` comes from `lock_delivery`."""
    last = (await tx.execute(
        sa.select(A.c.number, A.c.started_at, A.c.outcome, A.c.smtp_reply)
        .where(A.c.delivery_id == delivery_id, A.c.step == DATA_STEP)
        .order_by(A.c.number.desc()).limit(1)
    )).first()
    if last is None:
        if delivery.status != DeliveryStatus.SENDING.value:
            return None
        # Left `sending` by a version before migration 0006: its attempt gets its row now.
        number = max(delivery.attempts, 1)
        started_at = delivery.sending_at or delivery.created_at
        add(tx, delivery_id, number, step=DATA_STEP, started_at=started_at, outcome=AttemptOutcome.INTERRUPTED)
        return Interrupted(number, started_at, AttemptOutcome.INTERRUPTED)
    outcome = AttemptOutcome(last.outcome)
    if outcome is AttemptOutcome.SENDING:
        await tx.execute(A.update().where(A.c.delivery_id == delivery_id, A.c.number == last.number)
                         .values(outcome=AttemptOutcome.INTERRUPTED.value))
        outcome = AttemptOutcome.INTERRUPTED
    elif outcome is AttemptOutcome.ACCEPTED or last.smtp_reply is not None:
        return None  # the server answered it: it has the message once, or not at all
    return Interrupted(last.number, last.started_at, outcome)
