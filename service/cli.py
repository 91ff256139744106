"""`countersign`: serve | migrate | index | trigger | keys create|list|revoke | audit verify|head|export |
teams-package."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from . import logs
from .config import Settings, SettingsError, load_settings


def _settings() -> Settings:
    return load_settings()


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from .agent.knowledge import KnowledgeError
    from .agent.tools import ToolConfigError
    from .api.timeouts import server_options
    from .app import create_app
    from .audit import AuditKeyError
    from .callback_policy import CallbackConfigError
    from .env_check import unknown_variable_warnings
    from .sqlite_lock import DatabaseInUse
    from .store.migrate import NotMigrated
    from .teams import TeamsNotConfigured

    settings = _settings()
    logs.configure(settings.log_level)
    for warning in unknown_variable_warnings(os.environ):
        logging.getLogger("service.config").warning(warning)
    host, port = args.host or settings.host, args.port or settings.port
    try:
        app = create_app(settings)

        async def announce(app: web.Application) -> None:
            # One line on stdout (the logs go to stderr): where it listens, where the key is.
            token = (f"the API token is in {(settings.data_dir / 'api-token').resolve()}"
                     if settings.api_token is None and settings.webhook_secret is None
                     else "API credentials from the settings")
            print(f"countersign: listening on http://{host}:{port} (public URL {settings.effective_public_url}); "
                  f"{token}", flush=True)

        app.on_startup.append(announce)
        web.run_app(app, host=host, port=port, access_log=None, print=None,
                    **server_options(settings.http_header_timeout_seconds))
    except (NotMigrated, TeamsNotConfigured, KnowledgeError, ToolConfigError, CallbackConfigError,
            AuditKeyError, DatabaseInUse) as exc:
        print(f"countersign: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .demo import run_demo, teams_demo
    from .demo_teams import TeamsDemoError
    from .private_files import ensure_private_dir
    from .sqlite_lock import DatabaseInUse
    from .teams import TeamsNotConfigured

    # A few readable lines, not the service's start-up notes (which secret went where: the
    # demo's data directory holds them all).
    logs.configure("ERROR")
    data_dir = Path(args.data_dir).resolve()
    try:
        teams = teams_demo(args.teams_reviewer) if args.teams else None
        ensure_private_dir(data_dir)
        return asyncio.run(run_demo(data_dir, args.port, teams=teams))
    except (TeamsDemoError, TeamsNotConfigured) as exc:
        print(f"countersign demo --teams: {exc}", file=sys.stderr)
        return 2
    except DatabaseInUse as exc:
        print(f"countersign demo: {exc} (is another demo running on this data directory?)", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"countersign demo: {exc}", file=sys.stderr)
        return 2


def cmd_migrate(args: argparse.Namespace) -> int:
    from .private_files import ensure_private_dir, ensure_private_sqlite
    from .startup import sqlite_file
    from .store.db import Store
    from .store.migrate import current_revision, upgrade

    settings = _settings()

    async def run() -> str | None:
        if settings.is_sqlite:
            ensure_private_dir(settings.data_dir)
            database = sqlite_file(settings.effective_database_url)
            if database is not None:
                ensure_private_sqlite(database)
        store = Store.from_url(settings.effective_database_url)
        try:
            await upgrade(store.writer_engine)
            return await current_revision(store.writer_engine)
        finally:
            await store.close()

    print(f"database migrated to {asyncio.run(run())}")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    """(Re)build the knowledge-base index the agent searches, with a progress bar."""
    from .agent.knowledge import KnowledgeError, build_index
    from .app import embedding_settings

    settings = _settings()
    source = settings.effective_knowledge_dir
    print(f"indexing {source} into {settings.index_dir} ({settings.retrieval.value})", file=sys.stderr)
    try:
        chunks = build_index(source, settings.index_dir, settings.retrieval,
                             embedding=embedding_settings(settings), show_progress=not args.quiet)
    except KnowledgeError as exc:
        print(f"countersign index: {exc}", file=sys.stderr)
        return 2
    print(f"indexed {chunks} chunks from {source}")
    return 0


def cmd_trigger(args: argparse.Namespace) -> int:
    """POST a pre-drafted email (or an agent request) to a running service."""
    from urllib.parse import urlsplit

    import aiohttp

    from .signing import HEADER, sign_v2
    from .startup import ensure_api_token

    # The arguments first: a usage error must not generate a token or touch the data dir.
    if args.file:
        with open(args.file, "rb") as f:
            body = f.read()
    elif args.request is not None:
        # The API needs the customer of an agent request (the email tool writes only to them).
        if not args.to or len(args.to) != 1 or args.subject or args.body:
            print("countersign trigger: --request needs exactly one --to, the customer's address "
                  "(and no --subject/--body: the agent drafts them)", file=sys.stderr)
            return 2
        body = json.dumps({"request": args.request, "customer": {"email": args.to[0]}}).encode()
    else:
        if not (args.to and args.subject and args.body):
            print("countersign trigger: give --file, --request TEXT --to ADDRESS, or --to/--subject/--body",
                  file=sys.stderr)
            return 2
        body = json.dumps({"action": {"type": "send_email", "to": args.to, "subject": args.subject,
                                      "body": args.body}}).encode()
    settings = ensure_api_token(_settings()) if not (args.sign or args.key) else _settings()
    headers = {"Content-Type": "application/json"}
    url = (args.url or settings.effective_public_url).rstrip("/") + "/api/runs"
    if args.sign:
        if not settings.webhook_secret:
            print("countersign trigger: --sign needs COUNTERSIGN_WEBHOOK_SECRET", file=sys.stderr)
            return 2
        parts = urlsplit(url)
        headers[HEADER] = sign_v2(settings.webhook_secret.get_secret_value(), int(time.time()), "POST",
                                  parts.path, parts.query, body)
    elif args.key:
        headers["Authorization"] = f"Bearer {args.key}"
    else:
        if settings.api_token is None:
            print("countersign trigger: give --key, --sign, or set COUNTERSIGN_API_TOKEN", file=sys.stderr)
            return 2
        headers["Authorization"] = f"Bearer {settings.api_token.get_secret_value()}"
    if args.idempotency_key:
        headers["Idempotency-Key"] = args.idempotency_key

    async def post() -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers) as r:
            return r.status, await r.json(content_type=None)

    status, answer = asyncio.run(post())
    print(json.dumps(answer, indent=2))
    return 0 if status < 300 else 1


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from .audit import AuditKeyError, ChainKey, verify_chain
    from .startup import ensure_audit_key
    from .store.audit_read import head, iter_events
    from .store.db import Store

    expect: tuple[int, str] | None = None
    if args.expect_head:
        seq_text, _, digest_text = args.expect_head.partition(":")
        if not seq_text.isdigit() or len(digest_text) != 64:
            print("countersign audit verify: --expect-head takes SEQ:HASH as printed by `countersign audit head`",
                  file=sys.stderr)
            return 2
        expect = (int(seq_text), digest_text.lower())
    try:
        settings = ensure_audit_key(_settings(), create=False)
    except AuditKeyError as exc:
        print(f"countersign audit verify: {exc}", file=sys.stderr)
        return 2
    assert settings.audit_key is not None
    key = ChainKey(settings.audit_key.get_secret_value())

    async def run() -> Any:
        store = Store.from_url(settings.effective_database_url)
        try:
            seq, digest = await head(store.reader_engine)
            return verify_chain([e async for e in iter_events(store.reader_engine)], key, seq, digest, expect)
        finally:
            await store.close()

    report = asyncio.run(run())
    if report.ok:
        print(f"audit chain intact: {report.events} events ({report.legacy_events} legacy, "
              f"{report.events - report.legacy_events} keyed)")
        return 0
    print(f"audit chain BROKEN at event {report.first_bad_seq}: {report.problem}", file=sys.stderr)
    return 1


def cmd_audit_head(args: argparse.Namespace) -> int:
    """Print SEQ:HASH of the chain's head, to be kept outside the database (see README)."""
    from .store.audit_read import head
    from .store.db import Store

    settings = _settings()

    async def run() -> tuple[int, str]:
        store = Store.from_url(settings.effective_database_url)
        try:
            return await head(store.reader_engine)
        finally:
            await store.close()

    seq, digest = asyncio.run(run())
    print(f"{seq}:{digest}")
    return 0


