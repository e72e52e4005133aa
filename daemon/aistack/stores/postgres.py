"""PostgreSQL through asyncpg: the source of truth of the learning store.

The one door in: the gateway's pool and the batch jobs' dedicated connections both reach
the server with `connect_parameters`, the only reader of `postgres.password_file`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TypedDict

import asyncpg

from aistack.config import PostgresConfig, read_secret
from aistack.errors import Failure
from aistack.observability.logs import EventLog
from aistack.stores.schema import SchemaError, require_current

log = EventLog("postgres")
# InternalClientError: a pooled connection whose session the server ended (a PostgreSQL
# restart) can come back out of step with its protocol (asyncpg issue #784); it is a
# connection failure like the others, and such a connection must not be used again.
CONNECTION_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


class PostgresUnavailable(Failure):
    """PostgreSQL did not answer; the caller may retry later."""


class ConnectParameters(TypedDict):
    dsn: str
    password: str | None


def connect_parameters(config: PostgresConfig) -> ConnectParameters:
    """The DSN, and the password from `postgres.password_file` if one is named (else asyncpg
    looks where libpq would: the DSN, $PGPASSWORD, ~/.pgpass)."""
    password = read_secret(config.password_file) if config.password_file else None
    return ConnectParameters(dsn=config.dsn, password=password)


async def open_pool(config: PostgresConfig, max_size: int = 10) -> asyncpg.Pool:
    """A pool that connects on first use: the gateway starts (and says it is not ready)
    while PostgreSQL is still coming up, instead of failing its unit."""
    return await asyncpg.create_pool(
        **connect_parameters(config), min_size=0, max_size=max_size, command_timeout=10
    )


@contextlib.asynccontextmanager
async def connection(
    config: PostgresConfig, *, statement_timeout_ms: int = 0, lock_timeout_ms: int = 0
) -> AsyncIterator[asyncpg.Connection]:
    """One dedicated connection (batch jobs hold advisory locks, which live on one)."""
    settings = {"application_name": "aistack"}
    if statement_timeout_ms:
        settings["statement_timeout"] = str(statement_timeout_ms)
    if lock_timeout_ms:
        settings["lock_timeout"] = str(lock_timeout_ms)
    connection = await asyncpg.connect(
        **connect_parameters(config), server_settings=settings, timeout=10
    )
    try:
        yield connection
    finally:
        await connection.close()


async def refuse_wrong_schema(pool: asyncpg.Pool, seconds: float = 5.0) -> None:
    """Raise SchemaError when PostgreSQL answers with a schema this aistack cannot use.

    PostgreSQL not answering yet is no reason to refuse: readiness reports it until it does.
    """
    try:
        async with acquire(pool, seconds) as connection:
            await require_current(connection)
    except CONNECTION_ERRORS as error:
        log.warning("postgres.unavailable_at_start", error=f"{error.__class__.__name__}: {error}")


@contextlib.asynccontextmanager
async def acquire(
    pool: asyncpg.Pool, wait_seconds: float | None = None
) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection, terminated on a client-side protocol error so the pool replaces
    it instead of handing out a connection that fails every later request. Every use of
    the pool goes through here."""
    async with pool.acquire(timeout=wait_seconds) as connection:
        try:
            yield connection
        except asyncpg.InternalClientError:
            connection.terminate()
            raise


async def check(pool: asyncpg.Pool, seconds: float = 2.0) -> None:
    try:
        async with acquire(pool, seconds) as connection:
            await require_current(connection)
    except SchemaError as error:
        raise PostgresUnavailable(str(error)) from error
    except CONNECTION_ERRORS as error:
        raise PostgresUnavailable(f"{error.__class__.__name__}: {error}") from error
