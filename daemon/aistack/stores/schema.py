"""The PostgreSQL schema of the learning store, as numbered migrations.

`aistack db migrate` applies the ones a database lacks, each in its own transaction, under
an advisory lock so two units starting at once cannot both apply one. The gateway and the
GC refuse to work against a database that is behind (run the migrations) or ahead (an
older aistack against a newer schema would misread it).
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from aistack.errors import Failure

# pg_advisory_lock keys: one per job that must not run twice at once.
MIGRATE_LOCK = 0x61697374_00000001
GC_LOCK = 0x61697374_00000002
# pg_advisory_xact_lock(LEARN_LOCK_CLASS, key): one lock per learned query, key a hash of
# its text (gateway/learn.py). This two-int4 form is a key space of its own (pg_locks shows
# it with objsubid 2, the int8 form above with 1), so no hash can meet the jobs' locks.
LEARN_LOCK_CLASS = 0x61697374

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

    -- The archive holds one row per removed batch, the rows as parallel arrays: one
    -- index entry and one tuple per 5,000 rows instead of per row, which makes archiving
    -- cost little more than the delete itself. No foreign key to gc_runs: its check per
    -- row cost a third of each batch, and runs are never deleted.
    CREATE TABLE solved_issues_archive (
        batch_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        run_id bigint NOT NULL,
        reason text NOT NULL CHECK (reason IN ('expired', 'pruned', 'duplicate')),
        archived_at timestamptz NOT NULL DEFAULT now(),
        -- false until the batch's points have left Qdrant: a run killed between the two
        -- steps leaves these for the next run to finish.
        points_removed boolean NOT NULL DEFAULT false,
        ids bigint[] NOT NULL,
        queries text[] NOT NULL,
        solutions text[] NOT NULL,
        value_scores double precision[] NOT NULL,
        created_ats timestamptz[] NOT NULL,
        duplicate_of bigint[] NOT NULL,
        CHECK (cardinality(ids) = cardinality(queries)
            AND cardinality(ids) = cardinality(solutions)
            AND cardinality(ids) = cardinality(value_scores)
            AND cardinality(ids) = cardinality(created_ats)
            AND cardinality(ids) = cardinality(duplicate_of))
    );
    -- lz4 compresses the archive's arrays at a third of pglz's cost (measured); servers
    -- built without lz4 keep the default.
    DO $$
    BEGIN
        ALTER TABLE solved_issues_archive
            ALTER COLUMN ids SET COMPRESSION lz4,
            ALTER COLUMN queries SET COMPRESSION lz4,
            ALTER COLUMN solutions SET COMPRESSION lz4,
            ALTER COLUMN value_scores SET COMPRESSION lz4,
            ALTER COLUMN created_ats SET COMPRESSION lz4,
            ALTER COLUMN duplicate_of SET COMPRESSION lz4;
    EXCEPTION WHEN OTHERS THEN
        RAISE NOTICE 'lz4 unavailable, the archive uses the default compression';
    END
    $$;
    CREATE INDEX solved_issues_archive_run ON solved_issues_archive (run_id);
    CREATE INDEX solved_issues_archive_archived ON solved_issues_archive (archived_at);

    -- What incremental deduplication has already compared.
    CREATE TABLE gc_dedup_state (
        singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        checked_through_id bigint NOT NULL,
        similarity double precision NOT NULL
    );
    """,
    # 2: reading the store back (`GET /hybrid/solutions`).
    """
    -- The listing's keyset orders: by value (the pruning index above already is one)
    -- and by recency, which needs the id beside the time to page through equal times.
    -- It also serves expiry's scans by age, so it replaces the index on the time alone.
    CREATE INDEX solved_issues_recent ON solved_issues (created_at, id);
    DROP INDEX solved_issues_created;

    -- The key that signs the listing's cursors, shared by every gateway of one store
    -- (a cursor from one gateway is good at another). Two random UUIDs: 244 random bits
    -- from pg_strong_random, without the pgcrypto extension.
    CREATE TABLE gateway_secrets (
        singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        cursor_key bytea NOT NULL CHECK (length(cursor_key) = 32)
    );
    INSERT INTO gateway_secrets (cursor_key)
        VALUES (uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()));
    """,
)
LATEST = len(MIGRATIONS)


class SchemaError(Failure):
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
