"""The parts every approval card is made of: facts, the draft, the sources, the outcome.

Every untrusted string goes through `adaptive_cards.text` here; nothing else in the
package puts customer or model text into a card.
"""

from __future__ import annotations

from collections.abc import Sequence

from .elements import Element, container, fact_set, text_block
from .size import Limits
from .text import (
    clip,
    escape_inline,
    escape_markdown_line,
    format_datetime,
    markdown_lines,
    neutralise_controls,
    truncation_note,
)
from .view import ApprovalView, ChangesView

__all__ = [
    "ACTION_LABELS",
    "ANYONE",
    "changes_section",
    "content_sections",
    "decision_banner",
    "notice",
    "reference_line",
    "shows_action_in_full",
]

ACTION_LABELS = {"send_email": "Send an email"}

EDIT_UNAVAILABLE = (
    "This draft is too long to edit in Teams. To change it, edit it through the Countersign API, "
    "or reject it with a reason."
)


ANYONE = "Anyone (this policy does not restrict who may decide)"


def shows_action_in_full(view: ApprovalView, limits: Limits) -> bool:
    """True when `limits` cut nothing of what would be approved: recipients, subject,
    threading and body (the size guard may still cut sources and other facts)."""
    def whole_list(items: Sequence[str]) -> bool:
        return len(items) <= limits.items_shown and sum(map(len, items)) + 2 * max(len(items) - 1, 0) <= limits.list_chars

    return ((limits.body_chars is None or len(view.body) <= limits.body_chars)
            and len(view.subject) <= limits.field_chars and len(view.in_reply_to or "") <= limits.field_chars
            and whole_list(view.to) and whole_list(view.cc))


def _short(text: str, limit: int) -> str:
    """Escaped one-line value, cut to `limit` characters with a marker."""
    shown, omitted = clip(text, limit)
    value = escape_inline(shown)
    if omitted:
        value = f"{value} {truncation_note(omitted)}"
    return value


def _joined(items: Sequence[str], limits: Limits) -> str:
    """Escaped comma-separated list, at most `items_shown` entries and `list_chars` characters."""
    if not items:
        return "(none)"
    parts: list[str] = []
    used = 0
    for item in items[: limits.items_shown]:
        cost = len(item) + (2 if parts else 0)
        if used + cost > limits.list_chars:
            break
        parts.append(item)
        used += cost
    if parts:
        value = escape_inline(", ".join(parts))
        hidden = len(items) - len(parts)
    else:  # the first entry alone is too long: show its start
        value = escape_inline(clip(items[0], limits.list_chars)[0]) + " …"
        hidden = len(items) - 1
    if hidden:
        value = f"{value} and {hidden:,} more"
    return value


def _line_blocks(text: str, limit: int | None, *, empty: str) -> list[Element]:
    """TextBlocks for a multi-line untrusted text, one per line (no spacing between them, so
    the lines read as the text's own), cut to `limit` characters with a marker."""
    if limit is None:
        shown, omitted = text, 0
    else:
        shown, omitted = clip(text, limit)
    lines = markdown_lines(shown)
    blocks = [text_block(line, spacing="None" if i else None) for i, line in enumerate(lines)]
    if not lines and not omitted:
        blocks.append(text_block(empty, subtle=True))
    if omitted:
        blocks.append(text_block(truncation_note(omitted), subtle=True, weight="Bolder", spacing="Medium"))
    return blocks


def action_facts(view: ApprovalView, limits: Limits, *, with_request: bool) -> Element:
    facts: list[tuple[str, str]] = [("Action", ACTION_LABELS["send_email"]), ("To", _joined(view.to, limits))]
    if view.cc:
        facts.append(("Cc", _joined(view.cc, limits)))
    facts.append(("Subject", _short(view.subject, limits.field_chars) if view.subject.strip() else "(no subject)"))
    if view.in_reply_to:
        facts.append(("In reply to", _short(view.in_reply_to, limits.field_chars)))
    if with_request:
        if view.requested_by:
            facts.append(("Requested by", _short(view.requested_by, limits.field_chars)))
        if view.policy:
            facts.append(("Policy", _short(view.policy, limits.field_chars)))
        if view.anyone:
            facts.append(("Who may decide", ANYONE))
        elif view.reviewers:
            facts.append(("Reviewers", _joined(view.reviewers, limits)))
        if view.deadline is not None:
            facts.append(("Deadline", format_datetime(view.deadline)))
    return fact_set(facts)


