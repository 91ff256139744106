"""Parsing JSON request bytes safely: one parser for every endpoint that reads a JSON body.

The standard library's `json.loads` recurses once per nesting level, so `[` x 200,000 raises
`RecursionError` (a 500 if nobody catches it), and a value nested just below Python's
recursion limit passes the parser only to overflow the stack later, in whatever walks it
(msrest's deserialiser, `json.dumps` in a log line). pydantic-core's parser, the one
`model_validate_json` uses for the ops API, refuses nesting beyond a fixed depth as invalid
JSON, in Rust and without touching Python's stack: so every JSON body gets the same limit
and the same 400.
"""

from __future__ import annotations

from typing import Any

from pydantic_core import from_json

from .errors import ApiError


def loads(body: bytes) -> Any:
    """The JSON value in `body`, or a 400 `malformed_json` problem saying why not (bad
    syntax, bad UTF-8, nesting too deep)."""
    try:
        return from_json(body)
    except ValueError as exc:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {exc}") from None
