"""The GC's decisions as pure functions of the configuration, the store's size and a clock.

The job (`gc.job`) asks PostgreSQL for the rows these numbers select; everything that is
a decision lives here, where it is tested without a database.
"""

from __future__ import annotations

import datetime
import math

from aistack.config import GcConfig

# Rows younger than this are never pruned: they have not had time to earn a score.
PRUNE_GRACE = datetime.timedelta(days=1)
# A point without a row, or a row without a point, younger than this may be a write in
# flight (the gateway writes the point before it commits the row): leave it alone. A row
# created this long before a run read the store may also commit after that run.
ORPHAN_GRACE = datetime.timedelta(minutes=10)


def expiry_cutoff(config: GcConfig, now: datetime.datetime) -> datetime.datetime:
    """Rows created before this, and scored below `min_value_score`, expire."""
    return now - datetime.timedelta(days=config.max_age_days)


def prune_count(remaining: int, config: GcConfig) -> int:
    """How many of the lowest-value rows to prune once expiry is done.

    Nothing while the store holds at most `max_solutions`; above that, exactly
    floor(remaining * prune_fraction) rows, at least one.
    """
    if remaining <= config.max_solutions:
        return 0
    return max(1, math.floor(remaining * config.prune_fraction))


def prune_protected_after(now: datetime.datetime) -> datetime.datetime:
    return now - PRUNE_GRACE


def orphan_cutoff(now: datetime.datetime) -> datetime.datetime:
    return now - ORPHAN_GRACE


def late_commit_cutoff(last_run_started: datetime.datetime) -> datetime.datetime:
    """Rows created after this may have been in flight when the last run read the store,
    and committed after it with an id it had passed: they are compared again."""
    return last_run_started - ORPHAN_GRACE


def archive_cutoff(config: GcConfig, now: datetime.datetime) -> datetime.datetime:
    """Archive entries older than this are purged for good."""
    return now - datetime.timedelta(days=config.archive_days)


def batches(ids: list[int], size: int) -> list[list[int]]:
    return [ids[start : start + size] for start in range(0, len(ids), size)]
