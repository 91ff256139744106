"""The OpenAPI 3.1 document, built from the route table and the pydantic models."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from .. import __version__
from .errors import TITLES
from .schemas import Problem
from .routes import ROUTES, Route

REF = "#/components/schemas/{model}"


def _schema(model: type[BaseModel], components: dict[str, Any], mode: str) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=REF, mode=mode)  # type: ignore[arg-type]
    for name, definition in schema.pop("$defs", {}).items():
        components[name] = definition
    components[model.__name__] = schema
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
        ok["content"] = {"application/json": {"schema": _schema(route.ok_model, components, "serialization")}}
    responses: dict[str, Any] = {str(route.ok_status): ok}
    for status in route.errors:
        if status == 503 and route.ok_model is not None:
            responses["503"] = {"description": TITLES[503], "content": ok["content"]}
            continue
        responses[str(status)] = {"$ref": f"#/components/responses/Problem{status}"}
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
    return operation


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
                f"Problem{s}": {"description": TITLES.get(s, "Error"),
                                "content": {"application/problem+json": {"schema": {"$ref": REF.format(model="Problem")}}}}
                for s in statuses
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "COUNTERSIGN_API_TOKEN"},
                "webhookSignature": {
                    "type": "apiKey", "in": "header", "name": "X-Countersign-Signature",
                    "description": "t=<unix seconds>,v1=<hex HMAC-SHA256 of '<t>.<raw body>' with COUNTERSIGN_WEBHOOK_SECRET>",
                },
            },
        },
        "security": [{"bearer": []}, {"webhookSignature": []}],
    }


async def openapi_handler(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())
