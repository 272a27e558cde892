"""The export of one stream (CRMExport): read, send, plan, commit, batch after batch.

Each batch goes through named steps:

1. **read** the next rows after the watermark (keyset order, up to the
   horizon) and map them to Salesforce payloads;
2. **send** them through sObject Collections (:class:`CollectionWriter`);
3. **plan** what the results mean (:func:`plan_batch`, pure): which records
   are confirmed, which are rejected, how far the watermark may move, whether
   the stream is held;
4. **commit** the plan in one PostgreSQL transaction: the batch's
   ExportErrors rows, the resolved ones, and **advance** the watermark.

A request failure raises before anything of it is committed, so the
watermark and ExportErrors never move for it. Up to ``in_flight`` requests go
out at once while the next batch is read; the order that matters is kept: a
batch is committed only after Salesforce answered it and every batch before it
is committed, a record is never in two requests at once, and after a held
record or a failed request nothing more is sent and the answers of the
requests still in flight are not counted (they are upserts, sent again by the
next run).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass

import psycopg

from include.crm_export.batch import BatchPlan, RecordOutcome, plan_batch
from include.crm_export.bulk_csv import job_data, match_results
from include.crm_export.bulk_jobs import BulkJobs
from include.crm_export.concurrency import Concurrency
from include.crm_export.config import Stream, change_column, definition_changes, stream_definition
from include.crm_export.db import api_requests, bulk_jobs, export_errors, run_history, source, watermarks
from include.crm_export.db.connection import Database
from include.crm_export.db.migrate import migrate
from include.crm_export.decisions import (
    HELD,
    INCONSISTENCY_WARNING,
    ExportResult,
    Lag,
    api_budget_stop,
    held_record,
    next_batch_size,
    pause_on_error_change,
    stop_reason,
    stream_changed_message,
)
from include.crm_export.errors import RequestFailed, StreamConfigError
from include.crm_export.mapping import SourceRecord, map_row, position_to_json
from include.crm_export.names import MAX_BATCH_SIZE
from include.crm_export.salesforce import CollectionWriter

log = logging.getLogger(__name__)

HORIZON_REFRESH_SECONDS = 1.0
_MAX_ERROR_LINES_PER_BATCH = 20


@dataclass(frozen=True)
class RunContext:
    dag_id: str
    run_id: str


class StreamExport:
    """One stream's export session: its connections, its lock and the steps of a batch.

    Opened with :meth:`open` (connects, migrates, takes the stream's lock,
    loads the watermark); closed with the context manager.
    """

    def __init__(
        self,
        stream: Stream,
        *,
        conn: psycopg.Connection,
        reader: psycopg.Connection,
        context: RunContext,
        field_types: dict[str, str] | None = None,
    ):
        self.stream = stream
        self.field_types = field_types  # Salesforce types of the mapped fields (describe), for the mapping
        self.conn = conn  # commits (watermark, ExportErrors) and holds the stream's lock
        self.reader = reader  # reads the source, so a read never waits for a commit
        self.context = context
        self.column_types = source.column_types(conn, stream)
        self.change = change_column(stream, self.column_types[stream.order_by[0]])
        self.blind_spot = source.activity_blind_spot(conn)
        self.watermark = watermarks.load_watermark(conn, stream)
        self.position = self.watermark.position  # where the watermark is now: moved by each commit
        self.definition = stream_definition(stream, self.column_types)
        self._check_definition()
        if source.is_view(conn, stream):
            self._check_every_row_has_a_place()
        self._own_backends = (conn.info.backend_pid, reader.info.backend_pid)
        self._horizon: source.Horizon | None = None
        self._horizon_looked_up = 0.0
        # Resolving open errors costs a statement per batch; skip it while the
        # stream has none (the common case).
        self._has_open_errors = export_errors.has_open_errors(conn, stream)

    def _check_definition(self) -> None:
        """A watermark taken under another stream definition is never continued silently.

        The current definition is written with the run's first commit (or its
        idle-run note), not here: a run that has not committed anything has
        changed nothing.
        """
        definition, stored, position = self.definition, self.watermark.definition, self.watermark
        if stored is None or stored == definition:
            return
        if position.position is None and position.held_record_key is None:
            return  # nothing exported under the old definition: nothing to protect
        raise StreamConfigError(stream_changed_message(self.stream.name, definition_changes(stored, definition)))

    def _check_every_row_has_a_place(self) -> None:
        key = source.rows_without_a_place(self.reader, self.stream)
        if key is not None:
            raise StreamConfigError(
                f"Stream config error in stream '{self.stream.name}', field 'order_by': row {key} of "
                f"{self.stream.source} has NULL in {', '.join(self.stream.order_by)}, so it has no place in the "
                "export's order and would never be exported. Nothing was sent. Fill it in the view (for example "
                "COALESCE(updated_at, created_at)) or in the data, then clear this task."
            )

    @classmethod
    def open(
        cls,
        stream: Stream,
        database: Database,
        context: RunContext,
        *,
        exits: ExitStack,
        field_types: dict[str, str] | None = None,
    ) -> StreamExport:
        name = f"crm-export {stream.name}"
        conn = exits.enter_context(database.connect(application_name=name))
        reader = exits.enter_context(database.connect(application_name=f"{name} reader"))
        migrate(conn)
        watermarks.lock_stream(conn, stream)
        export_errors.compact_error_counts(conn)
        return cls(stream, conn=conn, reader=reader, context=context, field_types=field_types)

    def read(
        self,
        after: list[str] | None,
        limit: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        until: list[str] | None = None,
    ) -> tuple[source.Horizon, list[SourceRecord]]:
        """The next ``limit`` records after ``after``, never past the horizon."""
        # An older horizon is still safe (only more conservative), so it is
        # looked up again at most once a second rather than per batch.
        if self._horizon is None or clock() - self._horizon_looked_up >= HORIZON_REFRESH_SECONDS:
            self._horizon_looked_up = clock()
            self._horizon = source.export_horizon(
                self.reader, self.stream, self.change, exclude_backends=self._own_backends
            )
        rows = source.read_batch(
            self.reader,
            self.stream,
            after=after,
            horizon=self._horizon.at,
            column_types=self.column_types,
            limit=limit,
            until=until,
        )
        return self._horizon, [map_row(self.stream, row, self.field_types) for row in rows]

    def commit(self, plan: BatchPlan) -> None:
        """Write the batch's ExportErrors changes and advance the watermark, in one transaction."""
        self._has_open_errors = self._has_open_errors or bool(plan.errors)
        with self.conn.transaction():
            if self._has_open_errors:
                keys = [*plan.confirmed_keys, *(record.key for record, _ in plan.errors)]
                export_errors.lock_open_rows(self.conn, self.stream, keys)
            export_errors.record_rejections(
                self.conn, self.stream, plan.errors, dag_id=self.context.dag_id, run_id=self.context.run_id
            )
            if plan.confirmed_keys and self._has_open_errors:
                export_errors.resolve_errors(
                    self.conn, self.stream, list(plan.confirmed_keys), resolved_by=self.context.dag_id
                )
            watermarks.advance_watermark(
                self.conn,
                self.stream,
                position=plan.new_position,
                held_record_key=plan.held[0].key if plan.held else None,
                exported=plan.exported,
                run_id=self.context.run_id,
                definition=self.definition,
            )
        if plan.new_position is not None:
            self.position = position_to_json(plan.new_position)

    def lag(self) -> Lag | None:
        """How far behind the source the stream is now (closing log line, metrics); never fails the run."""
        try:
            return source.lag(self.reader, self.stream, self.position, self.column_types)
        except psycopg.Error as exc:
            log.warning("Could not measure the lag of stream '%s': %s", self.stream.name, exc)
            return None

    def note_idle_run(self) -> None:
        watermarks.note_run(self.conn, self.stream, run_id=self.context.run_id, definition=self.definition)


