"""The OpenAPI 3.1 document of the gateway, written from the route table (`routes`) and
the pydantic schemas of the same models and types that validate requests and shape
answers, so the document cannot drift from what the gateway accepts and answers."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, TypeAdapter
from typing_extensions import is_typeddict

from aistack import __version__
from aistack.config import ValidationConfig
from aistack.gateway.requests import (
    SearchRequest,
    SolutionsQuery,
    search_request_model,
    solutions_query_model,
)
from aistack.gateway.routes import ROUTES, Reply, Route
from aistack.gateway.schemas import ErrorAnswer

COMPONENTS = "#/components/schemas/{model}"
PATH_PARAMETER = re.compile(r"\{(\w+)\}")

# Why each admission refuses (gate.Admission.refusals), in the document's words.
REFUSED_BECAUSE = {
    401: "API keys are configured and the request has no valid key",
    403: "the API key may not use this endpoint",
    408: "the body did not arrive in time",
    413: "body over max_body_bytes",
    415: "not application/json",
    422: "validation failed",
    429: "rate limited; see Retry-After",
    503: "a dependency is down; see Retry-After",
}
# Answers that tell the client when to come back carry Retry-After (seconds).
RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before retrying",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
RETRY_STATUSES = frozenset({429, 503})


def build_openapi(config: ValidationConfig, routes: tuple[Route, ...] = ROUTES) -> dict[str, Any]:
    """The document, with the request models as `config` configures them (its limits;
    never its collection names)."""
    components: dict[str, Any] = {}
    bodies: dict[type[BaseModel], type[BaseModel]] = {
        SearchRequest: search_request_model(config),
        SolutionsQuery: solutions_query_model(config),
    }
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = operation(
            route, components, bodies
        )
    return {
        "openapi": "3.1.0",
        "info": {"title": "aistack gateway", "version": __version__},
        "paths": paths,
        "components": {"schemas": components},
    }


def operation(
    route: Route,
    components: dict[str, Any],
    bodies: dict[type[BaseModel], type[BaseModel]],
) -> dict[str, Any]:
    answers = {str(route.reply.status): success(route.reply, components)}
    error = component(ErrorAnswer, components)
    refusals = {status: REFUSED_BECAUSE[status] for status in route.admission.refusals()}
    refusals.update(route.refusals)
    for status in sorted(refusals):
        answers[str(status)] = refusal(refusals[status], status, error)
    document: dict[str, Any] = {}
    if route.summary:
        document["summary"] = route.summary
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in PATH_PARAMETER.findall(route.path)
    ]
    if route.query is not None:
        parameters += query_parameters(bodies.get(route.query, route.query))
    if parameters:
        document["parameters"] = parameters
    if route.body is not None:
        model = bodies.get(route.body, route.body)
        schema = component(model, components, name=route.body.__name__)
        content = {"application/json": {"schema": schema}}
        document["requestBody"] = {"required": True, "content": content}
    document["responses"] = answers
    return document


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    required = set(schema.get("required", ()))
    parameters = []
    for name, field in schema["properties"].items():
        parameter: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
        if "description" in field:
            parameter["description"] = field.pop("description")
        field.pop("title", None)
        parameter["schema"] = field
        parameters.append(parameter)
    return parameters


def success(reply: Reply, components: dict[str, Any]) -> dict[str, Any]:
    # The answers' own shapes are named components; `dict`, `str` and `bytes` are inline.
    if is_typeddict(reply.shape):
        schema: dict[str, Any] = component(reply.shape, components)
    else:
        schema = TypeAdapter(reply.shape).json_schema()
    return {"description": reply.description, "content": {reply.media_type: {"schema": schema}}}


def refusal(description: str, status: int, error: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": error}},
    }
    if status in RETRY_STATUSES:
        answer["headers"] = RETRY_AFTER
    return answer


def component(shape: Any, components: dict[str, Any], name: str | None = None) -> dict[str, str]:
    """A reference to `shape`'s schema under components, which it (and what it nests) joins."""
    name = name or shape.__name__
    if name not in components:
        schema = TypeAdapter(shape).json_schema(ref_template=COMPONENTS)
        components.update(schema.pop("$defs", {}))
        components[name] = schema
    return {"$ref": COMPONENTS.format(model=name)}
