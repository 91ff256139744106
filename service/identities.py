"""What an identity may be made of: `requested_by`, a reviewer's id or email, a delegate,
a key's reviewer. Pure.

Identities are compared casefolded (`Reviewer.identities()`, the policy's reviewers, the
self-approval check), so two that look alike must be alike. Invisible and look-alike
characters are therefore refused at intake rather than normalised away: zero-width and
bidi controls, byte order marks, soft hyphens (format characters), other controls,
unassigned or private-use code points, and compatibility forms (fullwidth letters, a
no-break space: anything Unicode NFKC would rewrite). A refusal names the character, so the
caller sees what was wrong; a silent normalisation would make the stored identity differ
from the one sent. Spaces around an identity are only trimmed.
"""

from __future__ import annotations

import unicodedata

# Other (control, format, surrogate, private use, unassigned) and the line/paragraph separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def identity_problem(value: str) -> str | None:
    """Why `value` cannot be an identity, or None."""
    for ch in value:
        if unicodedata.category(ch) in _REFUSED_CATEGORIES:
            return (f"must not contain invisible, control or format characters (found U+{ord(ch):04X}): "
                    "an identity that looks like another must be the other")
    if unicodedata.normalize("NFKC", value) != value:
        changed = next(ch for ch in value if unicodedata.normalize("NFKC", ch) != ch)
        return (f"must not contain compatibility characters such as fullwidth letters or a no-break space "
                f"(found U+{ord(changed):04X}; write {unicodedata.normalize('NFKC', changed)!r} instead)")
    return None


def checked_identity(value: str) -> str:
    """`value` trimmed; ValueError (for a pydantic validator) when it cannot be an identity."""
    value = value.strip()
    if not value:
        raise ValueError("must not be blank")
    if problem := identity_problem(value):
        raise ValueError(problem)
    return value
