"""Private keys: the account key (kept across runs) and certificate keys (one per issue).

cryptography is imported where a key is made or read, not here: a not-due renewal saves
its state with `write_private` and touches no key (see certfiles.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    import josepy as jose
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def generate(key_type: str) -> PrivateKey:
    """ec256 (the default: small and fast), ec384, rsa2048 or rsa4096."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if key_type == "ec256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type in ("rsa2048", "rsa4096"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[3:]))
    raise ValueError(f"unknown key type {key_type!r}")


def key_type_of(key: object) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return {"secp256r1": "ec256", "secp384r1": "ec384"}.get(key.curve.name, key.curve.name)
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"rsa{key.key_size}"
    return type(key).__name__


def to_pem(key: PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_pem(data: bytes) -> PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"unsupported key {type(key).__name__}")
    return key


def write_private(path: Path, data: bytes) -> None:
    """Create a 0600 file and fsync it; created with that mode, never readable by others."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def fsync_directory(path: Path) -> None:
    """Make a rename or a new file in `path` durable."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def account_jwk(key: PrivateKey) -> tuple[jose.JWK, jose.JWASignature]:
    """The JWK and the signature algorithm the account key signs with (RFC 7518)."""
    import josepy as jose  # only an order signs: a not-due run never loads it
    from cryptography.hazmat.primitives.asymmetric import ec

    if isinstance(key, ec.EllipticCurvePrivateKey):
        algorithm = {"secp256r1": jose.ES256, "secp384r1": jose.ES384}[key.curve.name]
        return jose.JWKEC(key=key), algorithm
    return jose.JWKRSA(key=key), jose.RS256
