"""Reading a stream's source table or view: its columns, the horizon, batches and rows by key.

Configured names (source schema, table, columns) always go through
``psycopg.sql.Identifier``. Reads never lock source rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from include.crm_export.config import Stream
from include.crm_export.db.connection import dict_rows
from include.crm_export.errors import StreamConfigError
from include.crm_export.names import POSTGRES_CONN_ID

_CHANGE_COLUMN_TYPES = {"timestamp with time zone", "timestamp without time zone", "date"}


@dataclass(frozen=True)
class Horizon:
    """Rows whose change timestamp is below ``at`` are all committed (see README, "Late rows")."""

    at: datetime
    held_back_by: dict[str, Any] | None  # the old transaction that holds it back, if any


def _table(stream: Stream) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(stream.source_schema), sql.Identifier(stream.source_table))


def _columns(names: tuple[str, ...]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(c) for c in names)


def column_types(conn: psycopg.Connection, stream: Stream) -> dict[str, str]:
    """The source's column types; fails naming the stream and column when something is missing."""
    regclass = f'"{stream.source_schema}"."{stream.source_table}"'
    if conn.execute("SELECT to_regclass(%s)", (regclass,)).fetchone()[0] is None:
        raise StreamConfigError(
            f"Stream config error in stream '{stream.name}', field 'source': table or view {stream.source} "
            f"does not exist in the {POSTGRES_CONN_ID} database (or this user cannot see it)."
        )
    rows = conn.execute(
        """SELECT a.attname, format_type(a.atttypid, a.atttypmod)
           FROM pg_attribute a
           WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped""",
        (regclass,),
    ).fetchall()
    types = dict(rows)
    where_used = {stream.key: "key", stream.external_id_column: "external_id.column"}
    where_used.update({column: "order_by" for column in stream.order_by})
    where_used.update({column: f"fields.{sf_field}" for sf_field, column in stream.fields})
    for column in stream.source_columns:
        if column not in types:
            raise StreamConfigError(
                f"Stream config error in stream '{stream.name}', field '{where_used[column]}': "
                f"{stream.source} has no column '{column}'."
            )
    if types[stream.order_by[0]] not in _CHANGE_COLUMN_TYPES:
        raise StreamConfigError(
            f"Stream config error in stream '{stream.name}', field 'order_by': the first column "
            f"'{stream.order_by[0]}' must be the change timestamp (timestamptz, timestamp or date), "
            f"not {types[stream.order_by[0]]}."
        )
    return types


def export_horizon(conn: psycopg.Connection, stream: Stream, *, exclude_backends: tuple[int, ...] = ()) -> Horizon:
    """How far the export may read: now minus the settle window, and never past an open transaction.

    A transaction still in flight may yet commit rows whose change timestamp
    is its start time; reading past that start could skip them for good.
    """
    row = conn.execute(
        """SELECT now() - make_interval(secs => %s) AS settled,
                  a.xact_start, a.pid, a.application_name, a.state
           FROM (SELECT 1) one
           LEFT JOIN LATERAL (
               SELECT xact_start, pid, application_name, state FROM pg_stat_activity
               WHERE datname = current_database() AND pid <> pg_backend_pid() AND pid <> ALL(%s)
                 AND xact_start IS NOT NULL AND backend_type = 'client backend'
               ORDER BY xact_start LIMIT 1) a ON true""",
        (stream.settle_seconds, list(exclude_backends)),
    ).fetchone()
    settled, oldest_start, pid, application, state = row
    if oldest_start is not None and oldest_start < settled:
        return Horizon(
            oldest_start, {"pid": pid, "application_name": application, "state": state, "since": oldest_start}
        )
    return Horizon(settled, None)


def read_batch(
    conn: psycopg.Connection,
    stream: Stream,
    *,
    after: list[str] | None,
    horizon: datetime,
    column_types: dict[str, str],
    limit: int,
) -> list[dict[str, Any]]:
    """The next ``limit`` rows after ``after`` in the stream's order (keyset paging, never OFFSET)."""
    order = _columns(stream.order_by)
    conditions = [sql.SQL("{} < %(horizon)s").format(sql.Identifier(stream.order_by[0]))]
    params: dict[str, Any] = {"horizon": horizon, "limit": limit}
    if after is not None:
        placeholders = []
        for index, column in enumerate(stream.order_by):
            params[f"p{index}"] = after[index]
            placeholders.append(
                sql.SQL("CAST({} AS {})").format(sql.Placeholder(f"p{index}"), sql.SQL(column_types[column]))
            )
        conditions.append(sql.SQL("({}) > ({})").format(order, sql.SQL(", ").join(placeholders)))
    query = sql.SQL("SELECT {columns} FROM {table} WHERE {where} ORDER BY {order} LIMIT %(limit)s").format(
        columns=_columns(stream.source_columns),
        table=_table(stream),
        where=sql.SQL(" AND ").join(conditions),
        order=order,
    )
    return dict_rows(conn, query, params)


def read_rows_by_key(conn: psycopg.Connection, stream: Stream, keys: list[str]) -> list[dict[str, Any]]:
    """Current source rows for ``keys`` (record keys as text)."""
    query = sql.SQL("SELECT {columns} FROM {table} WHERE {key}::text = ANY(%s)").format(
        columns=_columns(stream.source_columns), table=_table(stream), key=sql.Identifier(stream.key)
    )
    return dict_rows(conn, query, (keys,))


def positions_by_key(conn: psycopg.Connection, stream: Stream, keys: list[str]) -> dict[str, tuple[Any, ...]]:
    """The current order_by values of the given source rows (to see whether they changed)."""
    query = sql.SQL("SELECT {columns} FROM {table} WHERE {key}::text = ANY(%s)").format(
        columns=_columns((stream.key, *stream.order_by)), table=_table(stream), key=sql.Identifier(stream.key)
    )
    return {str(row[0]): tuple(row[1:]) for row in conn.execute(query, (keys,)).fetchall()}


def all_keys(conn: psycopg.Connection, stream: Stream) -> list[str]:
    """Every record key of the source, as text (for comparisons, not for the export path)."""
    query = sql.SQL("SELECT {key}::text FROM {table}").format(key=sql.Identifier(stream.key), table=_table(stream))
    return [row[0] for row in conn.execute(query).fetchall()]
