"""The OpenAPI 3.1 document, built from the route table and the pydantic models."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode

from .. import __version__
from .errors import PROBLEM_JSON, TITLES
from .routes import ROUTES, Route
from .schemas import Problem

REF = "#/components/schemas/{model}"
RESPONSE_HEADERS: dict[str, Any] = {
    "Location": {"description": "The run's URL", "schema": {"type": "string"}},
    "Idempotent-Replayed": {"description": "`true` when the Idempotency-Key matched an earlier identical request; "
                                           "the answer is that request's run", "schema": {"type": "string"}},
}


def _schema(model: type[BaseModel], components: dict[str, Any], mode: JsonSchemaMode) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=REF, mode=mode)
    for name, definition in [*schema.pop("$defs", {}).items(), (model.__name__, schema)]:
        # One name, one schema: a model whose request and answer shapes differ needs two names.
        if components.setdefault(name, definition) != definition:
            raise ValueError(f"two different schemas are both named {name!r} in the OpenAPI document")
    return {"$ref": REF.format(model=model.__name__)}


def _operation(route: Route, components: dict[str, Any]) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", route.path)
    ]
    params += [{"name": q.name, "in": "query", "required": False, "description": q.description, "schema": q.schema}
               for q in route.query]
    params += [{"name": h, "in": "header", "required": False, "schema": {"type": "string", "maxLength": 255}}
               for h in route.headers]
    ok: dict[str, Any] = {"description": route.summary}
    if route.ok_model is not None:
        ok["content"] = {route.ok_media_type: {"schema": _schema(route.ok_model, components, "serialization")}}
    elif route.ok_schema is not None:
        ok["content"] = {route.ok_media_type: {"schema": route.ok_schema}}
    if route.ok_headers:
        ok["headers"] = {h: RESPONSE_HEADERS[h] for h in route.ok_headers}
    responses: dict[str, Any] = {str(route.ok_status): ok}
    for status in route.errors:
        if status == 503 and route.ok_model is not None:
            responses["503"] = {"description": TITLES[503], "content": ok["content"]}
            continue
        responses[str(status)] = {"$ref": f"#/components/responses/Problem{status}"}
    responses["default"] = {"$ref": "#/components/responses/Problem"}
    operation: dict[str, Any] = {
        "summary": route.summary,
        "operationId": route.handler.__name__,
        "responses": responses,
    }
    if params:
        operation["parameters"] = params
    if route.body is not None:
        operation["requestBody"] = {
            "required": not route.body_optional,
            "content": {"application/json": {"schema": _schema(route.body, components, "validation")}},
        }
    if not route.authenticated:
        operation["security"] = []
    if route.scopes:
        needed = " or ".join(f"`{s.value}`" for s in route.scopes)
        operation["description"] = f"Needs a credential with the scope {needed}."
        operation["x-required-scopes"] = [s.value for s in route.scopes]
    return operation


def _problem_response(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {PROBLEM_JSON: {"schema": {"$ref": REF.format(model="Problem")}}}}


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    components: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, components)
    _schema(Problem, components, "serialization")
    statuses = sorted({s for r in ROUTES for s in r.errors if s != 503} | {500})
    return {
        "openapi": "3.1.0",
        "info": {"title": "Countersign ops API", "version": __version__,
                 "description": "Trigger gated agent runs, decide on approvals, follow runs and their jobs."},
        "paths": paths,
        "components": {
            "schemas": components,
            "responses": {
                **{f"Problem{s}": _problem_response(TITLES.get(s, "Error")) for s in statuses},
                "Problem": _problem_response("Any other error (RFC 9457 problem details)"),
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "An API key (csk_..., `countersign keys create`) or COUNTERSIGN_API_TOKEN"},
                "webhookSignature": {
                    "type": "apiKey", "in": "header", "name": "X-Countersign-Signature",
                    "description": "t=<unix seconds>,v2=<hex HMAC-SHA256 of '<t>\\n<METHOD>\\n<path>\\n<query>\\n"
                                   "<raw body>' with COUNTERSIGN_WEBHOOK_SECRET>; each signature is accepted once. "
                                   "Grants runs:create and runs:read only.",
                },
            },
        },
        "security": [{"bearer": []}, {"webhookSignature": []}],
    }


async def openapi_handler(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())
