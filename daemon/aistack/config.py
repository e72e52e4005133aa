"""The one configuration file of every `aistack` command: TOML or JSON, same keys.

The NixOS module renders the JSON form; users without NixOS write TOML. Unknown keys
and bad values are errors that name the key (and, where the file shows it, the line).
Secrets never stand in the file: only `*_file` paths, read with `read_secret`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple
from urllib.parse import urlsplit

import idna
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from aistack.errors import UsageError

# Patterns are used with fullmatch: `$` would also match before a trailing newline.
COLLECTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# A payload key a filter may name: a plain top-level key. Qdrant reads "." and "[]" in a
# key as a path into nested values, which `validation.filterable` does not offer.
FILTER_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
# The learning store's range conditions (the request model declares them for
# solved_issues): a collection cannot also declare them as exact-match keys.
RANGE_FILTER_KEYS = ("value_score", "created_at")
RATE_LIMIT = re.compile(r"\s*(\d+)\s*/\s*(second|minute|hour|day)\s*")
EMAIL_ADDRESS = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
# What UTS 46 maps to itself: a name of only these is checked without the mapping table,
# which idna loads from a module of 8,000 ranges (2-3 ms of every not-due renewal).
UNMAPPED_DNS_CHARACTERS = re.compile(r"[a-z0-9.-]+")
RATE_WINDOW_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
REDIS_SCHEMES = ("redis", "rediss", "unix")
STAGING_DIRECTORY = "https://acme-staging-v02.api.letsencrypt.org/directory"
PRODUCTION_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"


class ConfigError(UsageError):
    """A configuration that cannot be used. `str()` is the message for the user."""


class Section(BaseModel):
    """A section of the file. Its fields keep the text as written: that is what `model_dump`
    gives back. Where the text stands for a value (a network, a rate window), a field
    validator checks it, so that an error names the key among the others, and `_parse`
    keeps the value in a private attribute, from the same function: pydantic gives a field
    validator no instance to keep it on.

    Built on first use (`defer_build`): loading a file builds one validator, Config's, with
    every section inside it, and no section validates itself on the way (`absent_section`).
    Defaults are values, not factories: `validate_default` gives each instance its own
    copy, and pydantic reads each factory's `inspect.signature` (for a builtin such as
    `list`, from text, compiling the tokenizer's regex: 5-7 ms).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, defer_build=True)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_listen_address(value: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:8080 or [::1]:8080)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError(f"port {number} is outside 1-65535")
    return host, number


def parse_networks(cidrs: list[str]) -> tuple[Network, ...]:
    """CIDRs, or single addresses, as networks; host bits may be set (10.1.2.3/8)."""
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            raise ValueError(f"{cidr!r} is not an IP address or CIDR") from None
    return tuple(networks)


class GatewayConfig(Section):
    listen: list[str] = Field(default=["127.0.0.1:8080"], min_length=1)
    trusted_proxies: list[str] = Field(default=[])
    max_body_bytes: int = Field(default=32768, ge=256, le=64 * 1024 * 1024)
    acme_webroot: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    api_keys_file: str = ""
    # A connection that has not sent a whole request this long after connecting or after
    # its last answer is closed: a silent or trickling header, an idle keep-alive.
    idle_timeout_seconds: float = Field(default=15.0, gt=0, le=3600)
    # Open connections one client may hold: an IPv4 address, or an IPv6 peer's
    # validation.ipv6_prefix network (trusted_proxies are not limited).
    max_connections_per_client: int = Field(default=64, ge=1, le=100_000)
    _listen_addresses: tuple[tuple[str, int], ...] = PrivateAttr()
    _trusted_networks: tuple[Network, ...] = PrivateAttr()

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: list[str]) -> list[str]:
        for address in value:
            parse_listen_address(address)
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        parse_networks(value)
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> GatewayConfig:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("set both tls_cert_file and tls_key_file, or neither")
        return self

    @model_validator(mode="after")
    def _parse(self) -> GatewayConfig:
        self._listen_addresses = tuple(parse_listen_address(address) for address in self.listen)
        self._trusted_networks = parse_networks(self.trusted_proxies)
        return self

    @property
    def listen_addresses(self) -> tuple[tuple[str, int], ...]:
        """`listen` as (host, port) pairs."""
        return self._listen_addresses

    @property
    def trusted_networks(self) -> tuple[Network, ...]:
        """`trusted_proxies` as networks."""
        return self._trusted_networks


