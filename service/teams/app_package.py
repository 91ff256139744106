"""The Teams app package (`countersign teams-package`): manifest.json and the two icons, zipped.
Pure: the options are checked here, the CLI only reads and writes files. No SDK."""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from . import icons
from .commands import COMMANDS

# The newest released manifest version; the test validates against its vendored schema
# (tests/fixtures/teams_manifest/, where the update steps are).
MANIFEST_VERSION = "1.30"
SCHEMA_URL = f"https://developer.microsoft.com/json-schemas/teams/v{MANIFEST_VERSION}/MicrosoftTeams.schema.json"
BOT_SCOPES = ("team", "groupChat", "personal")
DEFAULT_NAME = "Countersign"
DEFAULT_VERSION = "1.0.0"

# The manifest schema's limits (`name.short`, `developer.name`) and patterns (`guid`, `semver`).
NAME_MAX, DEVELOPER_NAME_MAX, URL_MAX = 30, 32, 2048
_GUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_SEMVER = re.compile(r"(?:0|[1-9][0-9]*)\.(?:0|[1-9][0-9]*)\.(?:0|[1-9][0-9]*)")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")

# Fixed so that the same options give the same zip, byte for byte.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
MANIFEST_FILE, COLOR_FILE, OUTLINE_FILE = "manifest.json", "color.png", "outline.png"


class PackageError(ValueError):
    """A bad option; `field` is the option's name (`app_id` for `--app-id`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field

    @property
    def option(self) -> str:
        return "--" + self.field.replace("_", "-")


@dataclass(frozen=True)
class PackageSpec:
    app_id: str
    host: str
    name: str
    developer_name: str
    website: str
    privacy_url: str
    terms_url: str
    version: str


def package_spec(app_id: str, host: str, *, name: str | None = None, developer_name: str | None = None,
                 website: str | None = None, privacy_url: str | None = None, terms_url: str | None = None,
                 version: str | None = None) -> PackageSpec:
    """Checked options, with the defaults derived from the host filled in."""
    app_id = app_id.strip()
    if not _GUID.fullmatch(app_id):
        raise PackageError("app_id", f"{app_id!r} is not a GUID: give the bot's Microsoft App ID "
                                     "(MicrosoftAppId), like 00000000-0000-0000-0000-000000000000")
    host = checked_host(host)
    name = (name if name is not None else DEFAULT_NAME).strip()
    if not 0 < len(name) <= NAME_MAX:
        raise PackageError("name", f"the app's name must be 1 to {NAME_MAX} characters (Teams' limit)")
    developer_name = (developer_name if developer_name is not None
                      else host if len(host) <= DEVELOPER_NAME_MAX else DEFAULT_NAME).strip()
    if not 0 < len(developer_name) <= DEVELOPER_NAME_MAX:
        raise PackageError("developer_name", f"must be 1 to {DEVELOPER_NAME_MAX} characters (Teams' limit)")
    version = (version or DEFAULT_VERSION).strip()
    if not _SEMVER.fullmatch(version):
        raise PackageError("app_version", f"{version!r} is not a version like 1.0.0 (three numbers)")
    return PackageSpec(
        app_id=app_id.lower(), host=host, name=name, developer_name=developer_name,
        website=_checked_url("website", website, f"https://{host}/"),
        # Countersign serves no such pages: these defaults are places to put them.
        privacy_url=_checked_url("privacy_url", privacy_url, f"https://{host}/privacy"),
        terms_url=_checked_url("terms_url", terms_url, f"https://{host}/terms"),
        version=version)


def checked_host(host: str) -> str:
    """The public DNS name Teams reaches the bot at, lower-cased; refused when it is a URL,
    has a port or path, is an IP address or a single label, or is not ASCII."""
    text = host.strip().lower().removesuffix(".")
    if "://" in text:
        raise PackageError("host", f"{host!r} is a URL: give the host name alone, like countersign.example.com")
    if any(c in text for c in "/:@?# ") or not text:
        raise PackageError("host", f"{host!r} is not a host name: no port, path or spaces, like countersign.example.com")
    if not text.isascii():
        raise PackageError("host", f"{host!r} is not ASCII: give its xn-- (punycode) form")
    labels = text.split(".")
    if len(labels) < 2 or len(text) > 253 or not all(_LABEL.fullmatch(label) for label in labels) \
            or labels[-1].isdigit():
        raise PackageError("host", f"{host!r} is not a public DNS name like countersign.example.com "
                                   "(Teams reaches the bot over HTTPS at a name, not an IP address)")
    return text


def _checked_url(field: str, url: str | None, default: str) -> str:
    text = (url if url is not None else default).strip()
    parts = urlsplit(text)
    if parts.scheme != "https" or not parts.hostname or len(text) > URL_MAX or any(c.isspace() for c in text):
        raise PackageError(field, f"{text!r} is not an https:// URL (Teams requires https)")
    return text


def manifest(spec: PackageSpec) -> dict[str, Any]:
    commands = [{"title": c.title, "description": c.description} for c in COMMANDS]
    return {
        "$schema": SCHEMA_URL,
        "manifestVersion": MANIFEST_VERSION,
        "version": spec.version,
        "id": spec.app_id,
        "developer": {"name": spec.developer_name, "websiteUrl": spec.website, "privacyUrl": spec.privacy_url,
                      "termsOfUseUrl": spec.terms_url},
        "name": {"short": spec.name, "full": f"{spec.name}: approvals for AI agent actions"},
        "description": {
            "short": "Approve, edit or reject what AI agents want to send",
            "full": (f"{spec.name} posts each action an AI agent wants to take, such as an email to a customer, "
                     "as a card with Approve, Edit and approve, and Reject: nothing is sent before the people "
                     "its policy names have decided. Mention the bot with \"status\" to list the approvals "
                     "waiting in a channel or chat."),
        },
        "icons": {"color": COLOR_FILE, "outline": OUTLINE_FILE},
        "accentColor": icons.accent_hex(),
        # The Teams app id is the bot's: one registration, one id to configure.
        # No webApplicationInfo: the bot uses no SSO and no resource-specific consent, only the
        # Bot Connector's own token (see README, "Microsoft Teams").
        "bots": [{
            "botId": spec.app_id,
            "scopes": list(BOT_SCOPES),
            "isNotificationOnly": False,  # it answers commands and card clicks
            "supportsFiles": False,
            "commandLists": [{"scopes": [scope], "commands": commands} for scope in BOT_SCOPES],
        }],
        "validDomains": [spec.host],
    }


def package_files(spec: PackageSpec) -> dict[str, bytes]:
    text = json.dumps(manifest(spec), indent=2, ensure_ascii=False) + "\n"
    return {MANIFEST_FILE: text.encode(), COLOR_FILE: icons.color_icon(), OUTLINE_FILE: icons.outline_icon()}


def zip_bytes(files: dict[str, bytes]) -> bytes:
    """The files at the zip's root (where Teams looks for them), in a fixed order and time."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # Unix, whatever the building machine
            info.external_attr = 0o644 << 16
            archive.writestr(info, files[name])
    return buffer.getvalue()
