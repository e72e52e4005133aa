#!/usr/bin/env python3
"""ACME benchmark: wall time per forced issuance, aistack against certbot and lego.

    python3 bench/acme.py [--runs N] [--json] [--authz-reuse 50,0] [--challenges http-01,dns-01]

One pebble (Debian's, started here through tests/pebble.py: every name resolves to
127.0.0.1, nonce rejection off) serves every tool of a pass. Each tool keeps its own
account and certificate directory across its runs and issues a certificate for the same
two names, answering HTTP-01 with its own standalone server on pebble's HTTP port:

  aistack CLI   `aistack acme renew --config F --force` as a subprocess (the console
                script next to this interpreter, not a pyenv shim);
  aistack lib   `aistack.acme.renew.renew(config, force=True)` in this process: the same
                exchange without interpreter start-up and imports;
  certbot       `certbot certonly --standalone --force-renewal ...` (REQUESTS_CA_BUNDLE
                names the CA of pebble's API);
  lego          `lego ... run` the first time, then `lego ... renew --days 999999
                --no-random-sleep` (more days than the 5-year certificate has left forces
                a new one; LEGO_CA_CERTIFICATES names the CA of pebble's API).

Runs go round-robin (one issuance per tool, the starting tool rotating), N + 1 rounds:
round 0 registers the accounts and is reported as "first"; the median, min and max are
over the N later rounds. Every issuance is checked: a serial never seen before in this
pass, both names, an EC P-256 key, and a chain that verifies to the root of THIS pebble
(it makes a new root at every start); at the end every serial must be in pebble's log.

Pebble reuses an account's valid authorizations (50% of the time by default), which skips
the HTTP-01 validation: a second pass with a fresh pebble at PEBBLE_AUTHZREUSE=0 makes
nearly every run validate both names (--authz-reuse 50 runs the default pass only). Pebble
makes a new authorization only when rand.Intn(100) > percent, so "0" still reuses about 1%
of names and "50" 51%; the table counts the validations pebble really did per run.

DNS-01 pass (`--challenges dns-01`; needs bind9, and python3-certbot-dns-rfc2136 for
certbot's row): a BIND 9 (tests/bind.py) takes RFC 2136 updates signed with TSIG and pebble
resolves through it, PEBBLE_AUTHZREUSE=0; each tool orders `*.dnsbench.aistack.test` and
`dnsbench.aistack.test` (one TXT name, two values) with its rfc2136 support: aistack's
`dns = {provider = "rfc2136"}` checking bind before answering, `certbot --dns-rfc2136` with
`--dns-rfc2136-propagation-seconds 0` (certbot sleeps instead of checking), `lego --dns
rfc2136 --dns.disable-cp` (its check would ask the zone's NS at port 53, where nothing of
this bench listens) with RFC2136_SEQUENCE_INTERVAL=1 (default 60 s between challenges).

Also measured: start-up (median of 5) of `python3 -c pass`, `aistack --version`, the
imports of `aistack acme renew`, `certbot --version` and `lego --version`.
Goals (per pass): aistack CLI median / certbot median < 1 and aistack / lego < 1.
Every goal prints PASS or FAIL; the exit status is 0 unless something crashed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification

# This file is named acme.py: bench/ at the head of sys.path would shadow the `acme`
# library. The repository takes its place, for `bench.common`.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import aistack  # noqa: E402
from aistack.acme.renew import renew  # noqa: E402
from aistack.config import validate_config  # noqa: E402
from bench.common import (  # noqa: E402
    Goal,
    Out,
    finish,
    machine,
    machine_line,
    missing_tools,
    scratch_directory,
)
from tests.bind import KEY_NAME, Bind  # noqa: E402
from tests.pebble import Pebble  # noqa: E402

DOMAINS = ["bench.aistack.test", "www.bench.aistack.test"]
# The DNS-01 pass: a wildcard and its base name, one TXT name holding two values.
DNS_DOMAINS = ["*.dnsbench.aistack.test", "dnsbench.aistack.test"]
EMAIL = "bench@aistack.test"
TIMEOUT_SECONDS = 300
STARTUP_REPEATS = 5
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY")
PROXY_VARIABLES += ("ALL_PROXY", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")


DNS_NOTES = (
    "aistack: answers once bind serves both TXT values (check_servers = [bind]); a real check",
    "certbot: --dns-rfc2136-propagation-seconds 0 (it sleeps that long instead of checking;"
    " default 60)",
    "lego: --dns.disable-cp (its check asks the zone's NS at port 53, where nothing of this"
    " bench listens); RFC2136_SEQUENCE_INTERVAL=1 (lego solves rfc2136 challenges one after"
    " another, 60 s apart by default); RFC2136_POLLING_INTERVAL=1",
)


class BenchError(Exception):
    """An issuance failed or produced no new certificate: the figures would be wrong."""


# --- the machine and the tools -----------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a tool: no proxies (everything is on 127.0.0.1), no inherited
    CA bundle, plus what the tool needs to trust pebble's API."""
    env = {key: value for key, value in os.environ.items() if key not in PROXY_VARIABLES}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


