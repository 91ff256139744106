"""Untrusted text (customer mail, model output) made safe to show in an Adaptive Card.

A `TextBlock` (and a `Fact` in a `FactSet`) is processed as markdown by every Adaptive
Cards host; Teams renders a subset (emphasis, links, lists, and more on some clients).
Text that comes from a customer or from the model must not be able to create a link with
a hidden target, an image, emphasis, a heading, a list, a quote, a code block or a table,
nor trigger the card's `{{DATE(...)}}` / `{{TIME(...)}}` text functions.

Method: CommonMark backslash escapes (any ASCII punctuation may be escaped; the escaped
character is shown literally and cannot start markup):

* everywhere: ``\\ ` * _ ~ [ ] < { } |`` (emphasis, code, strike-through, links and images,
  autolinks and HTML, text functions, tables), and ``&`` when it starts an entity
  (``&amp;``, ``&#91;``) so that entities are shown as typed, not decoded;
* at the start of a line: ``# > - + =`` (headings, quotes, lists, setext headings,
  thematic breaks) and the ``.`` or ``)`` of an ordered-list marker (``1.``, ``2)``);
* leading spaces and tabs become no-break spaces, which keeps the indentation visible but
  cannot open an indented code block; inside a line, a run of spaces or tabs keeps its
  width the same way (HTML would collapse it to one space): a space, then no-break spaces;
* bidirectional override/isolate controls (which can make ``moc.live`` read as
  ``evil.com``) and other control characters are replaced by a visible marker.

Teams clients that do not process a backslash escape show the backslash: ugly, still
safe. A bare URL may still be auto-linked by Teams; its target is then the visible text
itself, so nothing is hidden.

Line structure: a single ``\\n`` is a soft break in markdown (shown as a space) and a blank
line a paragraph break, which a host shows with a margin of its own choosing (the official
renderer: a browser's 1em, as tall as a line), so neither shows the lines as the customer
will. `markdown_lines` therefore returns one escaped string per line, and the builders put
each in a TextBlock of its own with no spacing: every line of the text is one line of the
card, and an empty line is a TextBlock holding one no-break space (`BLANK_LINE`), as tall
as a line of text, whatever the host's markdown does with line ends.

Pure: standard library only.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

__all__ = [
    "BLANK_LINE",
    "clip",
    "escape_inline",
    "escape_markdown_line",
    "format_datetime",
    "markdown_lines",
    "neutralise_controls",
    "truncation_note",
]

_ALWAYS = frozenset("\\`*_~[]<{}|")
# An entity reference: &name; &#123; &#x1F; (what a markdown renderer would decode).
_ENTITY = re.compile(r"&(?=#[0-9]{1,7};|#[xX][0-9a-fA-F]{1,6};|[A-Za-z][A-Za-z0-9]{0,31};)")
_LINE_START = frozenset("#>-+=")
_ORDERED_MARKER = re.compile(r"^([0-9]{1,9})([.)])")
_NBSP = "\u00a0"
# An empty line of a multi-line text: not blank to markdown (only spaces and tabs are), so it
# is a paragraph one line tall.
BLANK_LINE = _NBSP
_TAB_WIDTH = 4
_INNER_RUN = re.compile(r"[ \t]{2,}|\t")

# Trojan-source characters: embeddings, overrides and isolates, and the invisible direction
# marks (LRM, RLM, ALM), which reorder neighbouring digits and punctuation.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")


def neutralise_controls(text: str) -> str:
    """Normalise line ends; make bidi overrides and control characters visible.

    Newlines and tabs are kept; every other C0/C1 control character and every bidi
    embedding/override/isolate becomes ``[U+hex code]`` so a reviewer can see it is there.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    out: list[str] = []
    for ch in text:
        code = ord(ch)
        if ch in "\n\t":
            out.append(ch)
        elif code < 0x20 or 0x7F <= code < 0xA0 or ch in BIDI_CONTROLS:
            out.append(f"[U+{code:04X}]")
        else:
            out.append(ch)
    return "".join(out)


def escape_markdown_line(line: str) -> str:
    """Escape one line (no newline in it) so that markdown shows it literally."""
    # Leading whitespace: visible indentation that cannot open a code block.
    stripped = line.lstrip(" \t")
    indent = line[: len(line) - len(stripped)]
    lead = indent.replace("\t", _NBSP * _TAB_WIDTH).replace(" ", _NBSP)
    # Runs of blanks inside the line: one space (where the line may wrap), then no-break
    # spaces for the rest of the width.
    stripped = _INNER_RUN.sub(_keep_width, stripped)

    escaped = "".join("\\" + ch if ch in _ALWAYS else ch for ch in stripped)
    # Then entities (their characters are never escaped above): a backslash before the '&'.
    escaped = _ENTITY.sub(r"\\&", escaped)

    match = _ORDERED_MARKER.match(escaped)
    if match:
        escaped = f"{match.group(1)}\\{match.group(2)}{escaped[match.end() :]}"
    elif escaped[:1] in _LINE_START:
        escaped = "\\" + escaped
    return lead + escaped


def _keep_width(match: re.Match[str]) -> str:
    width = sum(_TAB_WIDTH if ch == "\t" else 1 for ch in match.group())
    return " " + _NBSP * (width - 1)


def escape_inline(text: str) -> str:
    """Escape a short value shown on one line (a fact, a name, a subject).

    Line breaks and runs of whitespace collapse to one space.
    """
    text = neutralise_controls(text)
    return escape_markdown_line(" ".join(text.split()))


def markdown_lines(text: str) -> list[str]:
    """Escaped markdown for a multi-line text, one string per line of `text`.

    Each is meant for a TextBlock of its own (see the module's "Line structure"): empty
    lines are `BLANK_LINE`, so a blank line between paragraphs, or three of them, show as
    many empty lines as the text has. Trailing whitespace and trailing empty lines are
    dropped (invisible in the email too); leading empty lines are kept.
    """
    text = neutralise_controls(text)
    lines = [raw.rstrip() for raw in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return [escape_markdown_line(line) if line else BLANK_LINE for line in lines]


def clip(text: str, limit: int, *, snap: int = 40) -> tuple[str, int]:
    """The first `limit` characters of `text` and how many were left out.

    When cutting, prefer to end at whitespace within the last `snap` characters.
    """
    if limit < 0:
        limit = 0
    if len(text) <= limit:
        return text, 0
    cut = limit
    window = text[max(0, limit - snap) : limit]
    space = max(window.rfind(" "), window.rfind("\n"), window.rfind("\t"))
    if space > 0:
        cut = limit - len(window) + space
    shown = text[:cut].rstrip()
    return shown, len(text) - len(shown)


def truncation_note(omitted: int) -> str:
    """The marker put where shown text was cut (plain text, safe as markdown)."""
    unit = "character" if omitted == 1 else "characters"
    return f"… (truncated, {omitted:,} more {unit})"


def format_datetime(value: datetime) -> str:
    """A readable UTC timestamp, e.g. ``2025-01-31 14:05 UTC``. Naive datetimes are refused."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"datetime must be timezone-aware, got naive {value.isoformat()}")
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
