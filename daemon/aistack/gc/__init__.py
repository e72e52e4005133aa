"""Garbage collection of the learning store: expiry, value pruning, near-duplicate
removal and the orphan sweep; every removal archived and reversible for `archive_days`."""
