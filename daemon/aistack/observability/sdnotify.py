"""systemd's notification protocol (sd_notify(3)) for Type=notify units.

Ten lines of socket code: the PyPI `sdnotify` package is unmaintained since 2017 and
`systemd-python` needs libsystemd headers to build, which a pip install on a plain
machine does not have.
"""

from __future__ import annotations

import os
import socket


def notify(*assignments: str) -> bool:
    """Send e.g. notify("READY=1", "STATUS=serving"); False when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall("\n".join(assignments).encode())
        except OSError:
            return False
    return True
