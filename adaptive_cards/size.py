"""The size budget of a card and the limits that the builders shrink to stay inside it.

Teams refuses a message over its size limit (HTTP 413 `MessageSizeTooBig`); the documented
limit has been 28 KB, 40 KB and now about 100 KB. A card is kept under
`CARD_BUDGET_BYTES` of compact JSON, which leaves room for the activity around it under
even the oldest limit.

Size is measured as compact JSON with ``ensure_ascii=True``: every non-ASCII character
counted as its ``\\u`` escape (six characters), the largest form any serializer on the way produces, so
the measure is an upper bound whatever the Bot Framework SDK does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["CARD_BUDGET_BYTES", "MIN_BODY_CHARS", "Limits", "card_size", "fits"]

CARD_BUDGET_BYTES = 24 * 1024
# When the draft must be cut, sources are dropped before the shown body gets shorter than this.
MIN_BODY_CHARS = 2000


def card_size(card: dict[str, Any]) -> int:
    """Bytes of the card as compact, ASCII-only JSON."""
    return len(json.dumps(card, separators=(",", ":"), ensure_ascii=True))


def fits(card: dict[str, Any], budget: int = CARD_BUDGET_BYTES) -> bool:
    return card_size(card) <= budget


@dataclass(frozen=True, slots=True)
class Limits:
    """How much of each untrusted text a card shows (characters, before escaping)."""

    body_chars: int | None = None  # None: the whole draft body
    sources_shown: int = 10
    snippet_chars: int = 300  # 0: no snippets
    source_field_chars: int = 200  # a source's title and location
    field_chars: int = 500  # subject, names, policy, Message-ID
    list_chars: int = 2000  # a joined list of addresses or reviewers
    items_shown: int = 50  # entries of such a list
    text_chars: int = 2000  # a reason, a delivery detail, a notice
    # An edit's diff on the final card: lines shown (context included) and their characters.
    diff_lines: int = 40
    diff_chars: int = 3000


FULL = Limits()
COMPACT_SOURCES = Limits(sources_shown=5, snippet_chars=150)
# From here on the diff shrinks too, before the approved body is cut.
SOURCE_TITLES = Limits(sources_shown=3, snippet_chars=0, diff_lines=20, diff_chars=1500)
NO_SOURCES = Limits(sources_shown=0, snippet_chars=0, diff_lines=20, diff_chars=1500)
# Small enough that a card with every field at its worst (astral characters, 12 bytes each
# in JSON) still fits: the last step of the size guard.
MINIMAL = Limits(
    sources_shown=0,
    snippet_chars=0,
    source_field_chars=0,
    field_chars=60,
    list_chars=120,
    items_shown=10,
    text_chars=200,
    diff_lines=6,
    diff_chars=200,
)
