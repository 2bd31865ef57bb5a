"""``GET /admin/openapi.json``: the admin API's OpenAPI 3.1 document, built from the endpoint
table and the pydantic models the handlers validate and answer with."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from relay import __version__
from relay.admin.api import Endpoint
from relay.admin.params import ID_PATTERN

_REF = "#/components/schemas/{model}"
_STATUS_TEXT = {
    200: "OK",
    400: "Bad request: the reason and every problem",
    401: "Missing or wrong admin token",
    404: "No such row, destination or endpoint",
    409: "Not in a state this operation applies to",
    422: "The rules have problems; the last good rules stay in force",
}


def _path_param(name: str, what: str) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "minLength": 1}
    if what in ("event", "delivery"):
        schema = {"type": "string", "pattern": ID_PATTERN}
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _non_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema: an optional field is simply left out, never sent as null."""
    branches = schema.get("anyOf")
    if branches:
        kept = [b for b in branches if b.get("type") != "null"]
        if len(kept) == 1:
            merged = {k: v for k, v in schema.items() if k != "anyOf"}
            merged.update(kept[0])
            if merged.get("default", 0) is None:
                del merged["default"]
            return merged
    return schema


def _query_params(model: type[BaseModel]) -> list[dict[str, Any]]:
    props = model.model_json_schema(ref_template=_REF)["properties"]
    params = []
    for name, prop in props.items():
        schema = _non_null(prop)
        description = schema.pop("description", None)
        schema.pop("title", None)
        param: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": schema}
        if description:
            param["description"] = description
        params.append(param)
    return params


def document(endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    models: list[tuple[type[BaseModel], Any]] = []
    for e in endpoints:
        models += [(m, "serialization") for m in e.answers.values()]
        if e.body is not None:
            models.append((e.body, "validation"))
    keys, definitions = models_json_schema(list(dict.fromkeys(models)), ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for e in endpoints:
        operation: dict[str, Any] = {
            "operationId": e.handler.__name__,
            "summary": e.summary,
            "responses": {
                str(code): {
                    "description": _STATUS_TEXT.get(code, ""),
                    "content": {"application/json": {"schema": keys[(model, "serialization")]}},
                }
                for code, model in e.answers.items()
            },
        }
        if e.description:
            operation["description"] = e.description
        params = [_path_param(n, what) for n, what in e.params.items()]
        if e.query is not None:
            params += _query_params(e.query)
        if params:
            operation["parameters"] = params
        if e.body is not None:
            operation["requestBody"] = {
                "required": False,
                "content": {"application/json": {"schema": keys[(e.body, "validation")]}},
            }
        paths.setdefault("/admin" + e.path, {})[e.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "relay admin API",
            "version": __version__,
            "description": "Inspect events and deliveries, replay, re-route, test "
            "destinations, reload the rules. Every call needs Authorization: Bearer "
            "<RELAY_ADMIN_TOKEN>.",
        },
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
