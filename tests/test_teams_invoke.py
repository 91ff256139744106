"""Invoke answers: `JsonInvokeHandler` sends the same JSON the SDK's msrest walk would."""

from __future__ import annotations

from datetime import datetime, timezone

from botbuilder.core.serializer_helper import serializer_helper

from adaptive_cards import build_card
from adaptive_cards.view import ApprovalView
from service.teams.bot import ClickResult
from service.teams.invoke import invoke_body


def test_invoke_body_is_what_the_sdks_serializer_makes() -> None:
    """`JsonInvokeHandler` skips msrest's walk; the answer on the wire must not change."""
    view = ApprovalView(approval_id="a-1", run_id="r-1", revision=2, status="approved", to=("c@example.com",),
                        cc=("d@example.com",), subject="Re: Ünïcode <b>", body="Line *one*\n\nLine [two](x)",
                        decided_by="Rita", decided_at=datetime(2026, 11, 21, 10, tzinfo=timezone.utc), edited=True)
    for answer in (ClickResult.card(build_card(view)).response,
                   ClickResult.error(403, "not_allowed", "You may not decide this one").response):
        assert invoke_body(answer) == serializer_helper(answer)
