"""`countersign teams-package` as a subprocess: the zip's manifest.json passes Microsoft's own
manifest schema (vendored, tests/fixtures/teams_manifest/), the icons have the sizes and
colours Teams asks for, the listed commands are the ones the running bot answers, and bad
options are exit-2 messages naming the option that write nothing."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from service.teams.commands import COMMANDS, HELP_TEXT

from .test_teams import Teams, teams  # noqa: F401 (the fixture)

SCHEMA = Path(__file__).parent / "fixtures" / "teams_manifest" / "MicrosoftTeams.schema.json"
APP_ID = "6f1c2d3e-4a5b-4c6d-8e9f-0a1b2c3d4e5f"
HOST = "countersign.example.com"
SCOPES = ["team", "groupChat", "personal"]


def _package(tmp_path: Path, *args: str, out: str = "app.zip") -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COUNTERSIGN_", "Microsoft"))}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-m", "service", "teams-package", *args, "--out", str(tmp_path / out)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout, proc.stderr


def _built(tmp_path: Path, *args: str) -> zipfile.ZipFile:
    code, out, err = _package(tmp_path, "--app-id", APP_ID, "--host", HOST, *args)
    assert code == 0, (out, err)
    assert err == "" and str(tmp_path / "app.zip") in out
    return zipfile.ZipFile(tmp_path / "app.zip")


def _validator() -> jsonschema.protocols.Validator:
    """Draft 4, as the schema declares, plus Draft 6's `const`, which the schema uses (for
    `manifestVersion`) and a plain Draft 4 validator would silently skip."""
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    draft4_with_const = jsonschema.validators.extend(
        jsonschema.Draft4Validator, {"const": jsonschema.Draft6Validator.VALIDATORS["const"]})
    # The schema is checked against the Draft 4 meta-schema without formats: one of its patterns
    # (Office add-ins' `extensionFunction.name`) uses ECMAScript's \p{L}, which Python's re lacks.
    draft4_with_const.check_schema(schema, format_checker=None)
    return draft4_with_const(schema, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)


def _png(data: bytes) -> tuple[int, int, list[list[tuple[int, ...]]]]:
    """Width, height and RGBA pixels of an 8-bit RGBA, non-interlaced PNG (all five filters)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(kind + body)
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, interlace) == (8, 6, 0), "8-bit RGBA, not interlaced"
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride, rows, previous = width * 4, [], bytes(width * 4)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a, b, c = line[i - 4] if i >= 4 else 0, previous[i], previous[i - 4] if i >= 4 else 0
            p = a + b - c
            paeth = min((abs(p - a), 0, a), (abs(p - b), 1, b), (abs(p - c), 2, c))[2]
            line[i] = (line[i] + (0, a, b, (a + b) // 2, paeth)[kind]) & 0xFF
        previous = bytes(line)
        rows.append([tuple(line[x * 4:x * 4 + 4]) for x in range(width)])
    return width, height, rows


def test_package_passes_the_official_manifest_schema(tmp_path: Path) -> None:
    archive = _built(tmp_path)
    assert sorted(archive.namelist()) == ["color.png", "manifest.json", "outline.png"]  # at the root
    manifest = json.loads(archive.read("manifest.json"))
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _validator().iter_errors(manifest)]
    assert errors == []
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    assert manifest["manifestVersion"] == schema["properties"]["manifestVersion"]["const"] == "1.30"
    assert manifest["$schema"].endswith("/teams/v1.30/MicrosoftTeams.schema.json")
    assert manifest["id"] == APP_ID and manifest["validDomains"] == [HOST]
    [bot] = manifest["bots"]
    assert bot["botId"] == APP_ID and bot["scopes"] == SCOPES and bot["isNotificationOnly"] is False
    assert {manifest["icons"]["color"], manifest["icons"]["outline"]} == {"color.png", "outline.png"}
    assert manifest["developer"] == {"name": HOST, "websiteUrl": f"https://{HOST}/",
                                     "privacyUrl": f"https://{HOST}/privacy", "termsOfUseUrl": f"https://{HOST}/terms"}
    assert manifest["name"]["short"] == "Countersign"
    assert manifest["version"] == "0.1.0"  # the service's (pyproject.toml)


def test_options_reach_the_manifest(tmp_path: Path) -> None:
    archive = _built(tmp_path, "--name", "Refund approvals", "--developer-name", "Example Ltd",
                     "--website", "https://example.com/it", "--privacy-url", "https://example.com/privacy",
                     "--terms-url", "https://example.com/terms", "--app-version", "2.3.4")
    manifest = json.loads(archive.read("manifest.json"))
    assert list(_validator().iter_errors(manifest)) == []
    assert manifest["name"]["short"] == "Refund approvals" and manifest["version"] == "2.3.4"
    assert manifest["developer"] == {"name": "Example Ltd", "websiteUrl": "https://example.com/it",
                                     "privacyUrl": "https://example.com/privacy",
                                     "termsOfUseUrl": "https://example.com/terms"}


def test_icons_have_teams_sizes_and_colours(tmp_path: Path) -> None:
    archive = _built(tmp_path)
    # The sizes straight from IHDR, the first chunk.
    for name, size in (("color.png", 192), ("outline.png", 32)):
        data = archive.read(name)
        assert data[12:16] == b"IHDR" and struct.unpack(">II", data[16:24]) == (size, size), name
    width, height, outline = _png(archive.read("outline.png"))
    pixels = [p for row in outline for p in row]
    assert (width, height) == (32, 32)
    assert all(p == (255, 255, 255, 255) or p[3] == 0 for p in pixels), "outline: white or transparent only"
    white = sum(p[3] == 255 for p in pixels)
    assert 0.1 * len(pixels) < white < 0.5 * len(pixels), white  # a mark, neither empty nor a filled square
    assert all(p[3] == 0 for p in outline[0] + outline[-1]), "transparent around the mark"
    width, height, color = _png(archive.read("color.png"))
    colours = {p for row in color for p in row}
    assert (width, height) == (192, 192) and all(p[3] == 255 for p in colours)  # opaque: a full-colour icon
    background = color[0][0]
    assert background[:3] != (255, 255, 255) and len({background[0], background[1], background[2]}) > 1  # not grey
    assert (255, 255, 255, 255) in colours, "the white mark"
    manifest = json.loads(archive.read("manifest.json"))
    assert manifest["accentColor"] == "#" + bytes(background[:3]).hex()


def test_same_options_same_bytes(tmp_path: Path) -> None:
    first = (tmp_path / "one")
    second = (tmp_path / "two")
    first.mkdir()
    second.mkdir()
    for directory in (first, second):
        code, out, err = _package(directory, "--app-id", APP_ID, "--host", HOST)
        assert code == 0, (out, err)
    assert (first / "app.zip").read_bytes() == (second / "app.zip").read_bytes()


@pytest.mark.parametrize(("args", "option", "mentions"), [
    (["--app-id", "my-bot", "--host", HOST], "--app-id", "GUID"),
    (["--app-id", APP_ID[:-1], "--host", HOST], "--app-id", "GUID"),
    (["--app-id", "{" + APP_ID + "}", "--host", HOST], "--app-id", "GUID"),
    (["--app-id", APP_ID, "--host", f"https://{HOST}/api/messages"], "--host", "URL"),
    (["--app-id", APP_ID, "--host", f"{HOST}:8443"], "--host", "port"),
    (["--app-id", APP_ID, "--host", "localhost"], "--host", "DNS name"),
    (["--app-id", APP_ID, "--host", "10.0.0.7"], "--host", "IP address"),
    (["--app-id", APP_ID, "--host", "bad_name.example.com"], "--host", "DNS name"),
    (["--app-id", APP_ID, "--host", "bücher.example"], "--host", "punycode"),
    (["--app-id", APP_ID, "--host", ""], "--host", "host name"),
    (["--app-id", APP_ID, "--host", HOST, "--name", "A name far longer than thirty characters"], "--name", "30"),
    (["--app-id", APP_ID, "--host", HOST, "--developer-name", "x" * 33], "--developer-name", "32"),
    (["--app-id", APP_ID, "--host", HOST, "--privacy-url", "http://example.com/p"], "--privacy-url", "https"),
    (["--app-id", APP_ID, "--host", HOST, "--website", "example.com"], "--website", "https"),
    (["--app-id", APP_ID, "--host", HOST, "--app-version", "1.0"], "--app-version", "1.0.0"),
], ids=["word_app_id", "short_guid", "braced_guid", "url_host", "port", "single_label", "ip", "underscore",
        "not_ascii", "empty_host", "long_name", "long_developer", "http_privacy", "no_scheme_website",
        "two_part_version"])
def test_bad_options_are_refused_naming_the_option(tmp_path: Path, args: list[str], option: str,
                                                   mentions: str) -> None:
    code, out, err = _package(tmp_path, *args)
    assert code == 2, (out, err)
    assert err.startswith(f"countersign teams-package: {option}: ") and mentions in err, err
    assert "Traceback" not in err and out == ""
    assert list(tmp_path.iterdir()) == [], "nothing written"


def test_missing_out_directory_is_refused(tmp_path: Path) -> None:
    code, out, err = _package(tmp_path, "--app-id", APP_ID, "--host", HOST, out="nowhere/app.zip")
    assert code == 2 and err.startswith("countersign teams-package: --out: ") and "Traceback" not in err, err


def test_listed_commands_are_the_bots(tmp_path: Path) -> None:
    manifest = json.loads(_built(tmp_path).read("manifest.json"))
    lists = manifest["bots"][0]["commandLists"]
    assert [scope for entry in lists for scope in entry["scopes"]] == SCOPES  # one list per scope
    for entry in lists:
        assert entry["commands"] == [{"title": c.title, "description": c.description} for c in COMMANDS]
    assert {c["title"] for c in lists[0]["commands"]} == {"status", "help"}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_the_running_bot_answers_each_listed_command(teams: Teams) -> None:  # noqa: F811
    """Each command the package lists, typed after the mention, gets its own answer from the
    real bot over HTTP (the help text is also what anything unknown gets)."""
    expected: dict[str, Any] = {"status": "No approvals are waiting here.", "help": HELP_TEXT}
    assert set(expected) == {c.title for c in COMMANDS}
    path = "/v3/conversations/a:chat-sam/activities"
    for count, command in enumerate(c.title for c in COMMANDS):
        status, _ = await teams.post(teams.activity(
            "message", sender="sam", conversation="a:chat-sam", conversation_type="personal",
            text=f"<at>Countersign</at> {command.upper()}",
            entities=[{"type": "mention", "text": "<at>Countersign</at>",
                       "mentioned": {"id": "28:test-app-id", "name": "Countersign"}}]))
        assert status == 200
        replies = await teams.wait_calls("POST", count + 1, path)
        assert replies[-1].body["text"] == expected[command], command


def test_the_schema_check_is_not_toothless(tmp_path: Path) -> None:
    """The same validator refuses a wrong manifest version (`const`, skipped by plain Draft 4),
    an unknown scope, a non-GUID bot id and a property the schema does not know."""
    manifest = json.loads(_built(tmp_path).read("manifest.json"))
    validator = _validator()
    for broken in ({**manifest, "manifestVersion": "1.29"},
                   {**manifest, "bots": [{**manifest["bots"][0], "scopes": ["channel"]}]},
                   {**manifest, "bots": [{**manifest["bots"][0], "botId": "my-bot"}]},
                   {**manifest, "icon": "color.png"}):
        assert list(validator.iter_errors(broken)) != [], broken
