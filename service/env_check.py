"""Environment variables that look like settings but are none: a typo in a secret's or a
limit's name would otherwise leave the default in force without a word.

Pure: reads a mapping and the `Settings` fields, returns the warnings to log.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from .config import Settings

PREFIX = "COUNTERSIGN_"
# Read from the environment by name, outside the Settings fields.
OTHER_VARIABLES = frozenset({"COUNTERSIGN_CONFIG"})


def accepted_names(settings_cls: type[BaseSettings] = Settings) -> dict[str, str]:
    """{upper-cased variable name: how the README spells it} for every variable a setting
    is read from. A field with aliases (the Bot Framework's `MicrosoftAppId`, OpenAI's
    `OPENAI_API_KEY`) is read from those names only, without the prefix."""
    names = {name: name for name in OTHER_VARIABLES}
    for field_name, field in settings_cls.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            for choice in alias.choices:
                if isinstance(choice, str) and choice != field_name:
                    names[choice.upper()] = choice
        elif isinstance(alias, str):
            names[alias.upper()] = alias
        else:
            names[f"{PREFIX}{field_name}".upper()] = f"{PREFIX}{field_name.upper()}"
    return names


def unknown_variable_warnings(environ: Mapping[str, str],
                              settings_cls: type[BaseSettings] = Settings) -> list[str]:
    """One message per `COUNTERSIGN_*` variable that no setting reads, naming the closest
    setting when one is close (also a prefixed spelling of an unprefixed alias, e.g.
    `COUNTERSIGN_MICROSOFT_APP_ID` -> `MicrosoftAppId`). Never the variable's value."""
    accepted = accepted_names(settings_cls)
    # Compared without the prefix, which every candidate would otherwise share. An aliased
    # setting is found under its field name too (COUNTERSIGN_MICROSOFT_APP_ID: MicrosoftAppId).
    candidates = {name.removeprefix(PREFIX): spelled for name, spelled in accepted.items()}
    for field_name, field in settings_cls.model_fields.items():
        spelled = _alias_spelling(field.validation_alias, field_name)
        if spelled is not None:
            candidates[field_name.upper()] = spelled
    warnings = []
    for variable in sorted(environ):
        upper = variable.upper()
        if not upper.startswith(PREFIX) or upper in accepted:
            continue
        close = difflib.get_close_matches(upper.removeprefix(PREFIX), list(candidates), n=1, cutoff=0.75)
        hint = f"; did you mean {candidates[close[0]]}?" if close else " (see the settings table in README.md)"
        warnings.append(f"{variable} is not a setting{hint}")
    return warnings


def _alias_spelling(alias: object, field_name: str) -> str | None:
    if isinstance(alias, AliasChoices):
        return next((c for c in alias.choices if isinstance(c, str) and c != field_name), None)
    return alias if isinstance(alias, str) else None
