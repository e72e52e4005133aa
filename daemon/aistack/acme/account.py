"""The ACME account on disk: its key (0600) and registration under
`state_dir/accounts/<CA host>/`, and a key rollover half done.

A rollover (protocol.AcmeClient.roll_over) writes the new key to `key.next.pem` before it
asks the CA, and moves it over `key.pem` only once the CA accepted. A run that finds
`key.next.pem` left behind does not know whether the CA took it: it asks the CA which of
the two keys is the account's (protocol.AcmeClient settles it) and keeps that one.

Light on purpose: `acme status` reads the registration without loading the ACME client.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

from aistack.acme import keys
from aistack.observability.logs import EventLog

log = EventLog("acme")


# Account directories this process holds the lock of, and how many holders it has here:
# flock() locks belong to an open file, so a second holder in the same process must not
# open and lock it again (it would wait for itself).
_LOCKED: dict[Path, tuple[int, int]] = {}


class AccountStore:
    def __init__(self, state_dir: Path, directory_url: str) -> None:
        from urllib.parse import urlsplit

        host = urlsplit(directory_url).netloc.replace(":", "_") or "default"
        self.path = state_dir / "accounts" / host
        self.key_file = self.path / "key.pem"
        self.next_key_file = self.path / "key.next.pem"
        self.registration_file = self.path / "registration.json"

    def lock(self) -> None:
        """Hold the account's lock (until `unlock`), waiting for another process that
        holds it: a renewal must not settle (and throw away) the new key of a rollover
        whose answer another process is still waiting for."""
        import fcntl

        if self.path in _LOCKED:
            descriptor, holders = _LOCKED[self.path]
            _LOCKED[self.path] = (descriptor, holders + 1)
            return
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        _LOCKED[self.path] = (descriptor, 1)

    def unlock(self) -> None:
        descriptor, holders = _LOCKED.pop(self.path)
        if holders > 1:
            _LOCKED[self.path] = (descriptor, holders - 1)
        else:
            os.close(descriptor)  # which releases the flock

    def load_key(self) -> keys.PrivateKey:
        if self.key_file.exists():
            return keys.load_pem(self.key_file.read_bytes())
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = keys.generate("ec256")
        keys.write_private(self.key_file, keys.to_pem(key))
        log.info("acme.account_key_created", path=str(self.key_file))
        return key

    def load_registration(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.registration_file.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and "uri" in data else None

    def save_registration(self, uri: str, email: str) -> None:
        kept = self.load_registration() or {}
        data: dict[str, Any] = {"uri": uri, "email": email}
        if kept.get("uri") == uri and "key_rolled_over" in kept:
            data["key_rolled_over"] = kept["key_rolled_over"]
        keys.write_private(self.registration_file, json.dumps(data).encode())

    def rolled_over(self) -> str | None:
        """When the account key was last replaced by a rollover (ISO 8601), if ever."""
        registration = self.load_registration()
        value = registration.get("key_rolled_over") if registration else None
        return value if isinstance(value, str) else None

    def pending_key(self) -> keys.PrivateKey | None:
        """The new key of a rollover that was not seen through, if one was left behind."""
        try:
            return keys.load_pem(self.next_key_file.read_bytes())
        except FileNotFoundError:
            return None

    def write_next_key(self, key: keys.PrivateKey) -> None:
        keys.write_private(self.next_key_file, keys.to_pem(key))
        keys.fsync_directory(self.path)

    def adopt_next_key(self, now: datetime.datetime) -> None:
        """The CA holds the new key: it becomes the account key (one rename, atomic)."""
        os.replace(self.next_key_file, self.key_file)
        keys.fsync_directory(self.path)
        registration = self.load_registration()
        if registration is not None:
            registration["key_rolled_over"] = now.isoformat()
            keys.write_private(self.registration_file, json.dumps(registration).encode())

    def discard_next_key(self) -> None:
        self.next_key_file.unlink(missing_ok=True)
