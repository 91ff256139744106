"""What a reviewer's edit changed: line diffs of the approved text against the draft (pure).

Every view of an approval edited before it was approved (the run's JSON, the Teams card,
what the agent is told) shows the same diff, computed here at read time from what is
stored: the draft (`approvals.action`, or under a multi-vote policy the `replaced_action`
of the first edit, see `first_draft`) and what was approved (`approvals.approved_action`).
Nothing of it is stored.

The diff is line based, as `difflib.unified_diff` makes it: the same hunks, with `CONTEXT`
lines of context, but without difflib's "autojunk" heuristic (which, on texts over 200
lines, treats frequent lines such as blank ones as noise and reports coarser changes). A
`TextDiff` is its hunks, each a run of lines that are `equal`, `removed` (in the draft
only) or `added` (in the approved text only), with their line numbers. `TextDiff.unified`
renders it as unified-diff text; `EditDiff` holds the subject's and the body's.

Lines: a text is split at LF after CR LF and CR became LF (bodies are stored that way); an
empty text has no lines. Pure: standard library only.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

__all__ = [
    "CONTEXT",
    "DiffLine",
    "EditDiff",
    "Hunk",
    "LineKind",
    "TextDiff",
    "diff_edit",
    "diff_text",
    "first_draft",
    "lines_of",
]

LineKind = Literal["equal", "added", "removed"]
CONTEXT = 3  # unchanged lines shown around each change (difflib's and diff -u's default)
_PREFIX: dict[str, str] = {"equal": " ", "added": "+", "removed": "-"}


def lines_of(text: str) -> list[str]:
    """The lines of `text` as the diff compares them (no line ends)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.split("\n") if text else []


@dataclass(frozen=True, slots=True)
class DiffLine:
    kind: LineKind
    text: str
    old_line: int | None  # 1-based number in the draft; None for an added line
    new_line: int | None  # 1-based number in the approved text; None for a removed line

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text, "old_line": self.old_line, "new_line": self.new_line}


def _range(start: int, count: int) -> str:
    """A hunk header's range, as unified diffs write it (`difflib`'s rule)."""
    if count == 1:
        return str(start)
    return f"{start if count else start - 1},{count}"


@dataclass(frozen=True, slots=True)
class Hunk:
    """A run of changes with their context. Starts are 1-based; a side with no line in the
    hunk has count 0."""

    old_start: int
    old_count: int
    new_start: int
    new_count: int
    lines: tuple[DiffLine, ...]

    @property
    def header(self) -> str:
        return f"@@ -{_range(self.old_start, self.old_count)} +{_range(self.new_start, self.new_count)} @@"

    def to_dict(self) -> dict[str, Any]:
        return {"header": self.header, "old_start": self.old_start, "old_count": self.old_count,
                "new_start": self.new_start, "new_count": self.new_count,
                "lines": [line.to_dict() for line in self.lines]}


@dataclass(frozen=True, slots=True)
class TextDiff:
    """The changes from one text to another; no hunks when they are equal."""

    hunks: tuple[Hunk, ...]

    @property
    def added(self) -> int:
        return sum(1 for h in self.hunks for line in h.lines if line.kind == "added")

    @property
    def removed(self) -> int:
        return sum(1 for h in self.hunks for line in h.lines if line.kind == "removed")

    def __bool__(self) -> bool:
        return bool(self.hunks)

    def unified(self, old_label: str = "draft", new_label: str = "approved") -> str:
        """Unified-diff text (as `difflib.unified_diff(..., lineterm="")` joined by LF), or ""
        when nothing changed."""
        if not self.hunks:
            return ""
        out = [f"--- {old_label}", f"+++ {new_label}"]
        for hunk in self.hunks:
            out.append(hunk.header)
            out.extend(_PREFIX[line.kind] + line.text for line in hunk.lines)
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {"added": self.added, "removed": self.removed, "hunks": [h.to_dict() for h in self.hunks]}


def diff_text(old: str, new: str, *, context: int = CONTEXT) -> TextDiff:
    """The line diff from `old` to `new` (the hunks `difflib.unified_diff` prints, autojunk off)."""
    a, b = lines_of(old), lines_of(new)
    hunks: list[Hunk] = []
    for group in difflib.SequenceMatcher(None, a, b, autojunk=False).get_grouped_opcodes(context):
        lines: list[DiffLine] = []
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                lines.extend(DiffLine("equal", a[i], i + 1, j1 + (i - i1) + 1) for i in range(i1, i2))
                continue
            if tag in ("replace", "delete"):
                lines.extend(DiffLine("removed", a[i], i + 1, None) for i in range(i1, i2))
            if tag in ("replace", "insert"):
                lines.extend(DiffLine("added", b[j], None, j + 1) for j in range(j1, j2))
        first, last = group[0], group[-1]
        hunks.append(Hunk(old_start=first[1] + 1, old_count=last[2] - first[1],
                          new_start=first[3] + 1, new_count=last[4] - first[3], lines=tuple(lines)))
    return TextDiff(tuple(hunks))


@dataclass(frozen=True, slots=True)
class EditDiff:
    """What an edit changed in an email: its subject's diff and its body's (None: unchanged)."""

    subject: TextDiff | None
    body: TextDiff | None

    def unified(self) -> str:
        """Both diffs as one unified-diff text, the subject's first, labelled
        `draft/subject` -> `approved/subject` and `draft/body` -> `approved/body`."""
        parts = []
        if self.subject:
            parts.append(self.subject.unified("draft/subject", "approved/subject"))
        if self.body:
            parts.append(self.body.unified("draft/body", "approved/body"))
        return "\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """As the run's JSON shows it (`service.api.schemas.EditDiffOut`)."""
        return {"subject": self.subject.to_dict() if self.subject else None,
                "body": self.body.to_dict() if self.body else None,
                "unified": self.unified()}


def diff_edit(draft: Mapping[str, Any], approved: Mapping[str, Any]) -> EditDiff | None:
    """What changed from the draft to the approved email (each a stored action's dict, or
    anything with `subject` and `body`); None when the subject and body are the same."""
    subject = diff_text(draft["subject"], approved["subject"])
    body = diff_text(draft["body"], approved["body"])
    if not subject and not body:
        return None
    return EditDiff(subject=subject or None, body=body or None)


T = TypeVar("T")


def first_draft(current: T, replaced: Iterable[tuple[int, T | None]]) -> T:
    """The text first drafted for an approval: what its earliest edit replaced (under a
    multi-vote policy an edit replaces `approvals.action` and keeps the old text in its
    decision's `replaced_action`), else `current`. `replaced`: (draft_version,
    replaced_action) of the approval's decisions, in any order."""
    found, found_version = current, None
    for version, text in replaced:
        if text is not None and (found_version is None or version < found_version):
            found, found_version = text, version
    return found
