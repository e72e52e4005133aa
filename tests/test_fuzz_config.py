"""Property tests of the configuration loader (tests/test_config.py has the examples).

Whatever a file holds, loading it gives a Config or a ConfigError, never another
exception; a ConfigError is one line per problem, names the key, and is no traceback;
TOML and JSON of the same data give equal configs; `redacted()` hides every password; a
DNS name UTS 46 leaves alone is judged as if it were mapped.

Bounded: the "ci" profile (200 examples a test) unless HYPOTHESIS_PROFILE=fuzz
(`bench/fuzz.py`) asks for many more. AISTACK_FUZZ_REPORT names a file that gets one JSON
line per test with its example count.
"""

from __future__ import annotations

import collections
import json
import math
import os
import re
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from aistack import config as config_module
from aistack.config import (
    Config,
    ConfigError,
    certificate_domain,
    load_config,
    parse_config_text,
    redacted,
    validate_config,
)

settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("AISTACK_FUZZ_CONFIG_EXAMPLES", "5000")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# Applied per test rather than loaded globally, so other test files keep their settings.
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
REPORT = os.environ.get("AISTACK_FUZZ_REPORT", "")
EXAMPLES: collections.Counter[str] = collections.Counter()

SECTIONS = {name: field.annotation for name, field in Config.model_fields.items()}
SECTION_KEYS: dict[str, set[str]] = {
    name: set(model.model_fields)  # type: ignore[union-attr]
    for name, model in SECTIONS.items()
    if name != "source"
}
VALID: dict[str, Any] = {
    "gateway": {"listen": ["127.0.0.1:8080", "[::1]:8080"], "trusted_proxies": ["10.0.0.0/8"]},
    "qdrant": {"path": "/var/lib/aistack/qdrant"},
    "postgres": {"dsn": "postgresql:///aistack?host=/run/postgresql"},
    "validation": {"rate_limits": ["10/second", "60/minute"], "max_limit": 50},
    "gc": {"max_age_days": 7, "min_value_score": 0.25},
    "acme": {"domains": ["example.org", "www.example.org"], "email": "admin@example.org"},
}


@pytest.fixture(scope="module", autouse=True)
def report_counts() -> Iterator[None]:
    yield
    for test, count in sorted(EXAMPLES.items()):
        record = {"fuzzer": "hypothesis", "test": test, "cases": count}
        print(json.dumps(record))
        if REPORT:
            with open(REPORT, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")


def count(test: str) -> None:
    EXAMPLES[test] += 1


# JSON values, as json.loads returns them (no NaN: JSON has none).
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
section_names = st.sampled_from(sorted(SECTION_KEYS)) | st.text(max_size=12)


@st.composite
def section_keys(draw: st.DrawFn) -> tuple[str, str]:
    section = draw(st.sampled_from(sorted(SECTION_KEYS)))
    key = draw(st.sampled_from(sorted(SECTION_KEYS[section])) | st.text(max_size=12))
    return section, key


# Data shaped like a configuration: known sections and keys, any JSON values.
config_shaped = st.dictionaries(
    section_names,
    st.dictionaries(
        st.sampled_from(sorted(set().union(*SECTION_KEYS.values()))) | st.text(max_size=12),
        json_values,
        max_size=6,
    )
    | json_values,
    max_size=7,
)


def assert_good_error(error: ConfigError, name: str) -> str:
    message = str(error)
    assert message, "empty error message"
    assert "Traceback" not in message
    lines = message.splitlines()
    assert 1 <= len(lines) <= 40, message
    for line in lines:
        assert line.startswith(name), f"line does not name the file: {line!r}"
    return message


def load_or_error(data: Any, name: str = "<fuzz>") -> Config | str:
    try:
        return validate_config(data, json.dumps(data), name)
    except ConfigError as error:
        return assert_good_error(error, name)


@PROFILE
@given(text=st.text(max_size=300), suffix=st.sampled_from([".toml", ".json"]))
def test_any_text_parses_or_says_why(text: str, suffix: str) -> None:
    count("any_text")
    try:
        data = parse_config_text(text, suffix, "a" + suffix)
    except ConfigError as error:
        assert_good_error(error, "a" + suffix)
        return
    assert isinstance(data, dict)
    try:
        validate_config(data, text, "a" + suffix)
    except ConfigError as error:
        assert_good_error(error, "a" + suffix)


@PROFILE
@given(data=config_shaped | st.dictionaries(st.text(max_size=12), json_values, max_size=6))
def test_any_data_validates_or_names_the_key(data: dict[str, Any]) -> None:
    count("any_data")
    load_or_error(data)


@PROFILE
@given(where=section_keys(), value=json_values)
def test_mutated_valid_config_is_config_or_error_naming_the_key(
    where: tuple[str, str], value: Any
) -> None:
    count("mutated_valid")
    section, key = where
    data = json.loads(json.dumps(VALID))
    data.setdefault(section, {})[key] = value
    result = load_or_error(data)
    if isinstance(result, str) and key in SECTION_KEYS[section]:
        assert f"{section}.{key}" in result or f"{section}:" in result or section in result


@PROFILE
@given(
    where=st.sampled_from(["(top)", *sorted(SECTION_KEYS)]),
    key=st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=20),
    value=json_values,
)
def test_unknown_keys_are_rejected_by_name(where: str, key: str, value: Any) -> None:
    count("unknown_keys")
    data = json.loads(json.dumps(VALID))
    if where == "(top)":
        assume(key not in SECTION_KEYS)
        data[key] = value
        expected = f"unknown key '{key}'"
    else:
        assume(key not in SECTION_KEYS[where])
        data.setdefault(where, {})[key] = value
        expected = f"unknown key '{where}.{key}'"
    text = json.dumps(data, indent=1)
    with pytest.raises(ConfigError) as caught:
        validate_config(data, text, "a.json")
    message = assert_good_error(caught.value, "a.json")
    assert expected in message


