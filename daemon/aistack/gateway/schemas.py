"""The JSON shapes the gateway answers with, declared once.

Handlers build their answers as these types, so mypy checks every place an answer is
made, and `/openapi.json` documents them through pydantic's JSON schema of the same
types, so the document cannot drift from the answers. They are TypedDicts, not pydantic
models: an answer is a plain dict at run time, with no validation on the way out (a
refusal must stay cheap: see gate.py), and pydantic still reads their fields and bounds.
(pydantic needs typing_extensions' TypedDict before Python 3.12.)
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from pydantic import Field
from typing_extensions import TypedDict


class ErrorItem(TypedDict):
    loc: str
    type: str
    msg: str


class ErrorAnswer(TypedDict):
    """Every refusal and error: one line of `detail`, one item per failing rule."""

    detail: str
    errors: list[ErrorItem]


class SearchHit(TypedDict):
    id: int | str
    score: float
    # What the point carries; for `solved_issues`, the stored row (a `StoredSolution`
    # without its id), read from PostgreSQL.
    payload: dict[str, Any]


class SearchAnswer(TypedDict):
    results: list[SearchHit]
    total: Annotated[int, Field(ge=0)]
    offset: Annotated[int, Field(ge=0)]
    limit: Annotated[int, Field(ge=1)]
    has_more: bool


class LearnAnswer(TypedDict):
    id: int
    merged_into: NotRequired[int]


class StoredSolution(TypedDict):
    """One row of the learning store, as PostgreSQL holds it."""

    id: Annotated[int, Field(ge=1)]
    query: str
    solution: str
    value_score: Annotated[float, Field(ge=0, le=1)]
    created_at: Annotated[str, Field(json_schema_extra={"format": "date-time"})]


class SolutionsPage(TypedDict):
    results: list[StoredSolution]
    # The cursor of the next page, or null at the last one.
    next: str | None


class StatusAnswer(TypedDict):
    status: str


class ReadyAnswer(TypedDict):
    status: Literal["ready"]
    checks: dict[str, str]
