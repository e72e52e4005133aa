"""DNS-01: the TXT record `_acme-challenge.<name>` holds the challenge's value.

Published by RFC 2136 dynamic update signed with TSIG (dnspython), or by the user's
program called as lego's exec provider calls its own (`COMMAND present|cleanup
_acme-challenge.NAME. VALUE`). The CA is told to look only once every checked server
answers every record (bounded by `propagation_timeout_seconds`): the zone's authoritative
servers by default, or `check_servers`. What was published is removed afterwards, also
when the order failed.
"""

from __future__ import annotations

import base64
import binascii
import re
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Protocol

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.tsig
import dns.update

from aistack.acme.challenges import ChallengeSetupError
from aistack.config import ConfigError, ExecDns, Rfc2136Dns, parse_dns_server, read_secret
from aistack.observability.logs import EventLog

log = EventLog("acme")
QUERY_TIMEOUT_SECONDS = 2.0
UPDATE_TIMEOUT_SECONDS = 10.0
RECORD_TTL = 60
POLL_FIRST_SECONDS = 0.05
POLL_MAX_SECONDS = 2.0
# The config's names (BIND's and lego's) as dnspython knows them: hmac-md5 is the one whose
# DNS name differs (RFC 8945 section 6).
TSIG_ALGORITHMS = {
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha1": dns.tsig.HMAC_SHA1,
    "hmac-md5": dns.tsig.HMAC_MD5,
}
# tsig-keygen writes `key "NAME" { algorithm ...; secret "BASE64"; };`: accepted as is.
BIND_KEY_SECRET = re.compile(r'secret\s+"([^"]+)"')


def record_name(identifier: str) -> str:
    """Where the CA looks for `identifier` (for `*.x` the CA's authorization names `x`)."""
    return f"_acme-challenge.{identifier.removeprefix('*.')}."


@dataclass(frozen=True)
class Server:
    label: str  # as configured or found (ns1.example.org), for messages
    address: str
    port: int

    def __str__(self) -> str:
        shown = f"{self.address}:{self.port}"
        return shown if self.label in (shown, self.address) else f"{self.label} ({shown})"


def resolve_server(value: str) -> Server:
    """`HOST:PORT` from the configuration; a host name through the system's resolver
    (dnspython sends to addresses only)."""
    host, port = parse_dns_server(value)
    try:
        address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][4][0]
    except OSError as error:
        raise ChallengeSetupError(f"cannot resolve the DNS server {host}: {error}") from None
    return Server(value, str(address), port)


def describe(error: BaseException) -> str:
    """A network or DNS error in a few words."""
    if isinstance(error, dns.exception.Timeout):
        return "no answer (timed out)"
    if isinstance(error, OSError):
        return (error.strerror or str(error)).lower()
    return str(error)


class Publisher(Protocol):
    def present(self, fqdn: str, value: str) -> None: ...

    def cleanup(self, fqdn: str, value: str) -> None: ...

    def default_servers(self, fqdn: str) -> list[Server]: ...