@PROFILE
@given(key=st.text(min_size=1, max_size=12), value=json_values)
def test_any_unknown_key_gives_one_line(key: str, value: Any) -> None:
    """A key full of newlines or escapes must not forge extra lines in the journal."""
    count("unknown_key_one_line")
    assume(key not in SECTION_KEYS["validation"])
    data = json.loads(json.dumps(VALID))
    data["validation"][key] = value
    with pytest.raises(ConfigError) as caught:
        validate_config(data, json.dumps(data), "a.json")
    assert len(assert_good_error(caught.value, "a.json").splitlines()) == 1


# Valid values, TOML-expressible (no null), for a few keys of each kind.
toml_safe_data = st.fixed_dictionaries(
    {"qdrant": st.just({"path": "/srv/qdrant"})},
    optional={
        "gateway": st.fixed_dictionaries(
            {},
            optional={
                "listen": st.lists(
                    st.integers(1, 65535).map(lambda port: f"127.0.0.1:{port}"),
                    min_size=1,
                    max_size=3,
                ),
                "max_body_bytes": st.integers(256, 64 * 1024 * 1024),
                "acme_webroot": st.text(max_size=30),
            },
        ),
        "validation": st.fixed_dictionaries(
            {},
            optional={
                "max_query_chars": st.integers(1, 1_000_000),
                "deny_patterns": st.lists(st.text(min_size=1, max_size=10), max_size=4),
                "deny_action": st.sampled_from(["reject", "log"]),
                "ipv6_prefix": st.integers(1, 128),
            },
        ),
        "gc": st.fixed_dictionaries(
            {},
            optional={
                "min_value_score": st.floats(0.0, 1.0),
                "prune_fraction": st.floats(0.01, 0.99),
                "orphan_cleanup": st.booleans(),
                "batch_size": st.integers(1, 100000),
            },
        ),
    },
)


def toml_char(char: str) -> str:
    if char in '"\\':
        return "\\" + char
    if " " <= char <= "~":
        return char
    return f"\\U{ord(char):08X}"


def to_toml(data: dict[str, dict[str, Any]]) -> str:
    """A TOML writer for sections of scalars and lists: all this test needs."""
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        assert math.isfinite(value)
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, str):
        # Printable ASCII as is; everything else as \\UXXXXXXXX (json.dumps would write
        # astral characters as surrogate pairs, which TOML rejects).
        return '"' + "".join(toml_char(char) for char in value) + '"'

    return str(value)


