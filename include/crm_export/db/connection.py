"""Connections to the project's PostgreSQL (``crm_export_postgres``), through the provider's PostgresHook.

One factory, :class:`Database`, serves the tasks, the CLI and the CRM Export
page. The hook reads the Airflow connection (host, login, extras such as
``sslmode`` or IAM auth) at call time, never at import; this module adds what
every crm-export connection needs on top: autocommit with explicit
transactions, bounded statements and lock waits, UTC, and an application name
that says which stream and which step a session belongs to (it shows in
``pg_stat_activity`` and in the message of a stream that is busy). A
connection's ``connect_timeout`` extra bounds connecting (psycopg's default
otherwise).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from include.crm_export.errors import DatabaseUnavailable
from include.crm_export.names import POSTGRES_CONN_ID

# Every statement and lock wait is bounded, so a stuck database fails the task
# instead of holding the run (Airflow retries it).
DEFAULT_STATEMENT_TIMEOUT_MS = 300_000
DEFAULT_LOCK_TIMEOUT_MS = 60_000


class Database:
    """Opens connections to ``conn_id`` (default ``crm_export_postgres``)."""

    def __init__(self, conn_id: str = POSTGRES_CONN_ID) -> None:
        self.conn_id = conn_id
        self._hook: Any = None

    def connect(
        self,
        *,
        application_name: str = "crm-export",
        statement_timeout_ms: int = DEFAULT_STATEMENT_TIMEOUT_MS,
        lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
    ) -> psycopg.Connection:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        if self._hook is None:
            self._hook = PostgresHook(postgres_conn_id=self.conn_id)
        # Server-side keepalives: when a worker host dies, PostgreSQL ends its
        # session within about two minutes, and with it the stream's lock.
        self._hook.options = (
            f"-c statement_timeout={statement_timeout_ms} -c lock_timeout={lock_timeout_ms} -c TimeZone=UTC "
            "-c tcp_keepalives_idle=60 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=6"
        )
        conn = self._hook.get_conn()
        if not isinstance(conn, psycopg.Connection):
            conn.close()
            raise RuntimeError(
                "crm-export needs psycopg 3 connections from PostgresHook (SQLAlchemy 2 with psycopg installed); "
                "install requirements.txt with constraints.txt."
            )
        # Autocommit, with explicit transactions: an implicit transaction left
        # open between batches would hold back every stream's export horizon.
        conn.autocommit = True
        conn.execute("SELECT set_config('application_name', %s, false)", (application_name[:63],))
        return conn

    def location(self) -> tuple[str, int, str]:
        """Host, port and database of ``conn_id`` as lineage names them (libpq's defaults where the connection
        leaves them empty: localhost, 5432, and a database named as the user)."""
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(self.conn_id)
        # Host names are case-insensitive; lower-cased as the Postgres provider's own lineage names them.
        return (conn.host or "localhost").lower(), int(conn.port or 5432), conn.schema or conn.login or "postgres"


def one_row(cursor: psycopg.Cursor[Any]) -> tuple[Any, ...]:
    """The row of a statement that always answers one (an aggregate, ``SELECT now()``, an UPDATE … RETURNING of a
    row known to exist)."""
    row = cursor.fetchone()
    if row is None:
        raise RuntimeError("a statement that always answers a row answered none")
    return tuple(row)


def one_value(cursor: psycopg.Cursor[Any]) -> Any:
    """The first column of :func:`one_row`."""
    return one_row(cursor)[0]


def database_now(conn: psycopg.Connection) -> datetime:
    """The database's clock: the one every stored timestamp is compared with."""
    value: datetime = one_value(conn.execute("SELECT now()"))
    return value


def dict_rows(conn: psycopg.Connection, query: Any, params: Any = None) -> list[dict[str, Any]]:
    """Run ``query``; its rows as dicts keyed by column name."""
    with conn.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(query, params).fetchall()


def database_failure(exc: psycopg.OperationalError, what: str) -> DatabaseUnavailable:
    """The one translation of a lost or refused PostgreSQL connection into a failure the person on call reads.

    A failover, an administrator's ``pg_terminate_backend``, a restart, a
    network cut or a statement/lock timeout: nothing of a batch is recorded
    unless its whole transaction committed, so what is left is simply sent
    again (upserts). Airflow retries the task.
    """
    sqlstate = getattr(exc, "sqlstate", None)
    kind = type(exc).__name__
    said = " ".join(str(exc).split())[:300] or "no message"
    return DatabaseUnavailable(
        f"{what} lost its PostgreSQL connection ({POSTGRES_CONN_ID}): {kind}{f' [{sqlstate}]' if sqlstate else ''}: "
        f"{said}. Every batch committed before it stays (the watermark and ExportErrors move only in one "
        "transaction with their batch); nothing after it was recorded and it is sent again. Airflow retries the "
        "task; if it keeps failing, check that the database is up and reachable from the workers."
    )
