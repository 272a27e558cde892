"""The ExportErrors table: rejected records, one open row per stream and record.

The export opens or updates rows (:func:`record_rejections`) and resolves
them when the record later goes through (:func:`resolve_errors`), in the
transaction that moves the watermark. The re-export claims open rows
(:func:`claim_open_errors`), so two runs never work on the same row, and
writes each batch's outcome in one transaction (:func:`record_reexport`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from include.crm_export import exact_json
from include.crm_export.config import Stream
from include.crm_export.db.connection import one_row, one_value
from include.crm_export.errors import RejectedRecord
from include.crm_export.mapping import SourceRecord
from include.crm_export.names import EXPORT_ERRORS_TABLE, OPEN, RESOLVED, SCHEMA, SOURCE_DELETED

EXPORT_ERRORS = sql.Identifier(SCHEMA, EXPORT_ERRORS_TABLE)
COUNT_DELTAS = sql.Identifier(SCHEMA, "export_error_count_deltas")
_COMPACTING = 7_202_611_23  # advisory lock: one compaction at a time


def _payload(payload: dict[str, Any] | None) -> Jsonb | None:
    """What was sent, stored exactly (numerics digit for digit)."""
    return Jsonb(payload, dumps=exact_json.dumps) if payload is not None else None


@dataclass(frozen=True)
class OpenError:
    id: int
    record_key: str
    external_id: str | None
    error_code: str
    attempts: int


@dataclass(frozen=True)
class StillRejected:
    """A re-exported record Salesforce (or the mapping) refused again."""

    error_id: int
    payload: dict[str, Any] | None
    rejection: RejectedRecord


def record_rejections(
    conn: psycopg.Connection,
    stream: Stream,
    rejected: Iterable[tuple[SourceRecord, RejectedRecord]],
    *,
    dag_id: str,
    run_id: str,
) -> None:
    """Open one row per rejected record, or update its open row (one more attempt)."""
    rows = [
        (
            stream.name,
            stream.sobject,
            record.key,
            record.external_id,
            rejection.code,
            rejection.message,
            list(rejection.fields),
            _payload(record.payload),
            dag_id,
            run_id,
        )
        for record, rejection in rejected
    ]
    if not rows:
        return
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
            ).format(errors=EXPORT_ERRORS),
            rows,
        )


def lock_open_rows(conn: psycopg.Connection, stream: Stream, keys: list[str]) -> None:
    """Lock the open rows of these records in id order, inside the caller's transaction.

    The export and the re-export both lock ExportErrors rows in id order
    before changing them, so the two never deadlock on each other.
    """
    conn.execute(
        sql.SQL(
            "SELECT id FROM {} WHERE stream = %s AND status = 'open' AND record_key = ANY(%s) ORDER BY id FOR UPDATE"
        ).format(EXPORT_ERRORS),
        (stream.name, keys),
    )


def open_rejection(conn: psycopg.Connection, stream: Stream, record_key: str) -> RejectedRecord | None:
    """Why the record is rejected now: its open row's code, message and fields (None: no open row)."""
    row = conn.execute(
        sql.SQL(
            "SELECT error_code, error_message, error_fields FROM {} WHERE stream = %s AND record_key = %s "
            "AND status = 'open'"
        ).format(EXPORT_ERRORS),
        (stream.name, record_key),
    ).fetchone()
    return None if row is None else RejectedRecord(row[0], row[1], tuple(row[2] or ()))


def has_open_errors(conn: psycopg.Connection, stream: Stream) -> bool:
    query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE stream = %s AND status = %s)").format(EXPORT_ERRORS)
    return bool(one_value(conn.execute(query, (stream.name, OPEN))))


def resolve_errors(conn: psycopg.Connection, stream: Stream, keys: list[str], *, resolved_by: str) -> int:
    """Resolve the open rows of records that are now confirmed in Salesforce."""
    cursor = conn.execute(
        sql.SQL(
            """UPDATE {} SET status = %s, resolved_at = now(), resolved_by = %s, last_attempt_at = now()
               WHERE stream = %s AND status = %s AND record_key = ANY(%s)"""
        ).format(EXPORT_ERRORS),
        (RESOLVED, resolved_by, stream.name, OPEN, keys),
    )
    return cursor.rowcount


_OPEN_ERROR_PICK = """
    SELECT id FROM {errors}
    WHERE stream = %(stream)s AND status = 'open'
      AND last_attempt_at < %(not_attempted_since)s
      AND (claimed_until IS NULL OR claimed_until < now())
      AND (%(codes)s::text[] IS NULL OR error_code = ANY(%(codes)s::text[]))
    ORDER BY last_attempt_at, id
    LIMIT %(limit)s
"""


def _claim_params(
    stream: Stream, *, not_attempted_since: datetime, limit: int, error_codes: list[str] | None
) -> dict[str, Any]:
    return {
        "stream": stream.name,
        "not_attempted_since": not_attempted_since,
        "codes": error_codes or None,
        "limit": limit,
    }


