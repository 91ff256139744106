"""`GET` and `POST /review/{approval_id}/{token}`: the review page of an email reviewer.

GET only reads: it never decides, never spends the link and never writes (mail scanners,
Safe Links and link previews fetch every link in an email). POST needs the form's
anti-forgery field, a same-origin request, and, with `email_confirm = "code"`, the code
sent to the reviewer; then the decision goes through `Decisions` like any other channel's,
as the reviewer the link was sent to, with channel `email`.

Every answer is a page: 200 for the request or its outcome, 4xx with a page that says why
for a link that is unknown, not for this approval, expired or already used, a forged or
cross-site form, a wrong code or a decision the policy refuses. Pages are never cached,
never framed and send no Referer to any other site (the token is in the URL).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from aiohttp import web
from pydantic import ValidationError

from adaptive_cards import ApprovalView

from ..api.schemas import DecisionIn, DelegationIn
from ..approval_views import ApiLinks, load_view
from ..decisions import Decisions
from ..domain import Channel, Contended, DecisionKind, DecisionRequest, DelegationRequest, NotFound, Reviewer
from ..foreground import Foreground
from ..policy import EmailConfirm, Policy
from ..store import tables as t
from ..store.db import Store, Tx
from ..votes import votes_of
from . import links
from .page import PageState, ReviewPage, VoteLine, render

log = logging.getLogger(__name__)

# (the reviewer's address, the code, the approval as shown): emails a one-time code.
SendCode = Callable[[str, str, ApprovalView], Awaitable[None]]
ROUTE = "/review/{approval_id}/{token}"
_HEADERS = {
    # same-origin: no other site ever sees the URL (its token), and the page's own forms
    # still carry their Origin (no-referrer would make it "null").
    "Cache-Control": "no-store", "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": ("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                                "frame-ancestors 'none'; base-uri 'none'"),
}
_FIELDS = ("action", "draft_version", "subject", "body", "reason", "to")
_MAX_FORM_BYTES = 256 * 1024
_VERSION = re.compile(r"[0-9]{1,9}", re.ASCII)
_VOTES = (sa.select(t.decisions).where(t.decisions.c.approval_id == sa.bindparam("approval_id"))
          .order_by(t.decisions.c.created_at))
_APPROVAL = sa.select(t.approvals.c.policy, t.approvals.c.run_id).where(
    t.approvals.c.id == sa.bindparam("approval_id"))


def _answer(page: ReviewPage, status: int = 200) -> web.Response:
    return web.Response(text=render(page), status=status, content_type="text/html", charset="utf-8",
                        headers=_HEADERS)


def _what(row: Any) -> str:
    if row.kind == DecisionKind.DELEGATE.value:
        return f"handed the vote to {row.delegate_to}"
    return {"approve": "approved", "reject": "rejected", "edit": "edited and approved"}.get(row.kind, row.kind)


@dataclass(frozen=True, slots=True)
class _Opened:
    link: links.ReviewLink
    token: str
    policy: Policy
    run_id: str


class ReviewPages:
    def __init__(self, store: Store, decisions: Decisions, foreground: Foreground, public_url: str,
                 send_code: SendCode) -> None:
        self.store = store
        self.decisions = decisions
        self.send_code = send_code
        self.foreground = foreground
        self.public_url = public_url.rstrip("/")
        self.api_links = ApiLinks(self.public_url)

    # ---- reading ----------------------------------------------------------------------

    async def _open(self, request: web.Request) -> _Opened | web.Response:
        approval_id, token = request.match_info["approval_id"], request.match_info["token"]
        link = await self.store.read(lambda conn: links.find(conn, token))
        if link is None or link.approval_id != approval_id:
            # Unknown, tampered, or another approval's: nothing about any approval is shown.
            return _answer(ReviewPage(PageState.INVALID, "This review link is not valid", message=(
                "The link is incomplete, was changed, or belongs to another request. Open the link from the "
                "request email again; if it still fails, ask for a new request.")), 404)
        row = (await self.store.read(lambda conn: conn.execute(_APPROVAL, {"approval_id": approval_id}))).one()
        return _Opened(link, token, Policy.from_dict(row.policy or {}), row.run_id)

    async def _page(self, opened: _Opened, state: PageState | None = None, message: str | None = None,
                    kept: dict[str, str] | None = None) -> ReviewPage:
        link, now = opened.link, self.store.clock()
        try:
            view = await load_view(self.store, link.approval_id, self.api_links)
        except NotFound:
            return ReviewPage(PageState.INVALID, "This review link is not valid", message="The request is gone.")
        rows = (await self.store.read(lambda conn: conn.execute(_VOTES, {"approval_id": link.approval_id}))).all()
        votes = tuple(VoteLine(r.reviewer_name or r.reviewer_email or r.reviewer_id, _what(r), r.channel, r.created_at)
                      for r in rows)
        # A vote of this reviewer on the text as it stands, matched as Decisions matches one.
        identities = Reviewer(id=link.reviewer, email=link.reviewer).identities()
        mine = any(v.cast_by(identities) for v in votes_of(rows) if v.draft_version == view.draft_version)
        if state is None:
            if link.spent_at is not None and link.spent_reason == "locked":
                state, message = PageState.EXPIRED, (
                    "This link is locked after too many wrong codes. A reminder brings a new one, or ask for a new "
                    "request.")
            elif link.spent_at is not None and (mine or not view.is_pending or link.spent_reason != "decided"):
                # Spent by a vote on an earlier text, it opens again for the edited one (a
                # multi-vote policy asks everyone again); a delegation or an ended approval stays done.
                state = PageState.DONE
                message = message or "Your decision with this link is recorded."
            elif not view.is_pending:
                state, message = PageState.CLOSED, message
            elif link.expired(now):
                state, message = PageState.EXPIRED, "This review link has expired; a reminder brings a new one."
            elif mine:
                state, message = PageState.CLOSED, "You have voted on this text; the others are still asked."
            else:
                state = PageState.OPEN
        title = "Approval requested" if view.is_pending else f"Approval {view.status}"
        email = opened.policy.email
        delegates = tuple(dict.fromkeys((*opened.policy.delegates, *opened.policy.timers.escalate_to)))
        return ReviewPage(state, title, message=message, view=view, reviewer=link.reviewer,
                          csrf=links.csrf_token(opened.token, link.approval_id), votes=votes,
                          confirm_with_code=email.confirm is EmailConfirm.CODE,
                          delegates=delegates if not opened.policy.anyone else (), kept=kept or {})

    async def get(self, request: web.Request) -> web.Response:
        opened = await self._open(request)
        if isinstance(opened, web.Response):
            return opened
        page = await self._page(opened)
        return _answer(page, 410 if page.state is PageState.EXPIRED else 200)

    # ---- deciding ---------------------------------------------------------------------

    def _cross_site(self, request: web.Request) -> bool:
        if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            return True
        origin = request.headers.get("Origin")
        if origin is None:  # an older browser: the anti-forgery field alone decides
            return False
        # Same origin: the public URL's, or this request's own host (behind a proxy that
        # keeps the Host header, or on a port the settings do not know).
        theirs = urlsplit(origin)
        ours = urlsplit(self.public_url)
        return (theirs.scheme, theirs.netloc) != (ours.scheme, ours.netloc) and theirs.netloc != request.host

    async def post(self, request: web.Request) -> web.Response:
        opened = await self._open(request)
        if isinstance(opened, web.Response):
            return opened
        if request.content_length is not None and request.content_length > _MAX_FORM_BYTES:
            return _answer(await self._page(opened, PageState.REFUSED, "The form is too large."), 413)
        try:
            form = await request.post()
        except (ValueError, LookupError, web.HTTPException):  # a bad encoding, an unknown charset
            return _answer(await self._page(opened, PageState.REFUSED, "The form could not be read."), 400)
        fields = {k: v for k in (*_FIELDS, "csrf", "code") if isinstance(v := form.get(k), str)}
        # A used or expired link says so first (what a GET shows anyway), forged or not.
        current = await self._page(opened)
        if current.state is not PageState.OPEN:
            status = 410 if current.state is PageState.EXPIRED else 409
            reason = {PageState.DONE: "This link was already used: nothing more is decided with it."}.get(
                current.state, current.message or "This approval is no longer waiting for your decision.")
            return _answer(await self._page(opened, current.state, reason), status)
        if self._cross_site(request) or not links.csrf_ok(opened.token, opened.link.approval_id, fields.get("csrf")):
            return _answer(await self._page(opened, PageState.REFUSED, (
                "This form was not sent from the review page (its anti-forgery field is missing or wrong); nothing "
                "was decided. Open the link from the request email and decide there.")), 403)
        action = fields.get("action")
        parsed = self._parse(action, fields)
        if isinstance(parsed, str):
            return _answer(await self._page(opened, PageState.REFUSED, parsed), 422)
        if current.confirm_with_code:
            confirmed = await self._confirmed(opened, fields)
            if confirmed is not None:
                return confirmed
        return await self._decide(opened, action or "", parsed)

    @staticmethod
    def _parse(action: str | None, fields: dict[str, str]) -> DecisionIn | DelegationIn | str:
        """The decision the form asks for, checked as the API checks one; or what is wrong."""
        try:
            if action == "delegate":
                return DelegationIn.model_validate({"to": fields.get("to", "")})
            if action not in ("approve", "edit", "reject"):
                return "The form names no decision (approve, edit, reject or delegate)."
            version = fields.get("draft_version", "")
            if version and not _VERSION.fullmatch(version):
                return "draft_version: must be the text's version number, as the page gives it"
            body: dict[str, Any] = {"decision": action, "draft_version": int(version) if version else None}
            if action == "reject":
                body["reason"] = fields.get("reason", "")
            if action == "edit":
                body.update(subject=fields.get("subject"), body=(fields.get("body") or "").replace("\r\n", "\n"))
            return DecisionIn.model_validate(body)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "form"
            return f"{where}: {first['msg']}"

    async def _confirmed(self, opened: _Opened, fields: dict[str, str]) -> web.Response | None:
        """None when the code given is right; else the page asking for it. A code is sent
        only when none works (so asking again mails nothing more), and every try counts
        against the link's `CODE_ATTEMPTS`, which lock it when used up."""
        link = opened.link
        kept = {k: fields[k] for k in _FIELDS if k in fields}
        code = fields.get("code", "").strip()
        if code and not links.well_formed_code(code):
            return _answer(await self._page(opened, PageState.CONFIRM, (
                "The code is the six digits (0-9) from the email."), kept), 422)
        if code:
            check = await self.store.write(lambda tx: links.try_code(tx, link.id, opened.token, code))
            if check is links.CodeCheck.RIGHT:
                return None
            if check is links.CodeCheck.LOCKED:
                return _answer(await self._page(opened, PageState.REFUSED, (
                    "Too many wrong codes: this link is locked and decides nothing more. A reminder brings a new "
                    "link, or ask for a new request.")), 403)
            if check is links.CodeCheck.WRONG:
                return _answer(await self._page(opened, PageState.CONFIRM, "That code is not right; try again.",
                                                kept), 403)
        new_code = links.mint_code()

        async def record(tx: Tx) -> bool:
            if not await links.set_code(tx, link.id, opened.token, new_code):
                return False
            tx.audit("review.code_sent", run_id=opened.run_id, actor="system",
                     data={"approval_id": link.approval_id, "reviewer": link.reviewer})
            return True

        if not await self.store.write(record):  # the code sent before still works: no second email
            return _answer(await self._page(opened, PageState.CONFIRM, (
                f"A code was sent to {link.reviewer}; enter it to confirm your decision (a new one can be sent once "
                "it expires, 10 minutes after it was sent)."), kept), 202)
        # Sent now, not by a job: the code is never stored in the clear (a job's payload is).
        try:
            page = await self._page(opened, PageState.CONFIRM, None, kept)
            assert page.view is not None
            await self.send_code(link.reviewer, new_code, page.view)
        except Exception as exc:  # the SMTP server is away: the reviewer may simply try again
            log.warning("could not send the review code for approval %s: %s", link.approval_id, exc)
            return _answer(await self._page(opened, PageState.REFUSED, (
                "The code could not be sent just now; nothing was decided. Try again in a minute.")), 503)
        message = (f"We sent a code to {link.reviewer}. Enter it to confirm your decision."
                   if not code else f"That code is not valid any more; we sent a new one to {link.reviewer}.")
        return _answer(await self._page(opened, PageState.CONFIRM, message, kept), 403 if code else 202)

    async def _decide(self, opened: _Opened, action: str, parsed: DecisionIn | DelegationIn) -> web.Response:
        link = opened.link
        reviewer = Reviewer(id=link.reviewer, email=link.reviewer)
        with self.foreground.request():
            try:
                if isinstance(parsed, DelegationIn):
                    delegated = await self.decisions.delegate(DelegationRequest(
                        approval_id=link.approval_id, reviewer=reviewer, to=parsed.to, channel=Channel.EMAIL))
                    done, detail = delegated.delegated, delegated.detail
                else:
                    decided = await self.decisions.decide(DecisionRequest(
                        approval_id=link.approval_id, kind=DecisionKind(parsed.decision), reviewer=reviewer,
                        channel=Channel.EMAIL, reason=parsed.reason, subject=parsed.subject, body=parsed.body,
                        draft_version=parsed.draft_version))
                    done, detail = decided.decided, decided.detail
            except Contended as exc:  # nothing was recorded and the link is not spent: the same form again
                answer = _answer(await self._page(opened, PageState.REFUSED, (
                    "Many changes reached this request at once and yours was not recorded; nothing was decided. "
                    "Please try again.")), 503)
                answer.headers["Retry-After"] = str(exc.retry_after_seconds)
                return answer
        if not done:
            status = {"not_allowed": 403, "invalid_delegate": 422}.get(str(detail.get("reason")), 409)
            return _answer(await self._page(opened, PageState.REFUSED, str(detail.get("message", "Refused."))), status)
        await self.store.write(lambda tx: links.spend(tx, link.id, "delegated" if action == "delegate" else "decided"))
        message = {"approve": "Approved: thank you.", "edit": "Your edit is approved: thank you.",
                   "reject": "Rejected: the reason goes back to the agent.",
                   "delegate": "Your vote is handed over."}[action]
        return _answer(await self._page(opened, PageState.DONE, message))
