"""Every query the export runs against PostgreSQL, in one place.

Configured names (source schema, table, columns) always go through
``psycopg.sql.Identifier``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from include.crm_export.batch import BatchPlan
from include.crm_export.config import Stream
from include.crm_export.errors import StreamBusy, StreamConfigError
from include.crm_export.mapping import position_to_json

ERRORS_TABLE = sql.SQL('crm_export."ExportErrors"')
_TIMESTAMP_TYPES = {"timestamp with time zone", "timestamp without time zone", "date"}


@dataclass(frozen=True)
class Watermark:
    position: list[str] | None
    held_record_key: str | None


@dataclass(frozen=True)
class Horizon:
    """Rows whose change timestamp is below ``at`` are all committed (see README, "Late rows")."""

    at: datetime
    held_back_by: dict[str, Any] | None  # the old transaction that holds it back, if any


def _dicts(conn: psycopg.Connection, query: Any, params: Any = None) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(query, params).fetchall()


def lock_stream(conn: psycopg.Connection, stream: Stream) -> None:
    """Hold a session lock on the stream for the life of ``conn``: one exporter per stream."""
    locked = conn.execute(
        "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (f"crm_export.stream:{stream.name}",)
    ).fetchone()[0]
    if not locked:
        holder = conn.execute(
            """SELECT a.pid, a.application_name, a.client_addr, a.backend_start
               FROM pg_locks l JOIN pg_stat_activity a USING (pid)
               WHERE l.locktype = 'advisory' AND l.objid = (hashtextextended(%s, 0) & 4294967295)::oid
                 AND l.granted LIMIT 1""",
            (f"crm_export.stream:{stream.name}",),
        ).fetchone()
        who = f" (PostgreSQL backend pid {holder[0]}, {holder[1] or 'unknown application'})" if holder else ""
        raise StreamBusy(
            f"Stream '{stream.name}' is being exported by another process right now{who}. "
            "This run leaves it alone; the next scheduled run continues."
        )


def source_column_types(conn: psycopg.Connection, stream: Stream) -> dict[str, str]:
    """The source's column types; fails naming the stream and column when something is missing."""
    exists = conn.execute("SELECT to_regclass(%s)", (f'"{stream.source_schema}"."{stream.source_table}"',)).fetchone()
    if exists[0] is None:
        raise StreamConfigError(
            f"Stream config error in stream '{stream.name}', field 'source': table or view {stream.source} "
            "does not exist in the crm_export_postgres database (or this user cannot see it)."
        )
    rows = conn.execute(
        """SELECT a.attname, format_type(a.atttypid, a.atttypmod)
           FROM pg_attribute a
           WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped""",
        (f'"{stream.source_schema}"."{stream.source_table}"',),
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
    if types[stream.order_by[0]] not in _TIMESTAMP_TYPES:
        raise StreamConfigError(
            f"Stream config error in stream '{stream.name}', field 'order_by': the first column "
            f"'{stream.order_by[0]}' must be the change timestamp (timestamptz, timestamp or date), "
            f"not {types[stream.order_by[0]]}."
        )
    return types


def load_watermark(conn: psycopg.Connection, stream: Stream) -> Watermark:
    with conn.transaction():
        conn.execute(
            "INSERT INTO crm_export.stream_watermarks (stream) VALUES (%s) ON CONFLICT (stream) DO NOTHING",
            (stream.name,),
        )
        position, held = conn.execute(
            "SELECT position, held_record_key FROM crm_export.stream_watermarks WHERE stream = %s", (stream.name,)
        ).fetchone()
    return Watermark(position, held)


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
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in stream.source_columns)
    order = sql.SQL(", ").join(sql.Identifier(c) for c in stream.order_by)
    change_column = sql.Identifier(stream.order_by[0])
    conditions = [sql.SQL("{} < %(horizon)s").format(change_column)]
    params: dict[str, Any] = {"horizon": horizon, "limit": limit}
    if after is not None:
        placeholders = []
        for index, column in enumerate(stream.order_by):
            params[f"p{index}"] = after[index]
            placeholders.append(
                sql.SQL("CAST({} AS {})").format(sql.Placeholder(f"p{index}"), sql.SQL(column_types[column]))
            )
        conditions.append(sql.SQL("({}) > ({})").format(order, sql.SQL(", ").join(placeholders)))
    query = sql.SQL("SELECT {columns} FROM {schema}.{table} WHERE {where} ORDER BY {order} LIMIT %(limit)s").format(
        columns=columns,
        schema=sql.Identifier(stream.source_schema),
        table=sql.Identifier(stream.source_table),
        where=sql.SQL(" AND ").join(conditions),
        order=order,
    )
    return _dicts(conn, query, params)


