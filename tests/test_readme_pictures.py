"""The README's pictures are of what the code makes today (tests/readme_pictures.py)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from .readme_pictures import OUT, card, review_page

README = Path(__file__).resolve().parent.parent / "README.md"
REMAKE = "the code makes another picture now: run `.venv/bin/python -m tests.readme_pictures`"


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_the_card_picture_is_of_the_card_the_builder_makes() -> None:
    assert json.loads((OUT / "approval-card.json").read_text()) == card(), REMAKE
    width, height = _png_size(OUT / "approval-card.png")
    assert width >= 400 and height >= 400


def test_the_review_page_picture_is_of_the_page_the_channel_renders() -> None:
    assert (OUT / "review-page.html").read_text() == review_page(), REMAKE
    width, height = _png_size(OUT / "review-page.png")
    assert width >= 600 and height >= 600


def test_the_readme_shows_both() -> None:
    text = README.read_text()
    assert "](tests/fixtures/readme/approval-card.png)" in text
    assert "](tests/fixtures/readme/review-page.png)" in text
