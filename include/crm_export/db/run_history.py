"""Run history (``export_runs``): one row per export run and stream, kept ``run_history_days``.

Written by the export at the end of each run (also a failed one); read by the
CRM Export page for its charts and its table of recent runs.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from include.crm_export.config import Stream
from include.crm_export.db.connection import dict_rows
from include.crm_export.db.export_errors import COUNT_DELTAS
from include.crm_export.decisions import ExportResult
from include.crm_export.names import SCHEMA

EXPORT_RUNS = sql.Identifier(SCHEMA, "export_runs")

SUCCESS, HELD, FAILED = "success", "held", "failed"


def open_errors_by_code(conn: psycopg.Connection, stream: Stream) -> dict[str, int]:
    """The stream's open ExportErrors by Salesforce error code, from the count deltas (no scan of the table)."""
    rows = conn.execute(
        sql.SQL(
            "SELECT error_code, sum(delta)::bigint FROM {} WHERE stream = %s AND status = 'open' "
            "GROUP BY 1 HAVING sum(delta) > 0"
        ).format(COUNT_DELTAS),
        (stream.name,),
    ).fetchall()
    return dict(rows)


def record_run(
    conn: psycopg.Connection,
    stream: Stream,
    result: ExportResult,
    *,
    dag_id: str,
    run_id: str,
    seconds: float,
    in_flight: int = 1,
    failure: str | None = None,
) -> None:
    """Add this run to the history and drop the stream's rows older than its retention, in one transaction."""
    outcome = FAILED if failure is not None else HELD if result.held is not None else SUCCESS
    with conn.transaction():
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE stream = %s AND finished_at < now() - make_interval(days => %s)").format(
                EXPORT_RUNS
            ),
            (stream.name, stream.run_history_days),
        )
        conn.execute(
            sql.SQL(
                """INSERT INTO {} (stream, dag_id, run_id, started_at, exported, unchanged, existing, deleted,
                                   rejected, rejected_by_code, pause_on_error, in_flight, outcome, stopped_because,
                                   held_record_key, lag_rows, lag_exact, open_errors_by_code)
                   VALUES (%s, %s, %s, now() - make_interval(secs => %s), %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
                           %s, %s, %s)"""
            ).format(EXPORT_RUNS),
            (
                stream.name,
                dag_id,
                run_id,
                seconds,
                result.tally.exported,
                result.tally.unchanged,
                result.tally.existing,
                result.tally.deleted,
                result.tally.errors,
                Jsonb(dict(result.tally.errors_by_code)),
                result.pause_on_error,
                in_flight,
                outcome,
                failure if failure is not None else result.stopped_because,
                result.held.record_key if result.held else None,
                result.lag.rows if result.lag else None,
                result.lag.exact if result.lag else None,
                Jsonb(open_errors_by_code(conn, stream)),
            ),
        )


def recent_runs(
    conn: psycopg.Connection, *, days: int, stream: str | None, limit: int, dag_ids: list[str]
) -> list[dict[str, Any]]:
    """The newest runs of the last ``days`` days by the DAGs ``dag_ids``, newest first."""
    query = sql.SQL(
        """SELECT id, stream, dag_id, run_id, started_at, finished_at,
                  extract(epoch FROM finished_at - started_at)::float8 AS seconds,
                  exported, unchanged, existing, deleted, rejected, rejected_by_code, pause_on_error, in_flight,
                  outcome, stopped_because, held_record_key, lag_rows, lag_exact
           FROM {}
           WHERE finished_at > now() - make_interval(days => %(days)s)
             AND (%(stream)s::text IS NULL OR stream = %(stream)s)
             AND dag_id = ANY(%(dag_ids)s)
           ORDER BY finished_at DESC, id DESC
           LIMIT %(limit)s"""
    ).format(EXPORT_RUNS)
    return dict_rows(conn, query, {"days": days, "stream": stream, "limit": limit, "dag_ids": dag_ids})


def open_errors_by_day(conn: psycopg.Connection, *, days: int, stream: str | None) -> list[dict[str, Any]]:
    """Per stream and UTC day: the open errors by code as the day's last run left them."""
    query = sql.SQL(
        """SELECT DISTINCT ON (stream, day) stream, day, open_errors_by_code
           FROM (SELECT stream, (finished_at AT TIME ZONE 'UTC')::date AS day, finished_at, id, open_errors_by_code
                 FROM {}
                 WHERE finished_at > now() - make_interval(days => %(days)s)
                   AND (%(stream)s::text IS NULL OR stream = %(stream)s)) runs
           ORDER BY stream, day, finished_at DESC, id DESC"""
    ).format(EXPORT_RUNS)
    return dict_rows(conn, query, {"days": days, "stream": stream})
