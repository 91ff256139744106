"""Routes pick a run's policy (service/policy_routes.py, POST /api/runs): first match wins, a
route's policy wins over the one the run names, and an inline policy narrows the routed
policy, never its own `base`. The HTTP tests run against the service over real HTTP."""

from __future__ import annotations

from typing import Any

import pytest

from service.policy_routes import Route, RouteMatch, RunFacts, match_route, parse_conditions
from service.scopes import Scope

from .conftest import Service, StartService, email_action
from .peers.smtp import SmtpServer

POLICIES = {
    "lenient": {"reviewers": "anyone"},
    "refunds": {"reviewers": ["rita@example.com", "sam@example.com"]},
    "vip": {"reviewers": ["lee@example.com"]},
}
ROUTES = [
    {"when": {"metadata.amount": {"gt": 500}}, "policy": "refunds"},
    {"when": {"action.to_domain": "vip.example.com"}, "policy": "vip"},
    {"when": {"customer.domain": "vip.example.com"}, "policy": "vip"},
]


def route(when: dict[str, Any], policy: str = "p") -> Route:
    return Route(parse_conditions(when), policy)


def matches(when: dict[str, Any], **facts: Any) -> bool:
    return match_route([route(when)], RunFacts(**facts)) is not None


# ---- matching, pure -------------------------------------------------------------------------

def test_first_match_wins_and_no_match_is_none() -> None:
    routes = [route({"metadata.amount": {"gt": 500}}, "big"), route({"metadata.amount": {"gt": 100}}, "medium")]
    assert match_route(routes, RunFacts(metadata={"amount": 900})) == RouteMatch(1, "big")
    assert match_route(routes, RunFacts(metadata={"amount": 200})) == RouteMatch(2, "medium")
    assert match_route(routes, RunFacts(metadata={"amount": 50})) is None
    assert match_route([], RunFacts(metadata={"amount": 900})) is None


@pytest.mark.parametrize(("when", "value", "expected"), [
    ({"gt": 500}, 501, True), ({"gt": 500}, 500, False), ({"gte": 500}, 500, True), ({"gte": 500}, 499.5, False),
    ({"lt": 10}, 9.99, True), ({"lt": 10}, 10, False), ({"lte": 10}, 10, True),
    ({"gte": 100, "lt": 500}, 100, True), ({"gte": 100, "lt": 500}, 500, False),  # several operators: all hold
    # Not a number: no match, whatever the operator (and no error).
    ({"gt": 500}, "900", False), ({"gt": 500}, True, False), ({"gt": 500}, None, False), ({"gt": 500}, [900], False),
    ({"gt": 500}, {"v": 900}, False),
    ({"eq": 1}, True, False), ({"eq": True}, 1, False), ({"eq": True}, True, True),  # booleans are not numbers
    ({"eq": 500}, 500.0, True), ({"eq": "gold"}, "gold", True), ({"eq": "gold"}, "Gold", False),  # exact
    ({"ne": "gold"}, "silver", True), ({"ne": "gold"}, "gold", False),
    ({"in": ["gold", "platinum"]}, "platinum", True), ({"in": ["gold", 3]}, 3, True), ({"in": ["gold"]}, "x", False),
])
def test_operators_on_metadata(when: dict[str, Any], value: Any, expected: bool) -> None:
    assert matches({"metadata.tier": when}, metadata={"tier": value}) is expected


def test_a_bare_value_is_eq_and_nested_keys_use_dots() -> None:
    assert matches({"metadata.tier": "gold"}, metadata={"tier": "gold"})
    assert matches({"metadata.order.total": {"gt": 10}}, metadata={"order": {"total": 11}})
    assert not matches({"metadata.order.total": {"gt": 10}}, metadata={"order": 11})
    assert not matches({"metadata.order.total": {"gt": 10}}, metadata={"order.total": 11})


def test_a_missing_field_matches_nothing_not_even_ne() -> None:
    assert not matches({"metadata.tier": {"ne": "gold"}}, metadata={})
    assert not matches({"requested_by": {"ne": "ops@example.com"}})
    assert not matches({"action.to_domain": {"ne": "vip.example.com"}}, recipients=None)  # an agent run
    assert not matches({"customer.domain": "vip.example.com"})


