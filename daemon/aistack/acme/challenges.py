"""Responders: what answers the CA's challenges for one issuance.

HTTP-01, where the CA finds `/.well-known/acme-challenge/<token>`: `webroot` writes the
key authorization as a file that a web server already running on port 80 serves (the
gateway's `acme_webroot`, or nginx); `standalone` binds `http_address` itself for the
length of one issuance. DNS-01 (`dns01.py`) publishes TXT records. All remove what they
added.
"""

from __future__ import annotations

import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Protocol

from aistack.config import AcmeConfig, parse_listen_address
from aistack.errors import Failure
from aistack.observability.logs import EventLog

log = EventLog("acme")
CHALLENGE_PATH = "/.well-known/acme-challenge/"


class Responder(Protocol):
    # The challenge type it answers, as the CA names it: "http-01" or "dns-01".
    kind: str

    def add(self, identifier: str, token: str, validation: str) -> None:
        """Publish `validation` (the challenge's response_and_validation) for the
        authorization of `identifier` (for `*.x`: `x`)."""

    def wait_ready(self) -> None:
        """Return once the CA can see everything added (DNS propagation)."""

    def close(self) -> None:
        """Remove everything added, whatever happened."""


class ChallengeSetupError(Failure):
    """The responder cannot be set up (webroot not writable, port taken)."""


class WebrootResponder:
    kind = "http-01"

    def __init__(self, webroot: Path) -> None:
        self.directory = webroot / ".well-known" / "acme-challenge"
        self._written: list[Path] = []

    def add(self, identifier: str, token: str, key_authorization: str) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            # Readable by the web server that serves the tokens, whatever our umask.
            os.chmod(self.directory.parent, 0o755)
            os.chmod(self.directory, 0o755)
            path = self.directory / token
            temporary = self.directory / f".{token}.tmp"
            temporary.write_text(key_authorization)
            os.chmod(temporary, 0o644)
            os.replace(temporary, path)
        except OSError as error:
            raise ChallengeSetupError(
                f"cannot write the challenge into the webroot {self.directory}: {error.strerror}"
            ) from None
        self._written.append(path)

    def wait_ready(self) -> None:
        pass

    def close(self) -> None:
        for path in self._written:
            path.unlink(missing_ok=True)
        self._written.clear()


class StandaloneResponder:
    """A small HTTP server on `http_address`, answering challenge tokens only."""

    kind = "http-01"

    def __init__(self, address: str) -> None:
        host, port = parse_listen_address(address)
        self.tokens: dict[str, str] = {}
        tokens = self.tokens

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                token = self.path.removeprefix(CHALLENGE_PATH)
                answer = tokens.get(token) if self.path.startswith(CHALLENGE_PATH) else None
                if answer is None:
                    self.send_error(404)
                    return
                body = answer.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.info("acme.challenge_request", peer=self.client_address[0], path=self.path)

        try:
            self.server = ThreadingHTTPServer((host, port), Handler)
        except OSError as error:
            raise ChallengeSetupError(
                f"cannot listen on acme.http_address {address}: {error.strerror}"
                ' (is a web server on that port? use challenge = "webroot")'
            ) from None
        self.server.daemon_threads = True
        # serve_forever notices shutdown() once per poll: 0.5 s by default, which was most
        # of an issuance's wall time.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def add(self, identifier: str, token: str, key_authorization: str) -> None:
        self.tokens[token] = key_authorization

    def wait_ready(self) -> None:
        pass

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def open_responder(config: AcmeConfig) -> Responder:
    if config.challenge == "dns-01":
        from aistack.acme.dns01 import DnsResponder

        assert config.dns is not None  # AcmeConfig requires it with dns-01
        return DnsResponder(config.dns)
    if config.challenge == "standalone":
        return StandaloneResponder(config.http_address)
    return WebrootResponder(Path(config.webroot))
