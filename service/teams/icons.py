"""The Teams app's two icons, drawn and PNG-encoded with the standard library (pure, and the
same bytes on every run): a 192x192 full-colour icon and a 32x32 white-on-transparent
outline, both a check mark over a signature line."""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

COLOR_SIZE = 192
OUTLINE_SIZE = 32
ACCENT = (0x2F, 0x4F, 0xB5)  # the colour icon's background and the manifest's accentColor
WHITE = (0xFF, 0xFF, 0xFF)

Point = tuple[float, float]


@dataclass(frozen=True)
class Stroke:
    """A segment with round ends; coordinates and width in units of the icon's side."""

    start: Point
    end: Point
    width: float

    def scaled(self, factor: float) -> Stroke:
        """Grown about the icon's centre (the outline icon fills more of its square)."""
        def grow(p: Point) -> Point:
            return (0.5 + (p[0] - 0.5) * factor, 0.5 + (p[1] - 0.5) * factor)
        return Stroke(grow(self.start), grow(self.end), self.width * factor)

    def covers(self, x: float, y: float) -> bool:
        (ax, ay), (bx, by) = self.start, self.end
        dx, dy = bx - ax, by - ay
        t = max(0.0, min(1.0, ((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy)))
        return math.hypot(x - (ax + t * dx), y - (ay + t * dy)) <= self.width / 2


# Inside the middle ~60% of the square: Teams crops the colour icon's corners.
MARK = (Stroke((0.30, 0.47), (0.44, 0.61), 0.08), Stroke((0.44, 0.61), (0.71, 0.33), 0.08),
        Stroke((0.28, 0.76), (0.72, 0.76), 0.045))
SAMPLES = 3  # per pixel side: anti-aliasing of the colour icon


def color_icon() -> bytes:
    return png(COLOR_SIZE, COLOR_SIZE, _draw_color(COLOR_SIZE, MARK))


def outline_icon() -> bytes:
    """White where the mark is, fully transparent elsewhere: no grey, no partial alpha, as
    Teams asks of the outline icon (it tints it itself)."""
    marks = tuple(s.scaled(1.35) for s in MARK)
    size = OUTLINE_SIZE
    rows = []
    for py in range(size):
        row = bytearray()
        for px in range(size):
            inside = any(s.covers((px + 0.5) / size, (py + 0.5) / size) for s in marks)
            row += bytes((*WHITE, 0xFF)) if inside else bytes(4)
        rows.append(bytes(row))
    return png(size, size, rows)


def _draw_color(size: int, marks: tuple[Stroke, ...]) -> list[bytes]:
    rows = []
    for py in range(size):
        row = bytearray()
        for px in range(size):
            hits = sum(any(s.covers((px + (i + 0.5) / SAMPLES) / size, (py + (j + 0.5) / SAMPLES) / size)
                           for s in marks)
                       for i in range(SAMPLES) for j in range(SAMPLES)) if _near(px, py, size) else 0
            row += bytes(round(a + (w - a) * hits / SAMPLES ** 2) for a, w in zip(ACCENT, WHITE, strict=True))
            row.append(0xFF)
        rows.append(bytes(row))
    return rows


def _near(px: int, py: int, size: int) -> bool:
    """Whether a pixel can touch the mark (skips sampling the plain background)."""
    return 0.2 * size <= px <= 0.8 * size and 0.22 * size <= py <= 0.8 * size


def png(width: int, height: int, rows: list[bytes]) -> bytes:
    """An 8-bit RGBA PNG of `rows` (each width * 4 bytes), filter 0, no ancillary chunks."""
    assert len(rows) == height and all(len(r) == width * 4 for r in rows)
    raw = b"".join(b"\x00" + r for r in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8 bits, RGBA, deflate, filter 0, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def accent_hex() -> str:
    return "#" + "".join(f"{c:02x}" for c in ACCENT)
