"""The `send_email` job: the delivery state machine around one SMTP send.

queued -> sending (committed before the message goes out) -> sent | failed.
The MIME bytes (with their Message-ID and Date) are built once and stored, so every
attempt sends the same bytes; a delivery already `sent` is never sent again. The content
hash is recomputed from the bytes and must equal the approved hash, or nothing is sent.
"""

from __future__ import annotations

import hashlib
import logging
from email.utils import getaddresses, parseaddr
from typing import Any

import sqlalchemy as sa

from .. import metrics
from ..domain import DeliveryStatus, EmailAction, RunStatus
from ..jobs import Job, JobHandler, PermanentError, Tx
from ..runs import GatedOutcome, Runs
from ..store import tables as t
from ..store.db import Op, Store
from .message import CONTENT_HASH_VERSION, build_message, content_of, visible_content_of
from .smtp import SmtpTransport

log = logging.getLogger(__name__)


class EmailDelivery:
    def __init__(self, store: Store, runs: Runs, transport: SmtpTransport, *, sender: str, reply_to: str | None) -> None:
        self.store = store
        self.runs = runs
        self.transport = transport
        self.sender = sender
        self.reply_to = reply_to

    def handler(self) -> JobHandler:
        return JobHandler(run=self.run, on_dead=self.on_dead, on_retry=self.on_retry, cancel_with_run=False)

    async def _load(self, delivery_id: str) -> Any:
        async def q(conn: Any) -> Any:
            return (await conn.execute(sa.select(t.deliveries).where(t.deliveries.c.id == delivery_id))).first()

        row = await self.store.read(q)
        if row is None:
            raise PermanentError(f"delivery {delivery_id} does not exist")
        return row

    async def run(self, job: Job) -> Op[None] | None:
        delivery_id = job.payload["delivery_id"]
        row = await self._load(delivery_id)
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

        async def mark_sending(tx: Tx) -> None:
            await tx.execute(t.deliveries.update().where(t.deliveries.c.id == delivery_id).values(
                status=DeliveryStatus.SENDING.value, mime=mime, mime_sha256=mime_sha256, sent_sha256=sent_sha256,
                sending_at=tx.now, attempts=t.deliveries.c.attempts + 1,
            ))

        action = EmailAction.from_dict(row.action)
        recipients = [addr for _, addr in getaddresses([*action.to, *action.cc])]
        async with self.transport.session() as smtp:
            await self.store.write(mark_sending)
            reply = await smtp.send(mime, parseaddr(sender)[1], recipients)

        async def record_sent(tx: Tx) -> None:
            await tx.execute(t.deliveries.update().where(t.deliveries.c.id == delivery_id).values(
                status=DeliveryStatus.SENT.value, smtp_reply=str(reply), sent_at=tx.now, error=None,
            ))
            tx.audit("delivery.sent", run_id=row.run_id, actor="system", data={
                "delivery_id": delivery_id, "message_id": row.message_id, "smtp_reply": str(reply),
                "approved_sha256": row.approved_sha256, "sent_sha256": sent_sha256, "mime_sha256": mime_sha256,
                "content_hash_version": row.content_hash_version or 1,
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

        return record_sent

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
