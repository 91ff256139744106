"""Approval cards: every card the builders can make, in every state, checked by real peers.

* the official renderer (npm `adaptivecards`, run by `tests/cards_js/validate.js`):
  no parse event and no validation failure for Adaptive Cards 1.5;
* the Adaptive Cards 1.5 JSON schema (vendored, see tests/cards_js/README.md);
* markdown-it (the renderer's markdown processor): untrusted text shows up literally.

Node.js is required: without it these tests fail, they do not skip.
"""

from __future__ import annotations

import ast
import html
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft6Validator
from jsonschema.exceptions import ValidationError, best_match

from adaptive_cards import (
    CARD_BUDGET_BYTES,
    INPUT_BODY,
    INPUT_REASON,
    INPUT_SUBJECT,
    VERB_APPROVE,
    VERB_DELEGATE,
    VERB_EDIT,
    VERB_REJECT,
    ApprovalView,
    ChangesView,
    DeliveryView,
    SourceView,
    build_card,
    build_final_card,
    build_not_allowed_card,
    build_pending_card,
    card_size,
)
from adaptive_cards.elements import adaptive_card, input_text, text_block
from adaptive_cards.text import BLANK_LINE, clip, escape_inline, format_datetime, markdown_lines, truncation_note
from service.approval_views import changes_view
from service.text_diff import diff_edit

from .peers.npm import ensure_npm_packages

ROOT = Path(__file__).resolve().parent.parent
CARDS_JS = Path(__file__).resolve().parent / "cards_js"
SCHEMA_FILE = CARDS_JS / "schema-1.5.json"

T0 = datetime(2025, 3, 4, 9, 30, 15, tzinfo=timezone.utc)

HOSTILE_BODY = "\n".join(
    [
        "Dear customer,",
        "[click here](http://evil.example/login) to confirm.",
        "![tracking](http://x.example/pixel.png)",
        "**bold claim** and __also bold__ and *it* and _it_",
        "# Heading injection",
        "### Third-level heading",
        "> quoted authority",
        "- bullet one",
        "+ bullet two",
        "* bullet three",
        "1. numbered",
        "2) numbered too",
        '<b>html</b> <a href="http://evil.example">link</a> <img src=x onerror=alert(1)>',
        "`code` and ```fenced``` and ~~struck~~",
        "&amp; &lt;script&gt; &#91;entity&#93; Q&A",
        "{{DATE(2025-01-01T00:00:00Z, SHORT)}} {{TIME(2025-01-01T00:00:00Z)}}",
        "<http://autolink.example> and [ref][1]",
        "[1]: http://evil.example/ref",
        "    indented code block",
        "| a | b |",
        ":---|---|",
        "Setext heading",
        "===",
        "---",
        "***",
        "back\\slash \\*already escaped\\* end\\",
        "",
        "Regards,",
        "Support",
    ]
)
HOSTILE_LINE = (
    "[click](http://evil) ![img](http://x) **bold** # heading <b>html</b> _x_ `c` ~~s~~ &amp; "
    "{{DATE(2025-01-01T00:00:00Z)}}"
)


# --- the views ------------------------------------------------------------------------------


def pending(**changes: Any) -> ApprovalView:
    values: dict[str, Any] = {
        "approval_id": "apr_01HQZX3",
        "run_id": "run_01HQZX2",
        "revision": 3,
        "status": "pending",
        "to": ("Jane Customer <jane@example.com>",),
        "subject": "Re: Refund for order #1234",
        "body": (
            "Hi Jane,\n\nThanks for getting in touch. Your refund has been issued.\n"
            "It should arrive within 5 days.\n\nBest regards,\nSupport"
        ),
    }
    values.update(changes)
    return ApprovalView(**values)


SOURCES = (
    SourceView("Refund policy", "https://kb.example.com/refunds", "Refunds are issued within 30 days of purchase."),
    SourceView("Order #1234", "crm://orders/1234", "Paid 2025-02-01, shipped 2025-02-03."),
    SourceView("Previous email", None, None),
)
FULL = {
    "cc": ("billing@example.com", "Team Lead <lead@example.com>"),
    "in_reply_to": "<CAF1234@mail.example.com>",
    "sources": SOURCES,
    "requested_by": "support-agent",
    "policy": "refunds",
    "reviewers": ("alice@example.com", "bob@example.com"),
    "deadline": T0 + timedelta(hours=4),
}
LONG_BODY = "\n\n".join(
    f"Paragraph {i}: " + ("lorem ipsum dolor sit amet " * 20).strip() for i in range(200)
)  # ~110 KB
assert len(LONG_BODY) > 100_000
MANY_SOURCES = tuple(
    SourceView(f"Source {i} " + "t" * 300, f"https://kb.example.com/{i}/" + "p" * 300, "snippet " * 700)
    for i in range(200)
)
# Every field at its worst: astral characters cost 12 bytes each as JSON escapes.
ASTRAL = "\U0001f600"
WORST = {
    "to": tuple(f"{ASTRAL * 300}{i}@example.com" for i in range(1000)),
    "cc": tuple(f"{ASTRAL * 300}{i}@example.com" for i in range(1000)),
    "subject": ASTRAL * 10_000,
    "body": ASTRAL * 100_000,
    "in_reply_to": ASTRAL * 5000,
    "sources": tuple(SourceView(ASTRAL * 5000, ASTRAL * 5000, ASTRAL * 5000) for _ in range(300)),
    "requested_by": ASTRAL * 5000,
    "policy": ASTRAL * 5000,
    "reviewers": tuple(ASTRAL * 500 for _ in range(500)),
    "deadline": T0,
    "approval_id": "a" * 200,
    "run_id": "r" * 200,
}


