"""The PostgreSQL schema of the learning store, as numbered migrations.

`aistack db migrate` applies the ones a database lacks, each in its own transaction, under
an advisory lock so two units starting at once cannot both apply one. The gateway and the
GC refuse to work against a database that is behind (run the migrations) or ahead (an
older aistack against a newer schema would misread it).
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

# pg_advisory_lock keys: one per job that must not run twice at once.
MIGRATE_LOCK = 0x61697374_00000001
GC_LOCK = 0x61697374_00000002

MIGRATIONS: tuple[str, ...] = (
    # 1: the store, the GC's runs and its archive.
    """
    CREATE TABLE solved_issues (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        query text NOT NULL,
        solution text NOT NULL,
        value_score double precision NOT NULL CHECK (value_score BETWEEN 0 AND 1),
        created_at timestamptz NOT NULL DEFAULT now()
    );
    -- Pruning takes the bottom n by (value_score, created_at, id); expiry scans by age.
    CREATE INDEX solved_issues_value ON solved_issues (value_score, created_at, id);
    CREATE INDEX solved_issues_created ON solved_issues (created_at);

    CREATE TABLE gc_runs (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        started_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz,
        status text NOT NULL DEFAULT 'running'
            CHECK (status IN ('running', 'done', 'failed', 'interrupted')),
        counts jsonb NOT NULL DEFAULT '{}',
        error text
    );

    CREATE TABLE solved_issues_archive (
        id bigint PRIMARY KEY,
        query text NOT NULL,
        solution text NOT NULL,
        value_score double precision NOT NULL,
        created_at timestamptz NOT NULL,
        archived_at timestamptz NOT NULL DEFAULT now(),
        run_id bigint NOT NULL REFERENCES gc_runs (id),
        reason text NOT NULL CHECK (reason IN ('expired', 'pruned', 'duplicate')),
        duplicate_of bigint,
        -- false until the row's point has left Qdrant: a run killed between the two
        -- steps leaves these for the next run to finish.
        point_removed boolean NOT NULL DEFAULT false
    );
    CREATE INDEX solved_issues_archive_run ON solved_issues_archive (run_id);
    CREATE INDEX solved_issues_archive_archived ON solved_issues_archive (archived_at);
    CREATE INDEX solved_issues_archive_pending ON solved_issues_archive (id)
        WHERE NOT point_removed;

    -- What incremental deduplication has already compared.
    CREATE TABLE gc_dedup_state (
        singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        checked_through_id bigint NOT NULL,
        similarity double precision NOT NULL
    );
    """,
)
LATEST = len(MIGRATIONS)


class SchemaError(Exception):
    """The database schema is not the one this aistack works with; the message says why."""


@dataclass(frozen=True, slots=True)
class SchemaState:
    version: int
    latest: int = LATEST

    @property
    def current(self) -> bool:
        return self.version == self.latest


async def schema_version(connection: asyncpg.Connection) -> int:
    exists = await connection.fetchval("SELECT to_regclass('aistack_schema') IS NOT NULL")
    if not exists:
        return 0
    version = await connection.fetchval("SELECT max(version) FROM aistack_schema")
    return int(version or 0)


async def require_current(connection: asyncpg.Connection) -> None:
    """Raise SchemaError unless the database is at exactly this aistack's version."""
    version = await schema_version(connection)
    if version < LATEST:
        raise SchemaError(
            f"the database schema is at version {version}, this aistack needs {LATEST}: "
            "run `aistack db migrate --config FILE` first"
        )
    if version > LATEST:
        raise SchemaError(
            f"the database schema is at version {version}, newer than this aistack knows "
            f"({LATEST}): upgrade aistack"
        )


async def migrate(connection: asyncpg.Connection) -> list[int]:
    """Apply the migrations the database lacks; return the versions applied."""
    applied: list[int] = []
    await connection.execute("SELECT pg_advisory_lock($1)", MIGRATE_LOCK)
    try:
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS aistack_schema ("
            " version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        version = await schema_version(connection)
        if version > LATEST:
            raise SchemaError(
                f"the database schema is at version {version}, newer than this aistack "
                f"knows ({LATEST}): upgrade aistack"
            )
        for number in range(version + 1, LATEST + 1):
            async with connection.transaction():
                await connection.execute(MIGRATIONS[number - 1])
                await connection.execute("INSERT INTO aistack_schema (version) VALUES ($1)", number)
            applied.append(number)
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATE_LOCK)
    return applied
