"""Configuration: TOML and JSON give the same result; unknown keys and bad values are errors
naming the key, the file and the line; secrets never printed."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import regex

from aistack.config import (
    ConfigError,
    ValidationConfig,
    load_config,
    read_secret,
    validate_config,
)
from aistack.gateway.requests import normalise_text

GOOD_TOML = """\
[gateway]
listen = ["127.0.0.1:8080", "[::1]:8080"]
trusted_proxies = ["10.0.0.0/8", "fd00::/8"]

[qdrant]
path = "/var/lib/aistack/qdrant"

[postgres]
dsn = "postgresql://aistack:hunter2@db.example:5432/aistack"

[validation]
rate_limits = ["10/second", "60/minute"]
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_toml_and_json_are_the_same_config(tmp_path):
    import tomllib

    toml = load_config(write(tmp_path, "a.toml", GOOD_TOML))
    data = tomllib.loads(GOOD_TOML)
    from_json = load_config(write(tmp_path, "a.json", json.dumps(data, indent=2)))
    assert toml.model_dump() == from_json.model_dump()
    assert toml.validation.rate_windows() == [("second", 10, 1), ("minute", 60, 60)]
    assert toml.validation.max_limit == 100  # defaults fill the rest


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[qdrant]\npath = '/x'\n[gateway]\nlisten = ['127.0.0.1:8080']\nlsten = []\n",
            "a.toml:5: unknown key 'gateway.lsten'",
        ),
        ("[qdrant]\npath = '/x'\n[gatway]\n", "unknown key 'gatway'"),
        (
            "[qdrant]\npath = '/x'\nurl = 'http://q:6333'\n",
            "set exactly one of qdrant.url (a Qdrant server) or qdrant.path (local mode)",
        ),
        ("[gateway]\n", "'qdrant' is required"),
        (
            "[qdrant]\npath = '/x'\n[validation]\nmax_limit = 0\n",
            "a.toml:4: validation.max_limit: Input should be greater than or equal to 1",
        ),
        (
            "[qdrant]\npath = '/x'\n[validation]\ndefault_limit = 50\nmax_limit = 20\n",
            "default_limit 50 is above max_limit 20",
        ),
        (
            "[qdrant]\npath = '/x'\n[validation]\nrate_limits = ['60/fortnight']\n",
            "'60/fortnight' is not N/second, N/minute, N/hour or N/day",
        ),
        (
            "[qdrant]\npath = '/x'\n[validation]\ncollections = ['ok', 'no/slash']\n",
            "'no/slash' is not 1-64 characters",
        ),
        (
            "[qdrant]\npath = '/x'\n[validation]\ndeny_action = 'drop'\n",
            "validation.deny_action: Input should be 'reject' or 'log'",
        ),
        (
            "[qdrant]\npath = '/x'\n[gateway]\ntrusted_proxies = ['10.0.0.0/33']\n",
            "'10.0.0.0/33' is not an IP address or CIDR",
        ),
        (
            "[qdrant]\npath = '/x'\n[gateway]\nlisten = ['localhost']\n",
            "'localhost' is not host:port",
        ),
        (
            "[qdrant]\npath = '/x'\n[gateway]\ntls_cert_file = '/c.pem'\n",
            "set both tls_cert_file and tls_key_file, or neither",
        ),
        (
            "[qdrant]\npath = '/x'\n[gc]\nprune_fraction = 1.5\n",
            "gc.prune_fraction: Input should be less than 1",
        ),
        (
            "[qdrant]\npath = '/x'\n[gc]\nmin_value_score = -1\n",
            "gc.min_value_score: Input should be greater than or equal to 0",
        ),
        ("[qdrant]\npath = '/x'\n[acme]\nkey_type = 'dsa'\n", "acme.key_type"),
        (
            "[qdrant]\npath = '/x'\n[acme]\ndomains = ['bad domain']\n",
            "'bad domain' is not a DNS name",
        ),
        ("[qdrant]\npath = '/x'\n[embedding]\nbackend = 'openai'\n", "backend 'openai' needs url"),
        ("[qdrant\n", "not valid TOML"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path, text, message):
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "a.toml", text))
    assert message in str(caught.value)


def acme_domains(*domains: str, **acme: object) -> dict[str, object]:
    return {"qdrant": {"path": "/x"}, "acme": {"domains": list(domains), **acme}}