# A cell a spreadsheet would read as a formula (OWASP "CSV injection"), full-width forms included.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def csv_cell(value: Any) -> str:
    """A cell as text, prefixed with a single quote when it could start a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def cmd_audit_export(args: argparse.Namespace) -> int:
    from .store.audit_read import iter_events
    from .store.db import Store

    settings = _settings()
    out = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout

    async def run() -> int:
        store = Store.from_url(settings.effective_database_url)
        count = 0
        try:
            writer = csv.writer(out) if args.format == "csv" else None
            if writer:
                writer.writerow(["seq", "at", "run_id", "kind", "actor", "data", "prev_hash", "hash", "alg"])
            async for event in iter_events(store.reader_engine):
                d = event.to_dict()
                if writer:
                    writer.writerow([csv_cell(v) for v in (
                        d["seq"], d["at"], d["run_id"], d["kind"], d["actor"],
                        json.dumps(d["data"], sort_keys=True, ensure_ascii=False), d["prev_hash"], d["hash"],
                        d["alg"] or "")])
                else:
                    out.write(json.dumps(d, ensure_ascii=False) + "\n")
                count += 1
        finally:
            await store.close()
        return count

    try:
        count = asyncio.run(run())
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"exported {count} audit events", file=sys.stderr)
    return 0


def _keys_command(work: Any) -> int:
    """Run `work(keys)` against the configured database (migrating SQLite like `serve`)."""
    from .audit import AuditKeyError
    from .keys import ApiKeys
    from .startup import audit_key_of, ensure_audit_key, prepare_database
    from .store.db import Store
    from .store.migrate import NotMigrated

    async def run() -> int:
        # Creating and revoking keys is audited, into the same keyed chain `serve` writes.
        settings = ensure_audit_key(_settings())
        store = Store.from_url(settings.effective_database_url, audit_key=audit_key_of(settings))
        try:
            await prepare_database(settings, store)
            await store.start()
            await store.key_audit_chain()
            return int(await work(ApiKeys(store)))
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except (NotMigrated, AuditKeyError) as exc:
        print(f"countersign: {exc}", file=sys.stderr)
        return 2


def _cli_actor() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name for this uid (containers)
        return "cli"


def cmd_keys_create(args: argparse.Namespace) -> int:
    from .durations import parse_duration
    from .keys import KeyNameTaken
    from .scopes import ScopeRuleError, parse_scopes

    scopes, unknown = parse_scopes(args.scope or [])
    if unknown:
        from .scopes import Scope

        print(f"countersign keys create: unknown scope {', '.join(map(repr, unknown))}; scopes are "
              f"{', '.join(s.value for s in Scope)}", file=sys.stderr)
        return 2
    try:
        expires_in = parse_duration(args.expires) if args.expires else None
    except ValueError as exc:
        print(f"countersign keys create: --expires: {exc}", file=sys.stderr)
        return 2

    async def work(keys: Any) -> int:
        try:
            created = await keys.create(name=args.name, scopes=scopes, reviewer=args.reviewer, expires_in=expires_in,
                                        created_by=_cli_actor())
        except ScopeRuleError as exc:
            print(f"countersign keys create: --{exc.field}: {exc}", file=sys.stderr)
            return 2
        except KeyNameTaken as exc:
            print(f"countersign keys create: --name: {exc}", file=sys.stderr)
            return 2
        key = created.key
        print(f"created key {key.name!r} ({key.prefix}...) with {', '.join(sorted(s.value for s in key.scopes))}"
              + (f", deciding as {key.reviewer}" if key.reviewer else "")
              + (f", expires {key.expires_at.isoformat()}" if key.expires_at else ", no expiry"))
        print("the key is shown once; it is stored only as a hash:")
        print(created.secret)
        return 0

    return _keys_command(work)


def cmd_keys_list(args: argparse.Namespace) -> int:
    from .store.db import utcnow

    async def work(keys: Any) -> int:
        now = utcnow()
        rows = [(k.name, k.prefix, k.status(now), ",".join(sorted(s.value for s in k.scopes)), k.reviewer or "-",
                 k.expires_at.isoformat(timespec="seconds") if k.expires_at else "-", k.created_by)
                for k in await keys.list()]
        header = ("NAME", "PREFIX", "STATUS", "SCOPES", "REVIEWER", "EXPIRES", "CREATED BY")
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        return 0

    return _keys_command(work)


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from .domain import NotFound

    async def work(keys: Any) -> int:
        try:
            key = await keys.revoke(args.name, by=_cli_actor())
        except NotFound:
            print(f"countersign keys revoke: no key named {args.name!r}", file=sys.stderr)
            return 1
        print(f"key {key.name!r} revoked at {key.revoked_at.isoformat(timespec='seconds')}")
        return 0

    return _keys_command(work)


def cmd_teams_package(args: argparse.Namespace) -> int:
    """Write the Teams app package (manifest.json and the two icons) to upload to Teams."""
    from pathlib import Path

    from .teams.app_package import MANIFEST_VERSION, PackageError, package_files, package_spec, zip_bytes

    try:
        spec = package_spec(args.app_id, args.host, name=args.name, developer_name=args.developer_name,
                            website=args.website, privacy_url=args.privacy_url, terms_url=args.terms_url,
                            version=args.app_version or _service_version())
    except PackageError as exc:
        print(f"countersign teams-package: {exc.option}: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if not out.parent.is_dir():
        print(f"countersign teams-package: --out: no directory {str(out.parent)!r}", file=sys.stderr)
        return 2
    partial = out.with_name(out.name + ".partial")  # never a half-written zip at --out
    try:
        partial.write_bytes(zip_bytes(package_files(spec)))
        partial.replace(out)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        print(f"countersign teams-package: --out: cannot write {str(out)!r}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}: Teams app {spec.name!r} {spec.version} (manifest {MANIFEST_VERSION}) for bot "
          f"{spec.app_id} at {spec.host}; upload it in Teams (Apps, Manage your apps, Upload an app) "
          "or in the Teams admin center")
    return 0


def _service_version() -> str | None:
    """The installed service's version when it is a plain x.y.z (the app's default version)."""
    import re
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("countersign")
    except PackageNotFoundError:
        return None
    return installed if re.fullmatch(r"\d+\.\d+\.\d+", installed) else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="countersign", description="Human approval gateway for AI agent actions.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the service (HTTP API, bot endpoint, workers)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=cmd_serve)

    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)

    demo = sub.add_parser("demo", help="the whole product on embedded defaults, with a sample request")
    demo.add_argument("--data-dir", default="demo-data", help="where the demo keeps its state (default: demo-data)")
    demo.add_argument("--port", type=int, default=3978, help="the port to listen on, or the next free one")
    demo.add_argument("--teams", action="store_true",
                      help="also post the card in Teams: Microsoft 365 Agents Playground without MicrosoftAppId, "
                           "real Teams with it")
    demo.add_argument("--teams-reviewer", metavar="IDENTITY",
                      help="with MicrosoftAppId: who gets the card in Teams (email or AAD object id)")
    demo.set_defaults(func=cmd_demo)

    index = sub.add_parser("index", help="(re)build the knowledge-base index (COUNTERSIGN_KNOWLEDGE_DIR)")
    index.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    index.set_defaults(func=cmd_index)

    trigger = sub.add_parser("trigger", help="send a run to a running service")
    trigger.add_argument("--url", help="service base URL (default COUNTERSIGN_PUBLIC_URL or http://host:port)")
    trigger.add_argument("--file", help="a JSON body for POST /api/runs")
    trigger.add_argument("--request", help="a customer request for the agent (with --to as the customer)")
    trigger.add_argument("--to", action="append")
    trigger.add_argument("--subject")
    trigger.add_argument("--body")
    trigger.add_argument("--idempotency-key")
    trigger.add_argument("--sign", action="store_true", help="sign (v2) with COUNTERSIGN_WEBHOOK_SECRET instead of the token")
    trigger.add_argument("--key", help="an API key with runs:create (default: COUNTERSIGN_API_TOKEN)")
    trigger.set_defaults(func=cmd_trigger)

    keys = sub.add_parser("keys", help="API keys with scopes").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key; prints it once, on the last line")
    create.add_argument("--name", required=True)
    create.add_argument("--scope", action="append", required=True,
                        help="runs:create, runs:read, runs:cancel, jobs:retry, audit:read, keys:admin, decide, "
                             "decide:on-behalf (repeat for several)")
    create.add_argument("--reviewer", help="with --scope decide: the one reviewer the key decides as")
    create.add_argument("--expires", help="lifetime, e.g. 90d, 12h, P30D (default: none)")
    create.set_defaults(func=cmd_keys_create)
    keys.add_parser("list", help="list keys (never the keys themselves)").set_defaults(func=cmd_keys_list)
    revoke = keys.add_parser("revoke", help="revoke a key, at once on every replica")
    revoke.add_argument("name")
    revoke.set_defaults(func=cmd_keys_revoke)

    audit = sub.add_parser("audit", help="the audit log").add_subparsers(dest="audit_command", required=True)
    verify = audit.add_parser("verify", help="check the keyed hash chain (needs COUNTERSIGN_AUDIT_KEY)")
    verify.add_argument("--expect-head", metavar="SEQ:HASH",
                        help="an earlier `audit head` kept outside the database: event SEQ must still have HASH")
    verify.set_defaults(func=cmd_audit_verify)
    audit.add_parser("head", help="print SEQ:HASH of the newest event, to anchor outside the database") \
        .set_defaults(func=cmd_audit_head)
    export = audit.add_parser("export", help="write the audit log")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--output", "-o")
    export.set_defaults(func=cmd_audit_export)

    package = sub.add_parser("teams-package", help="build the Teams app package (manifest.json + icons) to upload")
    package.add_argument("--app-id", required=True, help="the bot's Microsoft App ID (MicrosoftAppId), a GUID")
    package.add_argument("--host", required=True,
                         help="the public host name the bot is reached at (its messaging endpoint's), "
                              "e.g. countersign.example.com")
    package.add_argument("--out", required=True, help="the zip to write, e.g. app.zip")
    package.add_argument("--name", help="the app's name in Teams, at most 30 characters (default Countersign)")
    package.add_argument("--developer-name", help="who publishes the app, at most 32 characters (default: the host)")
    package.add_argument("--website", help="default https://HOST/")
    package.add_argument("--privacy-url", help="default https://HOST/privacy (Countersign serves no such page)")
    package.add_argument("--terms-url", help="default https://HOST/terms (Countersign serves no such page)")
    package.add_argument("--app-version", help="the app's version, x.y.z; raise it for each new upload "
                                               "(default: the service's version)")
    package.set_defaults(func=cmd_teams_package)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .private_files import UMASK

    # Whatever the process writes (the database, its -wal/-shm, indexes, exports) is the
    # owner's alone, whichever library creates it.
    os.umask(UMASK)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SettingsError as exc:  # nothing started: every command needs usable settings
        for line in exc.lines:
            print(f"countersign: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
