"""Shared access to the stores: Qdrant (vectors) and PostgreSQL (the source of truth)."""
