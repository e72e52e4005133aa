"""A real ACME server for the tests: pebble (Let's Encrypt's test CA) with
pebble-challtestsrv as its DNS, every name resolving to 127.0.0.1, on free ports."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from aistack.stores.private_postgres import free_port
from tests.tools import tool_missing


def write_api_certificate(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a 127.0.0.1/localhost certificate for pebble's own HTTPS API
    (Debian ships none). Returns (CA file, certificate, key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aistack test API CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = directory / "api-ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file = directory / "api-cert.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file = directory / "api-key.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_file, cert_file, key_file


@dataclass
class Pebble:
    directory: Path
    nonce_reject_percent: int = 0
    authz_reuse_percent: int = 50
    eab_keys: dict[str, str] | None = None  # key id -> base64url HMAC key; required if set
    validity_seconds: int = 0  # 0: pebble's default (5 years)
    # HOST:PORT of a DNS server (tests/bind.py) to resolve names and DNS-01 records
    # with, instead of pebble-challtestsrv.
    dns_server: str | None = None
    binary: str = "pebble"  # e.g. ari_pebble(): trixie's 2.6, which serves renewalInfo

    def __post_init__(self) -> None:
        self.api_port = free_port()
        self.management_port = free_port()
        self.http_port = free_port()
        self.dns_port = free_port()
        self.challtest_management = free_port()
        self.ca_file, self.cert_file, self.key_file = write_api_certificate(self.directory)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[BinaryIO] = []

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}/dir"

    @property
    def http_address(self) -> str:
        """Where pebble looks for HTTP-01 answers (for names resolving to 127.0.0.1)."""
        return f"127.0.0.1:{self.http_port}"

    def acme_settings(self, files: Path) -> dict[str, Any]:
        """`acme` keys for a client of this pebble answering on `http_address`, its
        certificates and state under `files`."""
        return {
            "accept_terms": True,
            "directory_url": self.directory_url,
            "ca_bundle": str(self.ca_file),
            "challenge": "standalone",
            "http_address": self.http_address,
            "cert_dir": str(files / "certs"),
            "state_dir": str(files / "state"),
        }

    def start(self) -> None:
        config = self.directory / "pebble.json"
        config.write_text(
            json.dumps(
                {
                    "pebble": {
                        "listenAddress": f"127.0.0.1:{self.api_port}",
                        "managementListenAddress": f"127.0.0.1:{self.management_port}",
                        "certificate": str(self.cert_file),
                        "privateKey": str(self.key_file),
                        "httpPort": self.http_port,
                        "tlsPort": free_port(),
                        "ocspResponderURL": "",
                        "externalAccountBindingRequired": bool(self.eab_keys),
                        "externalAccountMACKeys": self.eab_keys or {},
                        **(
                            {"certificateValidityPeriod": self.validity_seconds}
                            if self.validity_seconds
                            else {}
                        ),
                    }
                }
            )
        )
        if self.dns_server is None:
            self._start_challtestsrv()
        self._start_pebble(config, self.dns_server or f"127.0.0.1:{self.dns_port}")

    def _start_challtestsrv(self) -> None:
        log = open(self.directory / "challtestsrv.log", "wb")  # noqa: SIM115
        self.logs.append(log)
        self.processes.append(
            subprocess.Popen(
                [
                    "pebble-challtestsrv",
                    "-defaultIPv4",
                    "127.0.0.1",
                    "-defaultIPv6",
                    "",
                    "-dns01",
                    f"127.0.0.1:{self.dns_port}",
                    "-http01",
                    "",
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                    "-management",
                    f"127.0.0.1:{self.challtest_management}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )

    def _start_pebble(self, config: Path, dns_server: str) -> None:
        env = {
            **os.environ,
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_WFE_NONCEREJECT": str(self.nonce_reject_percent),
            "PEBBLE_AUTHZREUSE": str(self.authz_reuse_percent),
        }
        self.log_file = self.directory / "pebble.log"
        log = open(self.log_file, "wb")  # noqa: SIM115
        self.logs.append(log)
        self.processes.append(
            subprocess.Popen(
                [self.binary, "-config", str(config), "-dnsserver", dns_server],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(self.directory_url, context=context, timeout=2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"pebble did not start: {self.log_file.read_text()[-2000:]}"
                    ) from None
                time.sleep(0.1)

    def issuing_roots(self) -> list[x509.Certificate]:
        """Pebble's issuing root changes every start: ask it."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        with urllib.request.urlopen(
            f"https://127.0.0.1:{self.management_port}/roots/0", context=context, timeout=5
        ) as response:
            return x509.load_pem_x509_certificates(response.read())

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
        self.processes.clear()
        for log in self.logs:
            log.close()
        self.logs.clear()


ARI_PEBBLE_DIRECTORY = "/opt/pebble-trixie"


def ari_pebble() -> str:
    """A pebble that serves ARI (RFC 9773): $AISTACK_PEBBLE_ARI, else trixie's 2.6 where
    .ci/run unpacks it. Bookworm's 2.4 has no renewalInfo."""
    binary = os.environ.get("AISTACK_PEBBLE_ARI") or f"{ARI_PEBBLE_DIRECTORY}/usr/bin/pebble"
    if not os.access(binary, os.X_OK):
        tool_missing(
            f"pebble with ARI ({binary})",
            f"unpack Debian trixie's pebble (2.6) into {ARI_PEBBLE_DIRECTORY} as .ci/run does, "
            "or point AISTACK_PEBBLE_ARI at a pebble >= 2.6",
        )
    return binary


def running_pebble(directory: Path, **options: Any) -> Iterator[Pebble]:
    tools = ("pebble",) if options.get("dns_server") else ("pebble", "pebble-challtestsrv")
    for tool in tools:
        if shutil.which(tool) is None:
            tool_missing(tool, "apt-get install pebble")
    server = Pebble(directory, **options)
    server.start()
    try:
        yield server
    finally:
        server.stop()
