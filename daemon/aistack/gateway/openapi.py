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

LEARN_ANSWER: dict[str, Any] = {
    "type": "object",
    "required": ["id"],
    "properties": {
        "id": {"type": "integer"},
        "merged_into": {"type": "integer"},
    },
}

STATUS_ANSWER: dict[str, Any] = {
    "type": "object",
    "required": ["status"],
    "properties": {"status": {"type": "string"}},
}

READY_ANSWER: dict[str, Any] = {
    "type": "object",
    "required": ["status", "checks"],
    "properties": {
        "status": {"const": "ready"},
        "checks": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}

ERROR_STATUSES = {
    "401": "API keys are configured and the request has no valid key",
    "403": "the API key may not use this endpoint",
    "404": "no such token (or no acme_webroot configured)",
    "408": "the body did not arrive in time",
    "413": "body over max_body_bytes",
    "415": "not application/json",
    "422": "validation failed",
    "429": "rate limited; see Retry-After",
    "503": "a dependency is down; see Retry-After",
}

# Answers that tell the client when to come back carry Retry-After (seconds).
RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before retrying",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
RETRY_STATUSES = frozenset({"429", "503"})

# What every endpoint may answer when `api_keys_file` is set (all but /healthz).
KEYED = ("401", "403")
# What the rate-limited endpoints (the API and this document) may answer besides.
LIMITED = (*KEYED, "429", "503")
# What the body-reading endpoints may answer besides.
BODY_ERRORS = ("408", "413", "415", "422", *LIMITED)


def _errors(*statuses: str) -> dict[str, Any]:
    answers: dict[str, Any] = {}
    for status in statuses:
        answers[status] = {
            "description": ERROR_STATUSES[status],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        if status in RETRY_STATUSES:
            answers[status]["headers"] = RETRY_AFTER
    return answers


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


def build_openapi(search_model: type[SearchRequest]) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "aistack gateway", "version": __version__},
        "paths": {
            "/vector/search": {
                "post": {
                    "summary": "Semantic search in one collection, paginated",
                    "requestBody": _body("SearchRequest"),
                    "responses": {
                        "200": _json("One page of results", _ref("SearchAnswer")),
                        **_errors(*BODY_ERRORS),
                    },
                }
            },
            "/hybrid/learn": {
                "post": {
                    "summary": "Store a solved issue, or fold it into a near-copy already stored",
                    "requestBody": _body("LearnRequest"),
                    "responses": {
                        "201": _json("Stored (or merged into `merged_into`)", _ref("LearnAnswer")),
                        **_errors(*BODY_ERRORS),
                    },
                }
            },
            "/healthz": {"get": {"responses": {"200": _json("The process runs", STATUS_ANSWER)}}},
            "/readyz": {
                "get": {
                    "responses": {
                        "200": _json("PostgreSQL, Qdrant and the embedder answer", READY_ANSWER),
                        **_errors(*KEYED, "503"),
                    }
                }
            },
            "/metrics": {
                "get": {
                    "responses": {
                        "200": {
                            "description": "Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **_errors(*KEYED),
                    }
                }
            },
            "/openapi.json": {
                "get": {
                    "responses": {
                        "200": _json("This document", {"type": "object"}),
                        **_errors(*LIMITED),
                    }
                }
            },
            "/.well-known/acme-challenge/{token}": {
                "get": {
                    "summary": "HTTP-01 key authorizations, when gateway.acme_webroot is set",
                    "parameters": [
                        {
                            "name": "token",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "The key authorization",
                            "content": {
                                "application/octet-stream": {
                                    "schema": {"type": "string", "format": "binary"}
                                }
                            },
                        },
                        **_errors("404"),
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "SearchRequest": search_model.model_json_schema(),
                "LearnRequest": LearnRequest.model_json_schema(),
                "SearchAnswer": SEARCH_ANSWER,
                "LearnAnswer": LEARN_ANSWER,
                "Error": ERROR_SCHEMA,
            }
        },
    }