@dataclass
class _Request:
    """One batch sent and not yet committed, in source order."""

    records: list[SourceRecord]
    keys: frozenset[str]
    answer: Future[list[RecordOutcome]]


class _Sender:
    """The batches read and the requests in flight of one run, committed strictly in source order."""

    def __init__(self, writer: CollectionWriter, concurrency: Concurrency, pool: ThreadPoolExecutor):
        self.writer = writer
        self.concurrency = concurrency
        self.pool = pool
        self.requests: deque[_Request] = deque()  # oldest first
        self.waiting: list[SourceRecord] | None = None  # read, not sent yet

    def running(self) -> int:
        return sum(1 for request in self.requests if not request.answer.done())

    def has_room(self) -> bool:
        # Answered but uncommitted batches wait for an older one; they are bounded too, so memory stays flat.
        return self.running() < self.concurrency.allowed and len(self.requests) < 2 * self.concurrency.ceiling

    def a_request_failed(self) -> bool:
        return any(r.answer.done() and r.answer.exception() is not None for r in self.requests)

    def busy(self, records: list[SourceRecord]) -> bool:
        """Is a record of this batch still in a request? Then it waits, so an older version never lands last."""
        keys = {record.key for record in records}
        return any(not r.answer.done() and not r.keys.isdisjoint(keys) for r in self.requests)

    def send(self, records: list[SourceRecord]) -> None:
        keys = frozenset(record.key for record in records)
        self.writer.count_request()  # now, so the next budget check sees it
        self.requests.append(_Request(records, keys, self.pool.submit(self.writer.send, records, counted=True)))
        self.concurrency.sent()

    def wait_for_an_answer(self) -> None:
        running = [r.answer for r in self.requests if not r.answer.done()]
        if running:
            wait(running, return_when=FIRST_COMPLETED)

    def discard(self) -> int:
        """Drop every request after a held record or a failed request: idempotent upserts, sent again later."""
        dropped = len(self.requests)
        wait([r.answer for r in self.requests])
        self.requests.clear()
        self.waiting = None
        return dropped


