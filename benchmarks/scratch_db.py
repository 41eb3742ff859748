"""A scratch Postgres database for a benchmark: created next to the one in DATABASE_URL, dropped afterwards."""

from __future__ import annotations

import os
from collections.abc import Callable


def postgres_scratch(url: str, prefix: str) -> tuple[str, Callable[[], None]]:
    """(URL of a new database `<prefix>_<pid>` on the server of `url`, a function that drops it)."""
    import psycopg
    from dj_database_url import parse

    params = parse(url)
    name = f"{prefix}_{os.getpid()}"
    admin = dict(
        host=params["HOST"] or "localhost",
        port=params["PORT"] or 5432,
        user=params["USER"],
        password=params["PASSWORD"] or None,
        dbname=params["NAME"],
        autocommit=True,
    )
    with psycopg.connect(**admin) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(**admin) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return url.rsplit("/", 1)[0] + "/" + name, drop
