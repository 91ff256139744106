"""Showing customer and model strings in console pages. Pure.

Jinja's autoescape makes markup inert; this also keeps bidirectional-text controls from
reordering what surrounds them (a subject with U+202E could make a line read backwards):
each string is isolated in a <bdi> element and every such control is shown as a visible
marker, so an operator sees that it is there.
"""

from __future__ import annotations

import re
from typing import Any

from markupsafe import Markup, escape

from adaptive_cards.text import BIDI_CONTROLS as CONTROLS

# Embeddings, overrides, isolates, marks (LRM, RLM, ALM): the cards' and the email channel's list.
BIDI_CONTROLS = re.compile("[" + "".join(sorted(CONTROLS)) + "]")


def shown(value: Any) -> Markup:
    """`value` as text in HTML: escaped, isolated, bidi controls made visible."""
    if value is None:
        return Markup("")
    text = str(escape(str(value)))
    text = BIDI_CONTROLS.sub(lambda m: f'<span class="ctl" title="bidi control">[U+{ord(m.group()):04X}]</span>', text)
    return Markup(f"<bdi>{text}</bdi>")