def claim_open_errors(
    conn: psycopg.Connection,
    stream: Stream,
    *,
    claimant: str,
    claim_seconds: float,
    not_attempted_since: datetime,
    limit: int,
    error_codes: list[str] | None,
) -> list[OpenError]:
    """Lease up to ``limit`` open errors of ``stream``, least recently attempted first.

    Rows another run holds (a claim or a row lock) are skipped, never waited for.
    Served by the partial index export_errors_open_by_stream_and_last_attempt.
    """
    query = sql.SQL(
        """UPDATE {errors} e SET claimed_by = %(claimant)s,
                                 claimed_until = now() + make_interval(secs => %(claim)s)
           WHERE e.id IN ("""
        + _OPEN_ERROR_PICK
        + """ FOR UPDATE SKIP LOCKED)
           RETURNING e.id, e.record_key, e.external_id, e.error_code, e.attempts, e.last_attempt_at"""
    ).format(errors=EXPORT_ERRORS)
    params = {
        "claimant": claimant,
        "claim": claim_seconds,
        **_claim_params(stream, not_attempted_since=not_attempted_since, limit=limit, error_codes=error_codes),
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
    ).format(errors=EXPORT_ERRORS)
    params = _claim_params(stream, not_attempted_since=not_attempted_since, limit=limit, error_codes=error_codes)
    return [OpenError(*row) for row in conn.execute(query, params).fetchall()]


def record_reexport(
    conn: psycopg.Connection,
    *,
    claimant: str,
    resolved: list[int],
    still_rejected: list[StillRejected],
    source_deleted: list[int],
    dag_id: str,
    run_id: str,
) -> None:
    """Write a re-export batch's outcome in one transaction and release its claims.

    Only rows still open and still claimed by this run change: a row that
    CRMExport resolved meanwhile stays resolved.
    """
    mine = "status = 'open' AND claimed_by = %(claimant)s"
    close = sql.SQL(
        "UPDATE {errors} SET status = %(status)s, resolved_at = now(), resolved_by = %(by)s, "
        "last_attempt_at = now(), claimed_by = NULL, claimed_until = NULL "
        "WHERE id = ANY(%(ids)s) AND " + mine
    ).format(errors=EXPORT_ERRORS)
    with conn.transaction():
        every = sorted([*resolved, *source_deleted, *(failure.error_id for failure in still_rejected)])
        # In id order, as the export locks them (lock_open_rows): the two never deadlock.
        conn.execute(
            sql.SQL("SELECT id FROM {} WHERE id = ANY(%s) ORDER BY id FOR UPDATE").format(EXPORT_ERRORS), (every,)
        )
        for status, ids in ((RESOLVED, resolved), (SOURCE_DELETED, source_deleted)):
            if ids:
                conn.execute(close, {"status": status, "by": dag_id, "ids": ids, "claimant": claimant})
        if still_rejected:
            with conn.cursor() as cursor:
                cursor.executemany(
                    sql.SQL(
                        "UPDATE {errors} SET error_code = %(code)s, error_message = %(message)s, "
                        "error_fields = %(fields)s, payload = COALESCE(%(payload)s, payload), "
                        "attempts = attempts + 1, last_failed_at = now(), last_attempt_at = now(), "
                        "dag_id = %(by)s, run_id = %(run_id)s, claimed_by = NULL, claimed_until = NULL "
                        "WHERE id = %(id)s AND " + mine
                    ).format(errors=EXPORT_ERRORS),
                    [
                        {
                            "id": failure.error_id,
                            "code": failure.rejection.code,
                            "message": failure.rejection.message,
                            "fields": list(failure.rejection.fields),
                            "payload": Jsonb(failure.payload, dumps=exact_json.dumps)
                            if failure.payload is not None
                            else None,
                            "by": dag_id,
                            "run_id": run_id,
                            "claimant": claimant,
                        }
                        for failure in still_rejected
                    ],
                )


def release_claims(conn: psycopg.Connection, *, claimant: str) -> None:
    with conn.transaction():
        conn.execute(
            sql.SQL(
                "UPDATE {} SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = %s AND status = 'open'"
            ).format(EXPORT_ERRORS),
            (claimant,),
        )


def open_error_summary(conn: psycopg.Connection, stream: Stream) -> tuple[int, datetime | None]:
    """How many errors of the stream are open, and since when the oldest."""
    query = sql.SQL("SELECT count(*), min(first_failed_at) FROM {} WHERE stream = %s AND status = 'open'")
    count, oldest = one_row(conn.execute(query.format(EXPORT_ERRORS), (stream.name,)))
    return count, oldest


def compact_error_counts(conn: psycopg.Connection) -> None:
    """Fold the count deltas (migration 0007) into one row per group, so the page sums a small table.

    Rows other transactions add meanwhile are not touched, so no count is lost.
    """
    with conn.transaction():
        if not one_value(conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (_COMPACTING,))):
            return  # another run is at it
        conn.execute(
            sql.SQL(
                """WITH folded AS (DELETE FROM {deltas} RETURNING stream, status, error_code, delta)
                   INSERT INTO {deltas}
                   SELECT stream, status, error_code, sum(delta) FROM folded GROUP BY 1, 2, 3 HAVING sum(delta) <> 0"""
            ).format(deltas=COUNT_DELTAS)
        )
