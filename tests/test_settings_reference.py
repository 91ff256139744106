"""The README's reference of every setting is what the settings class says today."""

from __future__ import annotations

from pathlib import Path

from service.config import Settings
from service.settings_reference import BEGIN, END, env_name, meanings, reference, rewrite

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_lists_every_setting_as_generated() -> None:
    text = README.read_text()
    assert rewrite(text) == text, "run: python -m service.settings_reference --write README.md"
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    for name in Settings.model_fields:
        assert f"| `{env_name(name)}` |" in block, name


def test_every_setting_says_what_it_means() -> None:
    source = Path(__file__).resolve().parent.parent.joinpath("service", "config.py").read_text()
    found = meanings(source)
    assert sorted(found) == sorted(Settings.model_fields)
    assert [name for name, meaning in found.items() if not meaning] == []


def test_the_bot_framework_and_openai_names_are_used_where_they_apply() -> None:
    table = reference()
    assert "| `MicrosoftAppId` |" in table and "| `OPENAI_API_KEY` |" in table
    assert "| `COUNTERSIGN_SMTP_HOST` | `localhost` |" in table