def run(command: list[str], **options: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, **options
    )


def dpkg_version(package: str) -> str | None:
    if shutil.which("dpkg-query") is None:
        return None
    result = run(["dpkg-query", "-W", "-f", "${Version}", package])
    return result.stdout.strip() if result.returncode == 0 and result.stdout else None


def first_line(command: list[str]) -> str:
    try:
        result = run(command)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"? ({error})"
    text = (result.stdout or result.stderr).strip()
    return text.splitlines()[0] if text else "?"


def aistack_command() -> list[str]:
    """The console script installed next to this interpreter (what `aistack` runs once
    PATH resolves it; a pyenv shim in front costs extra, measured separately)."""
    script = Path(sys.executable).parent / "aistack"
    if script.exists():
        return [str(script)]
    found = shutil.which("aistack")
    return [found] if found else [sys.executable, "-m", "aistack"]


def versions() -> dict[str, str]:
    """One line per tool. Debian's lego reports its version as "dev": dpkg knows it."""
    from importlib import metadata

    found = {
        "aistack": f"{aistack.__version__} (Python {platform.python_version()}, "
        f"acme library {metadata.version('acme')}, josepy {metadata.version('josepy')})",
        "pebble": f"{dpkg_version('pebble')} (dpkg)",
    }
    if shutil.which("certbot"):
        found["certbot"] = (
            f"{first_line(['certbot', '--version'])} (dpkg certbot {dpkg_version('certbot')}, "
            f"python3-acme {dpkg_version('python3-acme')})"
        )
    if shutil.which("lego"):
        found["lego"] = (
            f"{dpkg_version('lego')} (dpkg; lego --version: {first_line(['lego', '--version'])})"
        )
    return found


def median_wall(command: list[str], repeats: int = STARTUP_REPEATS) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        result = run(command, env=clean_env(), cwd=tempfile.gettempdir())
        times.append(time.perf_counter() - began)
        if result.returncode != 0:
            raise BenchError(f"{' '.join(command)} exited {result.returncode}: {result.stderr}")
    return statistics.median(times)


def startup_costs(say: Out) -> dict[str, float]:
    script = aistack_command()
    commands: dict[str, list[str]] = {
        "python3 -c pass": [sys.executable, "-c", "pass"],
        "aistack --version": [*script, "--version"],
        "python3 -c 'import aistack.cli, aistack.acme.renew'": [
            sys.executable,
            "-c",
            "import aistack.cli, aistack.acme.renew",
        ],
    }
    on_path = shutil.which("aistack")
    if on_path and Path(on_path).resolve() != Path(script[0]).resolve():
        commands[f"aistack --version via PATH ({on_path})"] = [on_path, "--version"]
    if shutil.which("certbot"):
        commands["certbot --version"] = ["certbot", "--version"]
    if shutil.which("lego"):
        commands["lego --version"] = ["lego", "--version"]
    costs = {}
    say(f"start-up, median of {STARTUP_REPEATS} (wall):")
    for label, command in commands.items():
        costs[label] = median_wall(command)
        say(f"  {label:<58} {costs[label] * 1000:7.0f} ms")
    say()
    return costs


