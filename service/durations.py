"""Durations in settings and on the command line: `90s`, `15m`, `4h`, `2d`, `1w`, or ISO 8601 (`PT4H`). Pure."""

from __future__ import annotations

import re
from datetime import timedelta

from pydantic import TypeAdapter, ValidationError

_COMPACT = re.compile(r"\s*(\d{1,12})\s*([smhdw])\s*")  # used with fullmatch
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_ISO = TypeAdapter(timedelta)


def parse_duration(text: str) -> timedelta:
    """Raise `ValueError` saying which forms are accepted."""
    match = _COMPACT.fullmatch(text)
    if match:
        try:
            value = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        except OverflowError:
            raise ValueError(f"{text!r} is longer than any duration this service keeps") from None
    elif text.strip().upper().startswith("P"):
        try:
            value = _ISO.validate_python(text.strip().upper())
        except ValidationError:
            raise ValueError(f"{text!r} is not an ISO 8601 duration such as PT4H or P2D") from None
    else:
        raise ValueError(f"{text!r} is not a duration: use 90s, 15m, 4h, 2d, 1w or ISO 8601 (PT4H)")
    if value <= timedelta(0):
        raise ValueError(f"{text!r} must be longer than zero")
    return value