# Each bad name with what its error must say: the name as ascii() shows it (a newline,
# a zero-width space, a look-alike letter all visible) and why it is refused.
BAD_DOMAINS = [
    ("example.org\n", r"'example.org\n' is not a DNS name: Codepoint U+000A"),
    ("www.example.org\n", r"'www.example.org\n' is not a DNS name"),
    # KELVIN SIGN, which looks like K and folds to k: suggested, never silently taken.
    (
        "\u212aexample.org",
        r"'\u212aexample.org' holds non-ASCII characters; a certificate names lower-case "
        "IDNA A-labels: write 'kexample.org'",
    ),
    ("b\u00fccher.example", "write 'xn--bcher-kva.example'"),
    ("e\u200bxample.org", r"'e\u200bxample.org' holds non-ASCII characters"),
    ("Example.org", "'Example.org' holds upper-case letters; a certificate names lower-case"),
    (
        "example.org.",
        "'example.org.' ends in a dot; a certificate names lower-case IDNA "
        "A-labels: write 'example.org'",
    ),
    ("127.0.0.1", "'127.0.0.1' is an IP address, not a DNS name"),
    ("::1", "'::1' is an IP address, not a DNS name"),
    ("[2001:db8::1]", "'[2001:db8::1]' is an IP address, not a DNS name"),
    ("10.0.0.300", "'10.0.0.300' is not a DNS name: its last label is all digits"),
    ("xn--a.example", "'xn--a.example' is not a DNS name"),
    ("ab--cd.example", "'ab--cd.example' is not a DNS name: Label has disallowed hyphens"),
    ("-a.example", "'-a.example' is not a DNS name: Label must not start or end with a hyphen"),
    ("a..example", "'a..example' is not a DNS name: Empty Label"),
    ("a_b.example", "'a_b.example' is not a DNS name"),
    ("", "'' is not a DNS name"),
    ("a" * 64 + ".example", "is not a DNS name: Label too long"),
    ("a." * 127 + "example", "is not a DNS name: Domain too long"),
]


@pytest.mark.parametrize(("domain", "message"), BAD_DOMAINS)
def test_acme_domains_must_be_lower_case_a_labels(domain, message):
    with pytest.raises(ConfigError) as caught:
        validate_config(acme_domains("ok.example", domain))
    assert "acme.domains.1: " in str(caught.value) and message in str(caught.value)
    # One line: a newline in the name cannot split the message or forge another line.
    assert len(str(caught.value).splitlines()) == 1


def test_every_bad_domain_is_named_once():
    with pytest.raises(ConfigError) as caught:
        validate_config(acme_domains("example.org\n", "ok.example", "127.0.0.1"))
    lines = str(caught.value).splitlines()
    assert len(lines) == 2
    assert r"acme.domains.0: 'example.org\n'" in lines[0]
    assert "acme.domains.2: '127.0.0.1'" in lines[1]


@pytest.mark.parametrize("challenge", ["webroot", "standalone"])
def test_wildcards_are_refused_unless_dns_01_validates_them(challenge):
    with pytest.raises(ConfigError) as caught:
        validate_config(acme_domains("example.org", "*.example.org", challenge=challenge))
    assert (
        "acme.domains.1: '*.example.org' is a wildcard, and only DNS-01 validates wildcards:"
        ' set challenge = "dns-01" and acme.dns, or name each host'
    ) in str(caught.value)


def test_good_domains_are_kept_as_written():
    domains = ["example.org", "www.example.org", "xn--bcher-kva.example", "a-b.c0.example", "x"]
    assert validate_config(acme_domains(*domains)).acme.domains == domains


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("acme", "email", "admin@example.org\n", r"'admin@example.org\n' is not an e-mail"),
        ("validation", "collections", ["docs\n"], r"'docs\n' is not 1-64 characters"),
    ],
)
def test_a_trailing_newline_does_not_pass_a_pattern(section, key, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config({"qdrant": {"path": "/x"}, section: {key: value}})


def test_json_syntax_error_names_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"a\.json:3: not valid JSON"):
        load_config(write(tmp_path, "a.json", '{\n "qdrant": {"path": "/x"},\n oops\n}'))


def test_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the configuration"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match=r"must end in \.toml or \.json"):
        load_config(write(tmp_path, "a.yaml", "qdrant: {}"))


def test_secrets_come_from_files_and_credentials_directory(tmp_path, monkeypatch):
    write(tmp_path, "pw", "s3cret\n")
    assert read_secret(str(tmp_path / "pw")) == "s3cret"
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert read_secret("pw") == "s3cret"
    with pytest.raises(ConfigError, match="cannot read the secret file"):
        read_secret(str(tmp_path / "nope"))


def test_normalisation_folds_case_width_space_and_invisible_characters():
    assert normalise_text("ＤＲＯＰ\t\tTable") == "drop table"
    assert normalise_text("dr\u200bop ") == "drop "
    assert normalise_text("<ScRiPt>") == "<script>"


def test_every_default_ignorable_code_point_is_removed_before_matching():
    # From the Unicode property itself (the `regex` module's tables), not a list of ours:
    # each of these renders as nothing, so none may split a deny pattern.
    ignorable = regex.compile(r"\p{Default_Ignorable_Code_Point}")
    invisible = [chr(c) for c in range(0x110000) if ignorable.match(chr(c))]
    assert len(invisible) > 4000 and "\u034f" in invisible and "\U000e0100" in invisible
    splitting = [c for c in invisible if normalise_text(f"<scr{c}ipt") != "<script"]
    assert splitting == [], [f"U+{ord(c):04X}" for c in splitting[:20]]


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "aistack", *args], capture_output=True, text=True, timeout=60
    )


