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
from dataclasses import dataclass, field

import psycopg

from include.crm_export.batch import BatchPlan, RecordOutcome, RunTally, plan_batch
from include.crm_export.config import Stream
from include.crm_export.db import store
from include.crm_export.db.migrate import migrate
from include.crm_export.errors import RecordRejected
from include.crm_export.mapping import SourceRecord, map_row, position_to_json
from include.crm_export.salesforce import CollectionWriter, Saved
from include.crm_export.settings import PAUSE_VARIABLE

log = logging.getLogger(__name__)

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
    conn: psycopg.Connection,
    writer: CollectionWriter,
    pause_on_error: Callable[[], bool],
    context: RunContext,
    clock: Callable[[], float] = time.monotonic,
) -> ExportResult:
    """Export ``stream`` until caught up, held, or out of its per-run budget."""
    started = clock()
    migrate(conn)
    store.lock_stream(conn, stream)
    column_types = store.source_column_types(conn, stream)
    watermark = store.load_watermark(conn, stream)
    position = watermark.position
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
        position,
    )

    warned_about_horizon = False
    while True:
        if result.tally.exported + result.tally.errors >= stream.max_records_per_run:
            result.stopped_because = f"max_records_per_run ({stream.max_records_per_run}) reached"
            break
        if clock() - started >= stream.max_minutes_per_run * 60:
            result.stopped_because = f"max_minutes_per_run ({stream.max_minutes_per_run:g}) reached"
            break
        if result.tally.batches:
            now_pause = pause_on_error()
            if now_pause != pause:
                log.warning("%s changed to %s during the run; applies from this batch on.", PAUSE_VARIABLE, now_pause)
                if not now_pause:
                    log.warning(INCONSISTENCY_WARNING)
                pause = now_pause
                result.pause_on_error = pause

        horizon = store.export_horizon(conn, stream)
        if horizon.held_back_by and not warned_about_horizon:
            warned_about_horizon = True
            log.warning(
                "Not reading rows changed after %s: a transaction open since then (pid %s, %s, %s) may still "
                "commit rows with older change timestamps. The export catches up once it ends.",
                horizon.at,
                horizon.held_back_by["pid"],
                horizon.held_back_by["application_name"] or "unknown application",
                horizon.held_back_by["state"],
            )
        remaining = stream.max_records_per_run - result.tally.exported - result.tally.errors
        rows = store.read_batch(
            conn,
            stream,
            after=position,
            horizon=horizon.at,
            column_types=column_types,
            limit=min(stream.batch_size, remaining),
        )
        if not rows:
            break

        records = [map_row(stream, row) for row in rows]
        outcomes = send(writer, records)
        plan = plan_batch(outcomes, pause_on_error=pause)
        store.apply_batch(conn, stream, plan, dag_id=context.dag_id, run_id=context.run_id)
        result.tally.add(plan)
        if plan.new_position is not None:
            position = position_to_json(plan.new_position)
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


def _log_batch(stream: Stream, plan: BatchPlan, pause: bool) -> None:
    for record, rejection in plan.errors:
        log.warning(
            "Stream '%s' record %s (%s = %s) rejected: %s%s",
            stream.name,
            record.key,
            stream.external_id_field,
            record.external_id,
            rejection.describe(),
            "" if pause else " - skipped (pause off), open in ExportErrors",
        )
    log.info(
        "Batch committed: %d exported, %d rejected; watermark now %s",
        plan.exported,
        len(plan.errors),
        position_to_json(plan.new_position) if plan.new_position is not None else "unchanged",
    )
