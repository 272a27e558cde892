"""Where fingerprints are kept (``crm_export.fingerprints``): looked up per batch read, written with each commit.

The rule of what a fingerprint is and when a record is unchanged is
``fingerprints.py``'s; this module only stores and finds them.

A record's 64-bit slot (the stream's number and its key's hash) is split in
two: the high 32 bits name its *bucket*, one row holding every fingerprint of
the stream whose keys hash there, the low 32 its entry in the bucket (two
arrays, suffixes and fingerprints, in the same order). Packed, a million
records take about a fifth of what a row each did (bench/fingerprints.py).
A bucket is changed by one statement that takes its row locks in bucket order
(so two writers never wait on each other in a circle) and merges in
PostgreSQL, not here: the export's process is the busy one. Locks are per
bucket: a re-export's drop waits for an export's commit that shares a bucket
with it (milliseconds), where a row per record would not have waited.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import psycopg

from include.crm_export.config import Stream
from include.crm_export.fingerprints import slot, stream_slots

_LOW_BITS = 32
_LOW_MASK = (1 << _LOW_BITS) - 1
_LOW_SHIFT = 1 << (_LOW_BITS - 1)  # suffixes are stored as integer: unsigned values shifted down


def _array(values: Iterable[int | None]) -> str:
    """An array literal: psycopg adapts a list of ints element by element in Python, a few times slower than
    this on the export's busiest thread."""
    return "{" + ",".join("NULL" if value is None else str(value) for value in values) + "}"


def _place(slot_: int) -> tuple[int, int]:
    """A slot's bucket (its high 32 bits, as PostgreSQL's ``slot >> 32``) and its suffix in it (the low 32)."""
    return slot_ >> _LOW_BITS, (slot_ & _LOW_MASK) - _LOW_SHIFT


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
    places = {_place(slot(number, key)): key for key in keys}
    rows = conn.execute(
        """SELECT wanted.bucket, wanted.suffix, kept.fingerprints[found.at]
           FROM unnest(%s::bigint[], %s::integer[]) AS wanted (bucket, suffix)
           JOIN crm_export.fingerprints AS kept USING (bucket)
           CROSS JOIN LATERAL array_position(kept.suffixes, wanted.suffix) AS found (at)
           WHERE kept.fingerprints[found.at] IS NOT NULL""",
        (_array(bucket for bucket, _ in places), _array(suffix for _, suffix in places)),
    ).fetchall()
    return {places[(bucket, suffix)]: fingerprint for bucket, suffix, fingerprint in rows}


def settle(
    conn: psycopg.Connection, number: int, *, remember: Mapping[str, int] = {}, forget: Iterable[str] = ()
) -> None:
    """Write the fingerprints of records Salesforce confirmed (``remember``) and drop those of records about to be
    sent or rejected (``forget``), in one statement; a key in both is remembered. Call it in the transaction that
    commits what it says."""
    changes: dict[tuple[int, int], int | None] = {_place(slot(number, key)): None for key in forget}
    changes.update({_place(slot(number, key)): fingerprint for key, fingerprint in remember.items()})
    if not changes:
        return
    places = sorted(changes)
    # The proposed row holds the bucket's changes, a key to drop as a NULL fingerprint; a bucket's old row is
    # merged with them in the statement itself (its kept entries less the keys changed, then the changes less
    # the drops), rows taken in bucket order. A bucket with keys to drop and no row yet keeps their NULLs until
    # it is next changed: a NULL is never a fingerprint (``confirmed`` and ``count`` pass it over). A bucket
    # with only keys to drop and no row is left alone.
    conn.execute(
        """WITH changes AS (
               SELECT * FROM unnest(%s::bigint[], %s::integer[], %s::bigint[]) AS c (bucket, suffix, fingerprint)
           )
           INSERT INTO crm_export.fingerprints AS kept (bucket, suffixes, fingerprints)
           SELECT bucket, array_agg(suffix), array_agg(fingerprint)
           FROM changes
           GROUP BY bucket
           HAVING count(fingerprint) > 0
               OR EXISTS (SELECT FROM crm_export.fingerprints AS old WHERE old.bucket = changes.bucket)
           ORDER BY bucket
           ON CONFLICT (bucket) DO UPDATE SET (suffixes, fingerprints) = (
               SELECT coalesce(array_agg(merged.suffix), '{}'), coalesce(array_agg(merged.fingerprint), '{}')
               FROM (
                   SELECT was.suffix, was.fingerprint
                   FROM unnest(kept.suffixes, kept.fingerprints) AS was (suffix, fingerprint)
                   WHERE was.suffix <> ALL (EXCLUDED.suffixes) AND was.fingerprint IS NOT NULL
                   UNION ALL
                   SELECT now.suffix, now.fingerprint
                   FROM unnest(EXCLUDED.suffixes, EXCLUDED.fingerprints) AS now (suffix, fingerprint)
                   WHERE now.fingerprint IS NOT NULL
               ) AS merged
           )""",
        (_array(b for b, _ in places), _array(s for _, s in places), _array(changes[p] for p in places)),
    )


def forget_keys(conn: psycopg.Connection, number: int, keys: list[str]) -> None:
    """Drop the fingerprints of these records (about to be sent, or rejected)."""
    settle(conn, number, forget=keys)


def forget(conn: psycopg.Connection, stream: Stream) -> int:
    """Drop every fingerprint of the stream (a reposition: what was confirmed counts for nothing now); how many
    there were."""
    number = _given_number(conn, stream)
    if number is None:
        return 0
    low, high = (_place(s)[0] for s in stream_slots(number))
    dropped = conn.execute(
        """WITH dropped AS (DELETE FROM crm_export.fingerprints WHERE bucket BETWEEN %s AND %s RETURNING fingerprints)
           SELECT coalesce(sum(cardinality(array_remove(fingerprints, NULL))), 0) FROM dropped""",
        (low, high),
    ).fetchone()
    return int(dropped[0]) if dropped else 0


def any_kept(conn: psycopg.Connection, number: int) -> bool:
    """Whether the stream numbered ``number`` has a fingerprint kept (a bucket left holding only drops counts)."""
    low, high = (_place(s)[0] for s in stream_slots(number))
    row = conn.execute(
        "SELECT EXISTS (SELECT FROM crm_export.fingerprints WHERE bucket BETWEEN %s AND %s)", (low, high)
    ).fetchone()
    return bool(row and row[0])


def count(conn: psycopg.Connection) -> int:
    """How many fingerprints are kept, of every stream."""
    row = conn.execute(
        "SELECT coalesce(sum(cardinality(array_remove(fingerprints, NULL))), 0) FROM crm_export.fingerprints"
    ).fetchone()
    return int(row[0]) if row else 0
