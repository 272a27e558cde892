"""Which source row holds each external id a stream sends to Salesforce (``crm_export.external_ids``).

An external id is reserved for a record before the record is sent, in a
statement of its own (committed at once), so two runs that send at the same
time (the export and the re-export) see each other: the one that reserved it
first holds it, the other's record is a rejected record naming both keys.
"""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql

from include.crm_export.config import Stream

log = logging.getLogger(__name__)


def reserve(conn: psycopg.Connection, stream: Stream, wanted: dict[str, str]) -> dict[str, str]:
    """Reserve each match key for its record key where nobody holds it yet; returns the other holders.

    ``wanted``: match key -> record key. The answer maps each match key some
    other record holds to that record's key.
    """
    if not wanted:
        return {}
    rows = conn.execute(
        """WITH wanted (match_key, record_key) AS (SELECT * FROM unnest(%(m)s::text[], %(r)s::text[])),
                taken AS (
                    INSERT INTO crm_export.external_ids (stream, match_key, record_key)
                    SELECT %(stream)s, match_key, record_key FROM wanted
                    ON CONFLICT (stream, match_key) DO NOTHING
                    RETURNING match_key)
           SELECT e.match_key, e.record_key FROM crm_export.external_ids e JOIN wanted w USING (match_key)
           WHERE e.stream = %(stream)s AND e.record_key <> w.record_key
             AND e.match_key NOT IN (SELECT match_key FROM taken)""",
        {"stream": stream.name, "m": list(wanted), "r": list(wanted.values())},
    ).fetchall()
    return dict(rows)


def hand_over(conn: psycopg.Connection, stream: Stream, match_key: str, *, holder: str, to: str) -> bool:
    """Give a match key whose holder no longer has it (changed, deleted) to another record; False if someone else
    took it meanwhile."""
    taken = conn.execute(
        """UPDATE crm_export.external_ids SET record_key = %s
           WHERE stream = %s AND match_key = %s AND record_key = %s""",
        (to, stream.name, match_key, holder),
    )
    return taken.rowcount == 1


def fill_once(conn: psycopg.Connection, stream: Stream, *, case_sensitive: bool, exported_before: bool) -> None:
    """Reserve the external id of every source row once per stream, so rows exported before this table existed
    (an upgrade) hold theirs too: one pass over the source on the first run after the upgrade. A stream that has
    exported nothing yet needs no pass (its rows reserve their ids as they are sent)."""
    if conn.execute("SELECT 1 FROM crm_export.external_ids_filled WHERE stream = %s", (stream.name,)).fetchone():
        return
    if not exported_before:
        conn.execute(
            "INSERT INTO crm_export.external_ids_filled (stream, rows) VALUES (%s, 0) ON CONFLICT DO NOTHING",
            (stream.name,),
        )
        return
    match = sql.SQL("{}::text" if case_sensitive else "lower({}::text)").format(
        sql.Identifier(stream.external_id_column)
    )
    with conn.transaction():
        filled = conn.execute(
            sql.SQL(
                """INSERT INTO crm_export.external_ids (stream, match_key, record_key)
                   SELECT DISTINCT ON (1, 2) %s, {match}, {key}::text FROM {table}
                   WHERE {ext} IS NOT NULL AND btrim({ext}::text) <> ''
                   ORDER BY 1, 2, {order}
                   ON CONFLICT (stream, match_key) DO NOTHING"""
            ).format(
                match=match,
                key=sql.Identifier(stream.key),
                ext=sql.Identifier(stream.external_id_column),
                table=sql.Identifier(stream.source_schema, stream.source_table),
                order=sql.SQL(", ").join(sql.Identifier(column) for column in stream.order_by),
            ),
            (stream.name,),
        ).rowcount
        conn.execute(
            "INSERT INTO crm_export.external_ids_filled (stream, rows) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (stream.name, filled),
        )
    if filled:
        log.info("Stream '%s': %d external id(s) of its source rows recorded (once).", stream.name, filled)
