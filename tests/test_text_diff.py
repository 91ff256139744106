"""The edit diff (service/text_diff.py): the same hunks as difflib's unified diff, line
kinds and numbers that add up, and the draft an approval's edits started from."""

from __future__ import annotations

import difflib
import random

import pytest

from service.text_diff import DiffLine, diff_edit, diff_text, first_draft, lines_of

DRAFT = "Dear Ann,\n\nRefunds are issued within 30 days.\n\nKind regards,\nSupport"
EDITED = "Dear Ann,\n\nRefunds are issued within 14 days.\nShipping is free.\n\nKind regards,\nRita"


def reference(old: str, new: str, a: str = "draft", b: str = "approved") -> str:
    return "\n".join(difflib.unified_diff(lines_of(old), lines_of(new), a, b, lineterm=""))


def test_an_edit_is_removed_and_added_lines_with_their_numbers() -> None:
    diff = diff_text(DRAFT, EDITED)
    [hunk] = diff.hunks
    assert (hunk.old_start, hunk.old_count, hunk.new_start, hunk.new_count) == (1, 6, 1, 7)
    assert hunk.header == "@@ -1,6 +1,7 @@"
    assert [(line.kind, line.text) for line in hunk.lines] == [
        ("equal", "Dear Ann,"), ("equal", ""),
        ("removed", "Refunds are issued within 30 days."),
        ("added", "Refunds are issued within 14 days."), ("added", "Shipping is free."),
        ("equal", ""), ("equal", "Kind regards,"),
        ("removed", "Support"), ("added", "Rita"),
    ]
    assert hunk.lines[2] == DiffLine("removed", "Refunds are issued within 30 days.", 3, None)
    assert hunk.lines[4] == DiffLine("added", "Shipping is free.", None, 4)
    assert hunk.lines[5] == DiffLine("equal", "", 4, 5)
    assert (diff.added, diff.removed) == (3, 2)
    assert diff.unified() == reference(DRAFT, EDITED)


def test_far_apart_changes_are_separate_hunks_with_three_lines_of_context() -> None:
    old = "\n".join(f"line {i}" for i in range(1, 31))
    new = old.replace("line 2\n", "line two\n").replace("line 28", "line twenty-eight")
    diff = diff_text(old, new)
    assert [h.header for h in diff.hunks] == ["@@ -1,5 +1,5 @@", "@@ -25,6 +25,6 @@"]
    assert diff.unified("a", "b") == reference(old, new, "a", "b")


@pytest.mark.parametrize(("old", "new"), [
    ("", "one line"), ("one line", ""), ("a\nb\nc", "a\nc"), ("a\nc", "a\nb\nc"), ("x", "y"),
    ("same", "same"), ("a\r\nb", "a\nb\n"), ("\n\n", "\n"), ("**30 days**\n- item", "**30 days**\n1. item"),
])
def test_edge_cases_match_difflib(old: str, new: str) -> None:
    diff = diff_text(old, new)
    assert diff.unified() == reference(old, new)
    assert bool(diff) == (lines_of(old) != lines_of(new))


def test_random_texts_match_difflib_and_their_lines_rebuild_both_sides() -> None:
    rng = random.Random(13)
    words = ["Dear Ann,", "", "Refund issued.", "Kind regards,", "Support", "- item", "  indented"]
    for _ in range(300):
        old = "\n".join(rng.choice(words) for _ in range(rng.randrange(0, 25)))
        new = "\n".join(rng.choice(words) for _ in range(rng.randrange(0, 25)))
        diff = diff_text(old, new, context=10**6)  # one hunk holding every line
        if diff:
            [hunk] = diff.hunks
            assert [x.text for x in hunk.lines if x.kind != "added"] == lines_of(old)
            assert [x.text for x in hunk.lines if x.kind != "removed"] == lines_of(new)
            assert [x.old_line for x in hunk.lines if x.old_line] == list(range(1, len(lines_of(old)) + 1))
            assert [x.new_line for x in hunk.lines if x.new_line] == list(range(1, len(lines_of(new)) + 1))
        assert diff_text(old, new).unified() == reference(old, new)


def test_an_edit_diff_has_the_subject_and_the_body_and_one_unified_text() -> None:
    draft = {"subject": "Your return", "body": DRAFT, "to": ["ann@example.com"]}
    assert diff_edit(draft, dict(draft)) is None
    only_body = diff_edit(draft, {**draft, "body": EDITED})
    assert only_body is not None and only_body.subject is None and only_body.body is not None
    both = diff_edit(draft, {**draft, "subject": "Your refund", "body": EDITED})
    assert both is not None and both.subject is not None
    unified = both.unified()
    assert unified == (reference("Your return", "Your refund", "draft/subject", "approved/subject") + "\n"
                       + reference(DRAFT, EDITED, "draft/body", "approved/body"))
    shown = both.to_dict()
    assert shown["unified"] == unified and shown["subject"]["added"] == 1 and shown["body"]["removed"] == 2
    assert shown["body"]["hunks"][0]["lines"][2] == {"kind": "removed", "text": "Refunds are issued within 30 days.",
                                                     "old_line": 3, "new_line": None}


def test_the_first_draft_is_what_the_earliest_edit_replaced() -> None:
    assert first_draft("current", []) == "current"
    assert first_draft("current", [(1, None), (2, None)]) == "current"
    assert first_draft("v3", [(3, "v2"), (1, None), (2, "v1")]) == "v1"


def test_the_module_imports_no_io_library() -> None:
    import ast
    from pathlib import Path

    import service.text_diff as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported = {n.module if isinstance(n, ast.ImportFrom) else a.name
                for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in (n.names if isinstance(n, ast.Import) else [n])}
    assert imported <= {"__future__", "difflib", "collections.abc", "dataclasses", "typing"}, imported