def test_recipients_any_matches_and_ne_means_none() -> None:
    to = ("ann@example.com", "Boss@VIP.Example.com")
    assert matches({"action.to_domain": "vip.example.com"}, recipients=to)
    assert matches({"action.to_domain": "VIP.EXAMPLE.COM"}, recipients=to)  # domains are case-insensitive
    assert matches({"action.to": "boss@vip.example.com"}, recipients=to)
    assert matches({"action.to_domain": {"in": ["x.example", "vip.example.com"]}}, recipients=to)
    assert not matches({"action.to_domain": {"ne": "vip.example.com"}}, recipients=to)
    assert matches({"action.to_domain": {"ne": "vip.example.com"}}, recipients=("ann@example.com",))
    assert not matches({"action.to_domain": "example.com"}, recipients=("boss@vip.example.com",))  # exact domain


def test_people_fields() -> None:
    assert matches({"requested_by": "OPS@example.com"}, requested_by="ops@EXAMPLE.com")
    assert matches({"customer.email": "ann@vip.example.com"}, customer_email="Ann@VIP.example.com")
    assert matches({"customer.domain": "vip.example.com"}, customer_email="ann@vip.example.com")
    assert not matches({"customer.domain": "vip.example.com"}, customer_email="ann@example.com")


# ---- over HTTP --------------------------------------------------------------------------------

async def created_event(service: Service, run_id: str) -> dict[str, Any]:
    status, audit, _ = await service.request("GET", "/api/audit")
    assert status == 200
    [event] = [e for e in audit["items"] if e["kind"] == "run.created" and e["run_id"] == run_id]
    return event["data"]  # type: ignore[no-any-return]


async def routed_service(start_service: StartService, smtp_server: SmtpServer) -> Service:
    return await start_service(smtp_server, policies=POLICIES, routes=ROUTES)


async def test_a_route_wins_over_a_weaker_policy_the_run_names(
    start_service: StartService, smtp_server: SmtpServer
) -> None:
    service = await routed_service(start_service, smtp_server)
    accepted = await service.create_run({"action": email_action(), "policy": "lenient",
                                         "requested_by": "ops@example.com", "metadata": {"amount": 900}})
    run = await service.run(accepted["id"])
    assert run["policy"]["name"] == "refunds" and run["policy"]["reviewers"] == POLICIES["refunds"]["reviewers"]
    assert run["approvals"][0]["policy"]["name"] == "refunds"
    assert (await created_event(service, accepted["id"]))["route"] == 1

    # Under "lenient" anyone could approve; under the routed policy, only its reviewers.
    kim = await service.make_key("kim", Scope.DECIDE, reviewer="kim@example.com")
    status, problem = await service.decide(run["approvals"][0]["id"], {"decision": "approve"}, auth=kim)
    assert status == 403 and "not among the reviewers of policy 'refunds'" in problem["detail"]
    run = await service.run(accepted["id"])
    assert run["status"] == "awaiting_approval" and run["decisions"] == [] and smtp_server.messages() == []

    rita = await service.make_key("rita", Scope.DECIDE, reviewer="rita@example.com")
    status, _ = await service.decide(run["approvals"][0]["id"], {"decision": "approve"}, auth=rita)
    assert status == 200
    await service.wait_status(accepted["id"], "completed")
    assert len(smtp_server.messages()) == 1

    # A Cc to a VIP domain (any recipient, any case) routes to "vip": the second route.
    accepted = await service.create_run({"action": email_action(cc=["Boss@VIP.example.com"]), "policy": "lenient"})
    assert (await service.run(accepted["id"]))["policy"]["name"] == "vip"
    assert (await created_event(service, accepted["id"]))["route"] == 2


async def test_without_a_matching_route_the_named_policy_or_the_default_applies(
    start_service: StartService, smtp_server: SmtpServer
) -> None:
    service = await routed_service(start_service, smtp_server)
    for metadata, policy, expected in (({"amount": 100}, "lenient", "lenient"), ({}, None, "default"),
                                       # not a number: the route does not match, and nothing fails
                                       ({"amount": "900"}, "lenient", "lenient"), ({"amount": True}, None, "default"),
                                       ({"amount": {"value": 900}}, "vip", "vip")):
        body: dict[str, Any] = {"action": email_action(), "metadata": metadata}
        if policy:
            body["policy"] = policy
        accepted = await service.create_run(body)
        assert (await service.run(accepted["id"]))["policy"]["name"] == expected, metadata
        assert "route" not in await created_event(service, accepted["id"])
    # Naming an unknown policy is still a 422 when no route matches.
    status, problem, _ = await service.request("POST", "/api/runs", body={"action": email_action(), "policy": "x"})
    assert status == 422 and [e["field"] for e in problem["errors"]] == ["policy"]


