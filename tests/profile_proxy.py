"""A directory that advertises ACME profiles (draft-ietf-acme-profiles), in front of a real
pebble: Debian's pebble 2.4 and trixie's 2.6 have no profiles, Let's Encrypt has them.

A stand-in, and what it does not model: it passes every request through to pebble
unchanged, adding only `meta.profiles` to the directory and noting the `profile` of each
newOrder payload. The CA behind it still issues its one kind of certificate whatever
profile is named (pebble ignores the field), so a test sees what the client asked for,
not a CA honouring it. pebble builds every URL it hands out from the request's Host, so
with Host passed through, the whole exchange (nonces, JWS `url`s, orders) runs via here.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aistack.stores.private_postgres import free_port
from tests.pebble import Pebble

HOP_BY_HOP = {"connection", "transfer-encoding", "content-length", "keep-alive"}


class ProfileDirectory:
    def __init__(self, pebble: Pebble, profiles: dict[str, str]) -> None:
        self.pebble = pebble
        self.profiles = profiles
        self.ordered_profiles: list[str | None] = []
        self.orders: list[dict[str, Any]] = []  # every newOrder payload, as sent
        self.port = free_port()
        upstream = ssl.create_default_context(cafile=str(pebble.ca_file))
        served = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        served.load_cert_chain(pebble.cert_file, pebble.key_file)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self._pass()

            def do_HEAD(self) -> None:
                self._pass()

            def do_POST(self) -> None:
                self._pass()

            def _pass(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if body and self.path == "/order-plz":
                    proxy.orders.append(payload_of(body))
                    proxy.ordered_profiles.append(proxy.orders[-1].get("profile"))
                connection = http.client.HTTPSConnection(
                    "127.0.0.1", pebble.api_port, context=upstream, timeout=30
                )
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                connection.request(self.command, self.path, body, headers)
                answer = connection.getresponse()
                data = answer.read()
                if self.path == "/dir" and answer.status == 200:
                    directory = json.loads(data)
                    directory.setdefault("meta", {})["profiles"] = proxy.profiles
                    data = json.dumps(directory).encode()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                connection.close()

            def log_message(self, format: str, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.socket = served.wrap_socket(self.server.socket, server_side=True)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def __enter__(self) -> ProfileDirectory:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def payload_of(jws_body: bytes) -> dict[str, Any]:
    encoded = json.loads(jws_body)["payload"]
    if not encoded:
        return {}
    padded = encoded + "=" * (-len(encoded) % 4)
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(padded))
    return decoded


def profile_directory(pebble: Pebble, profiles: dict[str, str]) -> Iterator[ProfileDirectory]:
    with ProfileDirectory(pebble, profiles) as directory:
        yield directory