def draft_section(view: ApprovalView, limits: Limits, *, title: str, edit_unavailable: bool) -> list[Element]:
    items = _line_blocks(view.body, limits.body_chars, empty="(empty body)")
    section: list[Element] = [
        text_block(title, weight="Bolder", spacing="Medium"),
        container(items, style="emphasis", spacing="Small"),
    ]
    if edit_unavailable:
        section.append(text_block(EDIT_UNAVAILABLE, subtle=True, spacing="Small"))
    return section


def sources_section(view: ApprovalView, limits: Limits) -> list[Element]:
    if not view.sources:
        return []
    total = len(view.sources)
    shown = view.sources[: limits.sources_shown]
    heading = f"Sources ({total})" if len(shown) == total else f"Sources ({len(shown)} of {total} shown)"
    section: list[Element] = [text_block(heading, weight="Bolder", spacing="Medium")]
    for source in shown:
        items: list[Element] = [
            text_block(_short(source.title, limits.source_field_chars) or "(untitled)", weight="Bolder")
        ]
        if source.location and limits.source_field_chars:
            items.append(text_block(_short(source.location, limits.source_field_chars), subtle=True, spacing="None"))
        if source.snippet and limits.snippet_chars:
            items.append(text_block(_short(source.snippet, limits.snippet_chars), spacing="Small"))
        section.append(container(items, spacing="Small"))
    if not shown:
        section.append(text_block("Not shown here: the card is at its size limit.", subtle=True, spacing="Small"))
    return section


def content_sections(
    view: ApprovalView, limits: Limits, *, draft_title: str, with_request: bool, edit_unavailable: bool = False
) -> list[Element]:
    """The action facts, the draft body and the sources."""
    return [
        action_facts(view, limits, with_request=with_request),
        *draft_section(view, limits, title=draft_title, edit_unavailable=edit_unavailable),
        *sources_section(view, limits),
    ]


_SIGNS = {"equal": " ", "removed": "-", "added": "+"}
_CHANGE_COLORS = {"removed": "Attention", "added": "Good"}


def _change_block(kind: str, text: str) -> Element:
    """One line of a diff: its sign, then the line as typed (escaped like the draft's lines),
    removed lines in the attention colour, added ones in the good colour, context subtle."""
    line = escape_markdown_line(f"{_SIGNS[kind]} {neutralise_controls(text).rstrip()}")
    return text_block(line, color=_CHANGE_COLORS.get(kind), subtle=kind == "equal", spacing="None")


def _changes_intro(changes: ChangesView) -> str:
    counts = []
    if changes.hunks:
        counts.append(f"{changes.removed:,} line{'' if changes.removed == 1 else 's'} removed, "
                      f"{changes.added:,} added")
    if changes.subject is not None:
        counts.append("subject changed")
    return ("Edited before it was approved: lines marked - were in the draft, lines marked + were put in their "
            f"place ({'; '.join(counts)}).")


