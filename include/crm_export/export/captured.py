"""What a capture stream (``capture: logical``) reads: the whole table once, then its changes in commit order.

Its watermark is a position in one of two phases:

- ``["snapshot", <key>]``: the read of the whole table by key, which starts a
  stream (and a re-position, and a new slot). The slot exists before it
  starts, so every change committed during the read is in the change table
  too: nothing falls in a gap.
- ``["changes", <commit LSN>, <seq>]``: the change table, in commit order,
  from its first row once the read of the table is done. A change sends the
  row's current version, read by key (or deletes the record of a deleted
  row), so a change the read already covered is sent again at most, never an
  older version after a newer one.

Within one read only the last change of each key acts; the earlier ones are
confirmed as they are (the current version covers them).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import psycopg

from include.crm_export.config import Stream
from include.crm_export.db import capture, source
from include.crm_export.decisions import Lag
from include.crm_export.errors import StreamConfigError
from include.crm_export.mapping import SourceRecord, deleted_record, map_row
from include.crm_export.pgoutput import DELETE, TRUNCATE

if TYPE_CHECKING:
    from include.crm_export.export.session import StreamExport

SNAPSHOT, CHANGES = "snapshot", "changes"


def captured_lag(
    conn: psycopg.Connection, stream: Stream, position: list[str] | None, column_types: dict[str, str]
) -> Lag:
    """How far behind its table a capture stream is: the changes waiting in the change table, and while the
    table is read, its rows not read yet (the run's closing line, the metrics and the page)."""
    waiting = capture.waiting_changes(conn, stream, changes_after(position))
    if position is not None and position[0] != SNAPSHOT:
        return Lag(waiting, True, None)
    unread = source.lag(conn, stream, position[1:] if position else None, column_types)
    return Lag(unread.rows + waiting, unread.exact, None)


def changes_after(position: list[str] | None) -> tuple[str, str] | None:
    """The change the watermark is at (None: before the first, or still reading the table)."""
    if position is None or position[0] != CHANGES:
        return None
    return position[1], position[2]


def read_captured(session: StreamExport, after: list[str] | None, limit: int) -> list[SourceRecord]:
    """The next ``limit`` records after ``after``: rows of the table's read by key, then changes."""
    stream = session.stream
    records: list[SourceRecord] = []
    if after is None or after[0] == SNAPSHOT:
        rows = source.read_after_key(
            session.reader,
            stream,
            after=after[1] if after is not None else None,
            column_types=session.column_types,
            limit=limit,
        )
        for row in rows:
            record = map_row(stream, row, session.field_types)
            records.append(replace(record, position=(SNAPSHOT, record.key)))
        if len(rows) == limit:
            return records
    changes = capture.read_changes(session.reader, stream, changes_after(after), limit - len(records))
    return records + _changed_records(session, changes)


def _changed_records(session: StreamExport, changes: list[capture.CapturedChange]) -> list[SourceRecord]:
    stream = session.stream
    ending = capture.still_ending(session.reader, {c.xid for c in changes if c.xid})
    if ending:  # read up to the first change not visible yet; the next read (or run) takes it
        changes = changes[: next(i for i, c in enumerate(changes) if c.xid in ending)]
    last = {change.record_key: index for index, change in enumerate(changes)}
    wanted = [
        c.record_key for i, c in enumerate(changes) if c.operation not in (DELETE, TRUNCATE) and last[c.record_key] == i
    ]
    current = session.current_rows(wanted)
    records: list[SourceRecord] = []
    for index, change in enumerate(changes):
        position: tuple[Any, ...] = change.position
        if change.operation == TRUNCATE:
            if records:
                return records  # the truncate stops the next read, after these are committed
            raise StreamConfigError(
                f"Table {stream.source} of capture stream '{stream.name}' was truncated (in the transaction "
                f"committed at {change.commit_lsn}). A truncate says no row by name, so the export cannot tell "
                "which Salesforce records to delete, and it stops before it. Delete those records in Salesforce as "
                f"you decide, then start the stream over: python -m include.crm_export reposition --stream "
                f"{stream.name} --from-start (a read of the whole table, then the changes after it)."
            )
        if last[change.record_key] != index:
            records.append(_covered(stream.sobject, change.record_key, position))
        elif change.operation == DELETE:
            records.append(deleted_record(stream, change.record_key, position, change.external_id))
        else:
            row = current.get(change.record_key)
            # Gone since: its delete comes later in the change table, and deletes the record.
            records.append(
                replace(row, position=position)
                if row is not None
                else _covered(stream.sobject, change.record_key, position)
            )
    return records


def _covered(sobject: str, key: str, position: tuple[Any, ...]) -> SourceRecord:
    """A change a later one covers: confirmed as it is, nothing sent (counted as unchanged)."""
    return SourceRecord(key, position, None, {"attributes": {"type": sobject}}, unchanged=True)
