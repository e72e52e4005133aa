"""The OpenAPI 3.1 document of the gateway, generated from the same pydantic models that
validate requests, so the document cannot drift from what the gateway accepts."""

from __future__ import annotations

from typing import Any

from aistack import __version__
from aistack.gateway.requests import LearnRequest, SearchRequest

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["detail", "errors"],
    "properties": {
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["loc", "type", "msg"],
                "properties": {
                    "loc": {"type": "string"},
                    "type": {"type": "string"},
                    "msg": {"type": "string"},
                },
            },
        },
    },
}

SEARCH_ANSWER: dict[str, Any] = {
    "type": "object",
    "required": ["results", "total", "offset", "limit", "has_more"],
    "properties": {
        "results": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "score", "payload"],
                "properties": {
                    "id": {"oneOf": [{"type": "integer"}, {"type": "string"}]},
                    "score": {"type": "number"},
                    "payload": {"type": "object"},
                },
            },
        },
        "total": {"type": "integer", "minimum": 0},
        "offset": {"type": "integer", "minimum": 0},
        "limit": {"type": "integer", "minimum": 1},
        "has_more": {"type": "boolean"},
    },
}

ERROR_STATUSES = {
    "401": "API keys are configured and the request has no valid key",
    "403": "the API key may not use this endpoint",
    "408": "the body did not arrive in time",
    "413": "body over max_body_bytes",
    "415": "not application/json",
    "422": "validation failed",
    "429": "rate limited; see Retry-After",
    "503": "a dependency is down; see Retry-After",
}


def _errors(*statuses: str) -> dict[str, Any]:
    return {
        status: {
            "description": ERROR_STATUSES[status],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for status in statuses
    }


def _plain(description: str) -> dict[str, Any]:
    return {"responses": {"200": {"description": description}}}


def build_openapi(search_model: type[SearchRequest]) -> dict[str, Any]:
    body_errors = ("401", "403", "408", "413", "415", "422", "429", "503")
    return {
        "openapi": "3.1.0",
        "info": {"title": "aistack gateway", "version": __version__},
        "paths": {
            "/vector/search": {
                "post": {
                    "summary": "Semantic search in one collection, paginated",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/SearchRequest"}
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "One page of results",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/SearchAnswer"}
                                }
                            },
                        },
                        **_errors(*body_errors),
                    },
                }
            },
            "/healthz": {"get": _plain("The process runs")},
            "/readyz": {
                "get": {
                    "responses": {
                        "200": {"description": "PostgreSQL, Qdrant and the embedder answer"},
                        **_errors("401", "503"),
                    }
                }
            },
            "/metrics": {"get": _plain("Prometheus text format")},
            "/openapi.json": {"get": _plain("This document")},
        },
        "components": {
            "schemas": {
                "SearchRequest": search_model.model_json_schema(),
                "LearnRequest": LearnRequest.model_json_schema(),
                "SearchAnswer": SEARCH_ANSWER,
                "Error": ERROR_SCHEMA,
            }
        },
    }