class Rfc2136Publisher:
    def __init__(self, config: Rfc2136Dns) -> None:
        self.config = config
        self.server = resolve_server(config.server)
        self.key = dns.tsig.Key(
            config.tsig_key_name, tsig_secret(config), TSIG_ALGORITHMS[config.tsig_algorithm]
        )
        self.zones: dict[str, dns.name.Name] = {}

    def present(self, fqdn: str, value: str) -> None:
        zone = self.zone_of(fqdn)
        update = dns.update.UpdateMessage(zone, keyring=self.key)
        update.add(dns.name.from_text(fqdn), RECORD_TTL, dns.rdatatype.TXT, f'"{value}"')
        self._send(update, fqdn, zone)

    def cleanup(self, fqdn: str, value: str) -> None:
        zone = self.zone_of(fqdn)
        update = dns.update.UpdateMessage(zone, keyring=self.key)
        update.delete(dns.name.from_text(fqdn), dns.rdatatype.TXT, f'"{value}"')
        self._send(update, fqdn, zone)

    def zone_of(self, fqdn: str) -> dns.name.Name:
        """The zone holding `fqdn`, from the update server itself: it must be authoritative
        for it. One signed SOA query, as certbot's rfc2136 plugin does: an authoritative
        server answers with the zone's SOA (in the authority section for a name below the
        apex), and a wrong key fails here, before anything is published."""
        if fqdn in self.zones:
            return self.zones[fqdn]
        query = dns.message.make_query(fqdn, dns.rdatatype.SOA)
        query.use_tsig(self.key)
        response = self._exchange(query, f"the SOA query for {fqdn}")
        rcode = response.rcode()
        for rrset in (*response.answer, *response.authority):
            if rrset.rdtype == dns.rdatatype.SOA and response.flags & dns.flags.AA:
                self.zones[fqdn] = rrset.name
                return rrset.name
        raise ChallengeSetupError(
            f"the DNS server {self.server} (acme.dns.server) is not authoritative for {fqdn}"
            f" (it answered {dns.rcode.to_text(rcode)} to an SOA query): name the primary"
            " server of the zone"
        )

    def _send(self, update: dns.update.UpdateMessage, fqdn: str, zone: dns.name.Name) -> None:
        response = self._exchange(update, f"the update of {fqdn}")
        rcode = response.rcode()
        if rcode == dns.rcode.NOERROR:
            return
        key = self.config.tsig_key_name
        why = {
            dns.rcode.REFUSED: f"does its allow-update or update-policy for {zone} name key {key}?",
            dns.rcode.NOTAUTH: f"is it the primary server of {zone}, and is key {key} right?",
        }.get(rcode, "see the DNS server's log")
        raise ChallengeSetupError(
            f"the DNS server {self.server} answered {dns.rcode.to_text(rcode)} to the update"
            f" of {fqdn}: {why}"
        )

    def _exchange(self, message: dns.message.Message, what: str) -> dns.message.Message:
        server = self.server
        try:
            return dns.query.tcp(
                message, server.address, port=server.port, timeout=UPDATE_TIMEOUT_SECONDS
            )
        except (dns.tsig.PeerBadKey, dns.tsig.PeerBadSignature, dns.tsig.PeerBadTime) as error:
            # The server could not verify our signature: it names the reason, not the fix.
            reason = {
                dns.tsig.PeerBadKey: f"does not know key {self.config.tsig_key_name}",
                dns.tsig.PeerBadSignature: "found the signature wrong",
                dns.tsig.PeerBadTime: "found the signature's time wrong (is the clock right?)",
            }[type(error)]
            raise ChallengeSetupError(
                f"the DNS server {server} refused TSIG key {self.config.tsig_key_name} ({reason})"
                " for " + what + ": check acme.dns.tsig_key_name, tsig_algorithm and the secret"
                " in tsig_key_file"
            ) from None
        except (OSError, dns.exception.DNSException) as error:
            raise ChallengeSetupError(
                f"cannot reach the DNS server {server} (acme.dns.server) for {what}:"
                f" {describe(error)}"
            ) from None

    def default_servers(self, fqdn: str) -> list[Server]:
        zone = self.zone_of(fqdn)
        at_server = dns.resolver.Resolver(configure=False)
        at_server.nameservers = [self.server.address]
        at_server.port = self.server.port
        return zone_servers(zone, [at_server, dns.resolver.Resolver()])


def tsig_secret(config: Rfc2136Dns) -> str:
    """The base64 secret from `tsig_key_file`: the secret alone, or tsig-keygen's output."""
    try:
        text = read_secret(config.tsig_key_file)
    except ConfigError as error:
        raise ChallengeSetupError(f"acme.dns.tsig_key_file: {error}") from None
    found = BIND_KEY_SECRET.search(text)
    secret = (found[1] if found else text).strip()
    try:
        base64.b64decode(secret, validate=True)
    except binascii.Error:
        raise ChallengeSetupError(
            f"acme.dns.tsig_key_file {config.tsig_key_file} holds no base64 TSIG secret"
            " (write the secret, or the key file tsig-keygen prints)"
        ) from None
    return secret


class ExecPublisher:
    def __init__(self, config: ExecDns) -> None:
        self.config = config

    def present(self, fqdn: str, value: str) -> None:
        self._run("present", fqdn, value)

    def cleanup(self, fqdn: str, value: str) -> None:
        self._run("cleanup", fqdn, value)

    def _run(self, action: str, fqdn: str, value: str) -> None:
        command = [self.config.command, action, fqdn, value]
        shown = f"acme.dns.command {self.config.command} {action} {fqdn}"
        timeout = self.config.command_timeout_seconds
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
            )
        except OSError as error:
            raise ChallengeSetupError(f"cannot run {shown}: {describe(error)}") from None
        except subprocess.TimeoutExpired:
            raise ChallengeSetupError(
                f"{shown} did not finish within {timeout:g} s (acme.dns.command_timeout_seconds)"
            ) from None
        output = (result.stdout + result.stderr).strip().splitlines()
        if result.returncode != 0:
            last = f": {output[-1].strip()}" if output else ""
            raise ChallengeSetupError(f"{shown} exited {result.returncode}{last}")
        log.info("acme.dns_command", action=action, record=fqdn)

    def default_servers(self, fqdn: str) -> list[Server]:
        system = dns.resolver.Resolver()
        try:
            zone = dns.resolver.zone_for_name(fqdn, resolver=system, lifetime=10)
            if zone == dns.name.root:
                # What a public resolver says of a name no one delegates (e.g. under .test).
                raise dns.resolver.NXDOMAIN(qnames=[dns.name.from_text(fqdn)])
        except dns.exception.DNSException as error:
            raise ChallengeSetupError(
                f"cannot find the zone of {fqdn} through the system's resolver ({error}):"
                " set acme.dns.check_servers"
            ) from None
        return zone_servers(zone, [system])


