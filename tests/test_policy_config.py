"""The settings file's policies, calendars and routes (service/policy_config.py): what they
configure, and that every mistake stops start-up with one line naming the file, the policy
(or stage, calendar, route) and the key."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date, time, timedelta
from pathlib import Path

import pytest

from service.business_hours import Calendar
from service.config import Settings, SettingsError, load_settings
from service.policy import ExpiryOutcome, PolicyMode, RejectRule, Stage, Timers
from service.policy_routes import Condition, Op, Route

# The example of issue 12, with the "vip" policy it routes to.
EXAMPLE = """
[policies.refunds]
reviewers = ["rita@example.com", "sam@example.com", "lee@example.com"]
mode = "quorum"            # first (default; "first_responder" still accepted) | all | quorum | sequential
required = 2               # quorum only
reject = "any"             # any (default: one rejection rejects) | majority
allow_self_approval = false
remind_after = "4h"        # then again every remind_after, at most max_reminders
max_reminders = 3
escalate_after = "1d"
escalate_to = ["lead@example.com"]     # added as reviewers, and notified
expire_after = "3d"
on_expiry = "reject"       # reject (default: fail closed) | approve (explicit, audited as automatic)
business_hours = "support" # timers count only these hours

[policies.vip]
mode = "sequential"
reject = "majority"
delegates = ["deputy@example.com"]
expire_after = "PT36H"
on_expiry = "approve"

[[policies.vip.stages]]            # mode = "sequential": each stage its own reviewers and mode
reviewers = ["rita@example.com"]
mode = "first"

[[policies.vip.stages]]
reviewers = ["sam@example.com", "lee@example.com", "kim@example.com"]
mode = "quorum"
required = 2

[calendars.support]
timezone = "Europe/Berlin"
days = ["mon", "tue", "wed", "thu", "fri"]
hours = "09:00-17:00"
holidays = ["2026-12-24", 2026-12-25]

