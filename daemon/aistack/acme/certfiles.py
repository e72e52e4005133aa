"""The certificate on disk: `<cert_dir>/<name>/{fullchain,chain,cert,key}.pem`.

`<cert_dir>/<name>` is a symlink to a complete version directory under
`<cert_dir>/.versions/<name>/`. A new certificate is written into a new version directory
(every file written and fsynced), then the symlink is replaced by a rename, which is
atomic: a reader sees the old four files or the new four, never a mix and never half a
file, whatever instant the process dies at. The previous version is kept for rollback.

What the renewal decision reads from the pair (`Facts`) is kept in a file in the state
directory, under the SHA-256 of the two files it was read from. A not-due run, every run
but a few a year, finds it there and loads no X.509 parser: importing cryptography costs
about 25 ms of CPU, over a tenth of such a run. Files that are not the ones the facts were
read from are parsed again, whoever changed them.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aistack.acme import keys
from aistack.observability.failpoints import failpoint

if TYPE_CHECKING:
    from cryptography import x509

PUBLIC_MODE = 0o644
# Group-readable: a web server that serves the certificate (nixpkgs' nginx runs as user
# nginx and loads the key in `nginx -t` before it starts) is made a member of the group
# the ACME unit runs as, as nixpkgs' security.acme does with its certificate group. Nobody
# else can read it.
KEY_MODE = 0o640
PLACEHOLDER_ORGANIZATION = "aistack placeholder"
PLACEHOLDER_LIFETIME = datetime.timedelta(days=30)
KEEP_VERSIONS = 2


@dataclass(frozen=True)
class Facts:
    """What the renewal decision needs of an installed pair."""

    serial_number: int
    not_before: datetime.datetime
    not_after: datetime.datetime
    domains: list[str]  # the DNS names it covers, lower case, sorted
    key_type: str
    placeholder: bool
    # How RFC 9773 names it to the CA; None without an authority key identifier.
    renewal_id: str | None

    def as_json(self, digest: str) -> dict[str, Any]:
        return {
            **asdict(self),
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "digest": digest,
        }

    @classmethod
    def from_json(cls, data: Any, digest: str) -> Facts | None:
        """The facts `as_json` kept for the files of this digest, else None."""
        try:
            if data["digest"] != digest:
                return None
            facts = cls(
                serial_number=data["serial_number"],
                not_before=datetime.datetime.fromisoformat(data["not_before"]),
                not_after=datetime.datetime.fromisoformat(data["not_after"]),
                domains=data["domains"],
                key_type=data["key_type"],
                placeholder=data["placeholder"],
                renewal_id=data["renewal_id"],
            )
        except (KeyError, TypeError, ValueError):
            return None
        return facts


@dataclass(frozen=True)
class Installed(Facts):
    """What stands at `<cert_dir>/<name>` now: its facts, and where."""

    path: Path

    def certificate(self) -> x509.Certificate:
        """The certificate itself, parsed (which the renewal decision never needs)."""
        from cryptography import x509

        return x509.load_pem_x509_certificate((self.path / "cert.pem").read_bytes())


def live_path(cert_dir: Path, name: str) -> Path:
    return cert_dir / name


def read_installed(cert_dir: Path, name: str, facts_file: Path | None = None) -> Installed | None:
    """The installed certificate, or None if there is none (or it cannot be read).

    With `facts_file`, facts read from these same two files before are taken from there,
    and facts read anew are kept there for the next run.
    """
    live = live_path(cert_dir, name)
    try:
        cert_pem = (live / "cert.pem").read_bytes()
        key_pem = (live / "key.pem").read_bytes()
    except OSError:
        return None
    digest = hashlib.sha256(cert_pem + b"\0" + key_pem).hexdigest()
    facts = _kept_facts(facts_file, digest) if facts_file else None
    if facts is None:
        try:
            facts = read_facts(cert_pem, key_pem)
        except ValueError:
            return None
        if facts_file:
            _keep_facts(facts_file, facts, digest)
    return Installed(**vars(facts), path=live)


def read_facts(cert_pem: bytes, key_pem: bytes) -> Facts:
    """Parse the pair; ValueError if either cannot be read."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from aistack.acme.ari import certificate_id

    certificate = x509.load_pem_x509_certificate(cert_pem)
    key_type = keys.key_type_of(keys.load_pem(key_pem))
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        domains = sorted(name.lower() for name in names.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        domains = []
    organizations = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    try:
        renewal_id: str | None = certificate_id(certificate)
    except (x509.ExtensionNotFound, ValueError):
        renewal_id = None
    return Facts(
        serial_number=certificate.serial_number,
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        domains=domains,
        key_type=key_type,
        placeholder=any(o.value == PLACEHOLDER_ORGANIZATION for o in organizations),
        renewal_id=renewal_id,
    )


def _kept_facts(facts_file: Path, digest: str) -> Facts | None:
    try:
        data = json.loads(facts_file.read_bytes())
    except (OSError, ValueError):
        return None
    return Facts.from_json(data, digest)


def _keep_facts(facts_file: Path, facts: Facts, digest: str) -> None:
    try:
        facts_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        keys.write_private(facts_file, json.dumps(facts.as_json(digest), indent=2).encode())
    except OSError:
        pass  # Only a cache: the next run reads the certificate again.


def split_chain(fullchain_pem: str) -> tuple[str, str]:
    """(leaf certificate, the rest of the chain) from a PEM bundle."""
    marker = "-----END CERTIFICATE-----"
    blocks = [block + marker + "\n" for block in fullchain_pem.split(marker) if "BEGIN" in block]
    blocks = [block.lstrip() for block in blocks]
    if not blocks:
        raise ValueError("the CA's answer holds no certificate")
    return blocks[0], "".join(blocks[1:])


def _write(path: Path, data: bytes, mode: int) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.chmod(path, mode)  # whatever the umask said


def install(cert_dir: Path, name: str, fullchain_pem: str, key_pem: bytes) -> Path:
    """Put a certificate and its key in place atomically; return the live path."""
    from cryptography import x509

    leaf, chain = split_chain(fullchain_pem)
    certificate = x509.load_pem_x509_certificate(leaf.encode())
    cert_dir.mkdir(parents=True, exist_ok=True)
    versions = cert_dir / ".versions" / name
    versions.mkdir(parents=True, exist_ok=True)
    # Explicit modes: a unit's umask (0077) must not hide public certificates.
    for directory in (cert_dir, cert_dir / ".versions", versions):
        os.chmod(directory, 0o755)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    version = versions / f"{stamp}-{certificate.serial_number:x}"[:64]
    version.mkdir()
    try:
        os.chmod(version, 0o755)
        _write(version / "cert.pem", leaf.encode(), PUBLIC_MODE)
        failpoint("acme.install_half_written")
        _write(version / "chain.pem", chain.encode(), PUBLIC_MODE)
        _write(version / "fullchain.pem", (leaf + chain).encode(), PUBLIC_MODE)
        _write(version / "key.pem", key_pem, KEY_MODE)
        keys.fsync_directory(version)
    except OSError:
        # A full disk (ENOSPC) or an I/O error: leave no half-written version behind
        # that pruning would keep as one of the newest.
        shutil.rmtree(version, ignore_errors=True)
        raise

    live = live_path(cert_dir, name)
    if live.is_dir() and not live.is_symlink():
        # A directory someone else made: keep it as a version, then link as usual.
        live.rename(versions / f"adopted-{stamp}")
    link = cert_dir / f".{name}.link"
    link.unlink(missing_ok=True)
    os.symlink(os.path.relpath(version, cert_dir), link)
    os.replace(link, live)
    keys.fsync_directory(cert_dir)
    _prune_versions(versions, keep=version, live=live)
    return live


def _prune_versions(versions: Path, keep: Path, live: Path) -> None:
    current = live.resolve()
    existing = sorted((p for p in versions.iterdir() if p.is_dir()), key=lambda p: p.name)
    survivors = {keep.resolve(), current}
    survivors.update(p.resolve() for p in existing[-KEEP_VERSIONS:])
    for path in existing:
        if path.resolve() not in survivors:
            shutil.rmtree(path, ignore_errors=True)


def make_placeholder(domains: list[str], key_type: str) -> tuple[str, bytes]:
    """A self-signed certificate for the domains, marked as a placeholder: nginx and the
    gateway can start with TLS before the first real certificate arrives."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = keys.generate(key_type)
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, domains[0]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, PLACEHOLDER_ORGANIZATION),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + PLACEHOLDER_LIFETIME)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(domain) for domain in domains]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
    return pem, keys.to_pem(key)
