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
  cannot open an indented code block;
* bidirectional override/isolate controls (which can make ``moc.live`` read as
  ``evil.com``) and other control characters are replaced by a visible marker.

Teams clients that do not process a backslash escape show the backslash: ugly, still
safe. A bare URL may still be auto-linked by Teams; its target is then the visible text
itself, so nothing is hidden.

Line structure: a single ``\\n`` is a soft break in markdown (shown as a space), so lines
of a paragraph are joined with a blank line, and paragraphs are returned separately
(the builders put each in its own TextBlock).

Pure: standard library only.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

__all__ = [
    "clip",
    "escape_inline",
    "escape_markdown_line",
    "format_datetime",
    "markdown_paragraphs",
    "neutralise_controls",
    "truncation_note",
]

_ALWAYS = frozenset("\\`*_~[]<{}|")
# An entity reference: &name; &#123; &#x1F; (what a markdown renderer would decode).
_ENTITY = re.compile(r"&(?=#[0-9]{1,7};|#[xX][0-9a-fA-F]{1,6};|[A-Za-z][A-Za-z0-9]{0,31};)")
_LINE_START = frozenset("#>-+=")
_ORDERED_MARKER = re.compile(r"^([0-9]{1,9})([.)])")
_NBSP = "\u00a0"

# Trojan-source characters: embeddings, overrides and isolates.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


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
        elif code < 0x20 or 0x7F <= code < 0xA0 or ch in _BIDI_CONTROLS:
            out.append(f"[U+{code:04X}]")
        else:
            out.append(ch)
    return "".join(out)


def escape_markdown_line(line: str) -> str:
    """Escape one line (no newline in it) so that markdown shows it literally."""
    # Leading whitespace: visible indentation that cannot open a code block.
    stripped = line.lstrip(" \t")
    indent = line[: len(line) - len(stripped)]
    lead = indent.replace("\t", _NBSP * 4).replace(" ", _NBSP)

    escaped = "".join("\\" + ch if ch in _ALWAYS else ch for ch in stripped)
    # Then entities (their characters are never escaped above): a backslash before the '&'.
    escaped = _ENTITY.sub(r"\\&", escaped)

    match = _ORDERED_MARKER.match(escaped)
    if match:
        escaped = f"{match.group(1)}\\{match.group(2)}{escaped[match.end() :]}"
    elif escaped[:1] in _LINE_START:
        escaped = "\\" + escaped
    return lead + escaped


def escape_inline(text: str) -> str:
    """Escape a short value shown on one line (a fact, a name, a subject).

    Line breaks and runs of whitespace collapse to one space.
    """
    text = neutralise_controls(text)
    return escape_markdown_line(" ".join(text.split()))


def markdown_paragraphs(text: str) -> list[str]:
    """Escaped markdown for a multi-line text, one string per paragraph.

    Paragraphs are separated by blank lines in `text`; inside a paragraph each line is
    kept on its own line (joined by a blank line, which every host renders as a break).
    """
    text = neutralise_controls(text)
    paragraphs: list[str] = []
    current: list[str] = []
    for raw in text.split("\n"):
        line = raw.rstrip()
        if not line.strip():
            if current:
                paragraphs.append("\n\n".join(current))
                current = []
            continue
        current.append(escape_markdown_line(line))
    if current:
        paragraphs.append("\n\n".join(current))
    return paragraphs


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