[[routes]]                 # which policy a run gets, first match wins; no match: default
when = { "metadata.amount" = { gt = 500 } }
policy = "refunds"
[[routes]]
when = { "action.to_domain" = "vip.example.com" }
policy = "vip"
"""

SUPPORT = Calendar(name="support", timezone="Europe/Berlin", days=(0, 1, 2, 3, 4), start=time(9), end=time(17),
                   holidays=(date(2026, 12, 24), date(2026, 12, 25)))


def settings_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> tuple[Path, Settings]:
    config = tmp_path / "cs.toml"
    config.write_text(text)
    monkeypatch.setenv("COUNTERSIGN_CONFIG", str(config))
    return config, load_settings(data_dir=tmp_path / "data")


def refusal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> tuple[Path, list[str]]:
    config = tmp_path / "cs.toml"
    config.write_text(text)
    monkeypatch.setenv("COUNTERSIGN_CONFIG", str(config))
    with pytest.raises(SettingsError) as refused:
        load_settings(data_dir=tmp_path / "data")
    return config, refused.value.lines


def test_the_example_configures_what_it_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "cs.toml"
    config.write_text(EXAMPLE)
    monkeypatch.setenv("COUNTERSIGN_CONFIG", str(config))
    settings = load_settings(data_dir=tmp_path / "data")

    refunds = settings.configured_policy("refunds")
    assert refunds is not None
    assert refunds.mode is PolicyMode.QUORUM and refunds.required == 2 and refunds.reject is RejectRule.ANY
    assert refunds.reviewers == ("rita@example.com", "sam@example.com", "lee@example.com") and not refunds.anyone
    assert refunds.timers == Timers(
        remind_after=timedelta(hours=4), max_reminders=3, escalate_after=timedelta(days=1),
        escalate_to=("lead@example.com",), expire_after=timedelta(days=3), on_expiry=ExpiryOutcome.REJECT,
        calendar=SUPPORT)

    vip = settings.configured_policy("vip")
    assert vip is not None
    assert vip.mode is PolicyMode.SEQUENTIAL and vip.reject is RejectRule.MAJORITY
    assert vip.stages == (Stage(("rita@example.com",), PolicyMode.FIRST),
                          Stage(("sam@example.com", "lee@example.com", "kim@example.com"), PolicyMode.QUORUM, 2))
    # The policy's reviewers are the stages', in order.
    assert vip.reviewers == ("rita@example.com", "sam@example.com", "lee@example.com", "kim@example.com")
    assert vip.delegates == ("deputy@example.com",)
    assert vip.timers == Timers(expire_after=timedelta(hours=36), on_expiry=ExpiryOutcome.APPROVE)

    assert settings.policy_routes == (
        Route((Condition("metadata.amount", Op.GT, 500),), "refunds"),
        Route((Condition("action.to_domain", Op.EQ, "vip.example.com"),), "vip"))

    # The calendar travels with the stored policy, so a later edit never moves a deadline.
    stored = refunds.to_dict()
    assert stored["timers"]["calendar"] == {"name": "support", "timezone": "Europe/Berlin",
                                            "days": ["mon", "tue", "wed", "thu", "fri"], "hours": "09:00-17:00",
                                            "holidays": ["2026-12-24", "2026-12-25"]}
    assert type(refunds).from_dict(stored) == refunds


def test_defaults_and_old_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, settings = settings_from(tmp_path, monkeypatch, (
        '[policies.a]\nreviewers = ["rita@example.com"]\nmode = "first_responder"\n\n'
        '[policies.b]\nreviewers = ["rita@example.com", "sam@example.com"]\nmode = "all"\n\n'
        '[calendars.weekdays]\ntimezone = "UTC"\nhours = "08:30-16:30"\n'))
    a = settings.configured_policy("a")
    assert a.mode is PolicyMode.FIRST and a.timers == Timers() and a.required is None and a.stages == ()
    assert a.to_dict() == {"name": "a", "mode": "first", "reviewers": ["rita@example.com"],
                           "allow_self_approval": False, "teams_channel": None, "teams_chat": []}
    assert settings.configured_policy("b").mode is PolicyMode.ALL
    assert settings.configured_calendars == {"weekdays": Calendar(
        "weekdays", "UTC", (0, 1, 2, 3, 4), time(8, 30), time(16, 30))}


def test_to_policy_copies_the_calendar_it_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, settings = settings_from(tmp_path, monkeypatch, EXAMPLE)
    table = settings.policies["refunds"]
    other = Calendar("support", "America/New_York", (0,), time(10), time(12))
    assert table.to_policy("refunds", {"support": other}).timers.calendar == other
    with pytest.raises(ValueError, match="calendar 'support'"):
        table.to_policy("refunds", {})


# ---- every mistake, one line naming file, place and key -------------------------------------

R = '[policies.refunds]\nreviewers = ["rita@example.com", "sam@example.com"]\n'
SEQ = '[policies.refunds]\nmode = "sequential"\n'
STAGE = '[[policies.refunds.stages]]\nreviewers = ["rita@example.com"]\n'
CAL = '[calendars.support]\ntimezone = "Europe/Berlin"\nhours = "09:00-17:00"\n'
ROUTE = '[[routes]]\npolicy = "refunds"\nwhen = '
P = 'policy "refunds": '

CASES = [
    # policies: who decides and how votes count
    (R + 'mode = "quorom"', P + "key \"mode\" must be one of first, all, quorum, sequential (got 'quorom')"),
    (R + 'mode = "quorum"', P + 'missing key "required" (how many reviewers must approve under mode = "quorum")'),
    (R + 'mode = "quorum"\nrequired = 3', P + "key \"required\" is 3, more than the policy's 2 reviewers"),
    (R + 'mode = "quorum"\nrequired = 0', P + 'key "required" must be at least 1, not 0'),
    (R + 'mode = "quorum"\nrequired = "2"', P + "key \"required\" must be a whole number, not '2'"),
    (R + "required = 1", P + 'key "required" is only for mode = "quorum" (this policy decides first)'),
    ('[policies.refunds]\nreviewers = "anyone"\nmode = "all"',
     P + 'key "reviewers" is "anyone", which cannot be counted: mode = "all" needs the reviewers named'),
    ('[policies.refunds]\nreviewers = "anyone"\nmode = "quorum"\nrequired = 1', P + 'key "reviewers" is "anyone"'),
    ('[policies.refunds]\nreviewers = ["rita@example.com", "RITA@example.com"]\nmode = "all"',
     P + "key \"reviewers\" names 'RITA@example.com' twice ('rita@example.com'): one person, one vote"),
    (R + 'reject = "most"', P + "key \"reject\" must be one of any, majority (got 'most')"),
    (R + 'reject = "majority"', P + 'key "reject" is "majority", but under mode = "first" the first vote decides'),
    # the email reviewer channel
    (R + 'email_reviewers = ["lee@example.com"]',
     P + "key \"email_reviewers\" has 'lee@example.com', who is not among the reviewers"),
    (R + 'email_reviewers = ["rita"]', P + "key \"email_reviewers\" 'rita' is not an email address"),
    (R + 'email_reviewers = ["rita@example.com"]\nemail_confirm = "sms"',
     P + "key \"email_confirm\" must be one of none, code (got 'sms')"),
    (R + 'email_reviewers = ["rita@example.com"]\nemail_link_ttl = "2 days"', P + 'key "email_link_ttl"'),
    (R + 'email_link_ttl = "1d"', P + 'key "email_link_ttl" has no effect without email_reviewers or email_fallback'),
    ('[policies.refunds]\nreviewers = ["aad-1"]\nemail_fallback = true',
     P + 'key "email_fallback" has nobody to fall back to'),
    (R + 'email_fallback = "yes"', P + 'key "email_fallback"'),
    # sequential stages
    (SEQ, P + 'missing key "stages" (mode = "sequential" asks its stages in order'),
    (SEQ + 'reviewers = ["rita@example.com"]\n' + STAGE,
     P + 'key "reviewers" must be left out with mode = "sequential": each stage names its reviewers'),
    (R + STAGE, P + 'key "stages" is only for mode = "sequential" (this policy decides first)'),
    ('[policies.refunds]\nreviewers = "anyone"\n' + STAGE, P + 'key "stages" is only for mode = "sequential"'),
    (SEQ + STAGE + STAGE.replace('"]', '", "sam@example.com"]'),
     "policy \"refunds\", stage 2: key \"reviewers\" has 'rita@example.com', who is already in stage 1: one person "
     "would approve twice"),
    (SEQ + STAGE + 'mode = "sequential"\n',
     "policy \"refunds\", stage 1: key \"mode\" must be one of first, all, quorum (got 'sequential')"),
    (SEQ + STAGE + 'mode = "quorum"\nrequired = 2\n',
     "policy \"refunds\", stage 1: key \"required\" is 2, more than the stage's 1 reviewers"),
    (SEQ + STAGE + 'mode = "quorum"\n', 'policy "refunds", stage 1: missing key "required"'),
    (SEQ + STAGE + "required = 1\n", 'policy "refunds", stage 1: key "required" is only for mode = "quorum"'),
    (SEQ + STAGE + "reqired = 1\n", 'policy "refunds", stage 1: unknown key "reqired" (did you mean "required"?)'),
    (SEQ + '[[policies.refunds.stages]]\nreviewers = "anyone"\n',
     "policy \"refunds\", stage 1: key \"reviewers\" must be a list of identities (got 'anyone')"),
    (SEQ + '[[policies.refunds.stages]]\nmode = "first"\n', 'policy "refunds", stage 1: missing key "reviewers"'),
    # timers
    (R + 'remind_after = "4 hours"', P + "key \"remind_after\" is invalid: '4 hours' is not a duration: use 90s, "
                                         "15m, 4h, 2d, 1w or ISO 8601 (PT4H)"),
    (R + "remind_after = 4", P + 'key "remind_after" must be a duration such as "90s", "15m", "4h", "2d" or "PT4H", '
                                 "not 4"),
    (R + 'expire_after = "0s"', P + "key \"expire_after\" is invalid: '0s' must be longer than zero"),
    (R + 'expire_after = "P3X"', P + "key \"expire_after\" is invalid: 'P3X' is not an ISO 8601 duration"),
    (R + 'remind_after = "1h"\nmax_reminders = 0', P + 'key "max_reminders" must be at least 1, not 0'),
    (R + "max_reminders = 2", P + 'key "max_reminders" has no effect without remind_after'),
    (R + 'escalate_after = "1d"', P + 'missing key "escalate_to" (who is added, and notified, after escalate_after)'),
    (R + 'escalate_to = ["lead@example.com"]', P + 'missing key "escalate_after" (when escalate_to is added)'),
    (R + 'escalate_after = "1d"\nescalate_to = "lead@example.com"',
     P + 'key "escalate_to" must be a list of AAD object ids or emails, not str'),
    (R + 'escalate_after = "1d"\nescalate_to = []', P + 'key "escalate_to" is empty'),
    (R + 'on_expiry = "approve"', P + 'key "on_expiry" has no effect without expire_after'),
    (R + 'expire_after = "3d"\non_expiry = "accept"',
     P + "key \"on_expiry\" must be one of reject, approve (got 'accept')"),
    (R + 'expire_after = "3d"\nescalate_after = "3d"\nescalate_to = ["lead@example.com"]',
     P + 'key "escalate_after" (3d) is not shorter than expire_after (3d): it would never happen'),
    (R + 'business_hours = "support"\n' + CAL,
     P + 'key "business_hours" has no effect without remind_after, escalate_after or expire_after'),
    (R + 'expire_after = "3d"\nbusiness_hours = "suport"\n' + CAL,
     P + 'key "business_hours" names calendar "suport", which is not configured (known: support); add a '
         "[calendars.suport] table"),
    (R + 'delegates = "deputy@example.com"', P + 'key "delegates" must be a list of AAD object ids or emails'),
    (R + 'remind_afer = "4h"', P + 'unknown key "remind_afer" (did you mean "remind_after"?)'),
    (R + 'calendar = "support"', P + 'unknown key "calendar" (did you mean "business_hours"?)'),
    # calendars
    (CAL.replace("Europe/Berlin", "Europe/Berln"),
     "calendar \"support\": key \"timezone\" is 'Europe/Berln', which is not a known time zone (did you mean "
     '"Europe/Berlin"?)'),
    (CAL.replace("Europe/Berlin", "Mars/Olympus"), "calendar \"support\": key \"timezone\" is 'Mars/Olympus', which is "
                                                   "not a known time zone"),
    (CAL.replace("Europe/Berlin", "localtime"), 'calendar "support": key "timezone" must name a zone'),
    (CAL.replace("09:00-17:00", "17:00-09:00"),
     "calendar \"support\": key \"hours\" is '17:00-09:00': the opening must be before the closing, on the same day"),
    (CAL.replace("09:00-17:00", "9-17"),
     'calendar "support": key "hours" must be "HH:MM-HH:MM" in 24-hour time, such as "09:00-17:00" (got \'9-17\')'),
    (CAL.replace("09:00-17:00", "09:00-24:00"), 'calendar "support": key "hours" must be "HH:MM-HH:MM"'),
    (CAL + 'days = ["mon", "fry"]', "calendar \"support\": key \"days\" has 'fry': days are mon, tue, wed, thu, fri, "
                                    "sat, sun"),
    (CAL + "days = []", 'calendar "support": key "days" must be a non-empty list of days'),
    (CAL + 'holidays = ["2026-13-01"]', "calendar \"support\": key \"holidays\" has '2026-13-01', which is not a date "
                                        "(YYYY-MM-DD)"),
    (CAL + "holidays = [2026-12-24T10:00:00]", 'calendar "support": key "holidays" has datetime.datetime(2026, 12, 24'),
    ('[calendars.support]\ntimezone = "Europe/Berlin"', 'calendar "support": missing key "hours"'),
    (CAL + "holiday = []", 'calendar "support": unknown key "holiday" (did you mean "holidays"?)'),
    # routes
    (R + ROUTE + '{ "metadata.amount" = { gtt = 500 } }',
     'route 1: key "when."metadata.amount".gtt" is not an operator (did you mean "gt"?)'),
    (R + ROUTE + '{ "metadata.amount" = { gt = "500" } }',
     "route 1: key \"when.\"metadata.amount\".gt\" must be a number, not '500'"),
    (R + ROUTE + '{ "action.to_domian" = "vip.example.com" }',
     'route 1: key "when."action.to_domian"" is not a field routes look at (did you mean "action.to_domain"?)'),
    (R + ROUTE + '{ "ticket.priority" = "high" }',
     'route 1: key "when."ticket.priority"" is not a field routes look at (known: metadata.<key>, action.to_domain, '
     "action.to, requested_by, customer.email, customer.domain)"),
    (R + ROUTE + "{ metadata.amount = { gt = 500 } }",
     'route 1: key "when.metadata" is not a field: write the field as one quoted key, e.g. "metadata.amount" = ...'),
    (R + ROUTE + '{ "action.to_domain" = { gt = 5 } }',
     'route 1: key "when."action.to_domain".gt" compares numbers, and action.to_domain is text: use eq, ne or in'),
    (R + ROUTE + '{ "action.to_domain" = ["vip.example.com"] }',
     'route 1: key "when."action.to_domain"" is a list: write { in = [...] } to match any of them'),
    (R + ROUTE + '{ "action.to_domain" = "@vip.example.com" }',
     "route 1: key \"when.\"action.to_domain\"\" must be a domain without \"@\" (got '@vip.example.com')"),
    (R + ROUTE + '{ "metadata.tier" = { in = [] } }',
     'route 1: key "when."metadata.tier".in" must be a non-empty list of values, not []'),
    (R + ROUTE + '{ "metadata.tier" = {} }',
     'route 1: key "when."metadata.tier"" has no operator (gt, gte, lt, lte, eq, ne, in)'),
    (R + ROUTE + "{}", 'route 1: key "when" has no condition'),
    (R + '[[routes]]\npolicy = "refunds"', 'route 1: missing key "when"'),
    (R + ROUTE + '{ "requested_by" = "ops@example.com" }\nname = "x"',
     'route 1: unknown key "name" (known: when, policy)'),
    (R + ROUTE + '{ "metadata.amount" = 1 }\n' + ROUTE.replace("refunds", "refnds") + '{ "metadata.amount" = 2 }',
     'route 2: key "policy" names policy "refnds", which is not configured (known: default, refunds)'),
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[f"{i:02}-{c[1][:50]}" for i, c in enumerate(CASES)])
def test_every_mistake_is_one_line_naming_file_place_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, expected: str
) -> None:
    config, lines = refusal(tmp_path, monkeypatch, text + "\n")
    assert [line for line in lines if line.startswith(f"{config}: {expected}")], lines
    assert all(line.startswith(f"{config}: ") for line in lines), lines


def test_several_mistakes_are_each_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, lines = refusal(tmp_path, monkeypatch, (
        '[policies.refunds]\nreviewers = ["rita@example.com"]\nmode = "quorum"\nrequired = 2\n'
        "max_reminders = 2\n\n" + CAL.replace("09:00-17:00", "17:00-09:00")))
    assert lines == [
        f"{config}: policy \"refunds\": key \"required\" is 2, more than the policy's 1 reviewers",
        f'{config}: policy "refunds": key "max_reminders" has no effect without remind_after',
        f"{config}: calendar \"support\": key \"hours\" is '17:00-09:00': the opening must be before the closing, "
        "on the same day",
    ]


def test_routes_from_the_environment_are_named_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COUNTERSIGN_CONFIG", raising=False)
    monkeypatch.setenv("COUNTERSIGN_ROUTES", '[{"when": {"metadata.amount": {"gt": 1}}, "policy": "nowhere"}]')
    with pytest.raises(SettingsError) as refused:
        load_settings(data_dir=tmp_path / "data")
    assert refused.value.lines == [
        'COUNTERSIGN_ROUTES: route 1: key "policy" names policy "nowhere", which is not configured (known: default)']


def test_a_route_may_name_the_embedded_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, settings = settings_from(tmp_path, monkeypatch, ROUTE.replace("refunds", "default") + '{ "metadata.x" = 1 }\n')
    assert settings.policy_routes == (Route((Condition("metadata.x", Op.EQ, 1),), "default"),)


def test_serve_refuses_a_bad_settings_file_naming_each_mistake(tmp_path: Path) -> None:
    config = tmp_path / "cs.toml"
    config.write_text(EXAMPLE.replace('required = 2               # quorum only', "required = 4")
                      .replace('"Europe/Berlin"', '"Europe/Berln"')
                      .replace('policy = "vip"', 'policy = "vips"'))
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("COUNTERSIGN_")}
    env.update({"COUNTERSIGN_CONFIG": str(config), "COUNTERSIGN_DATA_DIR": str(tmp_path / "data"),
                "COUNTERSIGN_API_TOKEN": "x" * 20, "COUNTERSIGN_PORT": "0"})
    result = subprocess.run([sys.executable, "-m", "service", "serve"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    # Field errors come first; references between tables are checked once every table is valid.
    for expected in ("policy \"refunds\": key \"required\" is 4, more than the policy's 3 reviewers",
                     "calendar \"support\": key \"timezone\" is 'Europe/Berln', which is not a known time zone"):
        assert f"countersign: {config}: {expected}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was created

    config.write_text(EXAMPLE.replace('policy = "vip"', 'policy = "vips"'))
    result = subprocess.run([sys.executable, "-m", "service", "serve"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    assert (f'countersign: {config}: route 2: key "policy" names policy "vips", which is not configured (known: '
            "default, refunds, vip)") in result.stderr, result.stderr
    assert not (tmp_path / "data").exists()
