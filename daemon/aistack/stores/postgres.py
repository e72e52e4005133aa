"""PostgreSQL through an asyncpg pool: the source of truth of the learning store."""

from __future__ import annotations

import asyncpg

from aistack.config import PostgresConfig, read_secret


class PostgresUnavailable(Exception):
    """PostgreSQL did not answer; the caller may retry later."""


async def open_pool(config: PostgresConfig, max_size: int = 10) -> asyncpg.Pool:
    """A pool that connects on first use: the gateway starts (and says it is not ready)
    while PostgreSQL is still coming up, instead of failing its unit."""
    password = read_secret(config.password_file) if config.password_file else None
    return await asyncpg.create_pool(
        config.dsn, password=password, min_size=0, max_size=max_size, command_timeout=10
    )


async def check(pool: asyncpg.Pool, seconds: float = 2.0) -> None:
    try:
        async with pool.acquire(timeout=seconds) as connection:
            await connection.fetchval("SELECT 1", timeout=seconds)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        raise PostgresUnavailable(f"{error.__class__.__name__}: {error}") from error
