"""aistack: a hardened gateway, learning-store GC and ACME client for a self-hosted AI stack."""

__version__ = "0.1.0"
