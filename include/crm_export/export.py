"""The batch loop of one stream: read after the watermark, upsert, classify, commit.

Per batch: read the next rows after the watermark (keyset), map them, upsert
them through sObject Collections, decide what the results mean
(:func:`plan_batch`), then write the batch's ExportErrors changes and move the
watermark in one PostgreSQL transaction. A request-level failure raises before
anything is written, so the watermark and ExportErrors never move for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from include.crm_export.batch import BatchPlan, RecordOutcome, RunTally, plan_batch
from include.crm_export.config import Stream
from include.crm_export.db import store
from include.crm_export.db.connection import connect
from include.crm_export.db.migrate import migrate
from include.crm_export.errors import RecordRejected
from include.crm_export.mapping import SourceRecord, map_row, position_to_json
from include.crm_export.salesforce import CollectionWriter, Saved
from include.crm_export.settings import PAUSE_VARIABLE

log = logging.getLogger(__name__)

HORIZON_REFRESH_SECONDS = 1.0

INCONSISTENCY_WARNING = (
    f"{PAUSE_VARIABLE} is OFF: records Salesforce rejects are logged to ExportErrors and skipped, so "
    "Salesforce is now missing them until CRMExport_ExportError re-exports them (daily) or the cause is fixed."
)


@dataclass(frozen=True)
class HeldRecord:
    stream: str
    record_key: str
    external_id: str | None
    rejection: RecordRejected
    sobject: str
    external_id_field: str

    def message(self) -> str:
        return (
            f"Export of stream '{self.stream}' is held at record {self.record_key} "
            f"({self.sobject}.{self.external_id_field} = {self.external_id or 'none'}): Salesforce rejected it with "
            f"{self.rejection.describe()}. Records before it are exported; the watermark stays on it, so nothing "
            "after it is skipped. Fix the cause in Salesforce or in the source row, then clear this task (or wait "
            f"for the next run) to retry it first. To skip it for now instead, set the Variable {PAUSE_VARIABLE} "
            "to false (Salesforce stays incomplete until it is re-exported). Details: "
            f"SELECT * FROM crm_export.\"ExportErrors\" WHERE stream = '{self.stream}' "
            f"AND record_key = '{self.record_key}' AND status = 'open';"
        )


@dataclass
class ExportResult:
    stream: str
    tally: RunTally = field(default_factory=RunTally)
    held: HeldRecord | None = None
    stopped_because: str = "caught up"
    pause_on_error: bool = True
    skipped_with_pause_off: int = 0

    def summary(self) -> str:
        text = (
            f"Stream '{self.stream}': exported {self.tally.exported} record(s) in {self.tally.batches} batch(es); "
            f"record errors: {self.tally.errors} ({self.tally.errors_text()}); stopped: {self.stopped_because}."
        )
        if self.held:
            text += f" HELD at record {self.held.record_key} ({self.held.rejection.code})."
        return text


@dataclass(frozen=True)
class RunContext:
    dag_id: str
    run_id: str


def export_stream(
    stream: Stream,
    *,
    conninfo: str,
    writer: CollectionWriter,
    pause_on_error: Callable[[], bool],
    context: RunContext,
    clock: Callable[[], float] = time.monotonic,
) -> ExportResult:
    """Export ``stream`` until caught up, held, or out of its per-run budget.

    Work is pipelined so PostgreSQL never waits on Salesforce or the other way
    round: while batch N is in flight to Salesforce, batch N-1's commit and
    batch N+1's read run on their own connections. The order that matters is
    kept: a batch is committed only after Salesforce confirmed it, commits
    happen one after the other, and nothing is sent after a held record.
    """
    started = clock()
    name = f"crm-export {stream.name}"
    with (
        connect(conninfo, application_name=name) as conn,
        connect(conninfo, application_name=f"{name} reader") as reader,
        ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"crm-export-{stream.name}") as pool,
    ):
        migrate(conn)
        store.lock_stream(conn, stream)
        column_types = store.source_column_types(conn, stream)
        watermark = store.load_watermark(conn, stream)
        own_backends = (conn.info.backend_pid, reader.info.backend_pid)
        pause = pause_on_error()
        result = ExportResult(stream.name, pause_on_error=pause)
        if watermark.held_record_key is not None:
            log.warning(
                "Stream '%s' is held at record %s since the last run; retrying it first.",
                stream.name,
                watermark.held_record_key,
            )
        if not pause:
            log.warning(INCONSISTENCY_WARNING)
        log.info(
            "Exporting stream '%s' (%s -> %s by %s) after position %s",
            stream.name,
            stream.source,
            stream.sobject,
            stream.external_id_field,
            watermark.position,
        )

        horizon: store.Horizon | None = None
        horizon_looked_up = 0.0

        def fetch(after: list[str] | None, limit: int) -> tuple[store.Horizon, list[dict]]:
            nonlocal horizon, horizon_looked_up
            # An older horizon is still safe (only more conservative), so it is
            # looked up again at most once a second rather than per batch.
            if horizon is None or clock() - horizon_looked_up >= HORIZON_REFRESH_SECONDS:
                horizon_looked_up = clock()
                horizon = store.export_horizon(reader, stream, exclude_backends=own_backends)
            rows = store.read_batch(
                reader, stream, after=after, horizon=horizon.at, column_types=column_types, limit=limit
            )
            return horizon, rows

        # Resolving open errors costs a statement per batch; skip it while the
        # stream has none (the common case).
        has_open_errors = store.has_open_errors(conn, stream)

        def commit(plan: BatchPlan) -> None:
            nonlocal has_open_errors
            has_open_errors = has_open_errors or bool(plan.errors)
            store.apply_batch(conn, stream, plan, dag_id=context.dag_id, run_id=context.run_id, resolve=has_open_errors)

        read_count = 0
        warned_about_horizon = False
        pending_commit: Future | None = None
        next_fetch: Future | None = pool.submit(
            fetch, watermark.position, min(stream.batch_size, stream.max_records_per_run)
        )
        try:
            while next_fetch is not None:
                read_horizon, rows = next_fetch.result()
                next_fetch = None
                if read_horizon.held_back_by and not warned_about_horizon:
                    warned_about_horizon = True
                    _warn_horizon(read_horizon)
                if not rows:
                    break
                records = [map_row(stream, row) for row in rows]
                read_count += len(records)
                if read_count >= stream.max_records_per_run:
                    result.stopped_because = f"max_records_per_run ({stream.max_records_per_run}) reached"
                elif clock() - started >= stream.max_minutes_per_run * 60:
                    result.stopped_because = f"max_minutes_per_run ({stream.max_minutes_per_run:g}) reached"
                else:
                    limit = min(stream.batch_size, stream.max_records_per_run - read_count)
                    next_fetch = pool.submit(fetch, position_to_json(records[-1].position), limit)

                outcomes = send(writer, records)
                if pending_commit is not None:
                    pending_commit.result()
                    pending_commit = None
                if result.tally.batches:
                    pause = _reread_pause(pause, pause_on_error, result)
                plan = plan_batch(outcomes, pause_on_error=pause)
                pending_commit = pool.submit(commit, plan)
                result.tally.add(plan)
                _log_batch(stream, plan, pause)
                if plan.held is not None:
                    record, rejection = plan.held
                    result.held = HeldRecord(
                        stream.name, record.key, record.external_id, rejection, stream.sobject, stream.external_id_field
                    )
                    result.stopped_because = "held at a rejected record (pause on export errors)"
                    break
                if not pause:
                    result.skipped_with_pause_off += len(plan.errors)
            if pending_commit is not None:
                pending_commit.result()
                pending_commit = None
        finally:
            # On a failure, let an in-flight commit of an earlier, confirmed batch finish.
            for future in (pending_commit, next_fetch):
                if future is not None:
                    wait([future])
        if result.tally.batches == 0:
            store.note_run(conn, stream, run_id=context.run_id)

    log.info(result.summary())
    if result.skipped_with_pause_off:
        log.warning(
            "Salesforce is incomplete: %d record(s) of stream '%s' were skipped with %s off (%s). "
            "They are open in ExportErrors; CRMExport_ExportError re-exports them daily.",
            result.skipped_with_pause_off,
            stream.name,
            PAUSE_VARIABLE,
            result.tally.errors_text(),
        )
    return result


def _reread_pause(current: bool, pause_on_error: Callable[[], bool], result: ExportResult) -> bool:
    latest = pause_on_error()
    if latest != current:
        log.warning("%s changed to %s during the run; applies from this batch on.", PAUSE_VARIABLE, latest)
        if not latest:
            log.warning(INCONSISTENCY_WARNING)
        result.pause_on_error = latest
    return latest


def _warn_horizon(horizon: store.Horizon) -> None:
    log.warning(
        "Not reading rows changed after %s: a transaction open since then (pid %s, %s, %s) may still "
        "commit rows with older change timestamps. The export catches up once it ends.",
        horizon.at,
        horizon.held_back_by["pid"],
        horizon.held_back_by["application_name"] or "unknown application",
        horizon.held_back_by["state"],
    )


def send(writer: CollectionWriter, records: list[SourceRecord]) -> list[RecordOutcome]:
    """Upsert the mappable records; every record gets an outcome, in order."""
    sendable = [r for r in records if r.payload is not None]
    answers = iter(writer.upsert([r.payload for r in sendable]) if sendable else [])
    outcomes = []
    for record in records:
        if record.payload is None:
            outcomes.append(RecordOutcome(record, record.rejection))
            continue
        answer = next(answers)
        outcomes.append(RecordOutcome(record, None if isinstance(answer, Saved) else answer))
    return outcomes


_MAX_ERROR_LINES_PER_BATCH = 20


def _log_batch(stream: Stream, plan: BatchPlan, pause: bool) -> None:
    for record, rejection in plan.errors[:_MAX_ERROR_LINES_PER_BATCH]:
        log.warning(
            "Stream '%s' record %s (%s = %s) rejected: %s%s",
            stream.name,
            record.key,
            stream.external_id_field,
            record.external_id,
            rejection.describe(),
            "" if pause else " - skipped (pause off), open in ExportErrors",
        )
    if len(plan.errors) > _MAX_ERROR_LINES_PER_BATCH:
        log.warning(
            "… and %d more rejected record(s) in this batch; all are open in ExportErrors.",
            len(plan.errors) - _MAX_ERROR_LINES_PER_BATCH,
        )
    log.info(
        "Batch committed: %d exported, %d rejected; watermark now %s",
        plan.exported,
        len(plan.errors),
        position_to_json(plan.new_position) if plan.new_position is not None else "unchanged",
    )