def export_stream(
    stream: Stream,
    *,
    database: Database,
    writer: CollectionWriter,
    pause_on_error: Callable[[], bool],
    context: RunContext,
    clock: Callable[[], float] = time.monotonic,
    bulk: BulkJobs | None = None,
    force_bulk: bool = False,
) -> ExportResult:
    """Export ``stream`` until caught up, held, or out of its per-run budget.

    With ``bulk`` (Bulk API 2.0 jobs), a run whose backlog is at least the
    stream's ``bulk_threshold``, or one asked to (``force_bulk``), or one
    with a job left by a killed task, goes through Bulk API 2.0 jobs instead
    (``_Backfill``), with the same watermark, pause and ExportErrors rules.

    Up to ``stream.in_flight`` requests go out at once (fewer while Salesforce
    struggles, see ``concurrency.py``); their answers are committed one after
    the other in source order, so the watermark only ever moves to the end of
    the longest run of batches that are all confirmed and committed.
    """
    started = clock()
    concurrency = Concurrency(stream.in_flight, stream.slow_request_seconds)
    writer.observe(concurrency)
    with (
        ExitStack() as exits,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"crm-export-{stream.name}-read") as reads,
        ThreadPoolExecutor(max_workers=concurrency.ceiling, thread_name_prefix=f"crm-export-{stream.name}") as pool,
    ):
        run = StreamExport.open(stream, database, context, exits=exits, field_types=writer.field_types)
        ours_before = api_requests.used_last_day(run.conn)
        exits.callback(lambda: _count_requests(run, writer, bulk))
        pause = pause_on_error()
        result = ExportResult(stream.name, pause_on_error=pause)
        _log_start(run, pause)

        sender = _Sender(writer, concurrency, pool)
        backfill = _Backfill.for_run(run, writer, bulk, force=force_bulk, clock=clock)
        records_read = 0
        warned_about_horizon = False
        next_read: Future | None = (
            None
            if backfill is not None
            else reads.submit(run.read, run.watermark.position, next_batch_size(stream, records_read=0), clock=clock)
        )
        failure: Exception | None = None
        try:
            if backfill is not None:
                backfill.export(result, pause, pause_on_error, started)
            # Until nothing is left to read, send or commit (a backfill has already done its work).
            while next_read is not None or sender.requests or sender.waiting is not None:
                # Send while the level allows (and nothing failed: what follows a failure is not sent).
                while sender.has_room() and not sender.a_request_failed():
                    if sender.waiting is None:
                        if next_read is None:
                            break
                        horizon, records = next_read.result()
                        next_read = None
                        if horizon.held_back_by and not warned_about_horizon:
                            warned_about_horizon = True
                            _warn_horizon(horizon)
                        if not records:
                            break
                        records_read += len(records)
                        stopped = stop_reason(stream, records_read=records_read, elapsed_seconds=clock() - started)
                        if stopped is None:
                            after = position_to_json(records[-1].position)
                            limit = next_batch_size(stream, records_read=records_read)
                            next_read = reads.submit(run.read, after, limit, clock=clock)
                        else:
                            result.stopped_because = stopped
                        sender.waiting = records
                    if sender.busy(sender.waiting):
                        break
                    over_budget = api_budget_stop(
                        stream,
                        ours_last_day=ours_before + writer.requests_sent,
                        org_usage=_org_usage(writer, sender.running()),
                    )
                    if over_budget is not None:
                        result.stopped_because = over_budget
                        log.warning("Stream '%s' stops here: %s.", stream.name, over_budget)
                        sender.waiting, next_read = None, _cancelled(next_read)
                        break
                    sender.send(sender.waiting)
                    sender.waiting = None

                # Commit the answered batches at the head, in source order.
                while sender.requests and sender.requests[0].answer.done():
                    request = sender.requests.popleft()
                    outcomes = request.answer.result()  # a failed request raises here, after all before it
                    if result.tally.batches:
                        pause = _reread_pause_on_error(pause, pause_on_error, result)
                    plan = plan_batch(outcomes, pause_on_error=pause)
                    run.commit(plan)
                    result.add(plan, pause_on_error=pause)
                    _log_batch(stream, plan, pause)
                    result.held = held_record(stream, plan)
                    if result.held is not None:
                        break
                if result.held is not None:
                    result.stopped_because = HELD
                    dropped = sender.discard()
                    if dropped:
                        log.info("%d later batch(es) in flight are not counted; they are sent again later.", dropped)
                    break
                sender.wait_for_an_answer()
        except Exception as exc:
            failure = exc
            raise
        finally:
            if failure is not None:
                dropped = sender.discard()
                if dropped:
                    log.info(
                        "%d batch(es) after the failed request are not counted; nothing of them was recorded.", dropped
                    )
            if next_read is not None:
                wait([next_read])
            result.in_flight_level = round(concurrency.average)
            result.in_flight_text = concurrency.describe()
            if failure is not None:
                _record_run(run, result, clock() - started, failure=failure)
        if result.tally.batches == 0:
            run.note_idle_run()
        result.lag = run.lag()
        _record_run(run, result, clock() - started)

    log.info(result.summary())
    warning = result.incomplete_warning()
    if warning:
        log.warning("%s", warning)
    return result


