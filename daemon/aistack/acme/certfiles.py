"""The certificate on disk: `<cert_dir>/<name>/{fullchain,chain,cert,key}.pem`.

`<cert_dir>/<name>` is a symlink to a complete version directory under
`<cert_dir>/.versions/<name>/`. A new certificate is written into a new version directory
(every file written and fsynced), then the symlink is replaced by a rename, which is
atomic: a reader sees the old four files or the new four, never a mix and never half a
file, whatever instant the process dies at. The previous version is kept for rollback.
"""

from __future__ import annotations

import datetime
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from aistack.acme import keys
from aistack.observability.failpoints import failpoint

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
class Installed:
    """What stands at `<cert_dir>/<name>` now."""

    certificate: x509.Certificate
    key_type: str
    path: Path

    @property
    def placeholder(self) -> bool:
        names = self.certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        return any(attribute.value == PLACEHOLDER_ORGANIZATION for attribute in names)

    @property
    def not_after(self) -> datetime.datetime:
        return self.certificate.not_valid_after_utc

    @property
    def not_before(self) -> datetime.datetime:
        return self.certificate.not_valid_before_utc

    def domains(self) -> list[str]:
        try:
            names = self.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            return []
        return sorted(name.lower() for name in names.value.get_values_for_type(x509.DNSName))


def live_path(cert_dir: Path, name: str) -> Path:
    return cert_dir / name


def read_installed(cert_dir: Path, name: str) -> Installed | None:
    """The installed certificate, or None if there is none (or it cannot be read)."""
    live = live_path(cert_dir, name)
    try:
        certificate = x509.load_pem_x509_certificate((live / "cert.pem").read_bytes())
        key = keys.load_pem((live / "key.pem").read_bytes())
    except (OSError, ValueError):
        return None
    return Installed(certificate, keys.key_type_of(key), live)


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


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def install(cert_dir: Path, name: str, fullchain_pem: str, key_pem: bytes) -> Path:
    """Put a certificate and its key in place atomically; return the live path."""
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
        _fsync_directory(version)
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
    _fsync_directory(cert_dir)
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
