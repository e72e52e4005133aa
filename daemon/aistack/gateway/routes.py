"""Every route of the gateway, declared once.

`app.add_routes` mounts each one, its handler wrapped by `gate.gated` with its admission;
access control takes the endpoints an API key may name from here (`KEYED_ENDPOINTS`);
`/openapi.json` documents each from the same declaration: its request body, its answer,
and what its admission may refuse. A route added here is served, guarded and documented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from aistack.gateway import learn, operational, search, solutions
from aistack.gateway.gate import API, API_WITH_BODY, OPEN, OPERATIONAL, Admission, Handler
from aistack.gateway.requests import LearnRequest, SearchRequest, SolutionsQuery
from aistack.gateway.schemas import (
    LearnAnswer,
    ReadyAnswer,
    SearchAnswer,
    SolutionsPage,
    StatusAnswer,
    StoredSolution,
)


@dataclass(frozen=True, slots=True)
class Reply:
    """A route's answer when it succeeds. `shape` is a type from `schemas` for JSON, `str`
    for text, `bytes` for raw bytes: pydantic writes its JSON schema."""

    status: int
    description: str
    shape: Any
    media_type: str = "application/json"


@dataclass(frozen=True, slots=True)
class Route:
    method: Literal["GET", "POST"]
    path: str
    handler: Handler
    admission: Admission
    reply: Reply
    summary: str = ""
    body: type[BaseModel] | None = None  # the JSON body's model
    query: type[BaseModel] | None = None  # the query parameters' model
    # Refusals of the handler's own, besides its admission's: (status, why).
    refusals: tuple[tuple[int, str], ...] = ()


ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/vector/search",
        search.search,
        API_WITH_BODY,
        Reply(200, "One page of results", SearchAnswer),
        summary="Semantic search in one collection, paginated",
        body=SearchRequest,
    ),
    Route(
        "POST",
        "/hybrid/learn",
        learn.learn,
        API_WITH_BODY,
        Reply(201, "Stored (or merged into `merged_into`)", LearnAnswer),
        summary="Store a solved issue, or fold it into a near-copy already stored",
        body=LearnRequest,
    ),
    Route(
        "GET",
        "/hybrid/solutions",
        solutions.listing,
        API,
        Reply(
            200,
            "One page of stored solutions; `next` is the following page's cursor",
            SolutionsPage,
        ),
        summary="The learning store, by value or recency, paginated with an opaque cursor",
        query=SolutionsQuery,
        refusals=(
            (403, "the caller may not read solved_issues"),
            (422, "bad query parameters, or a cursor this store did not issue for this order"),
        ),
    ),
    Route(
        "GET",
        "/hybrid/solutions/{id}",
        solutions.solution,
        API,
        Reply(200, "The stored solution", StoredSolution),
        summary="One stored solution",
        refusals=(
            (403, "the caller may not read solved_issues"),
            (404, "no stored solution has this id (never stored, or removed)"),
            (422, "the id is not an integer from 1 to 2^63-1"),
        ),
    ),
    Route("GET", "/openapi.json", operational.openapi, API, Reply(200, "This document", dict)),
    Route(
        "GET",
        "/healthz",
        operational.healthz,
        OPEN,
        Reply(200, "The process runs", StatusAnswer),
    ),
    Route(
        "GET",
        "/readyz",
        operational.readyz,
        OPERATIONAL,
        Reply(200, "PostgreSQL, Qdrant and the embedder answer", ReadyAnswer),
        refusals=((503, "a dependency is down; see Retry-After"),),
    ),
    Route(
        "GET",
        "/metrics",
        operational.metrics,
        OPERATIONAL,
        Reply(200, "Prometheus text format", str, "text/plain"),
    ),
    Route(
        "GET",
        "/.well-known/acme-challenge/{token}",
        operational.acme_challenge,
        OPEN,
        Reply(200, "The key authorization", bytes, "application/octet-stream"),
        summary="HTTP-01 key authorizations, when gateway.acme_webroot is set",
        refusals=((404, "no such token (or no acme_webroot configured)"),),
    ),
)

# What an API key's `endpoints` may name: every route a key decides.
KEYED_ENDPOINTS = frozenset(route.path for route in ROUTES if route.admission.keyed)
