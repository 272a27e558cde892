"""Where fingerprints are kept (``crm_export.fingerprints``): looked up per batch read, written with each commit.

The rule of what a fingerprint is and when a record is unchanged is
``fingerprints.py``'s; this module only stores and finds them.
"""

from __future__ import annotations

from collections.abc import Mapping

import psycopg

from include.crm_export.config import Stream
from include.crm_export.fingerprints import slot, stream_slots


def _given_number(conn: psycopg.Connection, stream: Stream) -> int | None:
    row = conn.execute("SELECT number FROM crm_export.fingerprint_streams WHERE stream = %s", (stream.name,)).fetchone()
    return None if row is None else int(row[0])


def stream_number(conn: psycopg.Connection, stream: Stream) -> int:
    """The stream's number in its records' slots, given once and kept."""
    number = _given_number(conn, stream)
    if number is not None:
        return number
    # Asked first: an INSERT … ON CONFLICT on every run would use up a number of the sequence each time.
    conn.execute(
        "INSERT INTO crm_export.fingerprint_streams (stream) VALUES (%s) ON CONFLICT (stream) DO NOTHING",
        (stream.name,),
    )
    number = _given_number(conn, stream)
    if number is None:
        raise RuntimeError(f"stream '{stream.name}' got no fingerprint number")
    return number


def confirmed(conn: psycopg.Connection, number: int, keys: list[str]) -> dict[str, int]:
    """The fingerprint Salesforce last confirmed of each of ``keys`` (external ids as Salesforce matches them)
    that has one."""
    if not keys:
        return {}
    slots = {slot(number, key): key for key in keys}
    rows = conn.execute(
        "SELECT slot, fingerprint FROM crm_export.fingerprints WHERE slot = ANY(%s)", (list(slots),)
    ).fetchall()
    return {slots[found]: fingerprint for found, fingerprint in rows}


def remember(conn: psycopg.Connection, number: int, fingerprints: Mapping[str, int]) -> None:
    """Write the fingerprints of records Salesforce confirmed; call in the transaction that commits them."""
    if not fingerprints:
        return
    by_slot = {slot(number, key): fingerprint for key, fingerprint in fingerprints.items()}
    slots = sorted(by_slot)  # one order for every writer, so two never wait on each other in a circle
    conn.execute(
        """INSERT INTO crm_export.fingerprints (slot, fingerprint)
           SELECT * FROM unnest(%s::bigint[], %s::bigint[])
           ON CONFLICT (slot) DO UPDATE SET fingerprint = EXCLUDED.fingerprint
           WHERE crm_export.fingerprints.fingerprint <> EXCLUDED.fingerprint""",
        (slots, [by_slot[s] for s in slots]),
    )


def forget_keys(conn: psycopg.Connection, number: int, keys: list[str]) -> None:
    """Drop the fingerprints of these records (about to be sent, or rejected)."""
    if keys:
        slots = sorted({slot(number, key) for key in keys})
        conn.execute("DELETE FROM crm_export.fingerprints WHERE slot = ANY(%s)", (slots,))


def forget(conn: psycopg.Connection, stream: Stream) -> int:
    """Drop every fingerprint of the stream (a reposition: what was confirmed counts for nothing now)."""
    number = _given_number(conn, stream)
    if number is None:
        return 0
    low, high = stream_slots(number)
    return conn.execute("DELETE FROM crm_export.fingerprints WHERE slot BETWEEN %s AND %s", (low, high)).rowcount
