"""What the rig's tests need from the machine: root, nspawn, debootstrap; else skip (or, in
CI, fail) saying how to get them."""

from __future__ import annotations

import os

from tests.tools import tool_missing
from tests.vm import container as ct
from tests.vm.install import host_python_mismatch


def require_rig() -> None:
    if os.geteuid() != 0:
        tool_missing("root", "the VM-test rig boots containers: run the tests as root")
    missing = ct.missing_tools()
    if missing:
        tool_missing(", ".join(missing), "apt-get install systemd-container debootstrap")
    mismatch = host_python_mismatch()
    if mismatch:
        tool_missing("Python 3.11", mismatch)
