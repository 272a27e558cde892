"""The backfill path's Bulk API 2.0 jobs, recorded in PostgreSQL so a killed task resumes them."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg.types.json import Jsonb

from include.crm_export.config import Stream

FINISHED = ("done", "aborted", "failed")


@dataclass(frozen=True)
class RecordedJob:
    job_id: str
    state: str
    after_position: list[str] | None
    last_position: list[str]
    records: int
    operation: str  # upsert, or delete: the deletes of the upsert job with the same positions


def record(
    conn: psycopg.Connection,
    stream: Stream,
    job_id: str,
    *,
    run_id: str,
    after: list[str] | None,
    last: list[str],
    records: int,
    operation: str = "upsert",
) -> None:
    conn.execute(
        """INSERT INTO crm_export.bulk_jobs
               (job_id, stream, run_id, state, after_position, last_position, records, operation)
           VALUES (%s, %s, %s, 'created', %s, %s, %s, %s)""",
        (job_id, stream.name, run_id, Jsonb(after) if after is not None else None, Jsonb(last), records, operation),
    )


def set_state(conn: psycopg.Connection, job_id: str, state: str) -> None:
    conn.execute(
        "UPDATE crm_export.bulk_jobs SET state = %s, finished_at = CASE WHEN %s THEN now() END WHERE job_id = %s",
        (state, state in FINISHED, job_id),
    )


def unfinished(conn: psycopg.Connection, stream: Stream) -> list[RecordedJob]:
    rows = conn.execute(
        """SELECT job_id, state, after_position, last_position, records, operation FROM crm_export.bulk_jobs
           WHERE stream = %s AND finished_at IS NULL ORDER BY created_at""",
        (stream.name,),
    ).fetchall()
    return [RecordedJob(*row) for row in rows]


def set_aside(conn: psycopg.Connection, stream: Stream) -> None:
    """Mark the stream's unfinished jobs as no longer to be resumed (a reposition); the next run aborts them."""
    conn.execute(
        "UPDATE crm_export.bulk_jobs SET state = 'set aside' WHERE stream = %s AND finished_at IS NULL",
        (stream.name,),
    )
