"""Request models of the gateway and the rules that turn their failures into answers.

The models are built from the configuration (limits are settings), validated with
pydantic straight from the JSON bytes, strictly: `"limit": "10"` or `true` is not a number.
Whether a collection is unknown or merely forbidden to this caller is decided by one set
lookup against what the caller may use, so both answers are the same bytes.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any, NamedTuple, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from aistack.config import ValidationConfig, normalise_text

COLLECTION_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
# Tab, newline and carriage return are ordinary in pasted text; every other control
# character (C0, DEL, C1) and lone surrogates have no business in a query.
ALLOWED_CONTROLS = frozenset("\t\n\r")
ModelT = TypeVar("ModelT", bound=BaseModel)


class Problem(NamedTuple):  # a NamedTuple: built on every refusal, and cheaper than a dataclass
    loc: str
    type: str
    msg: str
    reason: str

    def as_json(self) -> dict[str, str]:
        return {"loc": self.loc, "type": self.type, "msg": self.msg}


class RequestRejected(Exception):
    """A request that fails validation: answered 422 with every problem named."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(problems)
        self.problems = problems

    def __str__(self) -> str:
        # Built only when printed: the gateway answers from `problems` and never needs it.
        return "; ".join(f"{p.loc}: {p.msg}" for p in self.problems)


def has_control_characters(text: str) -> bool:
    if text.isprintable():  # one C loop; almost every query ends here
        return False
    return any(
        unicodedata.category(char) in ("Cc", "Cs") and char not in ALLOWED_CONTROLS
        for char in text
        if not char.isprintable()
    )


def reject_control_characters(value: str) -> str:
    if has_control_characters(value):
        raise PydanticCustomError("control_character", "control characters are not allowed")
    return value


def check_collection(value: str, info: ValidationInfo) -> str:
    allowed = info.context.get("collections", frozenset()) if info.context else frozenset()
    if value not in allowed:
        raise PydanticCustomError("unknown_collection", "Unknown collection")
    return value


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SearchRequest(StrictModel):
    """The base shape; `search_request_model` returns it with the configured limits."""

    collection: str
    query: str
    limit: int
    offset: int


def search_request_model(config: ValidationConfig) -> type[SearchRequest]:
    class ConfiguredSearchRequest(SearchRequest):
        collection: Annotated[
            str,
            Field(
                min_length=1,
                max_length=64,
                pattern=COLLECTION_PATTERN,
                description="A collection this gateway serves to the caller. "
                "Names are not listed: unknown and forbidden names get the same answer.",
            ),
        ]
        query: Annotated[
            str,
            Field(min_length=1, max_length=config.max_query_chars, description="Free text"),
        ]
        limit: Annotated[int, Field(ge=1, le=config.max_limit)] = config.default_limit
        offset: Annotated[int, Field(ge=0, le=config.max_offset)] = 0

        _collection = field_validator("collection", mode="after")(check_collection)
        _query = field_validator("query", mode="after")(reject_control_characters)

    ConfiguredSearchRequest.__name__ = "SearchRequest"
    return ConfiguredSearchRequest


class LearnRequest(StrictModel):
    query: Annotated[str, Field(min_length=1, max_length=10000)]
    solution: Annotated[str, Field(min_length=1, max_length=20000)]
    value_score: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]

    _text = field_validator("query", "solution", mode="after")(reject_control_characters)


KIND_BY_TYPE = {
    "string_too_long": "too_long",
    "string_too_short": "too_short",
    "too_long": "too_long",
    "too_short": "too_short",
    "greater_than_equal": "out_of_range",
    "less_than_equal": "out_of_range",
    "greater_than": "out_of_range",
    "less_than": "out_of_range",
    "finite_number": "out_of_range",
    "extra_forbidden": "unknown_field",
    "missing": "missing_field",
    "unknown_collection": "unknown_collection",
    "control_character": "control_character",
    "json_invalid": "malformed_json",
    "string_pattern_mismatch": "unknown_collection",
}


def _describe(error: ErrorDetails) -> tuple[str, str]:
    """(message naming the rule, reason label) for one pydantic error."""
    kind = error["type"]
    ctx = error.get("ctx", {})
    value: Any = error.get("input")
    if kind == "string_too_long":
        return f"max_length {ctx['max_length']} exceeded (got {len(value)})", "too_long"
    if kind == "string_too_short":
        return f"min_length {ctx['min_length']} not met (got {len(value)})", "too_short"
    if kind in ("less_than_equal", "greater_than_equal", "less_than", "greater_than"):
        rule, verb = {
            "less_than_equal": ("maximum", "exceeded"),
            "greater_than_equal": ("minimum", "not met"),
            "less_than": ("exclusive maximum", "exceeded"),
            "greater_than": ("exclusive minimum", "not met"),
        }[kind]
        bound = next(iter(ctx.values()))
        return f"{rule} {bound} {verb} (got {_short(value)})", "out_of_range"
    if kind == "string_pattern_mismatch":
        # The same words as for a well-formed unknown name: shape must not leak either.
        return "Unknown collection", "unknown_collection"
    if kind == "extra_forbidden":
        return "unknown field", "unknown_field"
    if kind == "missing":
        return "required field missing", "missing_field"
    if kind == "json_invalid":
        return "body is not valid JSON", "malformed_json"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "body must be a JSON object", "wrong_type"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return error["msg"], "wrong_type"
    return error["msg"], KIND_BY_TYPE.get(kind, "invalid")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 32 else text[:29] + "..."


def _location(loc: tuple[int | str, ...]) -> str:
    if not loc:
        return "body"
    text = ".".join(str(part) for part in loc)
    if len(text) <= 64 and text.isprintable():
        return text
    # Extra field names come from the client: keep the answer short and printable.
    printable = "".join(char if char.isprintable() else "?" for char in text)
    return printable if len(printable) <= 64 else printable[:61] + "..."


def problems_from(error: ValidationError) -> list[Problem]:
    problems = []
    for item in error.errors(include_url=False):
        message, reason = _describe(item)
        # A malformed name is answered exactly like a well-formed unknown one.
        kind = "unknown_collection" if reason == "unknown_collection" else item["type"]
        problems.append(Problem(_location(item["loc"]), kind, message, reason))
    return problems


def parse_request(
    model: type[ModelT], body: bytes, collections: frozenset[str] = frozenset()
) -> ModelT:
    try:
        return model.model_validate_json(body, context={"collections": collections})
    except ValidationError as error:
        raise RequestRejected(problems_from(error)) from None


class ContentRules:
    """The roadmap's deny patterns, matched on normalised text, and what to do on a hit."""

    def __init__(self, config: ValidationConfig) -> None:
        self.patterns = tuple(dict.fromkeys(config.normalised_deny_patterns()))
        self.reject = config.deny_action == "reject"

    def first_match(self, text: str) -> str | None:
        if not self.patterns:
            return None
        normalised = normalise_text(text)
        for pattern in self.patterns:
            if pattern in normalised:
                return pattern
        return None

    def problem(self, field: str, pattern: str) -> Problem:
        return Problem(field, "deny_pattern", f"matches deny pattern {pattern!r}", "deny_pattern")
