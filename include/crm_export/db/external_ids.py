"""Which source row holds each external id a stream confirmed in Salesforce (``crm_export.external_ids``)."""

from __future__ import annotations

from collections.abc import Iterable

import psycopg

from include.crm_export.config import Stream


def holders(conn: psycopg.Connection, stream: Stream, match_keys: list[str]) -> dict[str, str]:
    """The record key holding each of ``match_keys`` (those held at all), through the primary key."""
    if not match_keys:
        return {}
    rows = conn.execute(
        "SELECT match_key, record_key FROM crm_export.external_ids WHERE stream = %s AND match_key = ANY(%s)",
        (stream.name, match_keys),
    ).fetchall()
    return dict(rows)


def hold(conn: psycopg.Connection, stream: Stream, held: Iterable[tuple[str, str]]) -> None:
    """Record (match key, record key) pairs confirmed in Salesforce; call in the batch's commit transaction."""
    pairs = dict(held)
    if not pairs:
        return
    conn.execute(
        """INSERT INTO crm_export.external_ids (stream, match_key, record_key)
           SELECT %s, m, r FROM unnest(%s::text[], %s::text[]) AS t(m, r)
           ON CONFLICT (stream, match_key) DO UPDATE SET record_key = excluded.record_key
           WHERE crm_export.external_ids.record_key IS DISTINCT FROM excluded.record_key""",
        (stream.name, list(pairs), list(pairs.values())),
    )
