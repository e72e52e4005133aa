"""The `filter` of `POST /vector/search`: a deliberately small grammar, checked before
anything reaches Qdrant, and its translation into a Qdrant filter.

`{"value_score": {"gte": 0.8}, "created_at": {"gte": "2026-11-01T00:00:00Z"},
"section": "networking"}`: ranges on the learning store's `value_score` and `created_at`
(operators gt gte lt lte), exact matches (a string, an integer or a boolean) on the payload
keys `validation.filterable` declares for the collection. The shape is a pydantic type
validated inside pydantic-core with the rest of the request (see requests.py: refusals must
stay cheap); which keys a collection takes depends on the collection, so
`requests.FilterRules` checks that in Python, only for requests that validated: by then the
collection is one the caller may use, and an unknown or forbidden one has had its one answer.
"""

from __future__ import annotations

import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, WithJsonSchema
from pydantic_core import CoreSchema, core_schema
from qdrant_client import models

# Every condition is one more pass over the candidates in Qdrant (and in local mode, one
# more Python comparison per point): four cover "recent, good, in this section" and keep
# a filter's cost bounded whatever a client sends.
MAX_CONDITIONS = 4
OPERATORS = ("gt", "gte", "lt", "lte")
Operator = Literal["gt", "gte", "lt", "lte"]
# RFC 3339's date-time, with its time zone: a naive time means a different instant on
# every machine, and pydantic alone would also take "1700000000" (a Unix time) or no seconds.
RFC3339 = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
# Qdrant keeps integers as 64-bit: a larger one would be Qdrant's error (a 500), not ours.
INT64 = 2**63
EXACT_VALUE_MESSAGE = "an exact match takes a string, a 64-bit integer or a boolean"
RANGE_DESCRIPTION = "A range: at least one of gt, gte, lt, lte."


class ExactValueType:
    """A JSON string, integer or boolean, as one pydantic-core union with one error: the
    members' three errors would name types instead of the rule."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.union_schema(
            [
                core_schema.str_schema(strict=True),
                core_schema.int_schema(strict=True, ge=-INT64, lt=INT64),
                core_schema.bool_schema(strict=True),
            ],
            custom_error_type="exact_value_type",
            custom_error_message=EXACT_VALUE_MESSAGE,
        )


class DateTimeType:
    """An RFC 3339 date-time with its zone: the pattern on the text, then the calendar."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.chain_schema(
            [
                core_schema.str_schema(strict=True, pattern=RFC3339),
                # Lax: the input is the text the pattern passed, not JSON any more.
                core_schema.datetime_schema(strict=False, tz_constraint="aware"),
            ]
        )


ExactValue = Annotated[
    int | str | bool,
    ExactValueType,
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string"},
                {"type": "integer", "minimum": -INT64, "maximum": INT64 - 1},
                {"type": "boolean"},
            ]
        }
    ),
]
DateTime = Annotated[
    datetime.datetime,
    DateTimeType,
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": RFC3339}),
]


def range_schema(bound: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "description": RANGE_DESCRIPTION,
        "properties": dict.fromkeys(OPERATORS, bound),
        "additionalProperties": False,
        "minProperties": 1,
    }


ScoreRange = Annotated[
    dict[Operator, Annotated[float, Field(allow_inf_nan=False)]],
    Field(min_length=1),
    WithJsonSchema(range_schema({"type": "number"})),
]
TimeRange = Annotated[
    dict[Operator, DateTime],
    Field(min_length=1),
    WithJsonSchema(range_schema({"type": "string", "format": "date-time", "pattern": RFC3339})),
]


class SearchFilter(BaseModel):
    """What `filter` may hold. The document says which keys each collection takes only in
    words: listing them would name the collections, which /openapi.json must not."""

    model_config = ConfigDict(
        extra="allow",
        strict=True,
        frozen=True,
        title="SearchFilter",
        json_schema_extra={
            "maxProperties": MAX_CONDITIONS,
            "description": (
                f"At most {MAX_CONDITIONS} conditions, all of which a hit meets. "
                "value_score and created_at: ranges, in solved_issues only. "
                "Any other key: an exact match (string, integer or boolean) on a payload key "
                "the gateway's configuration declares filterable for the collection. "
                "Anything else is refused (422), never passed on."
            ),
        },
    )
    # mypy cannot see what pydantic makes of this annotation (the type of the extras).
    __pydantic_extra__: dict[str, ExactValue]  # type: ignore[assignment]
    # Absent or null: no condition on that key.
    value_score: ScoreRange | None = None
    created_at: TimeRange | None = None

    def conditions(self) -> int:
        return len(self.exact()) + (self.value_score is not None) + (self.created_at is not None)

    def exact(self) -> dict[str, int | str | bool]:
        return self.__pydantic_extra__ or {}


def qdrant_filter(search_filter: SearchFilter) -> models.Filter:
    """The Qdrant filter of a validated (and checked) filter: every condition must hold."""
    must: list[models.Condition] = []
    if search_filter.value_score is not None:
        must.append(
            models.FieldCondition(
                key="value_score", range=models.Range(**search_filter.value_score)
            )
        )
    if search_filter.created_at is not None:
        must.append(
            models.FieldCondition(
                key="created_at", range=models.DatetimeRange(**search_filter.created_at)
            )
        )
    for key, value in search_filter.exact().items():
        must.append(models.FieldCondition(key=key, match=models.MatchValue(value=value)))
    return models.Filter(must=must)