# --- the clients --------------------------------------------------------------------------


@dataclass
class Client:
    key: str
    label: str
    directory: Path
    pebble: Pebble
    domains: list[str] = field(default_factory=lambda: DOMAINS)
    times: list[float] = field(default_factory=list)
    serials: list[int] = field(default_factory=list)
    validations: list[int] = field(default_factory=list)

    def issue(self, first: bool) -> None:
        raise NotImplementedError

    def chain_file(self) -> Path:
        raise NotImplementedError

    @property
    def name(self) -> str:
        """The certificate's name: its first domain, without a wildcard's "*."."""
        return self.domains[0].removeprefix("*.")

    def checked_run(self, command: list[str], env: dict[str, str]) -> None:
        result = run(command, env=env, cwd=self.directory)
        if result.returncode != 0:
            raise BenchError(
                f"{self.label}: {' '.join(command)} exited {result.returncode}\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )


class AistackCli(Client):
    def __init__(self, directory: Path, pebble: Pebble, acme: dict[str, Any] | None = None) -> None:
        super().__init__("aistack", "aistack acme renew (CLI)", directory, pebble)
        settings = aistack_config(directory, pebble, acme)
        self.config_file = directory / "aistack.json"
        self.config_file.write_text(json.dumps(settings))
        self.config = validate_config(settings).acme
        self.domains = list(self.config.domains)

    def issue(self, first: bool) -> None:
        command = [*aistack_command(), "acme", "renew", "--config", str(self.config_file)]
        command.append("--force")
        result = run(command, env=clean_env(), cwd=self.directory)
        if result.returncode != 0 or result.stdout != f"changed {self.name}\n":
            raise BenchError(
                f"{self.label} exited {result.returncode}, stdout {result.stdout!r}\n"
                f"{result.stderr[-3000:]}"
            )

    def chain_file(self) -> Path:
        return Path(self.config.cert_dir) / self.config.certificate_name / "fullchain.pem"


class AistackLib(Client):
    def __init__(self, directory: Path, pebble: Pebble, acme: dict[str, Any] | None = None) -> None:
        super().__init__("aistack-lib", "aistack renew() in-process", directory, pebble)
        self.config = validate_config(aistack_config(directory, pebble, acme)).acme
        self.domains = list(self.config.domains)

    def issue(self, first: bool) -> None:
        outcome = renew(self.config, force=True)
        if outcome.action != "renewed":
            raise BenchError(f"{self.label}: {outcome.line()}")

    def chain_file(self) -> Path:
        return Path(self.config.cert_dir) / self.config.certificate_name / "fullchain.pem"


class Certbot(Client):
    def __init__(self, directory: Path, pebble: Pebble) -> None:
        super().__init__("certbot", "certbot certonly --standalone", directory, pebble)

    def issue(self, first: bool) -> None:
        command = ["certbot", "certonly", "--standalone", "--non-interactive"]
        command += ["--http-01-address", "127.0.0.1", "--http-01-port", str(self.pebble.http_port)]
        command += ["--server", self.pebble.directory_url, "--agree-tos", "-m", EMAIL]
        self.run_certbot(command)

    def run_certbot(self, command: list[str]) -> None:
        command += ["--no-eff-email", "--force-renewal", "--cert-name", self.name]
        command += ["--key-type", "ecdsa", "--elliptic-curve", "secp256r1"]
        for domain in self.domains:
            command += ["-d", domain]
        for name in ("config", "work", "logs"):
            command += [f"--{name}-dir", str(self.directory / name)]
        self.checked_run(command, clean_env(REQUESTS_CA_BUNDLE=str(self.pebble.ca_file)))

    def chain_file(self) -> Path:
        return self.directory / "config" / "live" / self.name / "fullchain.pem"


class Lego(Client):
    def __init__(self, directory: Path, pebble: Pebble) -> None:
        super().__init__("lego", "lego run / renew", directory, pebble)

    def issue(self, first: bool) -> None:
        self.run_lego(["--http", "--http.port", self.pebble.http_address], first)

    def run_lego(self, solver: list[str], first: bool, **env: str) -> None:
        command = ["lego", "--server", self.pebble.directory_url, "--email", EMAIL]
        command += ["--accept-tos", "--key-type", "ec256", "--path", str(self.directory / "lego")]
        for domain in self.domains:
            command += ["--domains", domain]
        command += solver
        command += ["run"] if first else ["renew", "--days", "999999", "--no-random-sleep"]
        self.checked_run(command, clean_env(LEGO_CA_CERTIFICATES=str(self.pebble.ca_file), **env))

    def chain_file(self) -> Path:
        # lego names the files after the first domain, "*" written as "_".
        return self.directory / "lego" / "certificates" / f"{self.domains[0].replace('*', '_')}.crt"


class CertbotDns(Certbot):
    """certbot's dns-rfc2136 plugin (Debian's python3-certbot-dns-rfc2136). It checks no
    server: it sleeps --dns-rfc2136-propagation-seconds (default 60) after the update,
    here 0, so its row is its exchange alone."""

    def __init__(self, directory: Path, pebble: Pebble, bind: Bind) -> None:
        super().__init__(directory, pebble)
        self.label = "certbot --dns-rfc2136"
        self.domains = DNS_DOMAINS
        self.credentials = directory / "rfc2136.ini"
        self.credentials.write_text(
            f"dns_rfc2136_server = 127.0.0.1\ndns_rfc2136_port = {bind.port}\n"
            f"dns_rfc2136_name = {KEY_NAME}\ndns_rfc2136_secret = {bind.secret}\n"
            "dns_rfc2136_algorithm = HMAC-SHA256\n"
        )
        self.credentials.chmod(0o600)

    def issue(self, first: bool) -> None:
        command = ["certbot", "certonly", "--non-interactive", "--dns-rfc2136"]
        command += ["--dns-rfc2136-credentials", str(self.credentials)]
        command += ["--dns-rfc2136-propagation-seconds", "0"]
        command += ["--server", self.pebble.directory_url, "--agree-tos", "-m", EMAIL]
        self.run_certbot(command)


class LegoDns(Lego):
    """lego's rfc2136 provider. --dns.disable-cp: lego's propagation check asks the zone's
    NS at port 53, where nothing of this bench listens (aistack checks bind through
    check_servers). RFC2136_SEQUENCE_INTERVAL=1: lego solves rfc2136 challenges one after
    another, 60 s apart by default; RFC2136_POLLING_INTERVAL=1 (default 2)."""

    def __init__(self, directory: Path, pebble: Pebble, bind: Bind) -> None:
        super().__init__(directory, pebble)
        self.label = "lego --dns rfc2136"
        self.domains = DNS_DOMAINS
        self.bind = bind

    def issue(self, first: bool) -> None:
        self.run_lego(
            ["--dns", "rfc2136", "--dns.disable-cp"],
            first,
            RFC2136_NAMESERVER=self.bind.address,
            RFC2136_TSIG_KEY=KEY_NAME,
            RFC2136_TSIG_SECRET=self.bind.secret,
            RFC2136_TSIG_ALGORITHM="hmac-sha256.",
            RFC2136_SEQUENCE_INTERVAL="1",
            RFC2136_POLLING_INTERVAL="1",
        )


def aistack_config(
    directory: Path, pebble: Pebble, acme: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "qdrant": {"path": str(directory / "qdrant")},
        "acme": {
            "domains": DOMAINS,
            "email": EMAIL,
            **pebble.acme_settings(directory),
            **(acme or {}),
        },
    }


# --- one pass against one pebble ---------------------------------------------------------


def check_issuance(
    client: Client, roots: list[x509.Certificate], seen: dict[int, str], before: int | None
) -> int:
    """The file the tool writes holds a new certificate, for both names, EC P-256, that
    verifies to this pebble's root. Returns its serial."""
    path = client.chain_file()
    try:
        chain = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as error:
        raise BenchError(f"{client.label}: no certificate at {path}: {error}") from None
    leaf = chain[0]
    serial = leaf.serial_number
    if serial == before or serial in seen:
        raise BenchError(
            f"{client.label}: {path} holds serial {serial:x}, not a new certificate "
            f"(seen before from {seen.get(serial, client.label)})"
        )
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    if sorted(names.get_values_for_type(x509.DNSName)) != sorted(client.domains):
        raise BenchError(f"{client.label}: certificate names {names}, expected {client.domains}")
    key = leaf.public_key()
    if not (isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"):
        raise BenchError(f"{client.label}: certificate key is {key}, expected EC P-256")
    store = verification.Store(roots)
    for domain in client.domains:
        host = domain.replace("*.", "any.")  # a name the wildcard covers
        verifier = (
            verification.PolicyBuilder().store(store).build_server_verifier(x509.DNSName(host))
        )
        try:
            verifier.verify(leaf, chain[1:])
        except verification.VerificationError as error:
            raise BenchError(
                f"{client.label}: the certificate does not verify to this pebble's root "
                f"(another CA?): {error}"
            ) from None
    seen[serial] = client.label
    return serial


def current_serial(client: Client) -> int | None:
    try:
        return x509.load_pem_x509_certificate(client.chain_file().read_bytes()).serial_number
    except (OSError, ValueError):
        return None


def pebble_serials(pebble: Pebble) -> set[int]:
    """Serials pebble logged as issued ("Issued certificate serial 1a2b... for order ...")."""
    text = pebble.log_file.read_text(errors="replace")
    return {int(s, 16) for s in re.findall(r"certificate serial ([0-9a-fA-F]+)", text)}


def validations_since(pebble: Pebble, offset: int) -> int:
    """Challenges pebble's VA took up since `offset` of its log: 0 when it reused both
    earlier validations, 2 when it reused none. Counted on the line the VA writes when it
    starts a validation, which is in the log before the client can see the result; the
    "set VALID" line comes after the status change and may land in the next tool's run."""
    with open(pebble.log_file, "rb") as log:
        log.seek(offset)
        return log.read().count(b"Pulled a task from the Tasks queue")


def summary(times: list[float]) -> dict[str, float]:
    later = times[1:]
    return {
        "first_s": round(times[0], 4),
        "median_s": round(statistics.median(later), 4) if later else float("nan"),
        "min_s": round(min(later), 4) if later else float("nan"),
        "max_s": round(max(later), 4) if later else float("nan"),
    }


def dns_clients(wanted: list[str], say: Out) -> list[str]:
    """The tools of the DNS-01 pass: those of the HTTP-01 passes whose DNS part is here."""
    if shutil.which("named") is None:
        say("named is missing: apt-get install bind9 (the DNS-01 pass is skipped)")
        return []
    if "certbot" in wanted and dpkg_version("python3-certbot-dns-rfc2136") is None:
        say(
            "certbot's dns-rfc2136 plugin is missing: apt-get install python3-certbot-dns-rfc2136"
            " (its DNS-01 row is skipped)"
        )
        wanted = [key for key in wanted if key != "certbot"]
    return wanted


def make_client(key: str, home: Path, pebble: Pebble, bind: Bind | None) -> Client:
    """The tool `key` answering HTTP-01, or with `bind`, DNS-01 through RFC 2136 updates."""
    if bind is None:
        kinds = {"aistack": AistackCli, "aistack-lib": AistackLib, "certbot": Certbot, "lego": Lego}
        return kinds[key](home, pebble)
    # aistack checks the record on bind itself before answering (check_servers).
    dns = {"domains": DNS_DOMAINS, "challenge": "dns-01", "dns": bind.dns_settings()}
    if key == "aistack":
        return AistackCli(home, pebble, dns)
    if key == "aistack-lib":
        return AistackLib(home, pebble, dns)
    return {"certbot": CertbotDns, "lego": LegoDns}[key](home, pebble, bind)


def bench_pass(
    reuse: int, runs: int, say: Out, clients_wanted: list[str], dns: bool = False
) -> tuple[dict[str, Any], list[Goal]]:
    challenge = "DNS-01 rfc2136" if dns else "HTTP-01"
    with (
        scratch_directory(f"aistack-bench-acme-{reuse}-") as directory,
        contextlib.ExitStack() as stack,
    ):
        bind = None
        if dns:
            (directory / "bind").mkdir()
            bind = Bind(directory / "bind")
            stack.callback(bind.stop)
            bind.start()
        (directory / "pebble").mkdir()
        pebble = Pebble(
            directory / "pebble",
            nonce_reject_percent=0,
            authz_reuse_percent=reuse,
            dns_server=bind.address if bind else None,
        )
        stack.callback(pebble.stop)
        pebble.start()
        roots = pebble.issuing_roots()
        kind = {50: "pebble default", 0: "nearly every run validates"}.get(reuse, "")
        where = (
            f"DNS-01 by RFC 2136 updates to BIND 9 on {bind.address}, pebble resolving there"
            if bind
            else f"HTTP-01 on {pebble.http_address}"
        )
        say(
            f"pass: authz reuse {reuse}%{f' ({kind})' if kind else ''}, "
            f"nonce reject 0%, pebble {pebble.directory_url}, {where}, "
            f"{runs} forced issuances per tool after the first, 2 names"
        )
        clients: list[Client] = []
        for key in clients_wanted:
            home = directory / key
            home.mkdir()
            clients.append(make_client(key, home, pebble, bind))
        if bind:
            for line in DNS_NOTES:
                say(f"  {line}")
        seen: dict[int, str] = {}
        began = time.perf_counter()
        for round_number in range(runs + 1):
            shift = round_number % len(clients)
            for client in clients[shift:] + clients[:shift]:
                before = current_serial(client)
                log_offset = pebble.log_file.stat().st_size
                started = time.perf_counter()
                client.issue(first=round_number == 0)
                client.times.append(time.perf_counter() - started)
                client.serials.append(check_issuance(client, roots, seen, before))
                client.validations.append(validations_since(pebble, log_offset))
        elapsed = time.perf_counter() - began
        logged = pebble_serials(pebble)
        missing = {f"{serial:x}": label for serial, label in seen.items() if serial not in logged}
        if missing:
            raise BenchError(f"serials not in this pebble's log: {missing}")

    figures: dict[str, Any] = {
        "challenge": challenge,
        "authz_reuse_percent": reuse,
        "runs": runs,
        "directory_url": pebble.directory_url,
        "issued_and_verified": len(seen),
        "seconds": round(elapsed, 1),
        "tools": {},
    }
    say()
    say(
        f"  {'tool':<32} {'first':>7} {'median':>7} {'min':>7} {'max':>7}  "
        "validated names per later run (of 2)"
    )
    for client in clients:
        stats = summary(client.times)
        later = client.validations[1:]
        mean_validated = statistics.mean(later) if later else float("nan")
        figures["tools"][client.key] = {
            "label": client.label,
            **stats,
            "times_s": [round(t, 4) for t in client.times],
            "serials": [f"{s:x}" for s in client.serials],
            "validations": client.validations,
        }
        say(
            f"  {client.label:<32} {stats['first_s']:7.3f} {stats['median_s']:7.3f} "
            f"{stats['min_s']:7.3f} {stats['max_s']:7.3f}  {mean_validated:.1f} "
            f"({' '.join(str(v) for v in later)})"
        )
    say("  (seconds of wall time per issuance; median, min and max over the later runs)")
    say(
        f"  {len(seen)} certificates, every one new, for both names, EC P-256, verifying to "
        f"this pebble's root and in its log; pass took {elapsed:.0f} s"
    )
    tools = figures["tools"]
    goals = []
    ratios: dict[str, float] = {}
    if "aistack" in tools and "aistack-lib" in tools:
        overhead = tools["aistack"]["median_s"] - tools["aistack-lib"]["median_s"]
        figures["cli_minus_in_process_s"] = round(overhead, 4)
        say(f"  CLI minus in-process (median): {overhead * 1000:.0f} ms")
    for other in ("certbot", "lego"):
        if "aistack" in tools and other in tools:
            ratio = tools["aistack"]["median_s"] / tools[other]["median_s"]
            ratios[f"aistack/{other}"] = round(ratio, 4)
            first_ratio = tools["aistack"]["first_s"] / tools[other]["first_s"]
            ratios[f"aistack/{other} first run"] = round(first_ratio, 4)
            say(f"  ratio aistack/{other}: median {ratio:.3f}, first run {first_ratio:.3f}")
            goals.append(
                Goal(
                    f"aistack/{other} median < 1 ({challenge}, authz reuse {reuse}%)",
                    ratio < 1,
                    ratio,
                    1.0,
                    value_format=".3f",
                )
            )
    figures["ratios"] = ratios
    say()
    return figures, goals


# --- main ---------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="timed issuances per tool (10)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--authz-reuse",
        default="50,0",
        help="pebble authorization reuse percent, one pass each (default 50,0)",
    )
    parser.add_argument(
        "--challenges",
        default="http-01,dns-01",
        help="http-01 (a pass per --authz-reuse), dns-01 (one pass, authz reuse 0); default both",
    )
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    passes = [int(value) for value in args.authz_reuse.split(",") if value.strip()]
    challenges = {value.strip() for value in args.challenges.split(",") if value.strip()}
    if not challenges <= {"http-01", "dns-01"}:
        parser.error("--challenges takes http-01, dns-01 or both")

    say = Out(args.json)
    started = time.monotonic()
    if missing_tools(say, {"pebble": "pebble", "pebble-challtestsrv": "pebble"}):
        return 1
    host = machine()
    say(machine_line(host))
    found = versions()
    say("versions:")
    for name, value in found.items():
        say(f"  {name:<8} {value}")
    say(f"aistack CLI: {' '.join(aistack_command())}")
    wanted = ["aistack", "aistack-lib"]
    for program in ("certbot", "lego"):
        if shutil.which(program) is None:
            say(f"{program} is missing: apt-get install {program} (its row is skipped)")
        else:
            wanted.append(program)
    say()
    report: dict[str, Any] = {"machine": host, "versions": found, "runs": args.runs}
    report["startup_s"] = {k: round(v, 4) for k, v in startup_costs(say).items()}
    goals: list[Goal] = []
    report["passes"] = []
    for reuse in passes if "http-01" in challenges else []:
        figures, part = bench_pass(reuse, args.runs, say, wanted)
        report["passes"].append(figures)
        goals += part
    if "dns-01" in challenges:
        dns_wanted = dns_clients(wanted, say)
        if dns_wanted:
            figures, part = bench_pass(0, args.runs, say, dns_wanted, dns=True)
            report["passes"].append(figures)
            goals += part
    finish(report, goals, say, args.json, started)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as error:
        print(f"bench failed: {error}", file=sys.stderr)
        sys.exit(1)