def read_rows_by_key(
    conn: psycopg.Connection, stream: Stream, keys: list[str], column_types: dict[str, str]
) -> list[dict[str, Any]]:
    """Current source rows for ``keys`` (record keys as text)."""
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in stream.source_columns)
    query = sql.SQL("SELECT {columns} FROM {schema}.{table} WHERE {key}::text = ANY(%s)").format(
        columns=columns,
        schema=sql.Identifier(stream.source_schema),
        table=sql.Identifier(stream.source_table),
        key=sql.Identifier(stream.key),
    )
    return _dicts(conn, query, (keys,))


def apply_batch(
    conn: psycopg.Connection, stream: Stream, plan: BatchPlan, *, dag_id: str, run_id: str, resolve: bool = True
) -> None:
    """Write the batch's ExportErrors changes and move the watermark, in one transaction.

    ``resolve=False`` skips resolving open errors of confirmed records, for a
    caller that knows the stream has none.
    """
    with conn.transaction():
        if plan.errors:
            with conn.cursor() as cursor:
                cursor.executemany(
                    sql.SQL(
                        """INSERT INTO {errors} AS e
                               (stream, sobject, record_key, external_id, error_code, error_message,
                                error_fields, payload, dag_id, run_id)
                           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                           ON CONFLICT (stream, record_key) WHERE status = 'open' DO UPDATE SET
                               external_id = EXCLUDED.external_id,
                               error_code = EXCLUDED.error_code,
                               error_message = EXCLUDED.error_message,
                               error_fields = EXCLUDED.error_fields,
                               payload = EXCLUDED.payload,
                               attempts = e.attempts + 1,
                               last_failed_at = now(),
                               last_attempt_at = now(),
                               dag_id = EXCLUDED.dag_id,
                               run_id = EXCLUDED.run_id"""
                    ).format(errors=ERRORS_TABLE),
                    [
                        (
                            stream.name,
                            stream.sobject,
                            record.key,
                            record.external_id,
                            rejection.code,
                            rejection.message,
                            list(rejection.fields),
                            Jsonb(record.payload) if record.payload is not None else None,
                            dag_id,
                            run_id,
                        )
                        for record, rejection in plan.errors
                    ],
                )
        if plan.confirmed_keys and resolve:
            resolve_errors(conn, stream, list(plan.confirmed_keys), resolved_by=dag_id)
        position = json.dumps(position_to_json(plan.new_position)) if plan.new_position is not None else None
        held_key = plan.held[0].key if plan.held else None
        conn.execute(
            """UPDATE crm_export.stream_watermarks SET
                   position = COALESCE(%(position)s::jsonb, position),
                   held_since = CASE WHEN %(held)s::text IS NULL THEN NULL
                                     WHEN held_record_key IS DISTINCT FROM %(held)s THEN now()
                                     ELSE held_since END,
                   held_record_key = %(held)s,
                   last_run_id = %(run_id)s,
                   last_run_at = now(),
                   records_exported = records_exported + %(exported)s,
                   last_run_exported = CASE WHEN last_run_id IS DISTINCT FROM %(run_id)s THEN %(exported)s
                                            ELSE last_run_exported + %(exported)s END,
                   updated_at = now()
               WHERE stream = %(stream)s""",
            {
                "position": position,
                "held": held_key,
                "run_id": run_id,
                "exported": plan.exported,
                "stream": stream.name,
            },
        )


def has_open_errors(conn: psycopg.Connection, stream: Stream) -> bool:
    query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {errors} WHERE stream = %s AND status = 'open')")
    return conn.execute(query.format(errors=ERRORS_TABLE), (stream.name,)).fetchone()[0]


def resolve_errors(conn: psycopg.Connection, stream: Stream, keys: list[str], *, resolved_by: str) -> int:
    cursor = conn.execute(
        sql.SQL(
            """UPDATE {errors} SET status = 'resolved', resolved_at = now(), resolved_by = %s, last_attempt_at = now()
               WHERE stream = %s AND status = 'open' AND record_key = ANY(%s)"""
        ).format(errors=ERRORS_TABLE),
        (resolved_by, stream.name, keys),
    )
    return cursor.rowcount


def note_run(conn: psycopg.Connection, stream: Stream, *, run_id: str) -> None:
    """Record that a run looked at the stream, even when it found nothing to export."""
    with conn.transaction():
        conn.execute(
            "UPDATE crm_export.stream_watermarks SET last_run_id = %s, last_run_at = now(), last_run_exported = 0 "
            "WHERE stream = %s",
            (run_id, stream.name),
        )


@dataclass(frozen=True)
class OpenError:
    id: int
    record_key: str
    external_id: str | None
    error_code: str
    attempts: int