def zone_servers(zone: dns.name.Name, resolvers: list[dns.resolver.Resolver]) -> list[Server]:
    """The zone's NS, each at its addresses, port 53: each is asked of the resolvers in turn."""
    names: list[dns.name.Name] = []
    servers: list[Server] = []
    problem = ""
    for resolver in resolvers:
        try:
            names = [rdata.target for rdata in resolver.resolve(zone, dns.rdatatype.NS)]
            break
        except dns.exception.DNSException as error:
            problem = str(error)
    for name in names:
        for resolver in resolvers:
            found = [
                Server(name.to_text(omit_final_dot=True), rdata.address, 53)
                for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
                for rdata in _addresses(resolver, name, rdtype)
            ]
            if found:
                servers += found
                break
    if not servers:
        raise ChallengeSetupError(
            f"cannot find the authoritative servers of {zone} ({problem or 'no addresses'}):"
            " set acme.dns.check_servers"
        )
    return servers


def _addresses(
    resolver: dns.resolver.Resolver, name: dns.name.Name, rdtype: dns.rdatatype.RdataType
) -> list[Any]:
    """The A or AAAA rdatas of `name`; none when it has none or the resolver cannot say."""
    try:
        return list(resolver.resolve(name, rdtype))
    except dns.exception.DNSException:
        return []


def txt_values(fqdn: str, server: Server) -> set[str]:
    query = dns.message.make_query(fqdn, dns.rdatatype.TXT)
    response, _ = dns.query.udp_with_fallback(
        query, server.address, port=server.port, timeout=QUERY_TIMEOUT_SECONDS
    )
    return {
        b"".join(rdata.strings).decode(errors="replace")
        for rrset in response.answer
        if rrset.rdtype == dns.rdatatype.TXT
        for rdata in rrset
    }


def wait_visible(
    records: dict[str, set[str]], servers: dict[str, list[Server]], timeout: float
) -> None:
    """Until each record's servers answer it with all its values, or ChallengeSetupError
    naming what was missing where."""
    deadline = time.monotonic() + timeout
    pending = {(server, fqdn) for fqdn in records for server in servers[fqdn]}
    problems: dict[tuple[Server, str], str] = {}
    pause = POLL_FIRST_SECONDS
    while True:
        for server, fqdn in sorted(pending, key=str):
            try:
                seen = txt_values(fqdn, server)
            except (OSError, dns.exception.DNSException) as error:
                problems[(server, fqdn)] = describe(error)
                continue
            if records[fqdn] <= seen:
                pending.discard((server, fqdn))
            else:
                problems[(server, fqdn)] = "holds no TXT record with the challenge's value"
        if not pending:
            return
        if time.monotonic() + pause > deadline:
            server, fqdn = min(pending, key=str)
            where = ", ".join(sorted({str(s) for s, _ in pending}))
            raise ChallengeSetupError(
                f"TXT {fqdn} not visible on {where} within {timeout:g} s"
                f" (acme.dns.propagation_timeout_seconds): {server}: {problems[(server, fqdn)]}"
            )
        time.sleep(pause)
        pause = min(pause * 2, POLL_MAX_SECONDS)


class DnsResponder:
    """Publishes each challenge's TXT value, waits for the servers, removes them on close."""

    kind = "dns-01"

    def __init__(self, config: Rfc2136Dns | ExecDns) -> None:
        self.config = config
        self.publisher: Publisher = (
            Rfc2136Publisher(config) if isinstance(config, Rfc2136Dns) else ExecPublisher(config)
        )
        self.published: list[tuple[str, str]] = []

    def add(self, identifier: str, token: str, validation: str) -> None:
        fqdn = record_name(identifier)
        # Noted before it is asked for: a present that failed may still have added the
        # record (a program that exited 1 after its API call, an update answer lost), and
        # close() removes it as lego's cleanup does.
        self.published.append((fqdn, validation))
        self.publisher.present(fqdn, validation)
        log.info("acme.dns_record_published", record=fqdn)

    def wait_ready(self) -> None:
        records: dict[str, set[str]] = {}
        for fqdn, value in self.published:
            records.setdefault(fqdn, set()).add(value)
        if not records:
            return
        servers: dict[str, list[Server]] = {}
        if self.config.check_servers:
            configured = [resolve_server(value) for value in self.config.check_servers]
            servers = dict.fromkeys(records, configured)
        else:
            # Per record: one certificate may name hosts of several zones.
            servers = {fqdn: self.publisher.default_servers(fqdn) for fqdn in records}
        began = time.monotonic()
        wait_visible(records, servers, self.config.propagation_timeout_seconds)
        log.info(
            "acme.dns_records_visible",
            records=len(records),
            servers=",".join(sorted({str(s) for found in servers.values() for s in found})),
            seconds=f"{time.monotonic() - began:.2f}",
        )

    def close(self) -> None:
        """Remove what was published; a record that cannot be removed is logged, never
        raised: it must not hide why the order failed, nor fail a certificate issued."""
        while self.published:
            fqdn, value = self.published.pop()
            try:
                self.publisher.cleanup(fqdn, value)
            except ChallengeSetupError as error:
                log.warning("acme.dns_cleanup_failed", record=fqdn, error=str(error))
