"""Policies fail closed: a run cannot pick its own rules, and a policy typo refuses to start.

Every attack goes over real HTTP to the running service and checks the status, the problem
body, and that nothing was stored (no run, no audit event, no email)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from service.api.deps import SERVICES
from service.config import SettingsError, load_settings
from service.scopes import Scope
from service.store import tables as t
from service.store.db import Tx
from service.teams.playground import TENANT_ID as PLAYGROUND_TENANT

from .conftest import Service, StartService, email_action
from .peers.smtp import SmtpServer

REFUNDS = {"reviewers": ["rita@example.com", "sam@example.com"]}
CHANNEL = "19:refunds@thread.tacv2"


async def assert_nothing_stored(service: Service) -> None:
    status, page, _ = await service.request("GET", "/api/runs")
    assert status == 200 and page["items"] == []
    status, audit, _ = await service.request("GET", "/api/audit")
    assert status == 200 and [e["kind"] for e in audit["items"] if e["kind"].startswith(("run.", "approval."))] == []


async def refused(service: Service, body: dict[str, Any], *, auth: str = "token") -> dict[str, Any]:
    status, problem, _ = await service.request("POST", "/api/runs", body=body, auth=auth)
    assert status == 422, problem
    assert problem["status"] == 422 and problem["type"].endswith(("policy_not_narrowed", "validation_error"))
    return problem


def fields(problem: dict[str, Any]) -> dict[str, str]:
    return {e["field"]: e["message"] for e in problem["errors"]}


# ---- a run cannot pick its own rules --------------------------------------------------------

@pytest.mark.parametrize("auth", ["token", "webhook"])
async def test_self_approval_attack_is_refused_and_stores_nothing(
    start_service: StartService, smtp_server: SmtpServer, auth: str
) -> None:
    service = await start_service(smtp_server)
    problem = await refused(service, {
        "action": email_action(), "requested_by": "mallory@example.com",
        "policy": {"allow_self_approval": True, "reviewers": ["mallory@example.com"]}}, auth=auth)
    assert problem["type"].endswith("policy_not_narrowed")
    assert list(fields(problem)) == ["policy.allow_self_approval"]
    assert "forbids self-approval" in fields(problem)["policy.allow_self_approval"]
    await assert_nothing_stored(service)
    assert smtp_server.messages() == []


async def test_naming_oneself_the_reviewer_still_cannot_approve(service: Service, smtp_server: SmtpServer) -> None:
    # Under the open default any list is a narrowing, but self-approval stays forbidden.
    accepted = await service.create_run({"action": email_action(), "requested_by": "mallory@example.com",
                                         "policy": {"reviewers": ["mallory@example.com"]}})
    run = await service.run(accepted["id"])
    approval_id = run["approvals"][0]["id"]
    assert run["policy"]["reviewers"] == ["mallory@example.com"] and run["policy"]["allow_self_approval"] is False
    mallory = await service.make_key("mallory", Scope.DECIDE, reviewer="mallory@example.com")
    status, problem = await service.decide(approval_id, {"decision": "approve"}, auth=mallory)
    assert status == 403 and "forbids self-approval" in problem["detail"]
    run = await service.run(accepted["id"])
    assert run["status"] == "awaiting_approval" and run["decisions"] == [] and smtp_server.messages() == []


async def test_self_approval_inline_is_accepted_only_when_the_base_allows_it(
    start_service: StartService, smtp_server: SmtpServer
) -> None:
    service = await start_service(smtp_server, policies={
        "refunds": REFUNDS, "drills": {"reviewers": ["rita@example.com"], "allow_self_approval": True}})
    problem = await refused(service, {"action": email_action(), "requested_by": "rita@example.com",
                                      "policy": {"base": "refunds", "allow_self_approval": True}})
    assert list(fields(problem)) == ["policy.allow_self_approval"] and "'refunds'" in problem["detail"]
    await assert_nothing_stored(service)
    accepted = await service.create_run({"action": email_action(), "requested_by": "rita@example.com",
                                         "policy": {"base": "drills", "allow_self_approval": True}})
    assert (await service.run(accepted["id"]))["policy"]["allow_self_approval"] is True


async def test_widening_the_reviewers_is_refused(start_service: StartService, smtp_server: SmtpServer) -> None:
    service = await start_service(smtp_server, policies={"refunds": REFUNDS})
    problem = await refused(service, {"action": email_action(), "policy": {
        "base": "refunds", "reviewers": ["rita@example.com", "mallory@example.com"]}})
    assert list(fields(problem)) == ["policy.reviewers"]
    message = fields(problem)["policy.reviewers"]
    assert "'mallory@example.com' is not among the reviewers of policy 'refunds'" in message
    assert "rita" not in message  # only what widens is named

    problem = await refused(service, {"action": email_action(), "policy": {"base": "refunds", "reviewers": []}})
    assert list(fields(problem)) == ["policy.reviewers"]
    problem = await refused(service, {"action": email_action(), "policy": {"base": "payroll", "reviewers": ["x"]}})
    assert fields(problem) == {"policy.base": "no policy named 'payroll' (known: default, refunds)"}
    problem = await refused(service, {"action": email_action(), "policy": "payroll"})
    assert list(fields(problem)) == ["policy"]
    # The old inline form named itself; its name would be shown on cards as if configured.
    problem = await refused(service, {"action": email_action(), "policy": {"name": "refunds", "reviewers": ["x"]}})
    assert list(fields(problem)) == ["policy.name"] and "`base`" in fields(problem)["policy.name"]
    await assert_nothing_stored(service)


async def test_adding_teams_destinations_under_an_open_policy_is_refused(
    start_service: StartService, smtp_server: SmtpServer
) -> None:
    # Teams on (in development mode: these requests are refused before any card would be posted).
    service = await start_service(smtp_server, bot_insecure_no_auth=True, teams_allowed_tenants=[PLAYGROUND_TENANT],
                                  policies={"refunds": {**REFUNDS, "teams_channel": CHANNEL}})
    for policy, field in (({"teams_channel": "19:elsewhere@thread.tacv2"}, "policy.teams_channel"),
                          ({"teams_chat": ["mallory@example.com"]}, "policy.teams_chat")):
        problem = await refused(service, {"action": email_action(), "policy": policy})
        assert list(fields(problem)) == [field]
        assert "lets anyone decide" in fields(problem)[field]
    # A named base posts to its own channel: an inline policy cannot move the card elsewhere.
    problem = await refused(service, {"action": email_action(), "policy": {
        "base": "refunds", "teams_channel": "19:elsewhere@thread.tacv2"}})
    assert list(fields(problem)) == ["policy.teams_channel"]
    await assert_nothing_stored(service)

    # Adding a personal chat under a base that names its reviewers is fine.
    accepted = await service.create_run({"action": email_action(), "policy": {
        "base": "refunds", "teams_chat": ["rita@example.com"]}})
    policy = (await service.run(accepted["id"]))["approvals"][0]["policy"]
    assert policy["teams_channel"] == CHANNEL and policy["teams_chat"] == ["rita@example.com"]
    assert policy["reviewers"] == REFUNDS["reviewers"] and policy["name"] == "refunds" and policy["inline"] is True


async def test_a_narrowing_decides_end_to_end(start_service: StartService, smtp_server: SmtpServer) -> None:
    service = await start_service(smtp_server, policies={"refunds": REFUNDS})
    accepted = await service.create_run({"action": email_action(), "requested_by": "ops@example.com",
                                         "policy": {"base": "refunds", "reviewers": ["RITA@example.com"]}})
    run = await service.run(accepted["id"])
    approval_id = run["approvals"][0]["id"]
    assert run["policy"] == {"name": "refunds", "mode": "first", "reviewers": ["RITA@example.com"],
                             "allow_self_approval": False, "teams_channel": None, "teams_chat": [], "inline": True}

    sam = await service.make_key("sam", Scope.DECIDE, reviewer="sam@example.com")  # a configured reviewer
    status, problem = await service.decide(approval_id, {"decision": "approve"}, auth=sam)
    assert status == 403 and "not among the reviewers of policy 'refunds'" in problem["detail"]
    assert (await service.run(accepted["id"]))["decisions"] == []

    rita = await service.make_key("rita", Scope.DECIDE, reviewer="rita@example.com")
    status, _ = await service.decide(approval_id, {"decision": "approve"}, auth=rita)
    assert status == 200
    run = await service.wait_status(accepted["id"], "completed")
    assert [d["reviewer"]["id"] for d in run["decisions"]] == ["rita@example.com"]
    assert len(smtp_server.messages()) == 1


async def test_policies_from_the_settings_file_anyone_and_named(
    start_service: StartService, smtp_server: SmtpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "countersign.toml"
    config.write_text('[policies.default]\nreviewers = "anyone"\n\n'
                      '[policies.refunds]\nreviewers = ["rita@example.com"]\n')
    monkeypatch.setenv("COUNTERSIGN_CONFIG", str(config))
    service = await start_service(smtp_server)
    assert set(service.settings.policies) == {"default", "refunds"}

    accepted = await service.create_run({"action": email_action(), "requested_by": "ops@example.com"})
    run = await service.run(accepted["id"])
    assert run["policy"]["reviewers"] == "anyone" and run["approvals"][0]["policy"]["reviewers"] == "anyone"
    # Requested by email: an id alone could be the requester's, so it is refused; with an email, compared.
    status, problem = await service.decide(run["approvals"][0]["id"], {"decision": "approve", "reviewer": {"id": "kim"}})
    assert status == 403 and "cannot check that the reviewer did not request it" in problem["detail"], problem
    status, _ = await service.decide(run["approvals"][0]["id"], {"decision": "approve", "reviewer": {
        "id": "kim", "email": "kim@example.com"}})
    assert status == 200  # anyone: any reviewer the channel authenticates
    await service.wait_status(accepted["id"], "completed")

    accepted = await service.create_run({"action": email_action(subject="Named"), "policy": "refunds"})
    approval_id = (await service.run(accepted["id"]))["approvals"][0]["id"]
    status, problem = await service.decide(approval_id, {"decision": "approve", "reviewer": {"id": "kim"}})
    assert status == 403 and "not among the reviewers" in problem["detail"]


async def test_an_approval_stored_under_the_old_rule_decides_as_before(
    start_service: StartService, smtp_server: SmtpServer
) -> None:
    """Approvals stored before "anyone" had to be explicit carry `"reviewers": []`, which
    meant anyone. They keep meaning it: requests already waiting must not be stranded."""
    service = await start_service(smtp_server)
    accepted = await service.create_run({"action": email_action(), "requested_by": "ops@example.com"})
    run_id = accepted["id"]
    old = {"name": "default", "mode": "first_responder", "reviewers": [], "allow_self_approval": False,
           "teams_channel": None, "teams_chat": []}  # exactly what the previous release stored

    async def store_old_format(tx: Tx) -> None:
        await tx.execute(t.runs.update().where(t.runs.c.id == run_id).values(policy=old))
        await tx.execute(t.approvals.update().where(t.approvals.c.run_id == run_id).values(policy=old))

    await service.app[SERVICES].store.write(store_old_format)
    run = await service.run(run_id)
    approval_id = run["approvals"][0]["id"]
    assert run["approvals"][0]["policy"]["reviewers"] == "anyone"  # shown as it decides

    status, problem = await service.decide(approval_id, {"decision": "approve", "reviewer": {"id": "ops@example.com"}})
    assert status == 403 and "self-approval" in problem["detail"]  # still forbidden, as before
    status, _ = await service.decide(approval_id, {"decision": "approve", "reviewer": {"id": "kim@example.com"}})
    assert status == 200
    await service.wait_status(run_id, "completed")
    assert len(smtp_server.messages()) == 1


# ---- a policy typo refuses to start ---------------------------------------------------------

def test_serve_refuses_bad_policies_naming_file_policy_and_key(tmp_path: Path) -> None:
    config = tmp_path / "cs.toml"
    config.write_text('[policies.default]\nreviewers = "anyone"\n\n'
                      '[policies.refunds]\nreviewer = ["rita@example.com"]\n\n'  # the typo that opened it to anyone
                      '[policies.payroll]\nreviewers = []\n\n'
                      '[policies.drills]\nallow_self_approval = true\n')
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("COUNTERSIGN_")}
    env.update({"COUNTERSIGN_CONFIG": str(config), "COUNTERSIGN_DATA_DIR": str(tmp_path / "data"),
                "COUNTERSIGN_API_TOKEN": "x" * 20, "COUNTERSIGN_PORT": "0"})
    result = subprocess.run([sys.executable, "-m", "service", "serve"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    for expected in ('policy "refunds": unknown key "reviewer" (did you mean "reviewers"?)',
                     'policy "payroll": key "reviewers" is empty',
                     'policy "drills": missing key "reviewers"'):
        assert f"countersign: {config}: {expected}" in result.stderr, result.stderr
    assert 'policy "default"' not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was created


@pytest.mark.parametrize(("table", "expected"), [
    ('reviewers = ["anyone"]', 'key "reviewers" must not list "anyone"'),
    ('reviewers = "everyone"', 'key "reviewers" must be a list of identities, or the string "anyone"'),
    ('reviewers = ["rita@example.com", " "]', 'key "reviewers" has a blank entry'),
    ('reviewers = "anyone"\nallow_self_approval = "no"', 'key "allow_self_approval"'),
    ('reviewers = "anyone"\nteams_chanel = "19:x"', 'unknown key "teams_chanel" (did you mean "teams_channel"?)'),
    ('reviewers = "anyone"\nquorum = 2', 'unknown key "quorum" (known: reviewers, mode, allow_self_approval,'),
], ids=["anyone-in-a-list", "other-string", "blank-entry", "string-boolean", "teams-typo", "future-key"])
def test_every_bad_policy_value_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table: str,
                                         expected: str) -> None:
    config = tmp_path / "cs.toml"
    config.write_text(f"[policies.refunds]\n{table}\n")
    monkeypatch.setenv("COUNTERSIGN_CONFIG", str(config))
    with pytest.raises(SettingsError) as refused:
        load_settings(data_dir=tmp_path)
    assert [line for line in refused.value.lines if line.startswith(f'{config}: policy "refunds": {expected}')], \
        refused.value.lines


def test_a_settings_file_that_cannot_be_read_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "cs.toml"
    config.write_text('[policies.refunds\nreviewers = "anyone"\n')
    monkeypatch.setenv("COUNTERSIGN_CONFIG", str(config))
    with pytest.raises(SettingsError) as refused:
        load_settings(data_dir=tmp_path)
    assert refused.value.lines[0].startswith(f"{config}: not valid TOML: ")
    monkeypatch.setenv("COUNTERSIGN_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(SettingsError, match="which is not a file"):
        load_settings(data_dir=tmp_path)
