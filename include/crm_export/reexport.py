"""The daily re-export of open ExportErrors rows (CRMExport_ExportError).

Per batch: lease open rows of one stream (least recently attempted first,
skipping rows another run holds), re-read each record's *current* source
row, upsert those through the same writer as CRMExport, then record per row
in one transaction: resolved, still failing (error and attempts updated), or
closed because the source row is gone.

It never touches a CRMExport watermark. It is safe beside a running CRMExport:
after a record went through, its source row is read again, and if it changed
meanwhile the newer version is sent, so an older payload can never land on
top of a newer one that CRMExport already delivered.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from include.crm_export.config import Stream
from include.crm_export.db import store
from include.crm_export.db.connection import connect
from include.crm_export.db.migrate import migrate
from include.crm_export.errors import RecordRejected
from include.crm_export.export import send
from include.crm_export.mapping import SourceRecord, map_row
from include.crm_export.salesforce import CollectionWriter

log = logging.getLogger(__name__)

REEXPORT_DAG_ID = "CRMExport_ExportError"
# A record whose source row keeps changing under us is left to CRMExport after this many sends.
MAX_RESENDS = 3
DRY_RUN_LINES = 100


@dataclass(frozen=True)
class ReexportOptions:
    error_codes: list[str] | None = None
    limit: int = 50_000
    dry_run: bool = False
    batch_size: int = 200
    lease_seconds: float = 900.0


@dataclass
class ReexportResult:
    stream: str
    resolved: int = 0
    still_failing: Counter[str] = field(default_factory=Counter)
    source_gone: int = 0
    batches: int = 0
    would_send: int = 0
    open_left: int = 0
    oldest_open_since: datetime | None = None
    dry_run: bool = False
    pick_seconds: list[float] = field(default_factory=list)

    def summary(self, now: datetime) -> str:
        if self.dry_run:
            head = (
                f"Re-export of stream '{self.stream}' (dry run, nothing sent or changed): would send "
                f"{self.would_send} record(s), would close {self.source_gone} whose source row is gone."
            )
        else:
            failing = ", ".join(f"{code}: {n}" for code, n in self.still_failing.most_common()) or "none"
            head = (
                f"Re-export of stream '{self.stream}': resolved {self.resolved}, still failing "
                f"{sum(self.still_failing.values())} ({failing}), closed {self.source_gone} (source row gone)."
            )
        if self.oldest_open_since is None:
            return f"{head} No open errors left."
        age = now - self.oldest_open_since
        return (
            f"{head} Open errors left: {self.open_left}; the oldest has been open since "
            f"{self.oldest_open_since:%Y-%m-%d %H:%M} UTC ({_age(age.total_seconds())})."
        )


def _age(seconds: float) -> str:
    if seconds >= 86_400:
        return f"{seconds / 86_400:.1f} days"
    if seconds >= 3_600:
        return f"{seconds / 3_600:.1f} hours"
    return f"{seconds / 60:.0f} minutes"


def reexport_stream(
    stream: Stream,
    *,
    conninfo: str,
    writer: CollectionWriter | None,
    options: ReexportOptions,
    dag_id: str,
    run_id: str,
    clock: Callable[[], float] = time.monotonic,
) -> ReexportResult:
    result = ReexportResult(stream.name, dry_run=options.dry_run)
    claimant = f"{dag_id}/{run_id}/{stream.name}"
    with connect(conninfo, application_name=f"crm-export reexport {stream.name}") as conn:
        migrate(conn)
        column_types = store.source_column_types(conn, stream)
        run_started = store.database_now(conn)
        log.info(
            "Re-exporting open errors of stream '%s'%s, at most %d record(s)%s",
            stream.name,
            f" with error codes {options.error_codes}" if options.error_codes else "",
            options.limit,
            " (dry run)" if options.dry_run else "",
        )
        if options.dry_run:
            _dry_run(conn, stream, column_types, run_started, options, result)
        else:
            try:
                _reexport(conn, stream, column_types, run_started, options, result, writer, claimant, dag_id, run_id)
            finally:
                store.release_claims(conn, claimant=claimant)
        result.open_left, result.oldest_open_since = store.open_error_summary(conn, stream)
        log.info(result.summary(store.database_now(conn)))
    return result


def _reexport(conn, stream, column_types, run_started, options, result, writer, claimant, dag_id, run_id) -> None:
    processed = 0
    while processed < options.limit:
        picked_at = time.perf_counter()
        batch = store.claim_open_errors(
            conn,
            stream,
            claimant=claimant,
            lease_seconds=options.lease_seconds,
            not_attempted_since=run_started,
            limit=min(options.batch_size, options.limit - processed),
            error_codes=options.error_codes,
        )
        result.pick_seconds.append(time.perf_counter() - picked_at)
        if not batch:
            break
        processed += len(batch)
        result.batches += 1
        current = {
            str(row[stream.key]): map_row(stream, row)
            for row in store.read_rows_by_key(conn, stream, [e.record_key for e in batch], column_types)
        }
        gone = [e for e in batch if e.record_key not in current]
        present = [e for e in batch if e.record_key in current]
        outcomes = _send_current(conn, stream, writer, [current[e.record_key] for e in present], column_types)
        resolved, failed = [], []
        for error, (record, rejection) in zip(present, outcomes, strict=True):
            if rejection is None:
                resolved.append(error.id)
            else:
                failed.append((error.id, record.payload, rejection))
                result.still_failing[rejection.code] += 1
                log.warning(
                    "Record %s of stream '%s' still fails: %s (attempt %d)",
                    error.record_key,
                    stream.name,
                    rejection.describe(),
                    error.attempts + 1,
                )
        for error in gone:
            log.info(
                "Record %s of stream '%s' is gone from the source; closing its error", error.record_key, stream.name
            )
        store.record_reexport(
            conn,
            claimant=claimant,
            resolved=resolved,
            failed=failed,
            source_gone=[e.id for e in gone],
            resolved_by=dag_id,
            run_id=run_id,
        )
        result.resolved += len(resolved)
        result.source_gone += len(gone)


def _send_current(
    conn, stream: Stream, writer: CollectionWriter, records: list[SourceRecord], column_types
) -> list[tuple[SourceRecord, RecordRejected | None]]:
    """Send records; re-send any whose source row changed while it was in flight."""
    final: dict[str, tuple[SourceRecord, RecordRejected | None]] = {}
    pending = records
    for _ in range(MAX_RESENDS):
        if not pending:
            break
        for outcome in send(writer, pending):
            final[outcome.record.key] = (outcome.record, outcome.rejection)
        sent_ok = [r.key for r in pending if final[r.key][1] is None]
        now = store.positions_by_key(conn, stream, sent_ok) if sent_ok else {}
        changed = [key for key in sent_ok if key in now and now[key] != final[key][0].position]
        if not changed:
            break
        log.info("%d record(s) changed in the source while being re-exported; sending their new version", len(changed))
        pending = [map_row(stream, row) for row in store.read_rows_by_key(conn, stream, changed, column_types)]
    return [final[r.key] for r in records]


def _dry_run(conn, stream, column_types, run_started, options, result) -> None:
    errors = store.peek_open_errors(
        conn, stream, not_attempted_since=run_started, limit=options.limit, error_codes=options.error_codes
    )
    keys = [e.record_key for e in errors]
    current = (
        {str(row[stream.key]): row for row in store.read_rows_by_key(conn, stream, keys, column_types)} if keys else {}
    )
    for index, error in enumerate(errors):
        show = index < DRY_RUN_LINES
        if error.record_key not in current:
            result.source_gone += 1
            if show:
                log.info("Would close record %s (%s): its source row is gone", error.record_key, error.error_code)
            continue
        result.would_send += 1
        if not show:
            continue
        record = map_row(stream, current[error.record_key])
        log.info(
            "Would send record %s (open with %s, %d attempt(s)): %s",
            error.record_key,
            error.error_code,
            error.attempts,
            record.payload if record.payload is not None else record.rejection.describe(),
        )
