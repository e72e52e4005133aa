"""Configuration: TOML and JSON give the same result; unknown keys and bad values are errors
naming the key, the file and the line; secrets never printed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from aistack.config import ConfigError, load_config, normalise_text, read_secret

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
