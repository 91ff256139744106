"""The `send_email` job: the delivery state machine around one SMTP send.

queued -> sending -> sent | failed. `sending` is committed between the server's acceptance
of the envelope (RCPT TO) and DATA, so it means exactly "the server may have the message":
a process that dies before it cannot have transmitted anything, and its retry is a clean
first send; an SMTP refusal after it (a 4xx/5xx reply to DATA) puts the delivery back to
`queued`. Only a delivery found in `sending` can be delivered twice (the RFC 1047 window):
its re-send is marked `possible_duplicate` and audited as `delivery.resent_after_interruption`.
Every attempt is a delivery_attempts row with the server's reply (see attempts.py).

The MIME bytes (with their Message-ID and Date) are built once and stored, so every
attempt sends the same bytes; a delivery already `sent` is never sent again. The content
hash is recomputed from the bytes and must equal the approved hash, or nothing is sent.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from email.utils import getaddresses, parseaddr
from typing import Any

import sqlalchemy as sa

from .. import metrics
from ..domain import AttemptOutcome, DeliveryStatus, EmailAction, RunStatus
from ..jobs import Job, JobHandler, PermanentError, Tx
from ..runs import GatedOutcome, Runs
from ..store import tables as t
from ..store.db import Op, Store, utcnow
from . import attempts
from .message import CONTENT_HASH_VERSION, build_message, content_of, visible_content_of
from .smtp import SmtpFailure, SmtpSession, SmtpTransport

log = logging.getLogger(__name__)

# How long a job's attempt is remembered for its failure hook (which runs right after the
# handler raised, in this process); older ones were dropped (lease lost) and are forgotten.
_FORGET_AFTER_SECONDS = 3600.0


@dataclass
class _Attempt:
    """One job's SMTP attempt, from the handler to `JobQueue.fail`'s hook."""

    started_at: datetime
    step: str = "connect"  # how far the SMTP transaction got
    number: int | None = None  # set once `sending` is committed
    failure: SmtpFailure | None = None
    ended_at: datetime | None = None
    created: float = 0.0

    @property
    def refused(self) -> bool:
        """The server answered with a refusal, so it does not have the message."""
        return self.failure is not None and self.failure.reply is not None


class EmailDelivery:
    def __init__(self, store: Store, runs: Runs, transport: SmtpTransport, *, sender: str, reply_to: str | None) -> None:
        self.store = store
        self.runs = runs
        self.transport = transport
        self.sender = sender
        self.reply_to = reply_to
        self._attempts: dict[tuple[str, str | None], _Attempt] = {}

    def handler(self) -> JobHandler:
        return JobHandler(run=self.run, on_dead=self.on_dead, on_retry=self.on_retry, cancel_with_run=False,
                          on_failed_attempt=self.on_failed_attempt, prefetch=self._prefetch)

    def _begin_attempt(self, job: Job) -> _Attempt:
        now = time.monotonic()
        for key in [k for k, a in self._attempts.items() if now - a.created > _FORGET_AFTER_SECONDS]:
            del self._attempts[key]
        attempt = self._attempts[(job.id, job.lease_token)] = _Attempt(started_at=utcnow(), created=now)
        return attempt

    def _forget(self, key: tuple[str, str | None]) -> None:
        self._attempts.pop(key, None)

    @staticmethod
    async def _prefetch(tx: Tx, job: Job) -> Any:
        return await _delivery(tx, job.payload["delivery_id"])

    async def run(self, job: Job) -> Op[None] | None:
        delivery_id = job.payload["delivery_id"]
        row = job.prefetched if job.prefetched is not None else await self.store.read(
            functools.partial(_delivery, delivery_id=delivery_id))
        if row is None:
            raise PermanentError(f"delivery {delivery_id} does not exist")
        status = DeliveryStatus(row.status)
        if status is DeliveryStatus.SENT:
            return None  # a retry after the outcome was recorded: nothing left to do
        if status is DeliveryStatus.FAILED:
            raise PermanentError(f"delivery {delivery_id} has failed: {row.error}")
        if status is DeliveryStatus.SENDING:
            log.warning("delivery %s was interrupted while sending; sending the same message (%s) again",
                        delivery_id, row.message_id)

        # A delivery approved before migration 0005 (no frozen From, hash rule v1) is sent
        # as before, with the settings' From/Reply-To; any other with what was approved.
        frozen = row.content_hash_version == CONTENT_HASH_VERSION
        sender = row.mail_from if frozen else self.sender
        reply_to = row.mail_reply_to if frozen else self.reply_to
        mime: bytes | None = row.mime
        if mime is None:
            action = EmailAction.from_dict(row.action)
            mime = build_message(action, sender=sender, reply_to=reply_to,
                                 message_id=row.message_id, date=row.created_at)
        try:
            sent_sha256 = visible_content_of(mime).sha256() if frozen else content_of(mime).content_sha256()
        except (ValueError, LookupError) as exc:
            raise PermanentError(f"the message built for delivery {delivery_id} cannot be read back ({exc}); "
                                 "nothing was sent") from exc
        if sent_sha256 != row.approved_sha256:
            raise PermanentError(
                f"the message built for delivery {delivery_id} does not carry the approved content "
                f"(approved {row.approved_sha256}, built {sent_sha256}); nothing was sent"
            )
        mime_sha256 = hashlib.sha256(mime).hexdigest()

        action = EmailAction.from_dict(row.action)
        recipients = [addr for _, addr in getaddresses([*action.to, *action.cc])]
        attempt = self._begin_attempt(job)

        async def mark_sending(tx: Tx) -> int:
            delivery = await attempts.lock_delivery(tx, delivery_id)
            interrupted = await attempts.close_interrupted(tx, delivery_id, delivery)
            number = await attempts.next_number(
                tx, delivery_id, status=DeliveryStatus.SENDING.value, mime=mime, mime_sha256=mime_sha256,
                sent_sha256=sent_sha256, sending_at=tx.now)
            attempts.add(tx, delivery_id, number, step=attempts.DATA_STEP, started_at=attempt.started_at,
                         outcome=AttemptOutcome.SENDING, possible_duplicate=interrupted is not None)
            if interrupted is not None:
                tx.audit("delivery.resent_after_interruption", run_id=row.run_id, actor="system", data={
                    "delivery_id": delivery_id, "message_id": row.message_id, "attempt": number,
                    "interrupted_attempt": interrupted.number,
                    "interrupted_attempt_started_at": interrupted.started_at.isoformat(),
                    "interrupted_attempt_outcome": interrupted.outcome.value,
                })
            return number

        async def on_ready() -> None:
            # The envelope is accepted: from the commit on, the server may get the message.
            # Urgent: an SMTP transaction is open and waits for it.
            attempt.number = await self.store.write(mark_sending, urgent=True)
            attempt.step = attempts.DATA_STEP

        smtp: SmtpSession | None = None
        try:
            async with self.transport.session() as smtp:
                reply = await smtp.send(mime, parseaddr(sender)[1], recipients, on_ready=on_ready)
        except BaseException as exc:
            attempt.ended_at = utcnow()
            attempt.failure = getattr(exc, "failure", None)
            attempt.step = attempt.failure.step if attempt.failure else smtp.step if smtp else "connect"
            if attempt.number is not None:
                attempt.step = attempts.DATA_STEP
            # Kept for on_failed_attempt (a job timeout arrives here as a cancellation and
            # is failed after); a job stopped because its lease was lost is never failed here.
            raise
        # The window the RFC 1047 duplicate lives in runs from here to record_sent's commit.
        accepted_at, accepted_wall = time.monotonic(), utcnow()
        self._attempts.pop((job.id, job.lease_token), None)
        number = attempt.number
        assert number is not None

        async def record_sent(tx: Tx) -> None:
            await tx.execute(t.deliveries.update().where(t.deliveries.c.id == delivery_id).values(
                status=DeliveryStatus.SENT.value, smtp_reply=str(reply), sent_at=tx.now, error=None,
            ))
            await attempts.close(tx, delivery_id, number, AttemptOutcome.ACCEPTED, finished_at=accepted_wall,
                                 smtp_reply=str(reply))
            tx.audit("delivery.sent", run_id=row.run_id, actor="system", data={
                "delivery_id": delivery_id, "message_id": row.message_id, "smtp_reply": str(reply),
                "approved_sha256": row.approved_sha256, "sent_sha256": sent_sha256, "mime_sha256": mime_sha256,
                "content_hash_version": row.content_hash_version or 1, "attempt": number,
            })
            tool_call_id = (await tx.execute(
                sa.select(t.approvals.c.tool_call_id).where(t.approvals.c.id == row.approval_id))).scalar_one()
            if tool_call_id:  # an agent's tool call: the agent is told what was sent and sums up
                await self.runs.gated_outcome(tx, GatedOutcome(
                    run_id=row.run_id, approval_id=row.approval_id, tool_call_id=tool_call_id, status="sent",
                    sent_action=row.action, message_id=row.message_id))
            else:
                await self.runs.finish(tx, row.run_id, RunStatus.COMPLETED, actor="system",
                                       summary=f"email {row.message_id} accepted by the SMTP server")
            await self.runs.approval_changed(tx, row.approval_id)
            tx.after_commit(metrics.EMAILS_SENT.inc)
            tx.after_commit(metrics.side_effect_recorded("send_email", accepted_at))

        return record_sent

    async def on_failed_attempt(self, tx: Tx, job: Job, error: str) -> None:
        """Record the attempt that just failed (retry and dead alike)."""
        key = (job.id, job.lease_token)
        attempt = self._attempts.get(key)
        if attempt is None:
            return  # nothing reached the SMTP server (the content check refused it)
        # Forgotten once committed: the store may run an op again after a failed batch.
        tx.after_commit(functools.partial(self._forget, key))
        delivery_id = job.payload["delivery_id"]
        finished_at = attempt.ended_at or tx.now
        reply = attempt.failure.reply if attempt.failure else None
        delivery = await attempts.lock_delivery(tx, delivery_id)
        if attempt.number is None:
            # Failed before `sending` (connect, MAIL, RCPT): nothing was transmitted. A
            # delivery still `sending` from an earlier attempt stays so (that one may have
            # been delivered), and that attempt is known to be over.
            await attempts.close_interrupted(tx, delivery_id, delivery)
            number = await attempts.next_number(tx, delivery_id)
            attempts.add(tx, delivery_id, number, step=attempt.step, started_at=attempt.started_at,
                         outcome=AttemptOutcome.FAILED, finished_at=finished_at, smtp_reply=reply, error=error)
            return
        await attempts.close(tx, delivery_id, attempt.number, AttemptOutcome.FAILED, finished_at=finished_at,
                             smtp_reply=reply, error=error)
        if attempt.refused and delivery.status == DeliveryStatus.SENDING.value:
            # The server refused the content: it does not have the message. A connection
            # lost in DATA (no reply) leaves `sending`: the next attempt may be a duplicate.
            await tx.execute(t.deliveries.update().where(t.deliveries.c.id == delivery_id)
                             .values(status=DeliveryStatus.QUEUED.value))

    async def on_dead(self, tx: Tx, job: Job, error: str) -> None:
        delivery_id = job.payload["delivery_id"]
        await tx.execute(t.deliveries.update().where(t.deliveries.c.id == delivery_id).values(
            status=DeliveryStatus.FAILED.value, error=error,
        ))
        if job.run_id:
            await self.runs.finish(tx, job.run_id, RunStatus.FAILED, actor="system",
                                   failure_reason=f"email delivery failed: {error}")
        approval_id = (await tx.execute(
            sa.select(t.deliveries.c.approval_id).where(t.deliveries.c.id == delivery_id))).scalar_one()
        await self.runs.approval_changed(tx, approval_id)

    async def on_retry(self, tx: Tx, job: Job) -> None:
        delivery_id = job.payload["delivery_id"]
        await tx.execute(t.deliveries.update()
                              .where(t.deliveries.c.id == delivery_id, t.deliveries.c.status == DeliveryStatus.FAILED.value)
                              .values(status=DeliveryStatus.QUEUED.value))
        if job.run_id:
            await self.runs.set_status(tx, job.run_id, RunStatus.DELIVERING, actor="system", delivery_id=delivery_id)


async def _delivery(conn: Any, delivery_id: str) -> Any:
    """The delivery row, or None."""
    return (await conn.execute(sa.select(t.deliveries).where(t.deliveries.c.id == delivery_id))).first()
