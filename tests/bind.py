"""A real DNS server for the DNS-01 tests: Debian's BIND 9 (`named`) on a free loopback
port, authoritative for one zone whose names all resolve to 127.0.0.1, accepting RFC 2136
updates signed with a TSIG key (or, `allow_update=False`, serving the zone as written)."""

from __future__ import annotations

import base64
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import dns.message
import dns.query
import dns.rdatatype

from aistack.stores.private_postgres import free_port
from tests.tools import tool_missing

ZONE = "aistack.test"
KEY_NAME = "acme-update"
# A second key allowed to update, with the one algorithm whose DNS name is not its short
# name (hmac-md5.sig-alg.reg.int.): that mapping is ours.
MD5_KEY_NAME = "acme-update-md5"


@dataclass
class Bind:
    directory: Path
    zone: str = ZONE
    allow_update: bool = True
    # The TSIG key's base64 secret (a new one by default); generated here rather than by
    # tsig-keygen, since the tests hand it to other tools too.
    secret: str = ""

    def __post_init__(self) -> None:
        self.port = free_port()
        self.secret = self.secret or base64.b64encode(secrets.token_bytes(32)).decode()
        self.key_file = self.directory / "tsig.secret"
        self.key_file.write_text(self.secret + "\n")
        self.md5_secret = base64.b64encode(secrets.token_bytes(16)).decode()
        self.md5_key_file = self.directory / "tsig-md5.secret"
        self.md5_key_file.write_text(self.md5_secret + "\n")
        self.process: subprocess.Popen[bytes] | None = None
        self.log: BinaryIO | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def dns_settings(self, **overrides: Any) -> dict[str, Any]:
        """`acme.dns` for RFC 2136 updates to this server, checked on this server."""
        return {
            "provider": "rfc2136",
            "server": self.address,
            "tsig_key_name": KEY_NAME,
            "tsig_algorithm": "hmac-sha256",
            "tsig_key_file": str(self.key_file),
            "check_servers": [self.address],
            **overrides,
        }

    def start(self) -> None:
        zone_file = self.directory / f"{self.zone}.zone"
        zone_file.write_text(
            f"$TTL 60\n"
            f"@ IN SOA ns.{self.zone}. hostmaster.{self.zone}. 1 60 60 600 60\n"
            f"@ IN NS ns.{self.zone}.\n"
            f"@ IN A 127.0.0.1\n"
            # Every test name resolves, as pebble-challtestsrv's -defaultIPv4 does.
            f"* IN A 127.0.0.1\n"
        )
        update = (
            f'allow-update {{ key "{KEY_NAME}"; key "{MD5_KEY_NAME}"; }};'
            if self.allow_update
            else ""
        )
        config = self.directory / "named.conf"
        config.write_text(
            f'key "{KEY_NAME}" {{ algorithm hmac-sha256; secret "{self.secret}"; }};\n'
            f'key "{MD5_KEY_NAME}" {{ algorithm hmac-md5; secret "{self.md5_secret}"; }};\n'
            "options {\n"
            f'  directory "{self.directory}";\n'
            f'  pid-file "{self.directory}/named.pid";\n'
            f'  session-keyfile "{self.directory}/session.key";\n'
            f"  listen-on port {self.port} {{ 127.0.0.1; }};\n"
            "  listen-on-v6 { none; };\n"
            "  recursion no;\n"
            "  notify no;\n"
            "  dnssec-validation no;\n"
            "};\n"
            "controls { };\n"
            f'zone "{self.zone}" {{ type primary; file "{zone_file}"; {update} }};\n'
        )
        self.log_file = self.directory / "named.log"
        self.log = open(self.log_file, "wb")  # noqa: SIM115
        # -g: foreground, log to stderr; as root it stays root (no -u), which is enough here.
        self.process = subprocess.Popen(
            ["named", "-g", "-c", str(config)], stdout=self.log, stderr=subprocess.STDOUT
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        query = dns.message.make_query(self.zone, dns.rdatatype.SOA)
        while True:
            try:
                dns.query.udp(query, "127.0.0.1", port=self.port, timeout=0.5)
                return
            except (OSError, dns.exception.Timeout):
                assert self.process is not None
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"named did not start: {self.log_file.read_text()[-2000:]}"
                    ) from None
                time.sleep(0.1)

    def txt(self, name: str) -> set[str]:
        """The TXT strings this server holds at `name` (relative to the zone or absolute)."""
        fqdn = name if name.endswith(".") else f"{name}."
        response = dns.query.udp(
            dns.message.make_query(fqdn, dns.rdatatype.TXT), "127.0.0.1", port=self.port, timeout=2
        )
        return {
            b"".join(rdata.strings).decode()
            for rrset in response.answer
            if rrset.rdtype == dns.rdatatype.TXT
            for rdata in rrset
        }

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self.log is not None:
            self.log.close()
            self.log = None


def running_bind(directory: Path, **options: Any) -> Iterator[Bind]:
    if shutil.which("named") is None:
        tool_missing("named", "apt-get install bind9")
    server = Bind(directory, **options)
    server.start()
    try:
        yield server
    finally:
        server.stop()