def ladder_view(status: str, body_chars: int) -> ApprovalView:
    """20 sources and a body of `body_chars`: each size reaches one step of the size guard."""
    sources = tuple(
        SourceView(f"Source {i} " + "t" * 190, "https://kb.example.com/" + "p" * 180, "word " * 60) for i in range(20)
    )
    body = ("lorem ipsum " * (body_chars // 12 + 1))[:body_chars]
    if status == "pending":
        return pending(**{**FULL, "body": body, "sources": sources})
    return decided(status, body=body, sources=sources)


# name -> (body characters, actions, sources heading, body cut, snippets shown)
LADDER = {
    "pending-step-full": (4000, ["Approve", "Edit and approve", "Reject"], "Sources (10 of 20 shown)", False, True),
    "pending-step-compact-sources": (
        6000,
        ["Approve", "Edit and approve", "Reject"],
        "Sources (5 of 20 shown)",
        False,
        True,
    ),
    "pending-step-not-editable": (10_000, ["Approve", "Reject"], "Sources (10 of 20 shown)", False, True),
    "pending-step-not-editable-compact": (16_000, ["Approve", "Reject"], "Sources (5 of 20 shown)", False, True),
    "pending-step-source-titles": (19_000, ["Approve", "Reject"], "Sources (3 of 20 shown)", False, False),
    "pending-step-cut": (21_000, ["Reject"], "Sources (5 of 20 shown)", True, True),  # cut: no Approve
    "final-step-full": (4000, [], "Sources (10 of 20 shown)", False, True),
    "final-step-compact-sources": (16_000, [], "Sources (5 of 20 shown)", False, True),
    "final-step-source-titles": (19_000, [], "Sources (3 of 20 shown)", False, False),
    "final-step-cut": (30_000, [], "Sources (5 of 20 shown)", True, True),
}

HOSTILE = {
    "to": ("[Boss](http://evil) <boss@example.com>", "**x**@example.com"),
    "cc": ("# cc <cc@example.com>",),
    "subject": HOSTILE_LINE,
    "body": HOSTILE_BODY,
    "in_reply_to": "<[x](http://evil)>",
    "sources": (SourceView("[title](http://evil)", "![loc](http://x)", HOSTILE_LINE),),
    "requested_by": "**admin**",
    "policy": "# policy",
    "reviewers": ("[me](http://evil)",),
}


def decided(status: str, **changes: Any) -> ApprovalView:
    base: dict[str, Any] = {"status": status, "decided_by": "Alice Reviewer", "decided_at": T0, **FULL}
    base.update(changes)
    return pending(**base)


def sent(at: datetime = T0 + timedelta(minutes=1)) -> DeliveryView:
    return DeliveryView("sent", "250 2.0.0 Ok: queued as 4F2A1", at)


EDIT_DRAFT = (
    "Hi Jane,\n\nThanks for getting in touch. Your refund has been issued.\n"
    "It should arrive within 5 days.\n\nBest regards,\nSupport"
)
EDIT_APPROVED = (
    "Hi Jane,\n\nThanks for getting in touch. Your refund of EUR 40 has been issued.\n"
    "It should arrive within **3 days**.\n- [track it](http://evil.example)\n\nBest regards,\n    Rita"
)


def changes(draft: str, approved: str, subject: tuple[str, str] = ("Re: Refund", "Re: Refund")) -> ChangesView:
    found = changes_view(diff_edit({"subject": subject[0], "body": draft}, {"subject": subject[1], "body": approved}))
    assert found is not None
    return found


def edited(body: str, draft: str, **changes_: Any) -> ApprovalView:
    return decided("approved", edited=True, body=body, changes=changes(draft, body, **changes_), delivery=sent(),
                   read_at="https://countersign.example/api/runs/5f0c2a9e-7d1b-4c55-9a3e-2b8f6c1d0e47")


BIG_DRAFT = "\n".join(f"Line {i} of the draft, " + "words " * 30 for i in range(400))
BIG_EDIT = "\n".join(f"Line {i} as edited, " + "other " * 30 if i % 3 == 0 else f"Line {i} of the draft, " + "words " * 30
                     for i in range(400))


CARD_CASES: dict[str, Callable[[], dict[str, Any]]] = {
    # pending
    "pending-minimal": lambda: build_pending_card(pending()),
    "pending-full": lambda: build_pending_card(pending(**FULL)),
    "pending-cc-no-sources": lambda: build_pending_card(pending(cc=("a@example.com",))),
    "pending-empty-body-subject": lambda: build_pending_card(pending(subject="", body="")),
    "pending-long-body-many-sources": lambda: build_pending_card(
        pending(**{**FULL, "body": LONG_BODY, "sources": MANY_SOURCES})
    ),
    "pending-too-long-to-edit": lambda: build_pending_card(pending(**{**FULL, "body": LONG_BODY[:14_000]})),
    "pending-hostile": lambda: build_pending_card(pending(**{**FULL, **HOSTILE})),
    "pending-worst-case": lambda: build_pending_card(pending(**WORST)),
    "pending-votes": lambda: build_pending_card(pending(**FULL, draft_version=2, delegable=True, progress=(
        "1 of 2 approvals: Rita at 10:42 UTC; stage 1 of 2", "Still asked: sam@example.com, *lee*@example.com",
        "Due: next reminder 2026-12-02 14:42 UTC; expires 2026-12-05 10:42 UTC"))),
    # final
    "approved": lambda: build_final_card(decided("approved")),
    "approved-edited": lambda: build_final_card(decided("approved", edited=True)),
    "approved-queued": lambda: build_final_card(decided("approved", delivery=DeliveryView("queued", None, T0))),
    "approved-sending": lambda: build_final_card(decided("approved", delivery=DeliveryView("sending"))),
    "approved-sent": lambda: build_final_card(decided("approved", delivery=sent())),
    "edited-sent": lambda: build_final_card(decided("approved", edited=True, delivery=sent())),
    "approved-failed": lambda: build_final_card(
        decided("approved", delivery=DeliveryView("failed", "550 5.1.1 <jane@example.com>: mailbox unavailable", T0))
    ),
    "approved-no-who-no-when": lambda: build_final_card(decided("approved", decided_by=None, decided_at=None)),
    "rejected": lambda: build_final_card(
        decided("rejected", reason="The refund amount is wrong.\nCheck order #1234 first.")
    ),
    "cancelled": lambda: build_final_card(
        decided("cancelled", decided_by=None, reason="Customer withdrew the request.")
    ),
    "expired": lambda: build_final_card(decided("expired", decided_by=None)),
    "approved-with-changes": lambda: build_final_card(edited(EDIT_APPROVED, EDIT_DRAFT,
                                                             subject=("Re: Refund", "Re: Refund (EUR 40)"))),
    "approved-changes-subject-only": lambda: build_final_card(edited(EDIT_DRAFT, EDIT_DRAFT,
                                                                     subject=("Re: Refund", "**Re**: Refund"))),
    "approved-changes-hostile": lambda: build_final_card(edited(HOSTILE_BODY, "Dear customer,\nOld text",
                                                                subject=("Old", HOSTILE_LINE))),
    "approved-changes-large": lambda: build_final_card(edited(BIG_EDIT, BIG_DRAFT)),
    "approved-changes-worst-case": lambda: build_final_card(decided(
        "approved", **{**WORST, "body": "\n".join([ASTRAL * 3000] * 30)}, decided_by=ASTRAL * 5000, edited=True,
        changes=changes("\n".join([ASTRAL * 2000] * 30), "\n".join([ASTRAL * 3000] * 30),
                        subject=(ASTRAL * 10_000, ASTRAL * 9000)),
        delivery=DeliveryView("failed", ASTRAL * 50_000, T0))),
    "approved-votes": lambda: build_final_card(decided("approved", progress=(
        "2 of 2 approvals: Rita at 10:42 UTC, Sam at 10:50 UTC",))),
    "expired-no-deadline": lambda: build_final_card(decided("expired", decided_by=None, deadline=None)),
    "final-long-body-many-sources": lambda: build_final_card(
        decided("approved", body=LONG_BODY, sources=MANY_SOURCES, delivery=sent())
    ),
    "final-hostile": lambda: build_final_card(
        decided("rejected", **HOSTILE, reason=HOSTILE_BODY, decided_by="[Alice](http://evil)")
    ),
    "final-hostile-failed": lambda: build_final_card(
        decided("approved", **HOSTILE, delivery=DeliveryView("failed", HOSTILE_LINE, T0))
    ),
    "final-worst-case": lambda: build_final_card(
        decided("rejected", **WORST, reason=ASTRAL * 50_000, decided_by=ASTRAL * 5000)
    ),
    "final-worst-case-failed": lambda: build_final_card(
        decided("approved", **WORST, decided_by=ASTRAL * 5000, delivery=DeliveryView("failed", ASTRAL * 50_000, T0))
    ),
    # not allowed / already decided
    "not-allowed": lambda: build_not_allowed_card(pending(**FULL)),
    "not-allowed-message": lambda: build_not_allowed_card(
        pending(**FULL), "Only reviewers of policy refunds may decide."
    ),
    "not-allowed-hostile": lambda: build_not_allowed_card(pending(**{**FULL, **HOSTILE}), HOSTILE_LINE),
    "not-allowed-long": lambda: build_not_allowed_card(pending(**{**FULL, "body": LONG_BODY, "sources": MANY_SOURCES})),
    "not-allowed-worst-case": lambda: build_not_allowed_card(pending(**WORST), ASTRAL * 50_000),
    "already-decided": lambda: build_not_allowed_card(decided("approved", delivery=sent())),
    # every step of the size guard
    **{
        name: (
            lambda name=name: build_card(
                ladder_view("pending" if name.startswith("pending") else "approved", LADDER[name][0])
            )
        )
        for name in LADDER
    },
}
FINAL_CASES = [name for name in CARD_CASES if not name.startswith("pending")]
PENDING_CASES = [name for name in CARD_CASES if name.startswith("pending")]

ESCAPE_VECTORS = [
    "[click](http://evil)",
    "![img](http://x)",
    "**bold**",
    "__bold__",
    "*it* _it_",
    "# heading",
    "###### heading 6",
    "<b>html</b>",
    "<http://autolink.example>",
    "`code`",
    "```",
    "~~struck~~",
    "> quote",
    "- list",
    "+ list",
    "* list",
    "1. list",
    "12) list",
    "===",
    "---",
    "| a | b |",
    "&amp; &#91; &#x5B; &copy;",
    "Q&A and a < b > c",
    "back\\slash",
    "trailing backslash\\",
    "[ref]: http://evil",
    "{{DATE(2025-01-01T00:00:00Z, SHORT)}}",
]

# Negative probes: each must be caught by the checker named, or the checks prove nothing.
PROBE_CARDS: dict[str, dict[str, Any]] = {
    "unknown-element": adaptive_card([{"type": "Bogus"}], None, fallback_text="x"),
    "unlabelled-required-input": adaptive_card(
        [{"type": "Input.Text", "id": "x", "isRequired": True}], None, fallback_text="x"
    ),
    "duplicate-input-id": adaptive_card(
        [input_text("x", label="A"), input_text("x", label="B")], None, fallback_text="x"
    ),
    "msteams-width": {**adaptive_card([text_block("x")], None, fallback_text="x"), "msteams": {"width": "Full"}},
    "unknown-property": adaptive_card([{**text_block("x"), "bogus": 1}], None, fallback_text="x"),
    "escape-vectors": adaptive_card([text_block(escape_inline(v)) for v in ESCAPE_VECTORS], None, fallback_text="x"),
}


# --- fixtures: the cards, the renderer, the schema ----------------------------------------------


@pytest.fixture(scope="session")
def cards() -> dict[str, dict[str, Any]]:
    return {name: build() for name, build in CARD_CASES.items()}


def _ensure_node() -> str:
    return ensure_npm_packages(CARDS_JS, "the card tests run the official Adaptive Cards renderer")


@pytest.fixture(scope="session")
def renderer(cards: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """validate.js's result for every card and probe, by name (one Node process for all)."""
    node = _ensure_node()
    named = {**cards, **{f"probe:{name}": card for name, card in PROBE_CARDS.items()}}
    done = subprocess.run(
        [node, str(CARDS_JS / "validate.js")],
        input=json.dumps(list(named.values())),
        cwd=CARDS_JS,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        pytest.fail(f"validate.js failed (exit {done.returncode}):\n{done.stderr}", pytrace=False)
    results = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert [r["index"] for r in results] == list(range(len(named)))
    return dict(zip(named, results, strict=True))


def run_dom_renderer(cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """render.js's result for each card: the official renderer's DOM, line by line."""
    node = _ensure_node()
    done = subprocess.run(
        [node, str(CARDS_JS / "render.js")], input=json.dumps(cards), cwd=CARDS_JS, capture_output=True, text=True,
        timeout=300,
    )
    if done.returncode != 0:
        pytest.fail(f"render.js failed (exit {done.returncode}):\n{done.stderr}", pytrace=False)
    results = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert [r["index"] for r in results] == list(range(len(cards)))
    return results


@pytest.fixture(scope="session")
def schema_validator() -> Draft6Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    root = {"$ref": "#/definitions/AdaptiveCard", "definitions": schema["definitions"]}
    Draft6Validator.check_schema(root)
    return Draft6Validator(root)


def schema_errors(validator: Draft6Validator, card: dict[str, Any]) -> list[str]:
    """Readable errors: for an anyOf, the branch that matched best."""

    def describe(error: ValidationError) -> str:
        while error.context:
            error = best_match(error.context)
        path = "/".join(str(p) for p in error.absolute_path)
        return f"/{path}: {error.message[:300]}"

    return [describe(e) for e in validator.iter_errors(card)]


# --- helpers -----------------------------------------------------------------------------------


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def of_type(card: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    return [node for node in walk(card) if str(node.get("type", "")).startswith(prefix)]


def texts(card: dict[str, Any]) -> list[str]:
    out = []
    for node in walk(card):
        if node.get("type") == "TextBlock":
            out.append(node["text"])
        if node.get("type") == "FactSet":
            out.extend(f"{f['title']}: {f['value']}" for f in node["facts"])
    return out


def paragraphs_of(rendered_html: str) -> list[str]:
    """Visible text of markdown-it output that consists of plain paragraphs only."""
    return [html.unescape(p).replace("\u00a0", " ") for p in re.findall(r"<p>(.*?)</p>", rendered_html, re.S)]


def draft_lines(result: dict[str, Any], card: dict[str, Any]) -> list[str]:
    """Visible lines of the draft body container (the emphasis container after 'Draft')."""
    body = card["body"]
    for i, element in enumerate(body):
        if element.get("type") == "Container" and element.get("style") == "emphasis":
            prefix = f"$.body[{i}].items"
            break
    else:
        raise AssertionError("no draft container")
    lines: list[str] = []
    for item in result["markdown"]:
        if item["path"].startswith(prefix):
            lines.extend(paragraphs_of(item["html"]))
    return lines


# --- real peers: renderer and schema -----------------------------------------------------------


@pytest.mark.parametrize("name", CARD_CASES)
def test_official_renderer_accepts_card(name: str, renderer: dict[str, dict[str, Any]]) -> None:
    result = renderer[name]
    problems = result["parse"] + result["validation"]
    assert problems == [], f"{name}: the adaptivecards renderer reported:\n" + json.dumps(problems, indent=1)
    assert result["version"] == "1.5"


@pytest.mark.parametrize("name", CARD_CASES)
def test_schema_1_5_accepts_card(name: str, cards: dict[str, Any], schema_validator: Draft6Validator) -> None:
    errors = schema_errors(schema_validator, cards[name])
    assert errors == [], f"{name}: schema 1.5 errors:\n" + "\n".join(errors)


def test_checks_catch_mistakes(renderer: dict[str, dict[str, Any]], schema_validator: Draft6Validator) -> None:
    """Each checker flags what it is there for (else a green run would prove nothing)."""

    def events(name: str) -> list[str]:
        result = renderer[f"probe:{name}"]
        return [e["event"] for e in result["parse"] + result["validation"]]

    assert "UnknownElementType" in events("unknown-element")
    assert "RequiredInputsShouldHaveLabel" in events("unlabelled-required-input")
    assert "RequiredInputsShouldHaveErrorMessage" in events("unlabelled-required-input")
    assert "DuplicateId" in events("duplicate-input-id")
    # The Teams-only property: the renderer accepts it, the schema does not. Cards omit it.
    assert events("msteams-width") == []
    assert any("msteams" in e for e in schema_errors(schema_validator, PROBE_CARDS["msteams-width"]))
    assert schema_errors(schema_validator, PROBE_CARDS["unknown-property"]) != []
    assert events("unknown-property") == []  # the renderer ignores unknown properties: why both checks


def test_schema_file_is_the_vendored_one() -> None:
    import hashlib

    digest = hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest()
    assert digest == "6f4f958f6c0937c04926e4c4928fdeee4a9955a879e3ed248ae4df7bea9abc35"


def test_lockfile_uses_only_the_registry() -> None:
    lock = json.loads((CARDS_JS / "package-lock.json").read_text())
    package = json.loads((CARDS_JS / "package.json").read_text())
    assert package["dependencies"]["adaptivecards"] == "3.0.6"
    assert lock["packages"]["node_modules/adaptivecards"]["version"] == "3.0.6"
    for path, entry in lock["packages"].items():
        resolved = entry.get("resolved")
        assert resolved is None or resolved.startswith("https://registry.npmjs.org/"), (path, resolved)
        assert path == "" or entry.get("integrity", "").startswith("sha512-"), path


# --- escaping ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CARD_CASES)
def test_every_text_renders_as_plain_paragraphs(name: str, renderer: dict[str, dict[str, Any]]) -> None:
    """No text in any card turns into markup: no link, image, emphasis, heading, list, code."""
    for item in renderer[name]["markdown"]:
        assert re.fullmatch(r"(<p>[^<]*</p>\n)+", item["html"]), f"{item['path']}: {item['text']!r} -> {item['html']!r}"
        # Clients that auto-link bare URLs: a link may only point where its text says.
        for href, label in re.findall(r'<a href="([^"]*)">([^<]*)</a>', item["htmlLinkify"]):
            href, label = html.unescape(href), html.unescape(label)
            assert href in (label, f"mailto:{label}", f"http://{label}"), (item["path"], href, label)
        assert "{{DATE(" not in item["text"] and "{{TIME(" not in item["text"]


def test_escape_vectors_show_literally(renderer: dict[str, dict[str, Any]]) -> None:
    rendered = renderer["probe:escape-vectors"]["markdown"]
    for vector, item in zip(ESCAPE_VECTORS, rendered, strict=True):
        assert re.fullmatch(r"<p>[^<]*</p>\n", item["html"]), (vector, item["text"], item["html"])
        assert paragraphs_of(item["html"]) == [vector], (vector, item["text"], item["html"])
        # The renderer's own text functions ({{DATE(...)}}) match on the raw text, before markdown.
        assert not re.search(r"\{\{(DATE|TIME)\(", item["text"])


# What a reviewer reads must be what the customer gets, line for line: single line breaks,
# blank lines (one, or several), indentation and runs of spaces, and markdown-looking lines.
LINES_BODY = "\n".join([
    "Dear Ann,",
    "thanks for your patience.",
    "",
    "Refunds are issued within **30 days**.",
    "- item",
    "1. item",
    "[link](http://x)",
    "",
    "",
    "    indented by four",
    "Total:     EUR 40",
    "Kind regards,",
    "Customer support",
])
REASON_LINES = "Not like this:\n- the amount is wrong\n\nCheck **order** #1234."


def _rendered_lines(blocks: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [b for b in blocks if b["path"].startswith(prefix)]


def _shown(blocks: list[dict[str, Any]]) -> list[str]:
    return [line.replace("\u00a0", " ").rstrip() for b in blocks for line in b["lines"]]


def _draft_prefix(card: dict[str, Any]) -> str:
    for i, element in enumerate(card["body"]):
        if element.get("type") == "Container" and element.get("style") == "emphasis":
            return f"$.body[{i}].items["
    raise AssertionError("no draft container")


def test_the_official_renderer_shows_each_line_of_the_draft_as_the_customer_gets_it() -> None:
    built = {
        "pending": build_pending_card(pending(body=LINES_BODY)),
        "approved": build_final_card(decided("approved", body=LINES_BODY, delivery=sent())),
        "not-allowed": build_not_allowed_card(pending(body=LINES_BODY)),
        "rejected": build_final_card(decided("rejected", body=LINES_BODY, reason=REASON_LINES)),
    }
    rendered = dict(zip(built, run_dom_renderer(list(built.values())), strict=True))
    for name, card in built.items():
        blocks = _rendered_lines(rendered[name]["blocks"], _draft_prefix(card))
        # Every line is its own line, blank lines included (as many as the text has), the
        # indentation and the run of spaces as wide as typed, the markdown shown literally.
        assert _shown(blocks) == LINES_BODY.split("\n"), name
        assert all(b["tags"] == ["p"] for b in blocks), (name, [b["tags"] for b in blocks])
        # One TextBlock per line, no gap between them: a blank line is a line, not a margin.
        assert len(blocks) == len(LINES_BODY.split("\n")) and {b["spacing"] for b in blocks[1:]} == {"None"}, name
    banner = rendered["rejected"]["blocks"]
    reason_at = next(i for i, b in enumerate(banner) if b["lines"] == ["Reason"])
    assert _shown(banner[reason_at + 1 : reason_at + 5]) == REASON_LINES.split("\n")


def _changes_blocks(card: dict[str, Any], blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    heading = next(i for i, e in enumerate(card["body"]) if e.get("text") == "Changes from the draft")
    return _rendered_lines(blocks, f"$.body[{heading + 1}].items[")


def test_the_card_after_an_edit_shows_the_removed_and_added_lines_in_the_official_renderer(
    cards: dict[str, Any],
) -> None:
    names = ["approved-with-changes", "approved-changes-hostile", "approved-changes-large", "approved"]
    rendered = dict(zip(names, run_dom_renderer([cards[n] for n in names]), strict=True))
    blocks = _changes_blocks(cards["approved-with-changes"], rendered["approved-with-changes"]["blocks"])
    marked = [(b["color"], line) for b, line in zip(blocks, _shown(blocks), strict=True)]
    assert marked[1:4] == [(None, "Subject"), ("Attention", "- Re: Refund"), ("Good", "+ Re: Refund (EUR 40)")]
    # Every line of the body's diff, each on its own line: context subtle, removed lines in the
    # attention colour, added ones in the good colour, markdown and indentation as typed.
    assert marked[4:] == [
        (None, "Body"),
        (None, "From line 1 of the draft:"),
        (None, "  Hi Jane,"),
        (None, ""),
        ("Attention", "- Thanks for getting in touch. Your refund has been issued."),
        ("Attention", "- It should arrive within 5 days."),
        ("Good", "+ Thanks for getting in touch. Your refund of EUR 40 has been issued."),
        ("Good", "+ It should arrive within **3 days**."),
        ("Good", "+ - [track it](http://evil.example)"),
        (None, ""),
        (None, "  Best regards,"),
        ("Attention", "- Support"),
        ("Good", "+     Rita"),
    ]
    assert [b["subtle"] for b in blocks[6:9]] == [True, True, False]
    assert all(b["tags"] == ["p"] for b in blocks)
    assert "3 lines removed, 4 added; subject changed" in _shown(blocks)[0]
    # Hostile text in a diff is shown literally, like the draft.
    hostile = _changes_blocks(cards["approved-changes-hostile"], rendered["approved-changes-hostile"]["blocks"])
    shown = _shown(hostile)
    assert "+ " + HOSTILE_LINE in shown and "+ [click here](http://evil.example/login) to confirm." in shown
    assert "- Old text" in shown and all(b["tags"] == ["p"] for b in hostile)
    # A large diff is cut within the size budget, with a note saying where the whole diff is.
    large = _shown(_changes_blocks(cards["approved-changes-large"], rendered["approved-changes-large"]["blocks"]))
    assert large[-1] == ("… 260 more changed lines not shown here; the whole diff is in the run's JSON "
                         "(GET https://countersign.example/api/runs/5f0c2a9e-7d1b-4c55-9a3e-2b8f6c1d0e47, approvals[].diff).")
    assert card_size(cards["approved-changes-large"]) <= CARD_BUDGET_BYTES
    # Approved without an edit: no changes section.
    assert not any(b["lines"] == ["Changes from the draft"] for b in rendered["approved"]["blocks"])


def test_the_changes_section_is_only_on_an_approved_card() -> None:
    view = decided("rejected", reason="no", changes=changes(EDIT_DRAFT, EDIT_APPROVED))
    assert "Changes from the draft" not in texts(build_final_card(view))
    assert "Changes from the draft" not in texts(build_pending_card(pending(changes=changes(EDIT_DRAFT, EDIT_APPROVED))))


def test_the_dom_check_sees_what_markdown_does_to_line_ends() -> None:
    """The checker itself: a single newline in a TextBlock is one line (a soft break), a
    blank line two paragraphs with a line's height between them; both are what the card
    builders must avoid, and each is caught."""
    probe = adaptive_card([text_block("Kind regards,\nCustomer support"), text_block("Hi,\n\nBye"),
                           text_block("  two  spaces")], None, fallback_text="x")
    [result] = run_dom_renderer([probe])
    assert [b["lines"] for b in result["blocks"]] == [["Kind regards, Customer support"], ["Hi,", "", "Bye"],
                                                      ["two spaces"]]


@pytest.mark.parametrize("name", ["pending-hostile", "not-allowed-hostile"])
def test_hostile_draft_shows_exactly_what_will_be_sent(
    name: str, cards: dict[str, Any], renderer: dict[str, dict[str, Any]]
) -> None:
    expected = [line.rstrip() for line in HOSTILE_BODY.split("\n")]
    shown = draft_lines(renderer[name], cards[name])
    assert [s.rstrip() for s in shown] == expected
    values = {i["path"]: paragraphs_of(i["html"])[0] for i in renderer[name]["markdown"] if ".facts[" in i["path"]}
    assert HOSTILE_LINE in values.values()  # the subject
    assert "[Boss](http://evil) <boss@example.com>, **x**@example.com" in values.values()


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("[click](http://evil)", r"\[click\](http://evil)"),
        ("![img](http://x)", r"!\[img\](http://x)"),
        ("**bold**", r"\*\*bold\*\*"),
        ("# heading", r"\# heading"),
        ("<b>html</b>", r"\<b>html\</b>"),
        ("_x_ `y` ~~z~~", r"\_x\_ \`y\` \~\~z\~\~"),
        ("> q", r"\> q"),
        ("- a", r"\- a"),
        ("1. a", r"1\. a"),
        ("3) a", r"3\) a"),
        ("a | b", r"a \| b"),
        ("&amp; Q&A &#91;", r"\&amp; Q&A \&#91;"),
        ("{{DATE(x)}}", r"\{\{DATE(x)\}\}"),
        ("a\\b", r"a\\b"),
        ("plain text, 3.5 - 2 = 1.5!", "plain text, 3.5 - 2 = 1.5!"),
    ],
)
def test_escape_inline(raw: str, escaped: str) -> None:
    assert escape_inline(raw) == escaped


def test_lines_are_kept_one_by_one_and_controls_neutralised() -> None:
    text = "Hi,\r\nline two\n\n\n    indented\n\tTabbed\nPay moc.live\u202eevil.com\u202c now\x07\n\n"
    assert markdown_lines(text) == [
        "Hi,",
        "line two",
        BLANK_LINE,
        BLANK_LINE,
        "\u00a0" * 4 + "indented",
        "\u00a0" * 4 + "Tabbed",
        r"Pay moc.live\[U+202E\]evil.com\[U+202C\] now\[U+0007\]",
    ]
    assert markdown_lines("") == [] and markdown_lines("\n\nx") == [BLANK_LINE, BLANK_LINE, "x"]
    # Runs of blanks inside a line keep their width (HTML would collapse them to one space).
    assert markdown_lines("Total:   EUR\t40") == ["Total: \u00a0\u00a0EUR \u00a0\u00a0\u00a040"]
    assert escape_inline("a\n\n b\tc") == "a b c"


# --- the pending card --------------------------------------------------------------------------


def _actions_by_title(card: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {a["title"]: a for a in card["actions"]}


@pytest.mark.parametrize("name", PENDING_CASES)
def test_pending_card_actions(name: str, cards: dict[str, Any]) -> None:
    card = cards[name]
    view_id: dict[str, Any] = (
        {"approval_id": "a" * 200, "revision": 3} if "worst" in name else {"approval_id": "apr_01HQZX3", "revision": 3}
    )
    if name == "pending-votes":  # the text's version, so that a stale card cannot approve a newer text
        view_id["draft_version"] = 2
    actions = _actions_by_title(card)
    assert list(actions)[-1] == "Reject" and actions["Reject"]["type"] == "Action.ShowCard"
    executes = of_type(card, "Action.Execute")
    verbs = {a["verb"] for a in executes}
    if _cut_anything(card):  # what the card cannot show cannot be approved from it
        assert list(actions) == ["Reject"] and verbs == {VERB_REJECT}
        assert any("cannot be approved in Teams" in t for t in texts(card))
    else:
        assert next(iter(actions)) == "Approve"
        assert actions["Approve"]["type"] == "Action.Execute" and actions["Approve"]["verb"] == VERB_APPROVE
        delegate = {VERB_DELEGATE} if "Hand over my vote" in actions else set()
        assert verbs == delegate | (
            {VERB_APPROVE, VERB_EDIT, VERB_REJECT} if "Edit and approve" in actions else {VERB_APPROVE, VERB_REJECT}
        )
        assert bool(delegate) == (name == "pending-votes")
    for action in executes:
        assert action["data"] == view_id  # identity never comes from the card
        fallback = action["fallback"]
        assert fallback == {
            "type": "Action.Submit",
            "title": action["title"],
            "data": {**view_id, "verb": action["verb"]},
            **({"style": action["style"]} if "style" in action else {}),
        }
    submits = of_type(card, "Action.Submit")
    assert len(submits) == len(executes)  # only as fallbacks
    reason = [i for i in of_type(card, "Input.") if i["id"] == INPUT_REASON]
    assert len(reason) == 1
    assert reason[0]["isRequired"] is True and reason[0]["label"] and reason[0]["errorMessage"]
    assert "msteams" not in json.dumps(card)


def test_pending_card_content_and_prefilled_edit() -> None:
    view = pending(**FULL)
    card = build_pending_card(view)
    shown = "\n".join(texts(card))
    for expected in [
        "Approval needed: send an email",
        "Action: Send an email",
        r"To: Jane Customer \<jane@example.com>",
        r"Cc: billing@example.com, Team Lead \<lead@example.com>",
        r"Subject: Re: Refund for order #1234",
        r"In reply to: \<CAF1234@mail.example.com>",
        "Requested by: support-agent",
        "Policy: refunds",
        "Reviewers: alice@example.com, bob@example.com",
        "Deadline: 2025-03-04 13:30 UTC",
        "Thanks for getting in touch. Your refund has been issued.\nIt should arrive within 5 days.",
        "Sources (3)",
        "Refund policy",
        "https://kb.example.com/refunds",
        "Refunds are issued within 30 days of purchase.",
        r"Approval apr\_01HQZX3 · revision 3 · run run\_01HQZX2",
    ]:
        assert expected in shown, expected
    edit = _actions_by_title(card)["Edit and approve"]
    inputs = {i["id"]: i for i in of_type(edit, "Input.Text")}
    assert inputs[INPUT_SUBJECT]["value"] == view.subject and inputs[INPUT_SUBJECT]["label"]
    assert inputs[INPUT_BODY]["value"] == view.body and inputs[INPUT_BODY]["isMultiline"] is True
    assert inputs[INPUT_BODY]["label"] and "maxLength" not in inputs[INPUT_BODY]
    assert "too long to edit" not in shown
    # No sources: no sources section.
    assert not any(t.startswith("Sources") for t in texts(build_pending_card(pending())))


def test_hostile_prefill_is_raw() -> None:
    view = pending(**HOSTILE)
    inputs = {i["id"]: i for i in of_type(build_pending_card(view), "Input.Text")}
    assert inputs[INPUT_BODY]["value"] == HOSTILE_BODY  # inputs do not render markdown: no escaping
    assert inputs[INPUT_SUBJECT]["value"] == HOSTILE_LINE


# --- size guard --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CARD_CASES)
def test_card_within_budget(name: str, cards: dict[str, Any]) -> None:
    card = cards[name]
    assert card_size(card) <= CARD_BUDGET_BYTES
    assert len(json.dumps(card, separators=(",", ":"), ensure_ascii=False).encode()) <= CARD_BUDGET_BYTES


def _cut_anything(card: dict[str, Any]) -> bool:
    """The card cut the draft body or a fact of what would be sent (sources may be cut freely)."""
    facts = [t for t in texts(card) if t.startswith(("To: ", "Cc: ", "Subject: ", "In reply to: "))]
    return _truncation(card) is not None or any(
        "(truncated, " in t or t.endswith((" more", " …")) for t in facts)


def _truncation(card: dict[str, Any]) -> int | None:
    for text in texts(card):
        match = re.fullmatch(r"… \(truncated, ([\d,]+) more characters\)", text)
        if match:
            return int(match.group(1).replace(",", ""))
    return None


def test_long_body_is_cut_with_marker_and_offers_reject_only(cards: dict[str, Any]) -> None:
    card = cards["pending-long-body-many-sources"]
    actions = _actions_by_title(card)
    assert list(actions) == ["Reject"]  # text past the cut must not be approved unseen
    assert any("cannot be approved in Teams" in t for t in texts(card))
    assert any("Read the whole text and decide through the Countersign API." == t for t in texts(card))
    omitted = _truncation(card)
    assert omitted is not None and 0 < omitted < len(LONG_BODY)
    assert card_size(card) > CARD_BUDGET_BYTES * 0.9  # the budget is used, not wasted
    assert any(t == "Sources (5 of 200 shown)" for t in texts(card))


def test_shown_body_is_a_prefix_of_the_draft(cards: dict[str, Any], renderer: dict[str, dict[str, Any]]) -> None:
    for name in ("pending-long-body-many-sources", "final-long-body-many-sources", "not-allowed-long"):
        shown = draft_lines(renderer[name], cards[name])
        assert shown[-1].startswith("… (truncated, ")
        omitted = _truncation(cards[name])
        visible_body = "\n".join(line if line.strip() else "" for line in shown[:-1])
        assert LONG_BODY.startswith(visible_body), name
        assert len(visible_body) + omitted == len(LONG_BODY), name
        assert len(visible_body) >= 10_000, name


def test_body_too_long_to_edit_is_shown_whole(cards: dict[str, Any]) -> None:
    card = cards["pending-too-long-to-edit"]
    assert _truncation(card) is None
    assert list(_actions_by_title(card)) == ["Approve", "Reject"]
    assert any("too long to edit in Teams" in t for t in texts(card))


@pytest.mark.parametrize("name", PENDING_CASES)
def test_edit_form_never_truncates_the_draft(name: str, cards: dict[str, Any]) -> None:
    card = cards[name]
    edit = _actions_by_title(card).get("Edit and approve")
    if edit is None:
        assert any("too long to edit in Teams" in t or "cannot be approved in Teams" in t for t in texts(card))
        return
    inputs = {i["id"]: i for i in of_type(edit, "Input.Text")}
    assert _truncation(card) is None  # the shown body is whole too
    assert "maxLength" not in inputs[INPUT_BODY] and "maxLength" not in inputs[INPUT_SUBJECT]


@pytest.mark.parametrize("name", LADDER)
def test_size_guard_steps(name: str, cards: dict[str, Any]) -> None:
    """Each step of the size guard, in order: compact sources, drop the edit form (pending),
    source titles only, then cut the body."""
    _, actions, heading, cut, snippets = LADDER[name]
    card = cards[name]
    shown = texts(card)
    assert [a["title"] for a in card.get("actions", [])] == actions
    assert heading in shown
    assert (_truncation(card) is not None) is cut
    assert any(t.startswith("word word") for t in shown) is snippets
    if name.startswith("pending") and not cut:  # the edit form, or the note that replaces it
        assert ("Edit and approve" in actions) != any("too long to edit in Teams" in t for t in shown)
    if name.startswith("pending") and cut:  # no Approve at all, and where to decide instead
        assert any("cannot be approved in Teams" in t for t in shown)


def test_worst_case_still_fits_with_actions(cards: dict[str, Any]) -> None:
    card = cards["pending-worst-case"]
    assert list(_actions_by_title(card)) == ["Reject"]  # recipients are cut: Reject only
    assert card_size(card) <= CARD_BUDGET_BYTES
    assert any(t.startswith("To: ") and t.endswith("more") for t in texts(card))


def test_clip_and_note() -> None:
    assert clip("hello world", 100) == ("hello world", 0)
    assert clip("hello world again", 14) == ("hello world", 6)
    assert clip("abcdef", 3) == ("abc", 3)
    assert truncation_note(81234) == "… (truncated, 81,234 more characters)"
    assert truncation_note(1) == "… (truncated, 1 more character)"


# --- final, not-allowed and already-decided cards ----------------------------------------------


@pytest.mark.parametrize("name", FINAL_CASES)
def test_final_cards_have_no_actions(name: str, cards: dict[str, Any]) -> None:
    card = cards[name]
    assert "actions" not in card
    assert not any("actions" in node or "selectAction" in node for node in walk(card))
    assert of_type(card, "Action.") == [] and of_type(card, "Input.") == [] and of_type(card, "ActionSet") == []


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("approved", ["Approved", "Approved by Alice Reviewer on 2025-03-04 09:30 UTC.", "Approved email"]),
        ("approved-edited", ["Edited and approved", "Edited and approved by Alice Reviewer on 2025-03-04 09:30 UTC."]),
        ("approved-queued", ["Approved", "Delivery: Queued", "At: 2025-03-04 09:30 UTC"]),
        ("approved-sending", ["Approved", "Delivery: Sending"]),
        (
            "approved-sent",
            [
                "Approved and sent",
                "Delivery: Sent",
                "At: 2025-03-04 09:31 UTC",
                "Detail: 250 2.0.0 Ok: queued as 4F2A1",
            ],
        ),
        (
            "edited-sent",
            ["Edited, approved and sent", "Edited and approved by Alice Reviewer on 2025-03-04 09:30 UTC."],
        ),
        (
            "approved-failed",
            [
                "Approved, but delivery failed",
                "Delivery: Failed",
                r"Detail: 550 5.1.1 \<jane@example.com>: mailbox unavailable",
            ],
        ),
        ("approved-no-who-no-when", ["Approved."]),
        (
            "rejected",
            [
                "Rejected",
                "Rejected by Alice Reviewer on 2025-03-04 09:30 UTC.",
                "Reason",
                "The refund amount is wrong.",
                "Check order #1234 first.",
                "Rejected draft",
            ],
        ),
        ("cancelled", ["Cancelled", "Cancelled on 2025-03-04 09:30 UTC.", "Customer withdrew the request."]),
        (
            "expired",
            ["Expired", "No reviewer decided by the deadline (2025-03-04 13:30 UTC); this email will not be sent."],
        ),
        ("expired-no-deadline", ["No reviewer decided in time; this email will not be sent."]),
        (
            "not-allowed",
            [
                "You can't decide on this request",
                "You are not one of the reviewers who may decide on this request.",
                "Draft",
            ],
        ),
        ("not-allowed-message", ["Only reviewers of policy refunds may decide."]),
        ("already-decided", ["Approved and sent"]),
    ],
)
def test_final_card_says_who_did_what_when(name: str, expected: list[str], cards: dict[str, Any]) -> None:
    shown = texts(cards[name])
    for line in expected:
        assert line in shown, f"{line!r} not in {shown}"


def test_not_allowed_keeps_the_pending_content(cards: dict[str, Any]) -> None:
    shown = "\n".join(texts(cards["not-allowed"]))
    for expected in [
        "Subject: Re: Refund for order #1234",
        "Deadline: 2025-03-04 13:30 UTC",
        "Sources (3)",
        "Best regards,",
    ]:
        assert expected in shown
    assert cards["already-decided"] == build_final_card(decided("approved", delivery=sent()))


def test_build_card_dispatches_on_status() -> None:
    assert build_card(pending()) == build_pending_card(pending())
    view = decided("rejected", reason="no")
    assert build_card(view) == build_final_card(view)
    with pytest.raises(ValueError):
        build_pending_card(view)
    with pytest.raises(ValueError):
        build_final_card(pending())


# --- view validation and dates -----------------------------------------------------------------


def test_view_accepts_domain_enums_and_lists() -> None:
    from service.domain import ApprovalStatus, DeliveryStatus

    view = pending(status=ApprovalStatus.APPROVED, to=["a@example.com"], delivery=DeliveryView(DeliveryStatus.SENT))
    assert view.status == "approved" and view.to == ("a@example.com",) and view.delivery.status == "sent"
    assert type(view.status) is str


@pytest.mark.parametrize(
    "changes",
    [
        {"status": "approvedish"},
        {"revision": -1},
        {"revision": True},
        {"approval_id": ""},
        {"approval_id": "x" * 201},
        {"deadline": datetime(2025, 1, 1)},
        {"decided_at": datetime(2025, 1, 1)},
        {"to": "a@example.com"},
        {"sources": ("not a source",)},
    ],
)
def test_view_rejects_bad_values(changes: dict[str, Any]) -> None:
    with pytest.raises((ValueError, TypeError)):
        pending(**changes)
    with pytest.raises(ValueError):
        DeliveryView("delivered")
    with pytest.raises(ValueError):
        DeliveryView("sent", at=datetime(2025, 1, 1))


def test_dates_are_utc_and_readable() -> None:
    paris = timezone(timedelta(hours=1))
    assert format_datetime(datetime(2025, 3, 4, 10, 30, 59, tzinfo=paris)) == "2025-03-04 09:30 UTC"
    with pytest.raises(ValueError):
        format_datetime(datetime(2025, 3, 4, 10, 30))
    card = build_pending_card(pending(deadline=datetime(2025, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-5)))))
    assert "Deadline: 2026-01-01 04:00 UTC" in texts(card)


def test_views_are_frozen() -> None:
    view = pending()
    with pytest.raises(AttributeError):
        view.status = "approved"  # type: ignore[misc]
    assert replace(view, status="approved").status == "approved"


# --- purity ------------------------------------------------------------------------------------


def test_builders_import_only_the_standard_library() -> None:
    package = ROOT / "adaptive_cards"
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top == "__future__", f"{path.name} imports {name}"


@pytest.mark.parametrize("changes", [
    {}, FULL, {**FULL, "body": LONG_BODY[:14_000]}, {**FULL, "body": LONG_BODY, "sources": MANY_SOURCES}, WORST,
    {"to": tuple(f"person{i}@example.com" for i in range(51))},  # more recipients than a card lists
], ids=["minimal", "full", "too-long-to-edit", "long-body", "worst", "many-recipients"])
def test_approvable_on_card_is_what_the_card_offers(changes: dict[str, Any]) -> None:
    """The server's check (from the stored approval) and the card agree exactly."""
    from adaptive_cards import approvable_on_card

    view = pending(**{**changes, "read_at": "https://cs.example/api/runs/run_01HQZX2",
                      "decide_at": "https://cs.example/api/approvals/apr_01HQZX3/decisions"})
    card = build_pending_card(view)
    offers_approve = VERB_APPROVE in {a["verb"] for a in of_type(card, "Action.Execute")}
    assert approvable_on_card(view) is offers_approve
    assert offers_approve is not _cut_anything(card)
    if not offers_approve:
        assert any("GET https://cs.example/api/runs/run\\_01HQZX2" in t or "GET https://cs.example/api/runs/run_01HQZX2"
                   in t for t in texts(card))
    assert card_size(card) <= CARD_BUDGET_BYTES


def test_anyone_is_shown_explicitly() -> None:
    card = build_pending_card(pending(reviewers=(), anyone=True))
    assert any(t == "Who may decide: Anyone (this policy does not restrict who may decide)" for t in texts(card))
    named = build_pending_card(pending(reviewers=("kim@example.com",)))
    assert not any(t.startswith("Who may decide") for t in texts(named))