class QdrantConfig(Section):
    url: str = ""
    path: str = ""
    api_key_file: str = ""

    @model_validator(mode="after")
    def _one_of(self) -> QdrantConfig:
        if bool(self.url) == bool(self.path):
            raise ValueError(
                "set exactly one of qdrant.url (a Qdrant server) or qdrant.path (local mode)"
            )
        if self.url and urlsplit(self.url).scheme not in ("http", "https"):
            raise ValueError(f"url {self.url!r} must start with http:// or https://")
        return self


class PostgresConfig(Section):
    dsn: str = "postgresql:///aistack?host=/run/postgresql"
    password_file: str = ""

    @field_validator("dsn")
    @classmethod
    def _dsn(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("postgresql", "postgres"):
            raise ValueError("dsn must be a postgresql:// URL")
        return value


class EmbeddingConfig(Section):
    backend: Literal["fastembed", "openai"] = "fastembed"
    model: str = "sentence-transformers/all-MiniLM-L6-v2"
    model_path: str = ""
    url: str = ""
    api_key_file: str = ""
    dimension: int = Field(default=384, ge=1, le=65536)
    # Worker threads that run the model side by side; 0: the cores this process may use
    # (its CPU affinity, so a systemd CPUAffinity or a container's cpuset counts), at most 8.
    threads: int = Field(default=0, ge=0, le=256)
    # A micro-batch: at most batch_size texts and batch_tokens padded word pieces, and a
    # lone text waits at most batch_wait_ms for company. Measured on one ONNX Runtime
    # thread (two cores, 2026-12): a 16-piece query costs 6.0 ms alone and 4.0 ms a query
    # in a batch of 32 (the gain stops past 16-32); a 256-piece text 83-100 ms alone or
    # batched, so batching long texts only lengthens the batch a short query may wait
    # behind. 512 pieces hold 32 short queries, or two texts at the model's limit. No wait
    # by default (a worker waits only while another is busy): at half the model's limit
    # (238 new searches/s, open loop, 1,000 documents) p99 was 52-55 ms with none, 81-111
    # ms with 5 ms and 69-77 ms with 10 ms; waiting saved 10-12% of CPU. Under load the
    # queue forms its batches by itself.
    batch_size: int = Field(default=32, ge=1, le=1024)
    batch_tokens: int = Field(default=512, ge=1, le=1_048_576)
    batch_wait_ms: float = Field(default=0, ge=0, le=1000)
    # Queries waiting for the embedder at most, and how long one may wait: past either,
    # the gateway answers 503 with Retry-After rather than queueing without end.
    max_queue_depth: int = Field(default=32, ge=1, le=100_000)
    max_queue_wait_seconds: float = Field(default=5.0, gt=0, le=600)
    # 16 MiB: about 4,000 short queries at 384 dimensions (4 KB each, text included), the
    # repeated questions of a busy day; 0 turns the cache off.
    query_cache_bytes: int = Field(default=16 * 2**20, ge=0, le=2**34)

    def worker_threads(self) -> int:
        return self.threads or min(len(os.sched_getaffinity(0)), 8)

    @model_validator(mode="after")
    def _backend_needs(self) -> EmbeddingConfig:
        if self.backend == "openai" and not self.url:
            raise ValueError("backend 'openai' needs url (e.g. http://127.0.0.1:8081/v1)")
        if self.url and urlsplit(self.url).scheme not in ("http", "https"):
            raise ValueError(f"url {self.url!r} must start with http:// or https://")
        return self


class RateWindow(NamedTuple):
    """One of `validation.rate_limits`: at most `quota` requests in `seconds`, named by its unit."""

    name: str
    quota: int
    seconds: int


def parse_rate_limits(specs: list[str]) -> tuple[RateWindow, ...]:
    """The window of each `N/unit`, shortest first."""
    windows = []
    for spec in specs:
        match = RATE_LIMIT.fullmatch(spec)
        if not match or int(match.group(1)) < 1:
            raise ValueError(f"{spec!r} is not N/second, N/minute, N/hour or N/day (N >= 1)")
        unit = match.group(2)
        windows.append(RateWindow(unit, int(match.group(1)), RATE_WINDOW_SECONDS[unit]))
    if len({window.name for window in windows}) != len(windows):
        raise ValueError("two limits share one window")
    return tuple(sorted(windows, key=lambda window: window.seconds))


def parse_rate_limit_storage(url: str) -> str | None:
    """The Redis URL that `validation.rate_limit_storage` names, or None for `memory://`."""
    if url == "memory://":
        return None
    # The scheme also as written before "://": urlsplit alone forgives "redis:host", leading
    # spaces and tabs, which the gateway has always refused to start with.
    if (
        urlsplit(url).scheme not in REDIS_SCHEMES
        or url.partition("://")[0].lower() not in REDIS_SCHEMES
    ):
        raise ValueError(f"{url!r} is not memory:// or a redis:// URL")
    return url


class ValidationConfig(Section):
    collections: list[str] = Field(
        default=["nixos_docs", "solved_issues", "skill_embeddings", "telemetry_patterns"],
        min_length=1,
    )
    max_query_chars: int = Field(default=10000, ge=1, le=1_000_000)
    default_limit: int = Field(default=10, ge=1)
    max_limit: int = Field(default=100, ge=1, le=10000)
    max_offset: int = Field(default=10000, ge=0, le=1_000_000)
    deny_patterns: list[Annotated[str, Field(min_length=1)]] = Field(
        default=["<script", "drop ", "../"]
    )
    deny_action: Literal["reject", "log"] = "reject"
    # Learned text (`/hybrid/learn`: query and solution) is screened with its own set: a
    # stored solution may need what a query may not ("imports = [ ../hardware.nix ]").
    learn_deny_patterns: list[Annotated[str, Field(min_length=1)]] = Field(
        default=["<script", "drop ", "../"]
    )
    learn_deny_action: Literal["reject", "log"] = "reject"
    rate_limits: list[str] = Field(default=["60/minute", "1000/hour"])
    rate_limit_storage: str = "memory://"
    # The Redis password (AUTH), read from this file (or credential name): kept out of the
    # URL, and so out of the configuration and the Nix store.
    rate_limit_storage_password_file: str = ""
    rate_limit_max_clients: int = Field(default=100_000, ge=1, le=10_000_000)
    # "log": count and log what would be refused, and answer (nginx's limit_req_dry_run).
    rate_limit_action: Literal["enforce", "log"] = "enforce"
    # Networks never limited (monitoring, internal agents), as the client key sees them.
    rate_limit_exempt: list[str] = Field(default=[])
    # With Redis down: "closed" answers 503; "open" admits, counting and logging the outage.
    rate_limit_failure: Literal["closed", "open"] = "closed"
    ipv6_prefix: int = Field(default=64, ge=1, le=128)
    # Payload keys searches may filter on by exact match, per collection.
    filterable: dict[str, list[str]] = Field(default={})
    _rate_windows: tuple[RateWindow, ...] = PrivateAttr()
    _rate_limit_redis_url: str | None = PrivateAttr()
    _rate_limit_exempt: tuple[Network, ...] = PrivateAttr()

    @field_validator("collections")
    @classmethod
    def _collections(cls, value: list[str]) -> list[str]:
        for name in value:
            if not COLLECTION_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not 1-64 characters of A-Z a-z 0-9 _ -")
        if len(set(value)) != len(value):
            raise ValueError("names a collection twice")
        return value

    @field_validator("filterable")
    @classmethod
    def _filterable(cls, value: dict[str, list[str]], info: ValidationInfo) -> dict[str, list[str]]:
        # `collections` is validated first (declared first); absent here, it failed itself.
        served = info.data.get("collections")
        for collection, keys in value.items():
            if served is not None and collection not in served:
                raise ValueError(
                    f"{collection!r} is not one of validation.collections: "
                    "add it there or drop it here"
                )
            for key in keys:
                if not FILTER_KEY.fullmatch(key):
                    raise ValueError(
                        f"{collection}: {key!r} is not a payload key "
                        "(1-64 characters of A-Z a-z 0-9 _ -, not starting with a digit or -)"
                    )
                if key in RANGE_FILTER_KEYS:
                    raise ValueError(
                        f"{collection}: {key!r} is reserved for the range filter of "
                        "solved_issues, it cannot be an exact-match key"
                    )
            if len(set(keys)) != len(keys):
                raise ValueError(f"{collection}: names a key twice")
        return value

    @field_validator("rate_limits")
    @classmethod
    def _rate_limits(cls, value: list[str]) -> list[str]:
        parse_rate_limits(value)
        return value

    @field_validator("rate_limit_storage")
    @classmethod
    def _storage(cls, value: str) -> str:
        parse_rate_limit_storage(value)
        return value

    @field_validator("rate_limit_exempt")
    @classmethod
    def _exempt(cls, value: list[str]) -> list[str]:
        parse_networks(value)
        return value

    @model_validator(mode="after")
    def _limits(self) -> ValidationConfig:
        if self.default_limit > self.max_limit:
            raise ValueError(
                f"default_limit {self.default_limit} is above max_limit {self.max_limit}"
            )
        return self

    @model_validator(mode="after")
    def _parse(self) -> ValidationConfig:
        self._rate_windows = parse_rate_limits(self.rate_limits)
        self._rate_limit_redis_url = parse_rate_limit_storage(self.rate_limit_storage)
        self._rate_limit_exempt = parse_networks(self.rate_limit_exempt)
        return self

    @property
    def rate_limit_exempt_networks(self) -> tuple[Network, ...]:
        return self._rate_limit_exempt

    def rate_windows(self) -> list[RateWindow]:
        """(name, quota, window seconds) for each configured limit, shortest window first."""
        return list(self._rate_windows)

    @property
    def rate_limit_redis_url(self) -> str | None:
        """Where the limits are counted when several gateways share them; None: in memory."""
        return self._rate_limit_redis_url


class GcConfig(Section):
    max_solutions: int = Field(default=100000, ge=1)
    max_age_days: int = Field(default=30, ge=1)
    min_value_score: float = Field(default=0.5, ge=0.0, le=1.0)
    prune_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    deduplicate_similarity: float = Field(default=0.95, gt=0.0, le=1.0)
    orphan_cleanup: bool = True
    archive_days: int = Field(default=30, ge=1)
    batch_size: int = Field(default=5000, ge=1, le=100000)


def certificate_domain(name: str) -> str:
    """`name` if it is a DNS name as a certificate holds it and the CA wants it: IDNA (UTS 46)
    A-labels, lower case, no trailing dot, not an IP address. Else ValueError naming it and why.

    Nothing is converted: the name is a directory name and the certificate's name, so a
    look-alike (U+212A KELVIN SIGN folds to k) or a U-label is refused with its A-label form.
    """
    # ascii() shows newlines, zero-width and look-alike characters as escapes.
    shown = ascii(name)
    # A wildcard stands for one label left of a name checked like any other; only DNS-01
    # validates it, which AcmeConfig checks (it knows the challenge).
    wildcard = "*." if name.startswith("*.") else ""
    name = name.removeprefix(wildcard)
    try:
        ipaddress.ip_address(name.removeprefix("[").removesuffix("]"))
    except ValueError:
        pass
    else:
        raise ValueError(f"{shown} is an IP address, not a DNS name")
    try:
        mapped = not UNMAPPED_DNS_CHARACTERS.fullmatch(name)
        a_labels = idna.encode(name.rstrip("."), uts46=mapped).decode("ascii")
    except idna.IDNAError as error:
        raise ValueError(f"{shown} is not a DNS name: {error}") from None
    if a_labels.rpartition(".")[2].isdigit():
        raise ValueError(f"{shown} is not a DNS name: its last label is all digits")
    if a_labels != name:
        if name.endswith("."):
            why = "ends in a dot"
        elif not name.isascii():
            why = "holds non-ASCII characters"
        else:  # UTS 46 changes no other ASCII character: it maps A-Z, refuses the rest.
            why = "holds upper-case letters"
        raise ValueError(
            f"{shown} {why}; a certificate names lower-case IDNA A-labels:"
            f" write {wildcard + a_labels!r}"
        )
    return wildcard + name


def parse_dns_server(value: str) -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT`, or a bare host or IPv4 address (port 53) -> (host, port)."""
    if ":" not in value or (value.startswith("[") and value.endswith("]")):
        value = f"{value}:53"
    return parse_listen_address(value)


def _dns_server(value: str) -> str:
    parse_dns_server(value)
    return value


DnsServer = Annotated[str, AfterValidator(_dns_server)]


class DnsCommon(Section):
    """What DNS-01 does with either provider: wait, bounded, until every checked server
    answers the TXT record, before telling the CA to look."""

    propagation_timeout_seconds: float = Field(default=120, gt=0, le=3600)
    # Where to look for the record (lego's --dns.resolvers); empty: the zone's
    # authoritative servers (the NS of the zone an SOA walk finds), port 53.
    check_servers: list[DnsServer] = Field(default=[])


class Rfc2136Dns(DnsCommon):
    """RFC 2136 dynamic update signed with TSIG (BIND, Knot, PowerDNS; lego's rfc2136)."""

    provider: Literal["rfc2136"]
    server: DnsServer
    tsig_key_name: str = Field(min_length=1)
    tsig_algorithm: Literal[
        "hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1", "hmac-md5"
    ] = "hmac-sha256"
    # The base64 secret, or a key file as tsig-keygen writes it; never the secret itself.
    tsig_key_file: str = Field(min_length=1)


class ExecDns(DnsCommon):
    """A program of the user's, called as lego's exec provider calls its program:
    `COMMAND present|cleanup _acme-challenge.NAME. VALUE`."""

    provider: Literal["exec"]
    command: str = Field(min_length=1)
    command_timeout_seconds: float = Field(default=60, gt=0, le=3600)


DNS_PROVIDERS = ("rfc2136", "exec")


def _dns_provider(value: Any) -> str | None:
    """The union's tag, for a callable discriminator: pydantic words the error of a
    missing or unknown tag itself only for those."""
    provider = (
        value.get("provider") if isinstance(value, dict) else getattr(value, "provider", None)
    )
    return provider if provider in DNS_PROVIDERS else None


DnsConfig = Annotated[
    Annotated[Rfc2136Dns, Tag("rfc2136")] | Annotated[ExecDns, Tag("exec")],
    Discriminator(
        _dns_provider,
        custom_error_type="dns_provider",
        custom_error_message='provider must be "rfc2136" or "exec"',
    ),
]


KeyType = Literal["ec256", "ec384", "rsa2048", "rsa4096"]
Challenge = Literal["webroot", "standalone", "dns-01"]
# Checked one by one, so each bad name is its own error (acme.domains.N).
Domains = list[Annotated[str, AfterValidator(certificate_domain)]]
# A certificate's name is a directory under cert_dir and the stem of its state files.
CERTIFICATE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?")
# The state files of a certificate N are N.json, N.installed.json and N.changed: a name
# ending in one of these would share another's files.
RESERVED_NAME_SUFFIXES = (".installed", ".json", ".changed")


def valid_certificate_name(name: str) -> str:
    if name.endswith(RESERVED_NAME_SUFFIXES):
        raise ValueError(
            f"{name!a} cannot name a certificate: it ends in"
            f" {name[name.rindex('.') :]!r}, as the state files of certificates do"
        )
    if not CERTIFICATE_NAME.fullmatch(name):
        raise ValueError(
            f"{name!a} cannot name a certificate: use 1-64 of a-z 0-9 . _ -, starting and"
            " ending with a letter or digit (it names a directory under cert_dir)"
        )
    return name


class CertificateSettings(Section):
    """One entry of `acme.certificates`: its names, and what differs from the acme
    section's own keys (None: as there). The account (email, directory, terms, EAB) and
    the directories are the section's, shared by every certificate."""

    domains: Domains = Field(min_length=1)
    challenge: Challenge | None = None
    dns: DnsConfig | None = None
    key_type: KeyType | None = None
    profile: str | None = None
    renew_before_days: int | None = Field(default=None, ge=1, le=365)
    webroot: str | None = None
    http_address: str | None = None
    deploy_hook: str | None = None

    @field_validator("http_address")
    @classmethod
    def _http_address(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen_address(value)
        return value


class AcmeConfig(Section):
    """The acme section, and also one certificate resolved from it (`each_certificate`):
    renewal, status and the commands take one certificate's AcmeConfig at a time."""

    domains: Domains = Field(default=[])
    # Several certificates, each named (directory, state, metrics label) by its key;
    # `domains` above is one more, named after its first domain.
    certificates: dict[
        Annotated[str, AfterValidator(valid_certificate_name)], CertificateSettings
    ] = Field(default={})
    email: str = ""
    # The CA's terms of service must be agreed to explicitly (NixOS: acceptTerms).
    accept_terms: bool = False
    directory_url: str = PRODUCTION_DIRECTORY
    staging: bool = False
    key_type: KeyType = "ec256"
    # An ACME profile (draft-ietf-acme-profiles), e.g. Let's Encrypt's "tlsserver" or
    # "shortlived"; "" lets the CA choose.
    profile: str = ""
    renew_before_days: int = Field(default=30, ge=1, le=365)
    challenge: Challenge = "webroot"
    dns: DnsConfig | None = None
    webroot: str = "/var/lib/aistack/acme/webroot"
    http_address: str = "0.0.0.0:80"
    cert_dir: str = "/var/lib/aistack/certs"
    state_dir: str = "/var/lib/aistack/acme"
    ca_bundle: str = ""
    eab_kid: str = ""
    eab_hmac_key_file: str = ""
    # A shell command run once after a certificate changed (certbot's --deploy-hook), e.g.
    # "podman exec local-ai-nginx nginx -s reload"; its failure never undoes the install.
    deploy_hook: str = ""
    deploy_hook_timeout_seconds: float = Field(default=120, gt=0, le=3600)

    _name: str = PrivateAttr(default="")
    _certificates: tuple[AcmeConfig, ...] = PrivateAttr(default=())

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        if value and not EMAIL_ADDRESS.fullmatch(value):
            raise ValueError(f"{value!r} is not an e-mail address")
        return value

    @field_validator("directory_url")
    @classmethod
    def _directory(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("http", "https"):
            raise ValueError(f"{value!r} must start with https://")
        return value

    @field_validator("http_address")
    @classmethod
    def _http_address(cls, value: str) -> str:
        parse_listen_address(value)
        return value

    @model_validator(mode="after")
    def _eab_pair(self) -> AcmeConfig:
        if bool(self.eab_kid) != bool(self.eab_hmac_key_file):
            raise ValueError("set both eab_kid and eab_hmac_key_file, or neither")
        return self

    @model_validator(mode="after")
    def _dns_challenge(self) -> AcmeConfig:
        if self.challenge == "dns-01" and self.dns is None:
            raise PydanticCustomError(
                "dns_missing",
                'challenge is "dns-01" but acme.dns is not set: set dns = {choices}',
                {
                    "key": "dns",
                    # In the context: pydantic would read the braces as a placeholder.
                    "choices": '{provider = "rfc2136", server, tsig_key_name, tsig_key_file}'
                    ' or {provider = "exec", command}',
                },
            )
        if self.challenge != "dns-01":
            for index, name in enumerate(self.domains):
                if name.startswith("*."):
                    raise PydanticCustomError(
                        "wildcard_needs_dns01",
                        "{name} is a wildcard, and only DNS-01 validates wildcards:"
                        ' set challenge = "dns-01" and acme.dns, or name each host',
                        {"key": f"domains.{index}", "name": ascii(name)},
                    )
        return self

    @model_validator(mode="after")
    def _resolve_certificates(self) -> AcmeConfig:
        if self.certificates:
            self._certificates = tuple(self._resolved(name) for name in self.certificates)
            names = [certificate.certificate_name for certificate in self._certificates]
            if self.domains and self.certificate_name in names:
                raise ValueError(
                    f"certificates.{self.certificate_name} has the name of the certificate"
                    " acme.domains makes (its first domain): rename one"
                )
        return self

    def _resolved(self, name: str) -> AcmeConfig:
        settings = self.certificates[name]
        own = settings.model_dump(exclude_none=True)
        base = self.model_dump(exclude={"certificates", "domains"})
        # Only checks across keys can fail here: each key was checked where it stands.
        return _certificate({**base, **own}, name, f"certificates.{name}")

    def with_settings(self, **update: Any) -> AcmeConfig:
        """This certificate with `update` on top of its own keys, validated again: what a
        command-line flag does to every certificate. ConfigError naming it if invalid."""
        data = {**self.model_dump(exclude={"certificates"}), **update}
        try:
            return _certificate(data, self._name, self.certificate_name)
        except ValueError as error:
            raise ConfigError(str(error)) from None

    def each_certificate(self) -> list[AcmeConfig]:
        """Every certificate, one AcmeConfig each: the one `domains` names (if any) first."""
        certificates = list(self._certificates)
        if self.domains:
            single = self.model_copy(update={"certificates": {}})
            single._certificates = ()
            certificates.insert(0, single)
        return certificates

    @property
    def certificate_name(self) -> str:
        if self._name:
            return self._name
        return self.domains[0].lower().removeprefix("*.") if self.domains else ""

    @property
    def directory(self) -> str:
        return STAGING_DIRECTORY if self.staging else self.directory_url

    @property
    def rehearsal_directory(self) -> str:
        """Where a dry run orders: Let's Encrypt's staging for its production, else the
        configured directory (a private CA, pebble, staging itself)."""
        return STAGING_DIRECTORY if self.directory == PRODUCTION_DIRECTORY else self.directory


def _certificate(data: dict[str, Any], name: str, shown: str) -> AcmeConfig:
    """One certificate's AcmeConfig, named `name` ("": after its first domain); ValueError
    with the first problem, prefixed by `shown`, when the keys do not fit together."""
    try:
        resolved = AcmeConfig.model_validate(data)
    except ValidationError as error:
        raise ValueError(f"{shown}: {_strip_prefix(error.errors()[0]['msg'])}") from None
    resolved._name = name
    return resolved


def absent_section() -> Any:
    """The default of a section the file leaves out: `{}`, validated by Config's own schema.
    A factory (`default_factory=GatewayConfig`) would have each absent section build and run
    a validator of its own besides. Typed Any: the default is the section's input, not it."""
    return Field(default={})


class Config(Section):
    gateway: GatewayConfig = absent_section()
    qdrant: QdrantConfig
    postgres: PostgresConfig = absent_section()
    embedding: EmbeddingConfig = absent_section()
    validation: ValidationConfig = absent_section()
    gc: GcConfig = absent_section()
    acme: AcmeConfig = absent_section()

    source: Path | None = Field(default=None, exclude=True)


def parse_config_text(text: str, suffix: str, name: str = "<config>") -> dict[str, Any]:
    if suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{name}: not valid TOML: {error}") from None
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(
                f"{name}:{error.lineno}: not valid JSON: {error.msg} (column {error.colno})"
            ) from None
        if not isinstance(data, dict):
            raise ConfigError(f"{name}: the top level must be an object of sections")
        return data
    raise ConfigError(f"{name}: the file name must end in .toml or .json")


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a configuration file; raise ConfigError with every problem named."""
    data, text = read_config_file(path)
    return validate_config(data, text, str(path))


def read_config_file(path: str | os.PathLike[str]) -> tuple[dict[str, Any], str]:
    """The file's sections, not yet validated, and its text (for line numbers)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{file}: cannot read the configuration: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not UTF-8 text") from None
    return parse_config_text(text, file.suffix.lower(), str(file)), text


def acme_config_with(
    path: str | None, overrides: dict[str, Any], flags: dict[str, str]
) -> AcmeConfig:
    """The `acme` section of the file at `path` (the defaults, without one) with the
    command line's `overrides` on top, validated as one: a bad flag is an error like a bad
    key, and `flags` names the flag each overridden key came from."""
    if path is not None:
        data, text = read_config_file(path)
        section = data.get("acme", {})
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: acme must be a table of keys")
        return validate_config({**data, "acme": {**section, **overrides}}, text, path).acme
    try:
        return AcmeConfig.model_validate(overrides)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            key = str(item["loc"][0]) if item["loc"] else _error_key(item).partition(".")[0]
            problems.append(f"{flags.get(key, key)}: {_one_line(_strip_prefix(item['msg']))}")
        raise ConfigError("\n".join(problems)) from None


def validate_config(data: dict[str, Any], text: str = "", name: str = "<config>") -> Config:
    if "source" in data:
        raise ConfigError(f"{name}: unknown key 'source'")
    try:
        config = Config.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_config_errors(error, text, name)) from None
    return config.model_copy(update={"source": Path(name)})


def _error_key(item: ErrorDetails) -> str:
    """The key a check across keys (a model validator) names in its error's context: pydantic
    locates such an error at the section, not at the key that is wrong."""
    return str((item.get("ctx") or {}).get("key", ""))


def _without_union_tags(loc: list[str]) -> list[str]:
    """pydantic names the member of a tagged union in the location (acme.dns.rfc2136.server):
    the file has no such key."""
    return [
        part
        for index, part in enumerate(loc)
        if not (index and loc[index - 1] == "dns" and part in DNS_PROVIDERS)
    ]


def format_config_errors(error: ValidationError, text: str, name: str) -> str:
    lines = []
    for item in error.errors():
        loc = _without_union_tags([str(part) for part in item["loc"]])
        if key_in_section := _error_key(item):
            loc += key_in_section.split(".")
        # Keys come from the file: a key holding a line break must not forge a line.
        key = _one_line(".".join(loc)) if loc else "(top level)"
        line = _find_line(text, [part for part in loc if not part.isdigit()])
        where = f"{name}:{line}" if line else name
        if item["type"] == "extra_forbidden":
            message = f"unknown key '{key}'"
        elif item["type"] == "missing":
            message = f"'{key}' is required"
        else:
            message = f"{key}: {_one_line(_strip_prefix(item['msg']))}"
        lines.append(f"{where}: {message}")
    return "\n".join(lines)


def _one_line(text: str) -> str:
    """`text` with line breaks and other unprintable characters as Python escapes."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def _strip_prefix(message: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message


def _find_line(text: str, keys: list[str]) -> int | None:
    """Best effort: the line where the last key of `keys` is set, after its section header.

    Neither tomllib nor json keeps positions; a plain scan finds the line in every file
    the NixOS module or a person writes.
    """
    if not text or not keys:
        return None
    start = 0
    lines = text.splitlines()
    if len(keys) > 1:
        header = re.compile(rf"^\s*(\[\s*{re.escape(keys[0])}\s*\]|\"{re.escape(keys[0])}\"\s*:)")
        for number, line in enumerate(lines):
            if header.search(line):
                start = number
                break
    key = re.escape(keys[-1])
    target = re.compile(rf"^\s*(\"?{key}\"?\s*[=:]|\[\s*{key}\s*\])")
    for number in range(start, len(lines)):
        if target.search(lines[number]):
            return number + 1
    return None


def read_secret(path: str) -> str:
    """The content of a `*_file` key, without its trailing newline.

    A relative path is looked up in systemd's $CREDENTIALS_DIRECTORY (LoadCredential=).
    """
    file = Path(path)
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if not file.is_absolute() and credentials:
        file = Path(credentials) / file
    try:
        return file.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as error:
        raise ConfigError(f"{file}: cannot read the secret file: {error.strerror}") from None


SECRET_QUERY_PARAMETER = re.compile(r"(?i)([?&](?:password|sslpassword)=)[^&#]*")


def redact_dsn(dsn: str) -> str:
    """The URL with the password of its user part and any `password=` query parameter
    (libpq takes both) replaced by ***. Works on the text rather than on parsed fields, so
    a URL that would not connect (port out of range, odd host) is still printed, redacted,
    and everything else stays as written."""
    scheme, sep, tail = dsn.partition("://")
    if sep:
        end = min((tail.index(char) for char in "/?#" if char in tail), default=len(tail))
        userinfo, at, host = tail[:end].rpartition("@")
        if at and ":" in userinfo:
            tail = f"{userinfo.partition(':')[0]}:***@{host}{tail[end:]}"
        dsn = f"{scheme}{sep}{tail}"
    return SECRET_QUERY_PARAMETER.sub(r"\1***", dsn)


def redacted(config: Config) -> dict[str, Any]:
    """The configuration as data, with anything secret-looking replaced by ***."""
    data = config.model_dump(mode="json")
    data["postgres"]["dsn"] = redact_dsn(config.postgres.dsn)
    for section in ("validation",):
        storage = data[section]["rate_limit_storage"]
        if storage != "memory://":
            data[section]["rate_limit_storage"] = redact_dsn(storage)
    return data
