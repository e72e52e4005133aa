"""Request models of the gateway and the rules that turn their failures into answers.

The models are built from the configuration (limits are settings), validated with
pydantic straight from the JSON bytes, strictly: `"limit": "10"` or `true` is not a number.
Every rule runs inside pydantic-core, with no Python validator: the refusal path must stay
cheap (a Python validator that raises costs more than the rest of the validation, measured
under load). So control characters are a pattern, and the collection a `Literal` of the
names the caller may use: an unknown and a forbidden name fail the same check and get the
same bytes back. One rule depends on the collection and runs in Python, after the model
validated and only for requests that did: which keys a `filter` names, and how many
(`FilterRules`; pydantic-core cannot count the keys of a model with extra keys).
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Annotated, Any, Literal, NamedTuple, TypeVar, cast

import regex
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from aistack.config import COLLECTION_NAME, RANGE_FILTER_KEYS, ValidationConfig
from aistack.gateway.filters import MAX_CONDITIONS, OPERATORS, SearchFilter
from aistack.gateway.schemas import ErrorItem
from aistack.stores.solutions import COLLECTION as LEARNING_COLLECTION

# The rule of config.COLLECTION_NAME, anchored for pydantic-core and JSON Schema.
COLLECTION_PATTERN = f"^{COLLECTION_NAME.pattern}$"
COLLECTION_DESCRIPTION = (
    "A collection this gateway serves to the caller. "
    "Names are not listed: unknown and forbidden names get the same answer."
)
# For a caller with no collection at all: a pattern nothing matches.
NO_COLLECTION = r"[^\s\S]"
# Tab, newline and carriage return are ordinary in pasted text; every other control
# character (Unicode category Cc: C0, DEL, C1) has no business in a query. Lone
# surrogates never get this far: the JSON parser refuses them. `$` is the end of the
# text in pydantic-core's (Rust) regex and in JSON Schema's (ECMA).
ALLOWED_CONTROLS = frozenset("\t\n\r")
NO_CONTROL_CHARACTERS = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$"
WHITESPACE_RUN = re.compile(r"\s+")
# What renders as nothing would split a deny pattern ("<scr\u034fipt"): every
# Default_Ignorable_Code_Point (variation selectors, Hangul fillers, the combining grapheme
# joiner, ...) and every format character (Cf). The `regex` module, because the standard
# library's unicodedata does not know the property; it follows the current Unicode.
INVISIBLE = regex.compile(r"[\p{Default_Ignorable_Code_Point}\p{Cf}]+")
ModelT = TypeVar("ModelT", bound=BaseModel)


class Problem(NamedTuple):  # a NamedTuple: built on every refusal, and cheaper than a dataclass
    loc: str
    type: str
    msg: str
    reason: str

    def as_json(self) -> ErrorItem:
        return {"loc": self.loc, "type": self.type, "msg": self.msg}


UNKNOWN_COLLECTION = Problem(
    "collection", "unknown_collection", "Unknown collection", "unknown_collection"
)


class RequestRejected(Exception):
    """A request that fails validation: answered 422 with every problem named."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(problems)
        self.problems = problems

    def __str__(self) -> str:
        # Built only when printed: the gateway answers from `problems` and never needs it.
        return "; ".join(f"{p.loc}: {p.msg}" for p in self.problems)


def has_control_characters(text: str) -> bool:
    """What NO_CONTROL_CHARACTERS refuses, for text that does not come through a model."""
    if text.isprintable():  # one C loop; almost every text ends here
        return False
    return any(
        unicodedata.category(char) in ("Cc", "Cs") and char not in ALLOWED_CONTROLS
        for char in text
        if not char.isprintable()
    )


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SearchRequest(StrictModel):
    """The base shape; `search_request_model` returns it with the configured limits."""

    collection: str
    query: str
    limit: int
    offset: int
    filter: SearchFilter | None


def search_request_model(
    config: ValidationConfig, collections: frozenset[str] | None = None
) -> type[SearchRequest]:
    """The search request with the configured limits.

    Without `collections` it is the documented shape (any well-formed name), for
    /openapi.json, which must not list the names. With them, the collection must be one
    of `collections`: that is the model requests are validated with (`SearchParser`).
    """
    collection_type: Any  # a Literal built at run time: mypy cannot see it
    collection_type, collection_rules = collection_field(collections)

    class ConfiguredSearchRequest(SearchRequest):
        collection: Annotated[collection_type, collection_rules]
        query: Annotated[
            str,
            Field(
                min_length=1,
                max_length=config.max_query_chars,
                pattern=NO_CONTROL_CHARACTERS,
                description="Free text, without control characters other than tab and line breaks",
            ),
        ]
        limit: Annotated[int, Field(ge=1, le=config.max_limit)] = config.default_limit
        offset: Annotated[int, Field(ge=0, le=config.max_offset)] = 0
        filter: SearchFilter | None = None  # absent or null: no filter

    ConfiguredSearchRequest.__name__ = "SearchRequest"
    return ConfiguredSearchRequest