_OPEN_ERROR_PICK = """
    SELECT id FROM {errors}
    WHERE stream = %(stream)s AND status = 'open'
      AND last_attempt_at < %(not_attempted_since)s
      AND (claimed_until IS NULL OR claimed_until < now())
      AND (%(codes)s::text[] IS NULL OR error_code = ANY(%(codes)s::text[]))
    ORDER BY last_attempt_at, id
    LIMIT %(limit)s
"""


def claim_open_errors(
    conn: psycopg.Connection,
    stream: Stream,
    *,
    claimant: str,
    lease_seconds: float,
    not_attempted_since: datetime,
    limit: int,
    error_codes: list[str] | None,
) -> list[OpenError]:
    """Lease up to ``limit`` open errors of ``stream``, least recently attempted first.

    Rows another run holds (lease or row lock) are skipped, never waited for.
    Served by the partial index export_errors_open_by_stream_and_last_attempt.
    """
    query = sql.SQL(
        """UPDATE {errors} e SET claimed_by = %(claimant)s,
                                 claimed_until = now() + make_interval(secs => %(lease)s)
           WHERE e.id IN ("""
        + _OPEN_ERROR_PICK
        + """ FOR UPDATE SKIP LOCKED)
           RETURNING e.id, e.record_key, e.external_id, e.error_code, e.attempts, e.last_attempt_at"""
    ).format(errors=ERRORS_TABLE)
    params = {
        "claimant": claimant,
        "lease": lease_seconds,
        "stream": stream.name,
        "not_attempted_since": not_attempted_since,
        "codes": error_codes or None,
        "limit": limit,
    }
    with conn.transaction():
        rows = conn.execute(query, params).fetchall()
    rows.sort(key=lambda r: (r[5], r[0]))
    return [OpenError(*row[:5]) for row in rows]


def peek_open_errors(
    conn: psycopg.Connection,
    stream: Stream,
    *,
    not_attempted_since: datetime,
    limit: int,
    error_codes: list[str] | None,
) -> list[OpenError]:
    """What :func:`claim_open_errors` would take, without taking it (dry runs)."""
    query = sql.SQL(
        "SELECT id, record_key, external_id, error_code, attempts FROM {errors} WHERE id IN ("
        + _OPEN_ERROR_PICK
        + ") ORDER BY last_attempt_at, id"
    ).format(errors=ERRORS_TABLE)
    params = {
        "stream": stream.name,
        "not_attempted_since": not_attempted_since,
        "codes": error_codes or None,
        "limit": limit,
    }
    return [OpenError(*row) for row in conn.execute(query, params).fetchall()]


def record_reexport(
    conn: psycopg.Connection,
    *,
    claimant: str,
    resolved: list[int],
    failed: list[tuple[int, dict[str, Any] | None, Any]],
    source_gone: list[int],
    resolved_by: str,
    run_id: str,
) -> None:
    """Write a re-export batch's outcome in one transaction and release its claims.

    Only rows still open and still claimed by this run change: a row that
    CRMExport resolved meanwhile stays resolved.
    """
    mine = "status = 'open' AND claimed_by = %(claimant)s"
    with conn.transaction():
        if resolved:
            conn.execute(
                sql.SQL(
                    "UPDATE {errors} SET status = 'resolved', resolved_at = now(), resolved_by = %(by)s, "
                    "last_attempt_at = now(), claimed_by = NULL, claimed_until = NULL "
                    "WHERE id = ANY(%(ids)s) AND " + mine
                ).format(errors=ERRORS_TABLE),
                {"by": resolved_by, "ids": resolved, "claimant": claimant},
            )
        if source_gone:
            conn.execute(
                sql.SQL(
                    "UPDATE {errors} SET status = 'source_deleted', resolved_at = now(), resolved_by = %(by)s, "
                    "last_attempt_at = now(), claimed_by = NULL, claimed_until = NULL "
                    "WHERE id = ANY(%(ids)s) AND " + mine
                ).format(errors=ERRORS_TABLE),
                {"by": resolved_by, "ids": source_gone, "claimant": claimant},
            )
        if failed:
            with conn.cursor() as cursor:
                cursor.executemany(
                    sql.SQL(
                        "UPDATE {errors} SET error_code = %(code)s, error_message = %(message)s, "
                        "error_fields = %(fields)s, payload = COALESCE(%(payload)s, payload), "
                        "attempts = attempts + 1, last_failed_at = now(), last_attempt_at = now(), "
                        "dag_id = %(by)s, run_id = %(run_id)s, claimed_by = NULL, claimed_until = NULL "
                        "WHERE id = %(id)s AND " + mine
                    ).format(errors=ERRORS_TABLE),
                    [
                        {
                            "id": error_id,
                            "code": rejection.code,
                            "message": rejection.message,
                            "fields": list(rejection.fields),
                            "payload": Jsonb(payload) if payload is not None else None,
                            "by": resolved_by,
                            "run_id": run_id,
                            "claimant": claimant,
                        }
                        for error_id, payload, rejection in failed
                    ],
                )