def test_config_check_prints_redacted_config_and_exits_0(tmp_path):
    result = run_cli("config", "check", "--config", str(write(tmp_path, "a.toml", GOOD_TOML)))
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["postgres"]["dsn"] == "postgresql://aistack:***@db.example:5432/aistack"
    assert "hunter2" not in result.stdout + result.stderr
    assert printed["gateway"]["listen"] == ["127.0.0.1:8080", "[::1]:8080"]
    assert "configuration is valid" in result.stderr


def test_config_check_bad_config_exits_2_naming_the_key(tmp_path):
    bad = write(tmp_path, "bad.toml", "[qdrant]\npath = '/x'\n[validation]\nmax_limt = 5\n")
    result = run_cli("config", "check", "--config", str(bad))
    assert result.returncode == 2
    assert f"{bad}:4: unknown key 'validation.max_limt'" in result.stderr
    assert result.stdout == ""


def test_usage_errors_exit_2():
    result = run_cli("gateway")
    assert result.returncode == 2
    assert "--config" in result.stderr
    assert run_cli("--help").returncode == 0


@pytest.mark.parametrize(
    ("domain", "message"),
    [
        ("example.org\n", r"'example.org\n' is not a DNS name"),
        ("\u212aexample.org", r"'\u212aexample.org' holds non-ASCII characters"),
        ("127.0.0.1", "'127.0.0.1' is an IP address, not a DNS name"),
        ("*.example.org", "'*.example.org' is a wildcard, and only DNS-01 validates"),
    ],
)
def test_config_check_refuses_a_bad_domain(tmp_path, domain, message):
    path = write(tmp_path, "a.json", json.dumps(acme_domains(domain)))
    result = run_cli("config", "check", "--config", str(path))
    assert result.returncode == 2, result.stderr
    assert f"{path}: acme.domains.0: " in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_json_value_and_key_errors_name_the_key_and_line(tmp_path):
    """What the README promises of `aistack config check` on the JSON form the NixOS
    module writes: a bad value and an unknown key each name the key path and the line."""
    text = (
        '{\n "qdrant": {"path": "/x"},\n "gateway": {\n'
        '  "max_body_bytes": "big",\n  "bogus": 1\n }\n}\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "a.json", text))
    assert "a.json:4: gateway.max_body_bytes: Input should be a valid integer" in str(caught.value)
    assert "a.json:5: unknown key 'gateway.bogus'" in str(caught.value)


# -- validation.filterable: the payload keys a search's filter may match -----------------


@pytest.mark.parametrize(
    ("filterable", "message"),
    [
        (
            {"evil": ["x"]},
            "validation.filterable: 'evil' is not one of validation.collections: "
            "add it there or drop it here",
        ),
        (
            {"nixos_docs": ["a.b"]},
            "validation.filterable: nixos_docs: 'a.b' is not a payload key (1-64 characters of "
            "A-Z a-z 0-9 _ -, not starting with a digit or -)",
        ),
        ({"nixos_docs": [""]}, "nixos_docs: '' is not a payload key"),
        ({"nixos_docs": ["x" * 65]}, "is not a payload key"),
        ({"nixos_docs": ["1st"]}, "nixos_docs: '1st' is not a payload key"),
        (
            {"solved_issues": ["value_score"]},
            "validation.filterable: solved_issues: 'value_score' is reserved for the range "
            "filter of solved_issues, it cannot be an exact-match key",
        ),
        (
            {"nixos_docs": ["created_at"]},
            "nixos_docs: 'created_at' is reserved for the range filter of solved_issues",
        ),
        (
            {"nixos_docs": ["topic", "topic"]},
            "validation.filterable: nixos_docs: names a key twice",
        ),
        ({"nixos_docs": "topic"}, "validation.filterable.nixos_docs: Input should be a valid list"),
    ],
)
def test_bad_filterable_keys_are_configuration_errors(filterable, message, tmp_path):
    data = {"qdrant": {"path": str(tmp_path)}, "validation": {"filterable": filterable}}
    with pytest.raises(ConfigError) as refused:
        validate_config(data, json.dumps(data, indent=1), "aistack.json")
    assert message in str(refused.value)
    assert re.match(r"aistack\.json:\d+: validation\.filterable", str(refused.value))


def test_filterable_names_a_collection_of_this_file(tmp_path):
    data = {
        "qdrant": {"path": str(tmp_path)},
        "validation": {"collections": ["docs"], "filterable": {"docs": ["topic"]}},
    }
    assert validate_config(data).validation.filterable == {"docs": ["topic"]}
    assert ValidationConfig().filterable == {}
