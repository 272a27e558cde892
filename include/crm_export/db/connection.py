"""Connections to the project's PostgreSQL (``crm_export_postgres``)."""

from __future__ import annotations

import psycopg

POSTGRES_CONN_ID = "crm_export_postgres"

# Every statement and lock wait is bounded, so a stuck database fails the task
# instead of holding the run (Airflow retries it).
DEFAULT_STATEMENT_TIMEOUT_MS = 300_000
DEFAULT_LOCK_TIMEOUT_MS = 60_000


def conninfo_for(conn_id: str = POSTGRES_CONN_ID) -> str:
    """libpq connection string for an Airflow connection (read at call time)."""
    from airflow.sdk import BaseHook

    connection = BaseHook.get_connection(conn_id)
    parts = {
        "host": connection.host or "localhost",
        "port": str(connection.port or 5432),
        "dbname": connection.schema or "postgres",
        "user": connection.login or "",
        "password": connection.password or "",
    }
    for key in ("sslmode", "sslrootcert", "sslcert", "sslkey"):
        value = connection.extra_dejson.get(key)
        if value:
            parts[key] = str(value)
    return psycopg.conninfo.make_conninfo(**{k: v for k, v in parts.items() if v != ""})


def connect(
    conninfo: str,
    *,
    application_name: str = "crm-export",
    statement_timeout_ms: int = DEFAULT_STATEMENT_TIMEOUT_MS,
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
    connect_timeout_s: int = 10,
) -> psycopg.Connection:
    # Autocommit, with explicit transactions: an implicit transaction left
    # open between batches would hold back every stream's export horizon.
    return psycopg.connect(
        conninfo,
        autocommit=True,
        connect_timeout=connect_timeout_s,
        application_name=application_name,
        options=f"-c statement_timeout={statement_timeout_ms} -c lock_timeout={lock_timeout_ms} -c TimeZone=UTC",
    )