async def test_an_inline_policy_narrows_the_routed_policy_not_its_base(
    start_service: StartService, smtp_server: SmtpServer
) -> None:
    service = await routed_service(start_service, smtp_server)
    accepted = await service.create_run({"action": email_action(), "metadata": {"amount": 900},
                                         "policy": {"base": "lenient", "reviewers": ["rita@example.com"]}})
    run = await service.run(accepted["id"])
    assert run["policy"]["name"] == "refunds" and run["policy"]["inline"] is True
    assert run["policy"]["reviewers"] == ["rita@example.com"]
    assert (await created_event(service, accepted["id"]))["route"] == 1

    # The attack: name an open base and a reviewer of one's own, on a run the route makes strict.
    before = (await service.request("GET", "/api/runs"))[1]["items"]
    status, problem, _ = await service.request("POST", "/api/runs", body={
        "action": email_action(), "metadata": {"amount": 900}, "requested_by": "mallory@example.com",
        "policy": {"base": "lenient", "reviewers": ["mallory-friend@example.com"]}})
    assert status == 422 and problem["type"].endswith("policy_not_narrowed"), problem
    assert [e["field"] for e in problem["errors"]] == ["policy.reviewers"]
    assert "not among the reviewers of policy 'refunds'" in problem["errors"][0]["message"]
    assert (await service.request("GET", "/api/runs"))[1]["items"] == before  # nothing stored
    status, audit, _ = await service.request("GET", "/api/audit")
    assert len([e for e in audit["items"] if e["kind"] == "run.created"]) == len(before)
    assert smtp_server.messages() == []


async def test_agent_runs_are_routed_on_what_is_known_when_they_are_created(
    start_service: StartService, smtp_server: SmtpServer
) -> None:
    # Before the draft: customer.* can match, action.* cannot (there is no email yet).
    service = await start_service(smtp_server, policies=POLICIES, routes=ROUTES[2:])
    body = {"request": "Refund order 1042", "customer": {"email": "ann@vip.example.com"}, "policy": "lenient"}
    accepted = await service.create_run(body)
    assert (await service.run(accepted["id"]))["policy"]["name"] == "vip"
    assert (await created_event(service, accepted["id"]))["route"] == 1


async def test_an_agent_run_is_routed_again_on_the_email_it_drafted(
    start_service: StartService, smtp_server: SmtpServer
) -> None:
    """The attack: name a lenient policy on an agent run whose draft goes to a domain a route
    makes strict. The route on `action.to_domain` could not match at creation; it matches
    the draft, before anyone is asked, and only the routed policy's reviewers may decide."""
    service = await start_service(smtp_server, policies=POLICIES, routes=ROUTES[1:2])
    accepted = await service.create_run({"request": "Where is my refund for order 1042?", "policy": "lenient",
                                         "customer": {"email": "ann@vip.example.com", "name": "Ann"}})
    assert (await service.run(accepted["id"]))["policy"]["name"] == "lenient"  # no email yet
    run = await service.wait_status(accepted["id"], "awaiting_approval")
    [approval] = run["approvals"]
    assert approval["action"]["to"] == ["ann@vip.example.com"]
    assert approval["policy"]["name"] == "vip" and run["policy"]["name"] == "vip"
    status, audit, _ = await service.request("GET", "/api/audit")
    [routed] = [e for e in audit["items"] if e["kind"] == "run.routed" and e["run_id"] == accepted["id"]]
    assert routed["data"] | {"because": None} == {"route": 1, "policy": "vip", "previous_policy": "lenient",
                                                  "revision": 1, "because": None}

    kim = await service.make_key("kim", Scope.DECIDE, reviewer="kim@example.com")
    status, problem = await service.decide(approval["id"], {"decision": "approve"}, auth=kim)
    assert status == 403 and "not among the reviewers of policy 'vip'" in problem["detail"]
    assert (await service.run(accepted["id"]))["decisions"] == [] and smtp_server.messages() == []
    lee = await service.make_key("lee", Scope.DECIDE, reviewer="lee@example.com")
    status, _ = await service.decide(approval["id"], {"decision": "approve"}, auth=lee)
    assert status == 200
    await service.wait_status(accepted["id"], "completed")
    assert len(smtp_server.messages()) == 1

    # A draft to nobody a route names keeps the policy the run got.
    accepted = await service.create_run({"request": "Where is my refund for order 1042?", "policy": "lenient",
                                         "customer": {"email": "bob@example.com", "name": "Bob"}})
    run = await service.wait_status(accepted["id"], "awaiting_approval")
    assert run["approvals"][0]["policy"]["name"] == "lenient"