def changes_section(view: ApprovalView, limits: Limits) -> list[Element]:
    """What the edit changed against the draft: the subject, then the body's changed lines
    with a little context, at most `limits.diff_lines` lines and `limits.diff_chars`
    characters; what does not fit is counted in a note saying where the whole diff is."""
    changes = view.changes
    if changes is None or (changes.subject is None and not changes.hunks):
        return []
    items: list[Element] = [text_block(_changes_intro(changes), subtle=True, spacing="None")]
    if changes.subject is not None:
        draft, approved = changes.subject
        items.append(text_block("Subject", weight="Bolder", spacing="Small"))
        for kind, text in (("removed", draft), ("added", approved)):
            shown, omitted = clip(text, limits.field_chars)
            value = escape_inline(f"{_SIGNS[kind]} {shown}")
            items.append(text_block(f"{value} {truncation_note(omitted)}" if omitted else value,
                                    color=_CHANGE_COLORS[kind], spacing="None"))
    lines_left, chars_left, hidden = limits.diff_lines, limits.diff_chars, 0
    if changes.hunks:
        items.append(text_block("Body", weight="Bolder", spacing="Small"))
    for hunk in changes.hunks:
        if lines_left <= 0 or chars_left <= 0:
            hidden += sum(1 for line in hunk.lines if line.kind != "equal")
            continue
        where = f"From line {hunk.draft_line:,} of the draft:" if hunk.draft_line else "At the start:"
        items.append(text_block(where, subtle=True, size="Small", spacing="Small"))
        for line in hunk.lines:
            if lines_left <= 0 or chars_left <= 0:
                hidden += line.kind != "equal"
                continue
            shown, omitted = clip(line.text, chars_left, snap=0)
            block = _change_block(line.kind, shown)
            if omitted:
                block["text"] += " …"
            items.append(block)
            lines_left -= 1
            chars_left -= max(len(shown), 1)  # an empty line costs a line, and something
    if hidden:
        where = (f"GET {view.read_at}" if view.read_at else "the run in the Countersign API")
        items.append(text_block(escape_inline(
            f"… {hidden:,} more changed line{'' if hidden == 1 else 's'} not shown here; the whole diff is in "
            f"the run's JSON ({where}, approvals[].diff)."), subtle=True, weight="Bolder", spacing="Small"))
    return [
        text_block("Changes from the draft", weight="Bolder", spacing="Medium"),
        container(items, spacing="Small"),
    ]


def reference_line(view: ApprovalView) -> Element:
    """Identifiers for support, small and subtle at the bottom."""
    text = escape_inline(f"Approval {view.approval_id} · revision {view.revision} · run {view.run_id}")
    return text_block(text, subtle=True, size="Small", spacing="Medium", separator=True)


def notice(title: str, lines: list[str], *, style: str) -> Element:
    """A coloured banner: a heading and a few lines of (already escaped) text."""
    items = [text_block(title, heading=True, weight="Bolder", size="Medium")]
    items.extend(text_block(line, spacing="Small") for line in lines)
    return container(items, style=style)


_DELIVERY_LABELS = {"queued": "Queued", "sending": "Sending", "sent": "Sent", "failed": "Failed"}


def _by_and_when(verb: str, view: ApprovalView, limits: Limits) -> str:
    text = verb
    if view.decided_by:
        text += f" by {_short(view.decided_by, limits.field_chars)}"
    if view.decided_at is not None:
        text += f" on {format_datetime(view.decided_at)}"
    return text + "."


def decision_banner(view: ApprovalView, limits: Limits) -> list[Element]:
    """Who did what and when, the reason, and the delivery outcome."""
    delivery = view.delivery
    lines: list[str] = []
    if view.status == "approved":
        verb = "Edited and approved" if view.edited else "Approved"
        lines.append(_by_and_when(verb, view, limits))
        if delivery is None or delivery.status in ("queued", "sending"):
            title, style = verb, "good"
        elif delivery.status == "sent":
            title, style = ("Edited, approved and sent" if view.edited else "Approved and sent"), "good"
        else:
            title, style = f"{verb}, but delivery failed", "attention"
    elif view.status == "rejected":
        title, style = "Rejected", "attention"
        lines.append(_by_and_when("Rejected", view, limits))
    elif view.status == "cancelled":
        title, style = "Cancelled", "warning"
        lines.append(_by_and_when("Cancelled", view, limits))
    elif view.status == "expired":
        title, style = "Expired", "warning"
        when = f" by the deadline ({format_datetime(view.deadline)})" if view.deadline else " in time"
        lines.append(f"No reviewer decided{when}; this email will not be sent.")
    else:  # pragma: no cover - callers only pass decided views
        raise ValueError(f"no decision banner for status {view.status!r}")

    banner = notice(title, lines, style=style)
    if view.reason:
        banner["items"].append(text_block("Reason", weight="Bolder", spacing="Medium"))
        banner["items"].extend(_line_blocks(view.reason, limits.text_chars, empty="(none)"))
    section: list[Element] = [banner]

    if delivery is not None:
        facts = [("Delivery", _DELIVERY_LABELS[delivery.status])]
        if delivery.at is not None:
            facts.append(("At", format_datetime(delivery.at)))
        if delivery.detail:
            facts.append(("Detail", _short(delivery.detail, limits.text_chars)))
        section.append(fact_set(facts, spacing="Medium"))
    return section