@PROFILE
@given(data=toml_safe_data)
def test_toml_and_json_of_the_same_data_are_equal(
    data: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    count("toml_equals_json")
    directory: Path = tmp_path_factory.mktemp("same")
    (directory / "a.toml").write_text(to_toml(data), encoding="utf-8")
    (directory / "a.json").write_text(json.dumps(data), encoding="utf-8")
    try:
        from_toml: Config | str = load_config(directory / "a.toml")
    except ConfigError as error:
        from_toml = str(error).replace(".toml", ".FILE")
    try:
        from_json: Config | str = load_config(directory / "a.json")
    except ConfigError as error:
        from_json = str(error).replace(".json", ".FILE")
    if isinstance(from_toml, Config) and isinstance(from_json, Config):
        assert from_toml.model_dump() == from_json.model_dump()
    else:
        assert isinstance(from_toml, str) and isinstance(from_json, str)


secret = st.text(string.ascii_letters + string.digits + "!$%()*+,;~", min_size=6, max_size=20)
hosts = st.sampled_from(["db.example", "127.0.0.1", "[::1]", "db.example:5432", "h:99999"])


@PROFILE
@given(
    password=secret,
    user=st.sampled_from(["aistack", "u", ""]),
    host=hosts,
    in_query=st.booleans(),
    redis_password=secret,
)
def test_redacted_hides_every_password(
    password: str, user: str, host: str, in_query: bool, redis_password: str
) -> None:
    count("redacted")
    password = "S3CR3T" + password
    redis_password = "R3D1S" + redis_password
    if in_query:
        dsn = f"postgresql://{user}@{host}/aistack?sslmode=disable&password={password}"
    else:
        dsn = f"postgresql://{user}:{password}@{host}/aistack"
    data = {
        "qdrant": {"url": "http://127.0.0.1:6333"},
        "postgres": {"dsn": dsn},
        "validation": {"rate_limit_storage": f"redis://:{redis_password}@{host}/0"},
    }
    config = validate_config(data)
    shown = redacted(config)
    text = json.dumps(shown)
    assert password not in text and redis_password not in text
    assert "***" in shown["postgres"]["dsn"]
    # Everything else survives: the redacted form is still a valid config, which differs
    # from the original in the two secrets only.
    again = validate_config({key: value for key, value in shown.items()})
    assert again.model_dump(exclude={"postgres", "validation"}) == config.model_dump(
        exclude={"postgres", "validation"}
    )
    assert again.postgres.dsn == shown["postgres"]["dsn"]


@PROFILE
@given(data=toml_safe_data)
def test_a_valid_config_without_secrets_round_trips_through_redacted(
    data: dict[str, Any],
) -> None:
    count("redacted_round_trip")
    config = validate_config(data)
    again = validate_config(redacted(config))
    assert again.model_dump() == config.model_dump()


def domain_verdict(name: str) -> str:
    try:
        return "kept " + certificate_domain(name)
    except ValueError as error:
        return f"refused: {error}"


# Mostly what UTS 46 leaves alone, with what it maps or refuses mixed in (upper case, a
# U-label letter, KELVIN SIGN, "_"), and A-labels.
domain_names = st.text(alphabet="abkxn019-._AK\u00fc\u212a", max_size=70) | st.from_regex(
    r"xn--[a-z0-9-]{1,12}(\.[a-z]{1,4})?", fullmatch=True
)


@PROFILE
@given(name=domain_names)
def test_a_name_uts46_leaves_alone_is_judged_as_with_the_mapping(name: str) -> None:
    """A name of [a-z0-9.-] skips idna's UTS 46 mapping (a not-due renewal need not load its
    table): kept or refused, with the same message, as when it is mapped."""
    count("unmapped_domain")
    unmapped = domain_verdict(name)
    with mock.patch.object(config_module, "UNMAPPED_DNS_CHARACTERS", re.compile(r"(?!)")):
        assert domain_verdict(name) == unmapped