def collection_field(collections: frozenset[str] | None) -> tuple[Any, Any]:
    """The collection's type and rules: any well-formed name (documented), one of
    `collections`, or, for a caller with none, nothing at all."""
    if collections is None:
        return str, Field(
            min_length=1,
            max_length=64,
            pattern=COLLECTION_PATTERN,
            description=COLLECTION_DESCRIPTION,
        )
    if not collections:
        return str, Field(pattern=NO_COLLECTION)
    return Literal[tuple(sorted(collections))], Field(description=COLLECTION_DESCRIPTION)


class SearchParser:
    """Search bodies validated against what one caller may use.

    One model per distinct set of collections, built on first use. The sets come from
    the configuration and the API key file, never from a request, so this stays small.
    """

    def __init__(self, config: ValidationConfig) -> None:
        self._config = config
        self._models: dict[frozenset[str], type[SearchRequest]] = {}
        self._filter_rules = FilterRules(config.filterable)

    def parse(self, body: bytes, collections: frozenset[str]) -> SearchRequest | list[Problem]:
        """The request, or its problems (see `validate`; then `FilterRules`)."""
        model = self._models.get(collections)
        if model is None:
            model = self._models[collections] = search_request_model(self._config, collections)
        request = validate(model, body)
        if isinstance(request, list) or request.filter is None:
            return request
        return self._filter_rules.problems(request.collection, request.filter) or request


class FilterRules:
    """Which filters each collection takes: the payload keys `validation.filterable`
    declares, and the learning store's two ranges. The rest of the grammar is the model's."""

    def __init__(self, filterable: dict[str, list[str]]) -> None:
        self._keys = {name: frozenset(keys) for name, keys in filterable.items()}
        self._listed = {name: ", ".join(sorted(keys)) for name, keys in filterable.items()}

    def problems(self, collection: str, search_filter: SearchFilter) -> list[Problem]:
        """What `search_filter` asks of `collection` that it does not offer. Only ever asked
        about a collection the caller may use: naming its filterable keys tells nothing more
        than the configuration grants, and whether a key is in the payloads never matters."""
        problems = []
        conditions = search_filter.conditions()
        if conditions > MAX_CONDITIONS:
            message = f"at most {MAX_CONDITIONS} conditions (got {conditions})"
            problems.append(
                Problem("filter", "too_many_conditions", message, "too_many_conditions")
            )
        if collection != LEARNING_COLLECTION:
            for key in RANGE_FILTER_KEYS:
                if getattr(search_filter, key) is not None:
                    problems.append(
                        _unfilterable(key, f"a range filter of {LEARNING_COLLECTION} only")
                    )
        keys = self._keys.get(collection, frozenset())
        for key in search_filter.exact():
            if key not in keys:
                offered = self._listed.get(collection) or "none"
                message = f"not filterable in this collection (filterable: {offered})"
                problems.append(_unfilterable(key, message))
        return problems


def _unfilterable(key: str, message: str) -> Problem:
    return Problem(_location(("filter", key)), "unfilterable_key", message, "unfilterable_key")