def _failure_text(failure: Exception) -> str:
    """Why a failed run stopped, as the run history shows it."""
    if isinstance(failure, RequestFailed):
        return f"request failure: {failure}"
    return f"{type(failure).__name__}: {failure}"


def _org_usage(writer: CollectionWriter, running: int) -> tuple[int, int] | None:
    """The org's usage as its last answer said, plus the requests still running (they may not be in it yet)."""
    usage = writer.org_api_usage()
    return None if usage is None else (usage[0] + running, usage[1])


def _cancelled(future: Future | None) -> None:
    if future is not None:
        future.cancel()
        wait([future])
    return None


def _record_run(run: StreamExport, result: ExportResult, seconds: float, *, failure: Exception | None = None) -> None:
    """Add the run to the history the page charts; never hides the run's own outcome behind the bookkeeping."""
    try:
        run_history.record_run(
            run.conn,
            run.stream,
            result,
            dag_id=run.context.dag_id,
            run_id=run.context.run_id,
            seconds=seconds,
            in_flight=result.in_flight_level,
            failure=None if failure is None else _failure_text(failure)[:2000],
        )
    except psycopg.Error as exc:
        log.warning("Could not add this run of stream '%s' to the run history: %s", run.stream.name, exc)


def _count_requests(run: StreamExport, writer: CollectionWriter, bulk: BulkJobs | None) -> None:
    requests = writer.requests_sent + (bulk.requests_sent if bulk is not None else 0)
    try:
        api_requests.record(run.conn, run.stream, run_id=run.context.run_id, requests=requests)
    except psycopg.Error as exc:  # never hide the run's own outcome behind the bookkeeping
        log.warning("Could not record this run's %d Salesforce API requests: %s", requests, exc)


def read_next_batch(stream: Stream, database: Database) -> list[SourceRecord]:
    """What the next run would send first, read exactly as the export reads it (dry runs)."""
    with ExitStack() as exits:
        conn = exits.enter_context(database.connect(application_name=f"crm-export {stream.name} dry run"))
        migrate(conn)
        run = StreamExport(stream, conn=conn, reader=conn, context=RunContext("dry-run", "dry-run"))
        _horizon, records = run.read(run.watermark.position, stream.batch_size)
        return records


