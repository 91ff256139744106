"""Schemathesis drives every operation of `GET /api/openapi.json` against the running
service over real HTTP, with both credentials (the API token and a signed webhook request),
on generated valid and invalid input: no answer is a 5xx, and every answer conforms to the
document (its status is declared for that operation, its content type and body match what
the document says for that status, and its declared headers are present and valid).

The examples are bounded and derandomized (the same cases on every run), so the test
takes under a minute and a failure reproduces; SCHEMATHESIS_SCALE=10 searches harder.
"""

from __future__ import annotations

import asyncio
import copy
import os
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Err
from schemathesis.core.transport import Response
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.signing import HEADER

from .conftest import API_TOKEN, Service, signed

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
# Examples per operation, credential and generation mode (hypothesis' max_examples);
# SCHEMATHESIS_SCALE=10 searches ten times harder (and takes ten times as long).
SCALE = float(os.environ.get("SCHEMATHESIS_SCALE", "1"))
EXAMPLES = {GenerationMode.POSITIVE: round(12 * SCALE), GenerationMode.NEGATIVE: round(8 * SCALE)}


# --- The credentials. This is the one place that knows how a request is authenticated:
# when the scheme changes (new signature versions, scoped keys), change these two lines.

def authenticate(request: requests.PreparedRequest, credential: str) -> None:
    """Give the request `credential`'s authentication, and only that, exactly as it will be sent."""
    # Schemathesis also generates values for the document's security schemes: drop them.
    for header in ("Authorization", HEADER):
        request.headers.pop(header, None)
    if credential == "token":
        request.headers["Authorization"] = f"Bearer {API_TOKEN}"
    elif credential == "webhook":  # signs the final method, path, query and body bytes
        body = request.body or b""
        request.headers.update(signed(request.method or "GET", request.path_url,
                                      body.encode() if isinstance(body, str) else body))
    else:
        raise ValueError(f"unknown credential {credential!r}")


CREDENTIALS = ("token", "webhook")


class _Auth(requests.auth.AuthBase):
    """requests calls this after the body is serialized: the signature covers the real bytes."""

    def __init__(self, credential: str) -> None:
        self.credential = credential

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        authenticate(request, self.credential)
        return request


# ---

def status_declared(ctx: Any, response: Response, case: Case) -> bool | None:
    """Stricter than status_code_conformance, which a `default` response always satisfies:
    the status must be listed for the operation itself (a 5xx never is)."""
    declared = set(case.operation.definition.raw.get("responses", {}))
    if str(response.status_code) not in declared:
        raise AssertionError(f"{case.operation.label} answered {response.status_code}, which its responses "
                             f"do not list ({', '.join(sorted(declared))})")
    return None


CHECKS: list[Callable[..., bool | None]] = [
    not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
    response_headers_conformance, status_declared,
]


def fuzz(base_url: str, document: dict[str, Any], only: set[str] | None = None) -> list[str]:
    """Run every operation (or those labelled in `only`) under both credentials; return the
    failures (empty: all conform) and, last, how many requests were sent."""
    schema = schemathesis.openapi.from_dict(document)
    failures: list[str] = []
    sent = 0
    with requests.Session() as http:
        for result in schema.get_all_operations():
            if isinstance(result, Err):  # an operation schemathesis cannot read is a finding too
                failures.append(f"the document has an unusable operation: {result.err()}")
                continue
            operation = result.ok()
            if only is not None and operation.label not in only:
                continue
            raw = operation.definition.raw
            public = raw.get("security") == []
            # An operation that takes no input has no invalid input to generate.
            modes = EXAMPLES if raw.get("parameters") or raw.get("requestBody") else {GenerationMode.POSITIVE: 1}
            for credential in CREDENTIALS[:1] if public else CREDENTIALS:
                for mode, examples in modes.items():
                    try:
                        sent += _examples(http, base_url, operation, credential, mode, examples)
                    except (FailureGroup, Exception) as exc:  # one report per operation, credential and mode
                        failures.append(f"{operation.label} [{credential}, {mode.value}]: {exc}")
    failures.append(f"(sent {sent} requests)")
    return failures


def _examples(http: requests.Session, base_url: str, operation: APIOperation, credential: str,
              mode: GenerationMode, examples: int) -> int:
    """Send up to `examples` generated cases; raise on the first answer that does not conform."""
    sent = 0

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
              report_multiple_bugs=False)
    @given(case=operation.as_strategy(generation_mode=mode))
    def one(case: Case) -> None:
        nonlocal sent
        sent += 1
        response = case.call(base_url=base_url, session=http, auth=_Auth(credential), timeout=10,
                             allow_redirects=False)
        case.validate_response(response, checks=CHECKS)

    one()
    return sent


@SQLITE_ONLY
async def test_every_operation_conforms_under_both_credentials(service: Service) -> None:
    status, document, _ = await service.request("GET", "/api/openapi.json", auth="none")
    assert status == 200
    started = time.monotonic()
    # Schemathesis is synchronous (requests): it runs in a thread while this loop serves it.
    *failures, sent = await asyncio.to_thread(fuzz, service.url, document)
    elapsed = time.monotonic() - started
    print(f"schemathesis: {sent} in {elapsed:.1f} s")
    assert not failures, "\n\n".join(failures)


@SQLITE_ONLY
async def test_the_checks_catch_an_answer_the_document_does_not_describe(service: Service) -> None:
    """The harness itself: against a document that lies about two operations, both are reported."""
    status, document, _ = await service.request("GET", "/api/openapi.json", auth="none")
    assert status == 200
    lying = copy.deepcopy(document)
    page = lying["paths"]["/api/runs"]["get"]["responses"]["200"]["content"]["application/json"]
    page["schema"] = {"type": "object", "required": ["no_such_property"]}
    del lying["paths"]["/api/runs/{run_id}"]["get"]["responses"]["404"]
    *failures, _ = await asyncio.to_thread(fuzz, service.url, lying, {"GET /api/runs", "GET /api/runs/{run_id}"})
    reported = "\n".join(failures)
    assert "GET /api/runs [token, positive]" in reported and "no_such_property" in reported, reported
    assert "GET /api/runs/{run_id} [token, positive]" in reported and "answered 404" in reported, reported
