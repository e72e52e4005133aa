"""Optional API keys (`gateway.api_keys_file`).

The file maps key ids to the sha256 of the key and what the key may use:

    [keys.ci-agent]
    sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    collections = ["nixos_docs"]        # or ["*"]
    endpoints = ["/vector/search"]      # or ["*"]

Keys are random tokens (e.g. `openssl rand -hex 32`), so a plain sha256 is enough: there is
no dictionary to run against it, and a lookup by digest takes the same time for every key.
Only digests are kept; the file may be world-readable without giving anything away.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from aistack.config import ConfigError

HEX_DIGEST = re.compile(r"[0-9a-f]{64}")  # fullmatch: `$` matches before a final newline


class KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    sha256: str
    collections: list[str] = Field(default_factory=list)
    endpoints: list[str] = Field(default_factory=lambda: ["/vector/search"])

    @field_validator("sha256")
    @classmethod
    def _digest(cls, value: str) -> str:
        value = value.lower()
        if not HEX_DIGEST.fullmatch(value):
            raise ValueError("must be 64 hex digits: the sha256 of the key")
        return value

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, value: list[str], info: ValidationInfo) -> list[str]:
        assert info.context is not None  # load_access passes the routes a key decides
        known: frozenset[str] = info.context["endpoints"]
        unknown = [e for e in value if e != "*" and e not in known]
        if unknown:
            raise ValueError(f"unknown endpoints {unknown}; known: {sorted(known)} or *")
        return value


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    keys: dict[str, KeyEntry]


@dataclass(frozen=True, slots=True)
class Grant:
    key_id: str
    collections: frozenset[str]
    endpoints: frozenset[str]

    def allows_endpoint(self, endpoint: str) -> bool:
        return "*" in self.endpoints or endpoint in self.endpoints


class AccessControl:
    def __init__(self, grants: dict[str, Grant]) -> None:
        self._by_digest = grants

    def grant_for(self, authorization: str | None) -> Grant | None:
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
        return self._by_digest.get(digest)


def load_access(
    path: str, all_collections: frozenset[str], endpoints: frozenset[str]
) -> AccessControl:
    """The keys of `path`, each limited to some of `all_collections` and `endpoints`."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
        data: Any = json.loads(text) if file.suffix == ".json" else tomllib.loads(text)
    except OSError as error:
        raise ConfigError(f"{file}: cannot read gateway.api_keys_file: {error.strerror}") from None
    except (ValueError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{file}: not valid {file.suffix[1:] or 'TOML'}: {error}") from None
    try:
        parsed = KeysFile.model_validate(data, context={"endpoints": endpoints})
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
            for e in error.errors()
        )
        raise ConfigError(f"{file}: {problems}") from None
    grants: dict[str, Grant] = {}
    for key_id, entry in parsed.keys.items():
        unknown = set(entry.collections) - all_collections - {"*"}
        if unknown:
            raise ConfigError(
                f"{file}: keys.{key_id}.collections names {sorted(unknown)}, "
                "which validation.collections does not list"
            )
        if entry.sha256 in grants:
            raise ConfigError(f"{file}: keys.{key_id} has the same sha256 as another key")
        collections = all_collections if "*" in entry.collections else frozenset(entry.collections)
        grants[entry.sha256] = Grant(key_id, collections, frozenset(entry.endpoints))
    return AccessControl(grants)
