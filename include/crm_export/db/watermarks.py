"""A stream's watermark: who may export it, where it stands, and moving it.

The watermark is the position (the ``order_by`` values, as text) of the last
record safely in Salesforce, and the record the stream is held at with pause
on error. It moves only in :func:`advance_watermark`, called in the same
transaction that writes the batch's ExportErrors rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from include.crm_export.config import Stream
from include.crm_export.db import bulk_jobs, capture, fingerprints, source
from include.crm_export.db.connection import one_row, one_value
from include.crm_export.errors import StreamBusy, StreamStuck
from include.crm_export.mapping import position_to_json
from include.crm_export.names import SCHEMA, WATERMARKS_TABLE

WATERMARKS = sql.Identifier(SCHEMA, WATERMARKS_TABLE)
STREAM_ALERTS = sql.Identifier(SCHEMA, "stream_alerts")
SLOT_ALERTS = sql.Identifier(SCHEMA, "slot_alerts")


@dataclass(frozen=True)
class Watermark:
    position: list[str] | None  # None: from the start; shorter than order_by: at or after this prefix
    held_record_key: str | None
    definition: dict[str, Any] | None  # the stream definition the position belongs to

    @property
    def exported_before(self) -> bool:
        """Has anything been exported (or held) under the stored definition?"""
        return self.position is not None or self.held_record_key is not None


def _lock_key(stream: Stream) -> str:
    return f"crm_export.stream:{stream.name}"


def lock_stream(conn: psycopg.Connection, stream: Stream) -> None:
    """Hold a session lock on the stream for the life of ``conn``: one exporter per stream.

    Busy for a while is normal (a run still going: this one is skipped).
    Busy for longer than any run can take means the holder is gone or hung
    (a worker host that died and left its session behind): that fails,
    naming the session and how to end it, instead of skipping run after run.
    """
    locked = one_value(conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (_lock_key(stream),)))
    if locked:
        return
    holder = conn.execute(
        """SELECT a.pid, a.application_name, a.client_addr, a.backend_start, a.state, a.state_change,
                  now() - a.backend_start > make_interval(secs => %s) AS stale
           FROM pg_locks l JOIN pg_stat_activity a USING (pid)
           WHERE l.locktype = 'advisory' AND l.objid = (hashtextextended(%s, 0) & 4294967295)::oid
             AND l.granted LIMIT 1""",
        (stream.lock_stale_after_minutes * 60, _lock_key(stream)),
    ).fetchone()
    if holder is None:
        raise StreamBusy(
            f"Stream '{stream.name}' is being exported by another process right now. "
            "This run leaves it alone; the next scheduled run continues."
        )
    pid, application, client, started, state, state_change, stale = holder
    who = f"PostgreSQL backend pid {pid}, {application or 'unknown application'}, from {client or 'a local socket'}"
    if stale:
        raise StreamStuck(
            f"Stream '{stream.name}' has been locked since {started:%Y-%m-%d %H:%M:%S %Z} by {who} (state {state} "
            f"since {state_change:%H:%M:%S}), longer than any export takes (lock_stale_after_minutes: "
            f"{stream.lock_stale_after_minutes:g}). Its worker is probably gone. Nothing was exported. End that "
            f"session and clear this task: SELECT pg_terminate_backend({pid}); (nothing is lost: the watermark "
            "only moves after Salesforce confirmed a batch)."
        )
    raise StreamBusy(
        f"Stream '{stream.name}' is being exported by another process right now ({who}, since "
        f"{started:%H:%M:%S %Z}). This run leaves it alone; the next scheduled run continues."
    )


def exporting_now(conn: psycopg.Connection, streams: list[Stream]) -> set[str]:
    """The streams whose lock a session holds right now: a run is going (pg_locks needs no privilege)."""
    if not streams:
        return set()
    keys = {_lock_key(stream): stream.name for stream in streams}
    rows = conn.execute(
        """SELECT k.key FROM unnest(%s::text[]) AS k(key)
           WHERE EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted
                         AND l.objid = (hashtextextended(k.key, 0) & 4294967295)::oid)""",
        (list(keys),),
    ).fetchall()
    return {keys[key] for (key,) in rows}


def load_watermark(conn: psycopg.Connection, stream: Stream) -> Watermark:
    with conn.transaction():
        conn.execute(
            sql.SQL("INSERT INTO {} (stream) VALUES (%s) ON CONFLICT (stream) DO NOTHING").format(WATERMARKS),
            (stream.name,),
        )
        row = one_row(
            conn.execute(
                sql.SQL("SELECT position, held_record_key, definition FROM {} WHERE stream = %s").format(WATERMARKS),
                (stream.name,),
            )
        )
    return Watermark(*row)


def waiting(conn: psycopg.Connection, stream: Stream) -> tuple[str | None, datetime | None]:
    """The record the stream stops before, waiting for its parent, and since when (None, None: none)."""
    row = conn.execute(
        sql.SQL("SELECT waiting_record_key, waiting_since FROM {} WHERE stream = %s").format(WATERMARKS),
        (stream.name,),
    ).fetchone()
    return (None, None) if row is None else (row[0], row[1])


def reposition(
    conn: psycopg.Connection,
    stream: Stream,
    *,
    definition: dict[str, Any],
    from_change_time: datetime | None,
    by: str,
    reason: str | None = None,
) -> dict[str, Any]:
    """Re-export the stream from the start (``from_change_time`` None) or from rows changed at or after a time.

    A deliberate act: it clears the held record, adopts the current
    definition, forgets the stream's fingerprints (so every record it reads
    again is sent), and is recorded with who did it. Refused while the stream is
    being exported (it takes the stream's lock for the moment it needs).
    """
    lock_stream(conn, stream)
    try:
        with conn.transaction():
            old = load_watermark(conn, stream)
            new_position = (
                source.position_changed_since(conn, stream, from_change_time) if from_change_time is not None else None
            )
            # A job a killed task left belongs to the old position and definition: never resumed, aborted next run.
            bulk_jobs.set_aside(conn, stream)
            # What Salesforce confirmed under the old definition counts for nothing: every record is sent again.
            fingerprints.forget(conn, stream)
            if stream.logical:
                capture.forget_for_start_over(conn, stream)
            conn.execute(
                sql.SQL(
                    """UPDATE {} SET position = %(position)s, held_record_key = NULL, held_since = NULL,
                                     definition = %(definition)s, repositioned_at = now(), repositioned_by = %(by)s,
                                     updated_at = now()
                       WHERE stream = %(stream)s"""
                ).format(WATERMARKS),
                {
                    "position": Jsonb(new_position) if new_position is not None else None,
                    "definition": Jsonb(definition),
                    "by": by,
                    "stream": stream.name,
                },
            )
            conn.execute(
                sql.SQL(
                    """INSERT INTO {} (stream, repositioned_by, old_position, new_position, old_definition,
                                       new_definition, held_record_key, reason)
                       VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"""
                ).format(sql.Identifier(SCHEMA, "stream_repositions")),
                (
                    stream.name,
                    by,
                    Jsonb(old.position) if old.position is not None else None,
                    Jsonb(new_position) if new_position is not None else None,
                    Jsonb(old.definition) if old.definition is not None else None,
                    Jsonb(definition),
                    old.held_record_key,
                    reason,
                ),
            )
    finally:
        unlock_stream(conn, stream)
    return {"stream": stream.name, "old_position": old.position, "new_position": new_position, "by": by}


def unlock_stream(conn: psycopg.Connection, stream: Stream) -> None:
    conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (_lock_key(stream),))


def advance_watermark(
    conn: psycopg.Connection,
    stream: Stream,
    *,
    position: tuple[Any, ...] | None,
    held_record_key: str | None,
    exported: int,
    run_id: str,
    definition: dict[str, Any],
    keep_hold: bool = False,
    waiting_record_key: str | None = None,
    settled_keys: tuple[str, ...] = (),
) -> None:
    """Move the watermark to ``position`` (None: it stays) and set or clear the held record (``keep_hold``:
    leave it as it is). ``waiting_record_key``: the record the batch stopped before, waiting for its parent
    (since when is kept while it is the same record); ``settled_keys``: the records the batch confirmed or
    rejected, one of which may have been waiting.

    ``definition`` is the stream definition the position belongs to.

    Call inside the transaction that writes the same batch's ExportErrors rows.
    """
    conn.execute(
        sql.SQL(
            """UPDATE {watermarks} SET
                   position = COALESCE(%(position)s::jsonb, position),
                   held_since = CASE WHEN %(keep)s THEN held_since
                                     WHEN %(held)s::text IS NULL THEN NULL
                                     WHEN held_record_key IS DISTINCT FROM %(held)s THEN now()
                                     ELSE held_since END,
                   held_record_key = CASE WHEN %(keep)s THEN held_record_key ELSE %(held)s END,
                   waiting_since = CASE WHEN %(waiting)s::text IS NOT NULL THEN
                                            CASE WHEN waiting_record_key IS DISTINCT FROM %(waiting)s THEN now()
                                                 ELSE waiting_since END
                                        WHEN waiting_record_key = ANY(%(settled)s::text[]) THEN NULL
                                        ELSE waiting_since END,
                   waiting_record_key = CASE WHEN %(waiting)s::text IS NOT NULL THEN %(waiting)s
                                             WHEN waiting_record_key = ANY(%(settled)s::text[]) THEN NULL
                                             ELSE waiting_record_key END,
                   last_run_id = %(run_id)s,
                   last_run_at = now(),
                   records_exported = records_exported + %(exported)s,
                   last_run_exported = CASE WHEN last_run_id IS DISTINCT FROM %(run_id)s THEN %(exported)s
                                            ELSE last_run_exported + %(exported)s END,
                   definition = %(definition)s,
                   updated_at = now()
               WHERE stream = %(stream)s"""
        ).format(watermarks=WATERMARKS),
        {
            "definition": Jsonb(definition),
            "position": json.dumps(position_to_json(position)) if position is not None else None,
            "held": held_record_key,
            "keep": keep_hold,
            "waiting": waiting_record_key,
            "settled": list(settled_keys),
            "run_id": run_id,
            "exported": exported,
            "stream": stream.name,
        },
    )


def alert_state(conn: psycopg.Connection, stream: Stream, channel: str) -> str:
    """The state the last notification on ``channel`` announced about the stream (``ok`` if none)."""
    found = conn.execute(
        sql.SQL("SELECT state FROM {} WHERE stream = %s AND channel = %s").format(STREAM_ALERTS),
        (stream.name, channel),
    ).fetchone()
    return found[0] if found else "ok"


def set_alert_state(conn: psycopg.Connection, stream: Stream, channel: str, state: str) -> None:
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (stream, channel, state) VALUES (%s, %s, %s) "
            "ON CONFLICT (stream, channel) DO UPDATE SET state = excluded.state, announced_at = now()"
        ).format(STREAM_ALERTS),
        (stream.name, channel, state),
    )


def slots_alerted(conn: psycopg.Connection, channel: str) -> set[str]:
    """The replication slots whose last notification on ``channel`` announced something other than ``ok``."""
    rows = conn.execute(
        sql.SQL("SELECT slot FROM {} WHERE channel = %s AND state <> 'ok'").format(SLOT_ALERTS), (channel,)
    ).fetchall()
    return {slot for (slot,) in rows}


def add_slot_alert(conn: psycopg.Connection, slot: str, channel: str) -> None:
    """The slot's alert state on ``channel`` exists (``ok`` if new)."""
    conn.execute(
        sql.SQL("INSERT INTO {} (slot, channel, state) VALUES (%s, %s, 'ok') ON CONFLICT DO NOTHING").format(
            SLOT_ALERTS
        ),
        (slot, channel),
    )


def claim_slot_alert(conn: psycopg.Connection, slot: str, channel: str) -> str | None:
    """Lock the slot's alert state on ``channel`` for this transaction and return it; None when another task
    holds it (that task announces whatever there is to announce) or it is gone."""
    found = conn.execute(
        sql.SQL("SELECT state FROM {} WHERE slot = %s AND channel = %s FOR UPDATE SKIP LOCKED").format(SLOT_ALERTS),
        (slot, channel),
    ).fetchone()
    return None if found is None else str(found[0])


def set_slot_alert(conn: psycopg.Connection, slot: str, channel: str, state: str, *, gone: bool) -> None:
    if gone:
        conn.execute(sql.SQL("DELETE FROM {} WHERE slot = %s AND channel = %s").format(SLOT_ALERTS), (slot, channel))
        return
    conn.execute(
        sql.SQL("UPDATE {} SET state = %s, announced_at = now() WHERE slot = %s AND channel = %s").format(SLOT_ALERTS),
        (state, slot, channel),
    )


def note_run(
    conn: psycopg.Connection, stream: Stream, *, run_id: str, definition: dict[str, Any], release_hold: bool = False
) -> None:
    """Record that a run looked at the stream, even when it found nothing to export (``release_hold``: nor the
    record it was held at)."""
    with conn.transaction():
        conn.execute(
            sql.SQL(
                "UPDATE {} SET last_run_id = %s, last_run_at = now(), last_run_exported = 0, definition = %s, "
                "held_record_key = CASE WHEN %s THEN NULL ELSE held_record_key END, "
                "held_since = CASE WHEN %s THEN NULL ELSE held_since END "
                "WHERE stream = %s"
            ).format(WATERMARKS),
            (run_id, Jsonb(definition), release_hold, release_hold, stream.name),
        )
