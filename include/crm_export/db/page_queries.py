"""The CRM Export page's read queries. Read-only; each is served by an index or a small table."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from include.crm_export.db.connection import dict_rows
from include.crm_export.db.export_errors import COUNT_DELTAS, EXPORT_ERRORS
from include.crm_export.db.watermarks import WATERMARKS


def stream_status(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Per stream: watermark, held record, last run and open errors."""
    query = sql.SQL(
        """SELECT w.stream, w.position, w.held_record_key, w.held_since, w.last_run_id, w.last_run_at,
                  w.last_run_exported, w.records_exported,
                  h.error_code AS held_error_code, h.error_message AS held_error_message,
                  h.error_fields AS held_error_fields, h.external_id AS held_external_id,
                  (SELECT count(*) FROM {errors} o WHERE o.stream = w.stream AND o.status = 'open') AS open_errors
           FROM {watermarks} w
           LEFT JOIN {errors} h ON h.stream = w.stream AND h.record_key = w.held_record_key AND h.status = 'open'
           ORDER BY w.stream"""
    ).format(errors=EXPORT_ERRORS, watermarks=WATERMARKS)
    return dict_rows(conn, query)


def error_counts(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Errors by stream, status and code, from the count deltas (no scan of the history).

    The oldest failure is given for open errors (served by the open-rows index); closed ones have none.
    """
    query = sql.SQL(
        """SELECT c.stream, c.status, c.error_code, c.count, o.oldest
           FROM (SELECT stream, status, error_code, sum(delta)::bigint AS count FROM {deltas}
                 GROUP BY 1, 2, 3 HAVING sum(delta) > 0) c
           LEFT JOIN (SELECT stream, error_code, min(first_failed_at) AS oldest FROM {errors}
                      WHERE status = 'open' GROUP BY 1, 2) o
             ON c.status = 'open' AND o.stream = c.stream AND o.error_code = c.error_code
           ORDER BY c.status, c.stream, c.error_code"""
    ).format(deltas=COUNT_DELTAS, errors=EXPORT_ERRORS)
    return dict_rows(conn, query)


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
    ).format(errors=EXPORT_ERRORS)
    params = {
        "status": status,
        "stream": stream,
        "code": error_code,
        "after_at": after[0] if after else None,
        "after_id": after[1] if after else 0,
        "limit": limit,
    }
    return dict_rows(conn, query, params)