def release_claims(conn: psycopg.Connection, *, claimant: str) -> None:
    with conn.transaction():
        conn.execute(
            sql.SQL(
                "UPDATE {errors} SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = %s AND status = 'open'"
            ).format(errors=ERRORS_TABLE),
            (claimant,),
        )


def open_error_summary(conn: psycopg.Connection, stream: Stream) -> tuple[int, datetime | None]:
    """How many errors of the stream are open, and since when the oldest."""
    count, oldest = conn.execute(
        sql.SQL("SELECT count(*), min(first_failed_at) FROM {errors} WHERE stream = %s AND status = 'open'").format(
            errors=ERRORS_TABLE
        ),
        (stream.name,),
    ).fetchone()
    return count, oldest


def database_now(conn: psycopg.Connection) -> datetime:
    return conn.execute("SELECT now()").fetchone()[0]


def positions_by_key(conn: psycopg.Connection, stream: Stream, keys: list[str]) -> dict[str, tuple[Any, ...]]:
    """The current order_by values of the given source rows (to see whether they changed)."""
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in (stream.key, *stream.order_by))
    query = sql.SQL("SELECT {columns} FROM {schema}.{table} WHERE {key}::text = ANY(%s)").format(
        columns=columns,
        schema=sql.Identifier(stream.source_schema),
        table=sql.Identifier(stream.source_table),
        key=sql.Identifier(stream.key),
    )
    return {str(row[0]): tuple(row[1:]) for row in conn.execute(query, (keys,)).fetchall()}


def all_keys_query(stream: Stream) -> sql.Composed:
    return sql.SQL("SELECT {key}::text FROM {schema}.{table}").format(
        key=sql.Identifier(stream.key),
        schema=sql.Identifier(stream.source_schema),
        table=sql.Identifier(stream.source_table),
    )


def stream_status(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Per stream: watermark, hold, last run and open errors (the CRM Export page)."""
    query = sql.SQL(
        """SELECT w.stream, w.position, w.held_record_key, w.held_since, w.last_run_id, w.last_run_at,
                  w.last_run_exported, w.records_exported,
                  h.error_code AS held_error_code, h.error_message AS held_error_message,
                  h.error_fields AS held_error_fields, h.external_id AS held_external_id,
                  (SELECT count(*) FROM {errors} o WHERE o.stream = w.stream AND o.status = 'open') AS open_errors
           FROM crm_export.stream_watermarks w
           LEFT JOIN {errors} h ON h.stream = w.stream AND h.record_key = w.held_record_key AND h.status = 'open'
           ORDER BY w.stream"""
    ).format(errors=ERRORS_TABLE)
    return _dicts(conn, query)


def error_counts(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Errors by stream, status and code (open ones served by the open-rows index)."""
    query = sql.SQL(
        """SELECT stream, status, error_code, count(*) AS count, min(first_failed_at) AS oldest
           FROM {errors} GROUP BY stream, status, error_code ORDER BY status, stream, error_code"""
    ).format(errors=ERRORS_TABLE)
    return _dicts(conn, query)


def error_page(
    conn: psycopg.Connection,
    *,
    status: str,
    stream: str | None,
    error_code: str | None,
    after: tuple[datetime, int] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """One page of ExportErrors, oldest first, by keyset (first_failed_at, id): fast at any depth.

    Served by the index export_errors_by_status_and_age.
    """
    query = sql.SQL(
        """SELECT id, stream, sobject, record_key, external_id, error_code, error_message, error_fields, status,
                  attempts, first_failed_at, last_failed_at, last_attempt_at, resolved_at, resolved_by, run_id
           FROM {errors}
           WHERE status = %(status)s
             AND (%(stream)s::text IS NULL OR stream = %(stream)s)
             AND (%(code)s::text IS NULL OR error_code = %(code)s)
             AND (%(after_at)s::timestamptz IS NULL OR (first_failed_at, id) > (%(after_at)s, %(after_id)s))
           ORDER BY first_failed_at, id
           LIMIT %(limit)s"""
    ).format(errors=ERRORS_TABLE)
    params = {
        "status": status,
        "stream": stream,
        "code": error_code,
        "after_at": after[0] if after else None,
        "after_id": after[1] if after else 0,
        "limit": limit,
    }
    return _dicts(conn, query, params)
