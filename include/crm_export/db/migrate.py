"""Versioned schema migrations for the project's own PostgreSQL schema.

Migrations are the ``NNNN_name.sql`` files beside this module, applied in
order, each exactly once, recorded in ``crm_export.schema_migrations``. They
run at the start of every task, so they must be cheap when there is nothing to
do, and safe when several workers start at once (an advisory lock serialises
them). A migration upgrades the tables in place; it never drops rows, except
fingerprints that could never match again (0023: they only ever save a send).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

from include.crm_export.db.connection import one_value
from include.crm_export.names import MIGRATIONS_TABLE, SCHEMA

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Any constant will do; it only has to be the same in every worker.
_ADVISORY_LOCK_KEY = 7_202_611_22


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text()


def available_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise ValueError(f"Migration file {path.name} is not named NNNN_lower_snake_name.sql")
        migrations.append(Migration(int(match.group(1)), match.group(2), path))
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"Migration versions must run 1, 2, 3, … without gaps; found {versions}")
    return migrations


def applied_versions(conn: psycopg.Connection) -> list[int]:
    exists = conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.{MIGRATIONS_TABLE}",)).fetchone()
    if exists is None or exists[0] is None:
        return []
    rows = conn.execute(f"SELECT version FROM {SCHEMA}.{MIGRATIONS_TABLE} ORDER BY version").fetchall()
    return [row[0] for row in rows]


def _check_not_newer(done: set[int]) -> None:
    newest_known = max((m.version for m in available_migrations()), default=0)
    if done and max(done) > newest_known:
        raise RuntimeError(
            f"The database schema {SCHEMA} is at version {max(done)}, newer than this code "
            f"knows ({newest_known}). Deploy the newer crm-export code to every worker."
        )


def migrate(conn: psycopg.Connection, *, target: int | None = None) -> list[int]:
    """Bring the schema up to ``target`` (default: newest). Returns the versions applied.

    An up-to-date schema is only read: no lock, no DDL, so a DBA may create
    the schema once and then revoke ``CREATE`` from the export's user.
    """
    migrations = available_migrations()
    if target is not None:
        migrations = [m for m in migrations if m.version <= target]
    done = set(applied_versions(conn))
    _check_not_newer(done)
    if all(m.version in done for m in migrations):
        return []
    applied_now: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_LOCK_KEY,))
        if one_value(conn.execute("SELECT to_regnamespace(%s)", (SCHEMA,))) is None:
            conn.execute(f"CREATE SCHEMA {SCHEMA}")
        if one_value(conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.{MIGRATIONS_TABLE}",))) is None:
            conn.execute(
                f"""CREATE TABLE {SCHEMA}.{MIGRATIONS_TABLE} (
                        version integer PRIMARY KEY,
                        name text NOT NULL,
                        applied_at timestamptz NOT NULL DEFAULT now())"""
            )
        done = set(applied_versions(conn))  # again, under the lock: another worker may have just migrated
        _check_not_newer(done)
        for migration in migrations:
            if migration.version in done:
                continue
            log.info("Applying migration %04d_%s", migration.version, migration.name)
            conn.execute(migration.sql)
            conn.execute(
                f"INSERT INTO {SCHEMA}.{MIGRATIONS_TABLE} (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
            applied_now.append(migration.version)
    return applied_now
