"""crm-export's own Salesforce API requests, counted in PostgreSQL for its rolling 24-hour budget."""

from __future__ import annotations

import psycopg

from include.crm_export.config import Stream
from include.crm_export.db.connection import one_value


def used_last_day(conn: psycopg.Connection) -> int:
    """Requests every stream and re-export of crm-export made in the last 24 hours."""
    used = conn.execute(
        "SELECT coalesce(sum(requests), 0) FROM crm_export.api_requests WHERE counted_at > now() - interval '24 hours'"
    )
    return int(one_value(used))


def record(conn: psycopg.Connection, stream: Stream, *, run_id: str, requests: int) -> None:
    if requests <= 0:
        return
    conn.execute(
        """WITH pruned AS (DELETE FROM crm_export.api_requests WHERE counted_at < now() - interval '2 days')
           INSERT INTO crm_export.api_requests (stream, run_id, requests) VALUES (%s, %s, %s)""",
        (stream.name, run_id, requests),
    )