def _log_start(run: StreamExport, pause: bool) -> None:
    stream = run.stream
    if run.watermark.held_record_key is not None:
        log.warning(
            "Stream '%s' is held at record %s since the last run; retrying it first.",
            stream.name,
            run.watermark.held_record_key,
        )
    if not pause:
        log.warning("%s", INCONSISTENCY_WARNING)
    if run.blind_spot:
        log.warning("Late rows may be skipped: %s", run.blind_spot)
    log.info(
        "Exporting stream '%s' (%s -> %s by %s) after position %s",
        stream.name,
        stream.source,
        stream.sobject,
        stream.external_id_field,
        run.watermark.position,
    )


def _reread_pause_on_error(current: bool, pause_on_error: Callable[[], bool], result: ExportResult) -> bool:
    latest = pause_on_error()
    change = pause_on_error_change(current, latest)
    if change is not None:
        for warning in change.warnings():
            log.warning("%s", warning)
        result.pause_on_error = latest
    return latest


def _warn_horizon(horizon: source.Horizon) -> None:
    holder = horizon.held_back_by
    if holder["kind"] == "prepared":
        since = f"no earlier than {holder['since']}" if holder["since"] else "at an unknown time"
        log.warning(
            "Not reading rows changed after %s: prepared transaction %r (owner %s, prepared %s, started %s) may "
            "still commit rows with older change timestamps. The export catches up once it is finished: "
            "COMMIT PREPARED %r or ROLLBACK PREPARED %r.",
            horizon.at if horizon.at is not None else "the watermark",
            holder["gid"],
            holder["owner"],
            holder["prepared"],
            since,
            holder["gid"],
            holder["gid"],
        )
        return
    log.warning(
        "Not reading rows changed after %s: a transaction open since %s (pid %s, user %s, %s, %s, %s) may still "
        "commit rows with older change timestamps. The export catches up once it ends.",
        horizon.at,
        holder["since"],
        holder["pid"],
        holder["user"] or "unknown",
        holder["backend_type"],
        holder["application_name"] or "unknown application",
        holder["state"],
    )


