"""A stream's watermark: who may export it, where it stands, and moving it.

The watermark is the position (the ``order_by`` values, as text) of the last
record safely in Salesforce, and the record the stream is held at with pause
on error. It moves only in :func:`advance_watermark`, called in the same
transaction that writes the batch's ExportErrors rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from include.crm_export.config import Stream
from include.crm_export.errors import StreamBusy
from include.crm_export.mapping import position_to_json
from include.crm_export.names import SCHEMA, WATERMARKS_TABLE

WATERMARKS = sql.Identifier(SCHEMA, WATERMARKS_TABLE)


@dataclass(frozen=True)
class Watermark:
    position: list[str] | None
    held_record_key: str | None


def _lock_key(stream: Stream) -> str:
    return f"crm_export.stream:{stream.name}"


def lock_stream(conn: psycopg.Connection, stream: Stream) -> None:
    """Hold a session lock on the stream for the life of ``conn``: one exporter per stream."""
    locked = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (_lock_key(stream),)).fetchone()[0]
    if not locked:
        holder = conn.execute(
            """SELECT a.pid, a.application_name, a.client_addr, a.backend_start
               FROM pg_locks l JOIN pg_stat_activity a USING (pid)
               WHERE l.locktype = 'advisory' AND l.objid = (hashtextextended(%s, 0) & 4294967295)::oid
                 AND l.granted LIMIT 1""",
            (_lock_key(stream),),
        ).fetchone()
        who = f" (PostgreSQL backend pid {holder[0]}, {holder[1] or 'unknown application'})" if holder else ""
        raise StreamBusy(
            f"Stream '{stream.name}' is being exported by another process right now{who}. "
            "This run leaves it alone; the next scheduled run continues."
        )


def load_watermark(conn: psycopg.Connection, stream: Stream) -> Watermark:
    with conn.transaction():
        conn.execute(
            sql.SQL("INSERT INTO {} (stream) VALUES (%s) ON CONFLICT (stream) DO NOTHING").format(WATERMARKS),
            (stream.name,),
        )
        position, held = conn.execute(
            sql.SQL("SELECT position, held_record_key FROM {} WHERE stream = %s").format(WATERMARKS), (stream.name,)
        ).fetchone()
    return Watermark(position, held)


def advance_watermark(
    conn: psycopg.Connection,
    stream: Stream,
    *,
    position: tuple[Any, ...] | None,
    held_record_key: str | None,
    exported: int,
    run_id: str,
) -> None:
    """Move the watermark to ``position`` (None: it stays) and set or clear the held record.

    Call inside the transaction that writes the same batch's ExportErrors rows.
    """
    conn.execute(
        sql.SQL(
            """UPDATE {watermarks} SET
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
               WHERE stream = %(stream)s"""
        ).format(watermarks=WATERMARKS),
        {
            "position": json.dumps(position_to_json(position)) if position is not None else None,
            "held": held_record_key,
            "run_id": run_id,
            "exported": exported,
            "stream": stream.name,
        },
    )


def note_run(conn: psycopg.Connection, stream: Stream, *, run_id: str) -> None:
    """Record that a run looked at the stream, even when it found nothing to export."""
    with conn.transaction():
        conn.execute(
            sql.SQL(
                "UPDATE {} SET last_run_id = %s, last_run_at = now(), last_run_exported = 0 WHERE stream = %s"
            ).format(WATERMARKS),
            (run_id, stream.name),
        )
