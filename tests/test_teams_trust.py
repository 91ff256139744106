"""Teams trust boundaries, tried as an attacker would over real HTTP (issue 10): foreign
tenants, self-approval by email or UPN, truncated cards, unauthenticated load, start-up
settings. Same peers as test_teams.py: a local key server signs the Bot Connector's
tokens, a local Bot Connector answers the member API and takes the cards."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from service.api.deps import SERVICES
from service.store import tables as t

from .conftest import email_action
from .test_teams import APP_ID, CHANNEL, FOREIGN, OTHER_ALLOWED, TENANT, Teams, _actions, _texts, teams  # noqa: F401

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

APPROVE, EDIT, REJECT = "countersign.approve", "countersign.edit", "countersign.reject"


async def _rows(teams: Teams, table: sa.Table) -> list[Any]:
    async def q(conn: Any) -> list[Any]:
        return (await conn.execute(sa.select(table))).all()

    return await teams.service.app[SERVICES].store.read(q)


async def _audit_kinds(teams: Teams) -> list[str]:
    return [r.kind for r in await _rows(teams, t.audit_events)]


def _card_json(card: dict[str, Any]) -> str:
    return json.dumps(card)


# ---- tenants -------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["both", "channelData only", "conversation only"])
async def test_foreign_tenant_click_is_refused_and_nothing_is_stored(teams: Teams, where: str) -> None:
    await teams.install()
    run_id, approval_id = await teams.pending_run()
    audit_before = await _audit_kinds(teams)
    members_before = await _rows(teams, t.teams_members)
    click = teams.click(approval_id, APPROVE, sender="eve", tenant=FOREIGN)
    if where == "channelData only":
        click["conversation"]["tenantId"] = TENANT
    elif where == "conversation only":
        click["channelData"]["tenant"]["id"] = TENANT
    status, problem = await teams.post(click)
    assert status == 403 and problem["status"] == 403 and problem["type"].endswith("tenant_not_allowed")
    assert FOREIGN in problem["detail"] and "COUNTERSIGN_TEAMS_ALLOWED_TENANTS" in problem["detail"]
    run = await teams.service.run(run_id)
    assert run["status"] == "awaiting_approval" and run["decisions"] == []
    assert await _audit_kinds(teams) == audit_before  # not even a decision.refused
    assert await _rows(teams, t.teams_members) == members_before
    assert not teams.connector.of("GET", "/v3/conversations")  # no member lookup was made for eve


async def test_foreign_tenant_install_stores_no_conversation(teams: Teams) -> None:
    status, problem = await teams.post(teams.activity("conversationUpdate", tenant=FOREIGN,
                                                      membersAdded=[{"id": f"28:{APP_ID}"}]))
    assert status == 403 and problem["type"].endswith("tenant_not_allowed")
    status, problem = await teams.post(teams.activity("installationUpdate", sender="eve", tenant=FOREIGN,
                                                      conversation="a:chat-eve", conversation_type="personal",
                                                      action="add"))
    assert status == 403
    assert await _rows(teams, t.teams_conversations) == []
    assert await _rows(teams, t.teams_members) == []
    assert "teams.installed" not in await _audit_kinds(teams)
    # With no conversation stored, a card for that channel goes nowhere.
    run_id, _ = await teams.pending_run()
    run = await teams.service.wait_for(run_id, lambda r: any(j["status"] == "dead" for j in r["jobs"]))
    assert "not installed" in run["jobs"][0]["last_error"]


async def test_activity_without_a_tenant_is_refused(teams: Teams) -> None:
    activity = teams.activity("conversationUpdate", membersAdded=[{"id": f"28:{APP_ID}"}])
    del activity["channelData"]["tenant"], activity["conversation"]["tenantId"]
    status, problem = await teams.post(activity)
    assert status == 403 and "no tenant" in problem["detail"]
    assert await _rows(teams, t.teams_conversations) == []


async def _store_foreign_rows(teams: Teams) -> None:
    """Rows from another tenant, as a database from before the allow-list would hold them."""
    now = datetime.now(timezone.utc)

    async def op(tx: Any) -> None:
        await tx.execute(t.teams_conversations.insert().values(
            id="19:foreign@thread.tacv2", kind="channel", service_url=teams.connector_url, tenant_id=FOREIGN,
            team_id="19:foreign-team", channel_id="19:foreign@thread.tacv2",
            user_aad_object_id=None, reference={"conversation": {"id": "19:foreign@thread.tacv2"}},
            installed_at=now, updated_at=now))
        await tx.execute(t.teams_members.insert().values(
            aad_object_id="aad-mole", user_id="29:mole", tenant_id=FOREIGN, service_url=teams.connector_url,
            email="mole@example.com", user_principal_name="mole@example.com", name="Mole", fetched_at=now))

    await teams.service.app[SERVICES].store.write(op)


async def test_cards_are_never_routed_to_a_foreign_tenant(teams: Teams) -> None:
    await _store_foreign_rows(teams)
    channel_run, _ = await teams.pending_run(teams_channel="19:foreign@thread.tacv2", reviewers=["rita@example.com"])
    chat_run, _ = await teams.pending_run(teams_channel=None, teams_chat=["mole@example.com"],
                                          reviewers=["mole@example.com"])
    for run_id, says in ((channel_run, "not installed"), (chat_run, "has not met this person")):
        run = await teams.service.wait_for(run_id, lambda r: any(j["status"] == "dead" for j in r["jobs"]))
        assert says in run["jobs"][0]["last_error"]
    assert not teams.connector.of("POST", "/v3/conversations")  # nothing was sent anywhere


async def test_an_email_naming_two_people_refuses_instead_of_guessing(teams: Teams) -> None:
    # The same address in two allowed tenants (a guest account, say): two different people to Teams.
    for sender, tenant in (("sam", TENANT), ("samguest", OTHER_ALLOWED)):
        teams.connector.members[f"29:{sender}"] = {
            "id": f"29:{sender}", "name": "Sam", "aadObjectId": f"aad-{sender}", "email": "sam@example.com",
            "userPrincipalName": f"{sender}@{tenant}.example.com"}
        status, _ = await teams.post(teams.activity("installationUpdate", sender=sender, tenant=tenant,
                                                    conversation=f"a:chat-{sender}", conversation_type="personal",
                                                    action="add"))
        assert status == 200
    assert len(await _rows(teams, t.teams_members)) == 2
    run_id, _ = await teams.pending_run(teams_channel=None, teams_chat=["sam@example.com"], reviewers=["sam@example.com"])
    run = await teams.service.wait_for(run_id, lambda r: any(j["status"] == "dead" for j in r["jobs"]))
    assert "more than one person" in run["jobs"][0]["last_error"]
    assert not teams.connector.of("POST", "/v3/conversations/a:chat-")  # no card to either Sam
    # Named exactly (by UPN), the card is routed.
    samguest = f"samguest@{OTHER_ALLOWED}.example.com"
    run_id, _ = await teams.pending_run(teams_channel=None, teams_chat=[samguest], reviewers=[samguest])
    await teams.wait_calls("POST", 1, "/v3/conversations/a:chat-samguest/activities")


# ---- self-approval ---------------------------------------------------------------------------


@pytest.mark.parametrize("matches", ["email", "upn"])
async def test_requester_cannot_approve_her_own_request_from_a_card(teams: Teams, matches: str) -> None:
    await teams.install()
    # The default policy (anyone may decide); the run was requested by ops@example.com.
    teams.connector.members["29:ops"] = {
        "id": "29:ops", "name": "Ops", "aadObjectId": "aad-ops",
        "email": "ops@example.com" if matches == "email" else "o.ps@mail.example.com",
        "userPrincipalName": "OPS@example.com" if matches == "upn" else "o.ps@corp.example.com"}
    run_id, approval_id = await teams.pending_run()
    status, answer = await teams.post(teams.click(approval_id, APPROVE, sender="ops"))
    assert status == 200 and answer["statusCode"] == 200
    assert "requested this action" in " ".join(_texts(answer["value"])) and _actions(answer["value"]) == []
    run = await teams.service.run(run_id)
    assert run["status"] == "awaiting_approval" and run["decisions"] == []
    [refused] = [e for e in run["timeline"] if e["event"] == "decision.refused"]
    assert refused["actor"] == "aad-ops" and "self-approval" in refused["data"]["message"]
    # Someone else may still decide.
    status, answer = await teams.post(teams.click(approval_id, APPROVE, sender="rita"))
    assert answer["statusCode"] == 200
    await teams.service.wait_status(run_id, "completed")


async def test_a_requester_met_before_is_refused_from_the_stored_member_without_a_new_lookup(teams: Teams) -> None:
    # The member API is asked once per person; later clicks read the stored member inside
    # the decision itself (one op). That stored email must still refuse self-approval.
    await teams.install()
    teams.connector.members["29:ops"] = {"id": "29:ops", "name": "Ops", "aadObjectId": "aad-ops",
                                         "email": "ops@example.com", "userPrincipalName": "ops@corp.example.com"}
    first_run, first = await teams.pending_run()
    status, answer = await teams.post(teams.click(first, APPROVE, sender="ops"))
    assert status == 200 and "requested this action" in " ".join(_texts(answer["value"]))
    assert [c.path.rsplit("/", 1)[-1] for c in teams.connector.of("GET")] == ["29:ops"]
    run_id, approval_id = await teams.pending_run()
    for verb in (APPROVE, REJECT):
        status, answer = await teams.post(teams.click(approval_id, verb, sender="ops", reason="mine"))
        assert status == 200 and answer["statusCode"] == 200
        assert "requested this action" in " ".join(_texts(answer["value"])) and _actions(answer["value"]) == []
    assert len(teams.connector.of("GET")) == 1  # no second lookup
    run = await teams.service.run(run_id)
    assert run["status"] == "awaiting_approval" and run["decisions"] == []
    assert [e["event"] for e in run["timeline"]].count("decision.refused") == 2
    # Another reviewer, met before too, is decided with the email the member API gave.
    status, _ = await teams.post(teams.click(first, REJECT, sender="rita", reason="wrong customer"))
    assert status == 200
    status, answer = await teams.post(teams.click(approval_id, APPROVE, sender="rita"))
    assert answer["statusCode"] == 200
    assert [c.path.rsplit("/", 1)[-1] for c in teams.connector.of("GET")] == ["29:ops", "29:rita"]
    await teams.service.wait_status(run_id, "completed")
    [decision] = [d for d in await _rows(teams, t.decisions) if d.approval_id == approval_id]
    assert (decision.reviewer_id, decision.reviewer_email) == ("aad-rita", "rita@example.com")
    assert (await teams.service.run(first_run))["status"] == "rejected"


async def test_an_unresolvable_email_refuses_when_the_run_has_a_requester(teams: Teams) -> None:
    await teams.install()
    run_id, approval_id = await teams.pending_run()
    status, answer = await teams.post(teams.click(approval_id, APPROVE, sender="nobody", known=False))
    assert status == 200 and answer["statusCode"] == 200
    assert "could not look up your email" in " ".join(_texts(answer["value"])) and _actions(answer["value"]) == []
    assert [c.path.rsplit("/", 1)[-1] for c in teams.connector.of("GET")] == ["29:nobody"]  # tried, 404
    run = await teams.service.run(run_id)
    assert run["status"] == "awaiting_approval" and run["decisions"] == []
    assert [e["event"] for e in run["timeline"]].count("decision.refused") == 1


async def test_without_a_requester_no_email_is_needed(teams: Teams) -> None:
    await teams.install()
    accepted = await teams.service.create_run({"action": email_action(), "policy": "team"})
    approval_id = (await teams.service.run(accepted["id"]))["approvals"][0]["id"]
    status, answer = await teams.post(teams.click(approval_id, APPROVE, sender="nobody", known=False))
    assert answer["statusCode"] == 200
    await teams.service.wait_status(accepted["id"], "completed")
    assert not [c for c in teams.connector.calls if c.method == "GET"]  # no lookup at all


# ---- truncated cards ---------------------------------------------------------------------------


async def test_a_truncated_card_offers_reject_only_and_approve_is_refused_on_the_server(teams: Teams) -> None:
    await teams.install()
    body = "\n\n".join(f"Paragraph {i}: " + "terms and conditions apply " * 20 for i in range(120))  # ~70 KB
    accepted = await teams.service.create_run({"action": email_action(body=body), "requested_by": "ops@example.com",
                                               "policy": "team"})
    run_id = accepted["id"]
    approval_id = (await teams.service.run(run_id))["approvals"][0]["id"]
    [create] = await teams.wait_calls("POST", 1, "/v3/conversations")
    card = create.body["activity"]["attachments"][0]["content"]
    verbs = {a.get("verb") for a in _actions(card)}
    assert APPROVE not in verbs and EDIT not in verbs and REJECT in verbs
    text = " ".join(_texts(card))
    assert "truncated" in text and "cannot be approved in Teams" in text
    assert f"GET http://countersign.test/api/runs/{run_id}" in text.replace("\\", "")
    assert f"POST http://countersign.test/api/approvals/{approval_id}/decisions" in text.replace("\\", "")

    # A forged click (the card never offered it) is refused from the stored approval.
    for verb, inputs in ((APPROVE, {}), (EDIT, {"subject": "Short", "body": "Short body"})):
        status, answer = await teams.post(teams.click(approval_id, verb, **inputs))
        assert status == 200 and answer["statusCode"] == 200
        assert "longer than a Teams card can show" in " ".join(_texts(answer["value"]))
    run = await teams.service.run(run_id)
    assert run["status"] == "awaiting_approval" and run["decisions"] == []
    assert [e["event"] for e in run["timeline"]].count("decision.refused") == 2
    # Reject stays possible in Teams; approving is the API's, which shows the whole text.
    status, answer = await teams.post(teams.click(approval_id, REJECT, reason="Too long"))
    assert answer["statusCode"] == 200
    await teams.service.wait_status(run_id, "rejected")


async def test_a_card_that_shows_everything_offers_approve_and_says_who_may_decide(teams: Teams) -> None:
    await teams.install()
    await teams.pending_run()
    [create] = await teams.wait_calls("POST", 1, "/v3/conversations")
    card = create.body["activity"]["attachments"][0]["content"]
    assert APPROVE in {a.get("verb") for a in _actions(card)}
    assert "cannot be approved" not in _card_json(card)
    assert {"title": "Who may decide", "value": "Anyone (this policy does not restrict who may decide)"} in [
        f for node in card["body"] if node.get("type") == "FactSet" for f in node["facts"]]


# ---- unauthenticated load ---------------------------------------------------------------------


async def test_a_large_bad_token_activity_is_401_without_being_parsed(teams: Teams) -> None:
    run_id, approval_id = await teams.pending_run()
    not_json = b"{" + b"x" * (258 * 1024)  # invalid JSON: parsing it would answer 400
    for auth in ("", "Bearer not.a.jwt", f"Bearer {teams.tokens.expired()}"):
        status, problem, _ = await teams.service.request("POST", "/api/messages", raw=not_json, auth="none",
                                                         headers={"Authorization": auth})
        assert status == 401 and problem["type"].endswith("unauthorized")
    # With a good token the same body is too large (413), and a small invalid one a 400.
    good = {"Authorization": f"Bearer {teams.tokens.token()}"}
    status, problem, _ = await teams.service.request("POST", "/api/messages", raw=not_json, auth="none", headers=good)
    assert status == 413 and "COUNTERSIGN_BOT_MAX_BODY_BYTES" in problem["detail"]
    status, problem, _ = await teams.service.request("POST", "/api/messages", raw=b"{x", auth="none", headers=good)
    assert status == 400
    run = await teams.service.run(run_id)
    assert run["status"] == "awaiting_approval" and run["decisions"] == [] and approval_id


async def test_bad_token_invokes_do_not_make_the_service_busy(teams: Teams) -> None:
    await teams.install()
    _, approval_id = await teams.pending_run()
    foreground = teams.service.app[SERVICES].foreground
    before = foreground.started
    results = await asyncio.gather(*(teams.post(teams.click(approval_id, APPROVE), auth="Bearer forged.token.x")
                                     for _ in range(20)))
    assert all(status == 401 for status, _ in results)
    assert foreground.started == before and foreground.clear()
    status, answer = await teams.post(teams.click(approval_id, REJECT, reason="no"))
    assert answer["statusCode"] == 200 and foreground.started == before + 1  # an authenticated click counts


# ---- start-up ---------------------------------------------------------------------------------


def test_teams_settings_that_cannot_work_refuse_to_start(tmp_path: Path, db_url: str) -> None:
    from service.app import create_app
    from service.config import Settings
    from service.teams.channel import TeamsNotConfigured

    base: dict[str, Any] = {"data_dir": tmp_path, "api_token": "x" * 20, "microsoft_app_id": APP_ID,
                            "microsoft_app_password": "secret"}
    with pytest.raises(TeamsNotConfigured, match="COUNTERSIGN_TEAMS_ALLOWED_TENANTS"):
        create_app(Settings(**base))
    with pytest.raises(TeamsNotConfigured, match="COUNTERSIGN_TEAMS_ALLOWED_TENANTS"):
        create_app(Settings(data_dir=tmp_path, api_token="x" * 20, bot_insecure_no_auth=True))
    # The no-auth mode serves the Agents Playground's mock tenant and nothing else: anyone could
    # claim to be any user of a real tenant listed next to it.
    from service.teams.playground import TENANT_ID as PLAYGROUND_TENANT

    insecure: dict[str, Any] = {"data_dir": tmp_path, "api_token": "x" * 20, "bot_insecure_no_auth": True}
    for tenants in ([TENANT], [PLAYGROUND_TENANT, TENANT.upper()]):
        with pytest.raises(TeamsNotConfigured, match=rf"INSECURE_NO_AUTH.*Playground's tenant {PLAYGROUND_TENANT}"
                                                     rf".*also lists {TENANT}: remove them"):
            create_app(Settings(**insecure, teams_allowed_tenants=tenants))
    with pytest.raises(TeamsNotConfigured, match=f"also lists {TENANT}"):  # a SingleTenant's own counts too
        create_app(Settings(**insecure, teams_allowed_tenants=[PLAYGROUND_TENANT], microsoft_app_type="SingleTenant",
                            microsoft_app_tenant_id=TENANT))
    create_app(Settings(**insecure, teams_allowed_tenants=[PLAYGROUND_TENANT.upper()]))
    # With an app id, authentication is on whatever the flag says: real tenants are fine.
    create_app(Settings(**base, bot_insecure_no_auth=True, teams_allowed_tenants=[TENANT]))
    with pytest.raises(TeamsNotConfigured, match=r"UserAssignedMSI.*MultiTenant, SingleTenant"):
        create_app(Settings(**base, microsoft_app_type="UserAssignedMSI", teams_allowed_tenants=[TENANT]))
    # SingleTenant allows its own tenant without listing it.
    single = Settings(**base, microsoft_app_type="SingleTenant", microsoft_app_tenant_id="Tenant-Own")
    create_app(single)
    assert single.effective_teams_allowed_tenants == {"tenant-own"}


@pytest.mark.parametrize("env, says", [
    ({}, "COUNTERSIGN_TEAMS_ALLOWED_TENANTS is empty"),
    ({"MicrosoftAppType": "UserAssignedMSI", "COUNTERSIGN_TEAMS_ALLOWED_TENANTS": "t1,t2"},
     "use one of: MultiTenant, SingleTenant"),
])
def test_serve_refuses_to_start(tmp_path: Path, db_url: str, env: dict[str, str], says: str) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("COUNTERSIGN_") and not k.startswith("Microsoft")}
    environ.update({"COUNTERSIGN_DATA_DIR": str(tmp_path), "COUNTERSIGN_API_TOKEN": "x" * 20,
                    "MicrosoftAppId": APP_ID, "MicrosoftAppPassword": "secret", "COUNTERSIGN_PORT": "1", **env})
    done = subprocess.run([sys.executable, "-m", "service", "serve"], env=environ, capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 2 and says in done.stderr, done.stderr