def _log_batch(stream: Stream, plan: BatchPlan, pause: bool) -> None:
    for record, rejection in plan.errors[:_MAX_ERROR_LINES_PER_BATCH]:
        log.warning(
            "Stream '%s' record %s (%s = %s) rejected: %s%s",
            stream.name,
            record.key,
            stream.external_id_field,
            record.external_id,
            rejection.describe(),
            "" if pause else " - skipped (pause on error off), open in ExportErrors",
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


class _Backfill:
    """A run through Bulk API 2.0 ingest jobs: read up to ``bulk_job_records`` rows, one job, commit its outcome.

    The job id is recorded before its data is uploaded; a job left by a killed
    task is resumed first (polled, never uploaded again) or, never closed,
    aborted. A job that fails or leaves records unprocessed is a request
    failure: nothing of it is recorded and the watermark does not move.
    Records rejected for a transient reason are sent again through sObject
    Collections before they count.
    """

    def __init__(
        self,
        run: StreamExport,
        writer: CollectionWriter,
        jobs: BulkJobs,
        clock: Callable[[], float],
        left: list[bulk_jobs.RecordedJob],
    ):
        self.run, self.writer, self.jobs, self.clock, self.left = run, writer, jobs, clock, left
        self.stream = run.stream
        self.columns = [self.stream.external_id_field, *(field for field, _ in self.stream.fields)]

    @classmethod
    def for_run(
        cls,
        run: StreamExport,
        writer: CollectionWriter,
        jobs: BulkJobs | None,
        *,
        force: bool,
        clock: Callable[[], float],
    ) -> _Backfill | None:
        if jobs is None:
            return None
        stream = run.stream
        left = bulk_jobs.unfinished(run.conn, stream)
        if not (force or left or stream.bulk_threshold):
            return None
        if not (force or left):
            lag = run.lag()
            if lag is None or lag.rows < stream.bulk_threshold:
                return None
            log.info(
                "Stream '%s': %s; at least bulk_threshold (%s), so this run upserts through Bulk API 2.0 jobs of up "
                "to %s records.",
                stream.name,
                lag.describe(),
                f"{stream.bulk_threshold:,}",
                f"{stream.bulk_job_records:,}",
            )
        return cls(run, writer, jobs, clock, left)

    def export(self, result: ExportResult, pause: bool, pause_on_error: Callable[[], bool], started: float) -> None:
        pause = self._resume(result, pause, pause_on_error)
        records_read = 0
        while result.held is None:
            stopped = stop_reason(self.stream, records_read=records_read, elapsed_seconds=self.clock() - started)
            if stopped is not None:
                result.stopped_because = stopped
                return
            limit = min(self.stream.bulk_job_records, self.stream.max_records_per_run - records_read)
            horizon, records = self.run.read(self.run.position, limit, clock=self.clock)
            if horizon.held_back_by:
                _warn_horizon(horizon)
            if not records:
                return
            records_read += len(records)
            job_id = self.jobs.create()
            with self.run.conn.transaction():
                bulk_jobs.record(
                    self.run.conn,
                    self.stream,
                    job_id,
                    run_id=self.run.context.run_id,
                    after=self.run.position,
                    last=position_to_json(records[-1].position),
                    records=len(records),
                )
            self.jobs.upload(job_id, job_data(records, self.columns))
            bulk_jobs.set_state(self.run.conn, job_id, "uploaded")
            self.jobs.close(job_id)
            bulk_jobs.set_state(self.run.conn, job_id, "closed")
            log.info(
                "Bulk API 2.0 job %s: %d records of stream '%s' uploaded; waiting for Salesforce.",
                job_id,
                len(records),
                self.stream.name,
            )
            pause = self._finish(job_id, records, result, pause, pause_on_error)

    def _resume(self, result: ExportResult, pause: bool, pause_on_error: Callable[[], bool]) -> bool:
        for job in self.left:
            if job.state != "closed" or job.after_position != self.run.position:
                log.warning(
                    "Bulk API 2.0 job %s of stream '%s' was left %s by an earlier task; aborting it (its records are "
                    "sent again).",
                    job.job_id,
                    self.stream.name,
                    job.state,
                )
                try:
                    self.jobs.abort(job.job_id)
                except RequestFailed as exc:
                    log.warning("Could not abort job %s (%s); it is no longer counted.", job.job_id, exc)
                bulk_jobs.set_state(self.run.conn, job.job_id, "aborted")
                continue
            log.warning(
                "Resuming Bulk API 2.0 job %s of stream '%s', left by an earlier task while Salesforce processed it: "
                "polling it, not uploading again.",
                job.job_id,
                self.stream.name,
            )
            _horizon, records = self.run.read(
                job.after_position, job.records, clock=self.clock, until=job.last_position
            )
            pause = self._finish(job.job_id, records, result, pause, pause_on_error)
            if result.held is not None:
                break
        return pause

    def _finish(
        self,
        job_id: str,
        records: list[SourceRecord],
        result: ExportResult,
        pause: bool,
        pause_on_error: Callable[[], bool],
    ) -> bool:
        info = self.jobs.wait(job_id)
        if info["state"] != "JobComplete":
            bulk_jobs.set_state(self.run.conn, job_id, "failed")
            raise RequestFailed(
                f"Bulk API 2.0 job {job_id} of stream '{self.stream.name}' ended {info['state']}: "
                f"{info.get('errorMessage') or 'Salesforce gave no reason'}. Nothing of it was recorded and the "
                "watermark did not move; its records are sent again."
            )
        successful, failed = self.jobs.results(job_id)
        matched = match_results(records, self.stream.external_id_field, successful=successful, failed=failed)
        if matched.unprocessed:
            bulk_jobs.set_state(self.run.conn, job_id, "failed")
            raise RequestFailed(
                f"Bulk API 2.0 job {job_id} of stream '{self.stream.name}' left {matched.unprocessed} record(s) "
                "unprocessed. Nothing of it was recorded and the watermark did not move; its records are sent again."
            )
        outcomes = [outcome for outcome in matched.outcomes if outcome is not None]
        transient = [
            i
            for i, o in enumerate(outcomes)
            if o.rejection is not None and o.rejection.transient and o.record.payload is not None
        ]
        for start in range(0, len(transient), MAX_BATCH_SIZE):
            indexes = transient[start : start + MAX_BATCH_SIZE]
            for index, outcome in zip(indexes, self.writer.send([outcomes[i].record for i in indexes]), strict=True):
                outcomes[index] = outcome
        if result.tally.batches:
            pause = _reread_pause_on_error(pause, pause_on_error, result)
        plan = plan_batch(outcomes, pause_on_error=pause)
        with self.run.conn.transaction():
            self.run.commit(plan)
            bulk_jobs.set_state(self.run.conn, job_id, "done")
        result.add(plan, pause_on_error=pause)
        _log_batch(self.stream, plan, pause)
        result.held = held_record(self.stream, plan)
        if result.held is not None:
            result.stopped_because = HELD
        return pause
