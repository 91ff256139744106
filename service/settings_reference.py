"""The configuration reference in the README, generated from the Settings class (pure).

Each setting's meaning is its comment in service/config.py: the comment on its (first)
line, else the comment block right above it; a setting without either fails the test.
`python -m service.settings_reference --write README.md` rewrites the README's table
between its markers; tests/test_settings_reference.py fails when they differ.
"""

from __future__ import annotations

import argparse
import ast
import enum
import io
import sys
import tokenize
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, SecretStr
from pydantic_core import PydanticUndefined

from . import config
from .config import Settings

BEGIN = "<!-- settings-reference:begin (python -m service.settings_reference --write README.md) -->"
END = "<!-- settings-reference:end -->"
FILE_TABLES = {"policies": "[policies.NAME]", "calendars": "[calendars.NAME]", "routes": "[[routes]]"}


def _comments(source: str) -> dict[int, str]:
    """line number -> the comment on it (without '#')."""
    out: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            out[token.start[0]] = token.string.lstrip("#").strip()
    return out


def meanings(source: str) -> dict[str, str]:
    """Field name -> its comment: the one on its first line, else the block right above it."""
    lines = source.splitlines()
    comments = _comments(source)
    tree = ast.parse(source)
    [settings] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings"]
    out: dict[str, str] = {}
    for node in settings.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above: list[str] = []
        number = node.lineno - 1
        while number >= 1 and lines[number - 1].strip().startswith("#"):
            above.insert(0, comments[number])
            number -= 1
        own = comments.get(node.lineno)
        out[node.target.id] = own or " ".join(above)
    return out


def env_name(name: str) -> str:
    field = Settings.model_fields[name]
    if isinstance(field.validation_alias, AliasChoices):
        return str(field.validation_alias.choices[0])
    if name in FILE_TABLES:
        return f"settings file {FILE_TABLES[name]}"
    return f"COUNTERSIGN_{name.upper()}"


def default_of(name: str) -> str:
    field = Settings.model_fields[name]
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]
    else:
        value = None if field.default is PydanticUndefined else field.default
    if value is None or value == "" or isinstance(value, SecretStr):
        return "(none)"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, (list, dict)) and not value:
        return "(none)"
    if isinstance(value, Path):
        return f"`./{value}`"
    return f"`{value}`"


def reference() -> str:
    found = meanings(Path(config.__file__).read_text())
    rows = ["| Setting | Default | Meaning |", "|---|---|---|"]
    for name in Settings.model_fields:
        meaning = found.get(name, "").replace("|", "\\|").replace("<", "&lt;")
        rows.append(f"| `{env_name(name)}` | {default_of(name)} | {meaning} |")
    return "\n".join(rows)


def rewrite(readme: str) -> str:
    head, found, rest = readme.partition(BEGIN)
    _, found_end, tail = rest.partition(END)
    if not found or not found_end:
        raise ValueError(f"the README has no {BEGIN} ... {END} block")
    return f"{head}{BEGIN}\n{reference()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="rewrite this README's block instead of printing the table")
    args = parser.parse_args(argv)
    if args.write is None:
        print(reference())
        return 0
    args.write.write_text(rewrite(args.write.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
