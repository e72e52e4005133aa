"""Helpers run inside the NixOS test machines (systemd units of the VM tests)."""