class SolutionsQuery(BaseModel):
    """The base shape of `GET /hybrid/solutions`'s query; `solutions_query_model` returns
    it with the configured limits. Not strict: query parameters are text, and `limit=10`
    is a number."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    order: Literal["value", "recent"]
    limit: int
    cursor: str | None


def solutions_query_model(config: ValidationConfig) -> type[SolutionsQuery]:
    class ConfiguredSolutionsQuery(SolutionsQuery):
        order: Annotated[
            Literal["value", "recent"],
            Field(description="`value`: the best first; `recent`: the newest first"),
        ] = "recent"
        limit: Annotated[int, Field(ge=1, le=config.max_limit)] = config.default_limit
        cursor: Annotated[
            str | None,
            Field(min_length=1, max_length=256, description="`next` of the page before"),
        ] = None

    ConfiguredSolutionsQuery.__name__ = "SolutionsQuery"
    return ConfiguredSolutionsQuery


def validate_query(
    model: type[ModelT], parameters: list[tuple[str, str]]
) -> ModelT | list[Problem]:
    """The query parameters as `model`, or what is wrong with them: a repeated parameter is
    refused for the reason a repeated JSON key is (`duplicate_key`)."""
    seen: set[str] = set()
    for name, _value in parameters:
        if name in seen:
            return [Problem(_location((name,)), "duplicate_key", "duplicate key", "duplicate_key")]
        seen.add(name)
    try:
        return model.model_validate(dict(parameters))
    except ValidationError as error:
        return problems_from(error)


class LearnRequest(StrictModel):
    query: Annotated[str, Field(min_length=1, max_length=10000, pattern=NO_CONTROL_CHARACTERS)]
    solution: Annotated[str, Field(min_length=1, max_length=20000, pattern=NO_CONTROL_CHARACTERS)]
    value_score: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


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
    "json_invalid": "malformed_json",
}
BOUND_RULES = {
    "less_than_equal": ("maximum", "exceeded"),
    "greater_than_equal": ("minimum", "not met"),
    "less_than": ("exclusive maximum", "exceeded"),
    "greater_than": ("exclusive minimum", "not met"),
}
CONTROL_CHARACTER_MESSAGE = "control characters are not allowed"


def _problem(error: ErrorDetails) -> Problem:
    """The problem one pydantic error stands for: a message naming the rule, and a reason
    label from a fixed set."""
    kind = error["type"]
    loc = error["loc"]
    if loc == ("collection",) and kind in ("literal_error", "string_pattern_mismatch"):
        # Not in the caller's set, or not even a well-formed name: the same answer.
        return UNKNOWN_COLLECTION
    if loc and loc[0] == "filter":
        return _filter_problem(error)
    location = _location(loc)
    if kind == "string_pattern_mismatch":
        # The one pattern left is NO_CONTROL_CHARACTERS (query, solution).
        return Problem(
            location, "control_character", CONTROL_CHARACTER_MESSAGE, "control_character"
        )
    message, reason = _describe(kind, error)
    return Problem(location, kind, message, reason)


OPERATOR_LIST = ", ".join(OPERATORS)
FILTER_OBJECT_RULE = "must be a JSON object of conditions"
RANGE_RULE = f"a range is an object with at least one of {OPERATOR_LIST}"
OPERATOR_RULE = f"unknown operator: a range takes {OPERATOR_LIST}"
SCORE_BOUND_RULE = "a value_score bound is a finite number"
TIME_BOUND_RULE = (
    "a created_at bound is an RFC 3339 date-time with a time zone, e.g. 2026-11-01T00:00:00Z"
)


def _filter_problem(error: ErrorDetails) -> Problem:
    """A problem with the filter's grammar (filters.SearchFilter): each message names the
    rule, all under one reason."""
    loc = error["loc"]
    kind = error["type"]
    if len(loc) == 1:
        message = FILTER_OBJECT_RULE
    elif len(loc) == 4 and loc[-1] == "[key]":  # a range's key that is no operator
        loc, kind, message = loc[:-1], "unknown_operator", OPERATOR_RULE
    elif len(loc) == 2 and loc[1] in RANGE_FILTER_KEYS:  # not an object, or an empty one
        message = RANGE_RULE
    elif loc[1] == "value_score":
        message = SCORE_BOUND_RULE
    elif loc[1] == "created_at":
        message = TIME_BOUND_RULE
    else:  # an exact match's value
        message = error["msg"]
    return Problem(_location(loc), kind, message, "invalid_filter")


def _describe(kind: str, error: ErrorDetails) -> tuple[str, str]:
    ctx = error.get("ctx", {})
    value: Any = error.get("input")
    if kind == "string_too_long":
        return f"max_length {ctx['max_length']} exceeded (got {len(value)})", "too_long"
    if kind == "string_too_short":
        return f"min_length {ctx['min_length']} not met (got {len(value)})", "too_short"
    if kind in BOUND_RULES:
        rule, verb = BOUND_RULES[kind]
        bound = next(iter(ctx.values()))
        return f"{rule} {bound} {verb} (got {_short(value)})", "out_of_range"
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
    return [_problem(item) for item in error.errors(include_url=False)]


def validate(model: type[ModelT], body: bytes) -> ModelT | list[Problem]:
    """The request, or what is wrong with it. Returned rather than raised, and through the
    model's validator itself rather than model_validate_json: a refusal is the path that
    must stay cheap, and each of those layers cost it about 1 us (measured)."""
    try:
        request = cast(ModelT, model.__pydantic_validator__.validate_json(body))
    except ValidationError as error:
        return problems_from(error)
    duplicate = duplicate_key(body)
    if duplicate is not None:
        return [Problem(_location((duplicate,)), "duplicate_key", "duplicate key", "duplicate_key")]
    return request


class DuplicateKey(Exception):
    pass


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> None:
    seen: set[str] = set()
    for key, _value in pairs:
        if key in seen:
            raise DuplicateKey(key)
        seen.add(key)


def duplicate_key(body: bytes) -> str | None:
    """The first key a JSON object of the body repeats, or None. pydantic-core keeps the last
    of repeated keys; a proxy or an audit log that keeps the first would see another
    request. Checked only once the body has validated (the JSON is well-formed and small by
    then), so refusals do not pay for a second parse."""
    try:
        json.loads(body, object_pairs_hook=_refuse_duplicates)
    except DuplicateKey as duplicate:
        return str(duplicate.args[0])
    return None


def parse_request(model: type[ModelT], body: bytes) -> ModelT:
    request = validate(model, body)
    if isinstance(request, list):
        raise RequestRejected(request)
    return request


def normalise_text(text: str) -> str:
    """What deny patterns are matched against: NFKC, case folded, white space runs as one space.

    Without this, "DROP\\tTABLE" or a fullwidth "ＤＲＯＰ " would pass the pattern "drop ".
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    return WHITESPACE_RUN.sub(" ", INVISIBLE.sub("", folded))


class ContentRules:
    """The roadmap's deny patterns, matched on normalised text, and what to do on a hit."""

    def __init__(self, patterns: list[str], action: str) -> None:
        self.patterns = tuple(dict.fromkeys(normalise_text(pattern) for pattern in patterns))
        self.reject = action == "reject"

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
