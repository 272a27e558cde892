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
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass
from functools import cached_property

import psycopg

from include.crm_export import __version__
from include.crm_export.batch import BatchPlan, RecordOutcome, plan_batch
from include.crm_export.bulk_csv import JobData, JobRecord, match_results
from include.crm_export.bulk_jobs import BulkJobs
from include.crm_export.concurrency import Concurrency
from include.crm_export.config import Stream, change_column, stream_definition
from include.crm_export.db import api_requests, bulk_jobs, export_errors, external_ids, run_history, source, watermarks
from include.crm_export.db.connection import Database
from include.crm_export.db.migrate import migrate
from include.crm_export.decisions import (
    HELD,
    INCONSISTENCY_WARNING,
    ExportResult,
    Lag,
    api_budget_stop,
    definition_refusal,
    held_record,
    next_batch_size,
    pause_on_error_change,
    stop_reason,
)
from include.crm_export.errors import JobResultsUnreadable, NotFound, RecordRejected, RequestFailed, StreamConfigError
from include.crm_export.mapping import ExternalIdOwners, SourceRecord, map_row, position_to_json
from include.crm_export.names import MAX_BATCH_SIZE
from include.crm_export.salesforce import CollectionWriter

log = logging.getLogger(__name__)

HORIZON_REFRESH_SECONDS = 1.0
_MAX_ERROR_LINES_PER_BATCH = 20
_KEYS_PER_LOOKUP = 1000
_PAGE_ROWS = 5_000  # source rows read at a time while a job's CSV is written
_FIRST_PAGE_ROWS = 1_000  # before the job's row width is known


def current_records(
    conn: psycopg.Connection,
    stream: Stream,
    keys: list[str],
    column_types: dict[str, str],
    field_types: dict[str, str] | None,
) -> dict[str, SourceRecord]:
    """The current version of the given source rows, mapped, by record key; a key whose row is gone is left out."""
    found: dict[str, SourceRecord] = {}
    for start in range(0, len(keys), _KEYS_PER_LOOKUP):
        for row in source.read_rows_by_key(conn, stream, keys[start : start + _KEYS_PER_LOOKUP], column_types):
            record = map_row(stream, row, field_types)
            found[record.key] = record
    return found


def one_record_per_external_id(
    reader: psycopg.Connection,
    stream: Stream,
    records: list[SourceRecord],
    owners: ExternalIdOwners,
    column_types: dict[str, str],
    field_types: dict[str, str] | None,
) -> list[SourceRecord]:
    """The records, each later one whose external id another source row holds made a rejected record.

    Held means: taken by a record read before it in this run (``owners``), or
    confirmed in Salesforce earlier (``crm_export.external_ids``) by a row that
    still has that external id now (one that changed or lost it lets go).
    """
    wanted = {
        owners.match_key(record.external_id): record.key
        for record in records
        if record.payload is not None and record.external_id is not None
    }
    held = external_ids.holders(reader, stream, list(wanted))
    others = {match: key for match, key in held.items() if key != wanted[match]}
    if others:
        now = current_records(reader, stream, sorted(set(others.values())), column_types, field_types)
        for match, key in others.items():
            holder = now.get(key)
            if holder is not None and holder.external_id is not None and owners.match_key(holder.external_id) == match:
                owners.held_by(match, key)
    return owners.check_all(records)


def confirmed_external_ids(
    plan: BatchPlan, outcomes: list[RecordOutcome], owners: ExternalIdOwners
) -> list[tuple[str, str]]:
    """(match key, record key) of each record the plan confirms, to be held in ``crm_export.external_ids``."""
    confirmed = set(plan.confirmed_keys)
    return [
        (owners.match_key(o.record.external_id), o.record.key)
        for o in outcomes
        if o.record.key in confirmed and o.record.external_id is not None
    ]


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
        external_id_case_sensitive: bool = False,
    ):
        self.stream = stream
        self.field_types = field_types  # Salesforce types of the mapped fields (describe), for the mapping
        # Every record read this run that can still be in flight (a Collections request, or one of the two Bulk
        # API 2.0 jobs that may run at once), by external id: one Salesforce record, one source row.
        self.sent_ids = ExternalIdOwners(
            stream,
            case_sensitive=external_id_case_sensitive,
            remember=max(20_000, 2 * stream.bulk_job_records + _PAGE_ROWS),
        )
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
        refused = definition_refusal(
            self.stream.name,
            current=self.definition,
            stored=self.watermark.definition,
            exported_before=self.watermark.exported_before,
        )
        if refused is not None:
            raise StreamConfigError(refused)

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
        writer: CollectionWriter | None = None,
    ) -> StreamExport:
        name = f"crm-export {stream.name}"
        conn = exits.enter_context(database.connect(application_name=name))
        reader = exits.enter_context(database.connect(application_name=f"{name} reader"))
        migrate(conn)
        watermarks.lock_stream(conn, stream)
        export_errors.compact_error_counts(conn)
        return cls(
            stream,
            conn=conn,
            reader=reader,
            context=context,
            field_types=writer.field_types if writer is not None else None,
            external_id_case_sensitive=writer.external_id_case_sensitive if writer is not None else False,
        )

    def horizon(self, clock: Callable[[], float] = time.monotonic, *, fresh: bool = False) -> source.Horizon:
        """How far the source may be read now."""
        # An older horizon is still safe (only more conservative), so it is
        # looked up again at most once a second rather than per batch.
        if fresh or self._horizon is None or clock() - self._horizon_looked_up >= HORIZON_REFRESH_SECONDS:
            self._horizon_looked_up = clock()
            self._horizon = source.export_horizon(
                self.reader, self.stream, self.change, exclude_backends=self._own_backends
            )
        return self._horizon

    def read(
        self,
        after: list[str] | None,
        limit: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        until: list[str] | None = None,
        horizon: source.Horizon | None = None,
    ) -> tuple[source.Horizon, list[SourceRecord]]:
        """The next ``limit`` records after ``after``, never past the horizon (``horizon``, or the current one),
        one record per external id."""
        horizon = horizon or self.horizon(clock)
        rows = source.read_batch(
            self.reader,
            self.stream,
            after=after,
            horizon=horizon.at,
            column_types=self.column_types,
            limit=limit,
            until=until,
        )
        records = [map_row(self.stream, row, self.field_types) for row in rows]
        return horizon, one_record_per_external_id(
            self.reader, self.stream, records, self.sent_ids, self.column_types, self.field_types
        )

    def records_by_key(self, keys: list[str]) -> dict[str, SourceRecord]:
        return current_records(self.reader, self.stream, keys, self.column_types, self.field_types)

    def commit(
        self,
        plan: BatchPlan,
        *,
        held_ids: Sequence[tuple[str, str]] = (),
        with_it: Callable[[], None] | None = None,
    ) -> None:
        """Write the batch's ExportErrors changes, the external ids it confirmed, and advance the watermark, in
        one transaction (with ``with_it``)."""
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
            external_ids.hold(self.conn, self.stream, held_ids)
            watermarks.advance_watermark(
                self.conn,
                self.stream,
                position=plan.new_position,
                held_record_key=plan.held[0].key if plan.held else None,
                exported=plan.exported,
                run_id=self.context.run_id,
                definition=self.definition,
            )
            if with_it is not None:
                with_it()
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
        """A run that committed nothing. A held record it did not even read is no longer waiting (deleted, or
        changed and not yet due): the hold is released, its ExportErrors row stays open until it is sent."""
        held = self.watermark.held_record_key
        if held is not None:
            log.warning(
                "Stream '%s' was held at record %s, which no longer waits to be exported (deleted from the source, "
                "or changed and not yet due); the hold is released.",
                self.stream.name,
                held,
            )
        watermarks.note_run(
            self.conn, self.stream, run_id=self.context.run_id, definition=self.definition, release_hold=True
        )


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
        run = StreamExport.open(stream, database, context, exits=exits, writer=writer)
        ours_before = api_requests.used_last_day(run.conn)
        exits.callback(lambda: _count_requests(run, writer, bulk))
        pause = pause_on_error()
        result = ExportResult(stream.name, pause_on_error=pause)
        _log_start(run, pause)

        sender = _Sender(writer, concurrency, pool)
        backfill = _Backfill.for_run(run, writer, bulk, force=force_bulk, clock=clock, requests_before=ours_before)
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
                    pause = _commit_outcomes(run, result, outcomes, pause, pause_on_error)
                    if result.held is not None:
                        break
                if result.held is not None:
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
        "crm-export %s: exporting stream '%s' (%s -> %s by %s) after position %s",
        __version__,
        stream.name,
        stream.source,
        stream.sobject,
        stream.external_id_field,
        run.watermark.position,
    )


def _commit_outcomes(
    run: StreamExport,
    result: ExportResult,
    outcomes: list[RecordOutcome],
    pause: bool,
    pause_on_error: Callable[[], bool],
    *,
    with_it: Callable[[], None] | None = None,
) -> bool:
    """Plan one batch's outcomes under the pause on error in force now, commit it (``with_it`` in the same
    transaction) and count it; returns the pause on error it was planned under."""
    if result.tally.batches:
        pause = _reread_pause_on_error(pause, pause_on_error, result)
    plan = plan_batch(outcomes, pause_on_error=pause)
    run.commit(plan, held_ids=confirmed_external_ids(plan, outcomes, run.sent_ids), with_it=with_it)
    result.add(plan, pause_on_error=pause)
    _log_batch(run.stream, plan, pause)
    result.held = held_record(run.stream, plan)
    if result.held is not None:
        result.stopped_because = HELD
    return pause


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


@dataclass
class _Job:
    """One Bulk API 2.0 job of a run. Of each record only key, position and external id are kept."""

    after: list[str] | None  # the position its records follow
    records: list[JobRecord]
    data: str | None  # its CSV until uploaded; None once uploaded, or when nothing of it can be sent
    job_id: str | None = None  # None: not created in Salesforce (yet, or because nothing can be sent)

    @property
    def last(self) -> list[str]:
        return position_to_json(self.records[-1].position)

    @cached_property
    def keys(self) -> frozenset[str]:
        return frozenset(record.key for record in self.records)


class _Backfill:
    """A run through Bulk API 2.0 ingest jobs of up to ``bulk_job_records`` records each.

    While Salesforce processes one job, the next is read, uploaded and closed,
    so reading and processing overlap; at most two jobs are in Salesforce at
    once, they never hold the same record (the next waits, read but not
    uploaded, until the first is done) and their outcomes are committed in
    source order, exactly as with one job at a time. Rows are streamed into the
    job's CSV page by page and only key, position and external id are kept per
    record, so memory does not grow with the job's payloads.

    The job id is recorded before its data is uploaded; a job left by a killed
    task is resumed first (polled, never uploaded again) or, never closed,
    aborted. A job that fails or leaves records unprocessed is a request
    failure: nothing of it is recorded and the watermark does not move; the
    job after it is aborted. Records rejected for a transient reason are sent
    again through sObject Collections before they count.
    """

    def __init__(
        self,
        run: StreamExport,
        writer: CollectionWriter,
        jobs: BulkJobs,
        clock: Callable[[], float],
        left: list[bulk_jobs.RecordedJob],
        requests_before: int,
    ):
        self.run, self.writer, self.jobs, self.clock, self.left = run, writer, jobs, clock, left
        self.stream = run.stream
        self.columns = [self.stream.external_id_field, *(field for field, _ in self.stream.fields)]
        self.requests_before = requests_before  # crm-export's requests in the last day before this run
        self.max_job_bytes = self.stream.bulk_job_megabytes * 1_000_000

    @classmethod
    def for_run(
        cls,
        run: StreamExport,
        writer: CollectionWriter,
        jobs: BulkJobs | None,
        *,
        force: bool,
        clock: Callable[[], float],
        requests_before: int,
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
        return cls(run, writer, jobs, clock, left, requests_before)

    def export(self, result: ExportResult, pause: bool, pause_on_error: Callable[[], bool], started: float) -> None:
        pause = self._resume(result, pause, pause_on_error)
        records_read = 0
        running: _Job | None = None  # closed: Salesforce is processing it
        while result.held is None:
            job = self._next(running, records_read, result, started)
            if job is not None:
                records_read += len(job.records)
            shared = job.keys & running.keys if job is not None and running is not None else frozenset()
            if shared:
                # A record is never in two jobs at once: Salesforce could apply the older version last.
                log.info(
                    "%d record(s) of stream '%s' changed while job %s, which sends their earlier version, runs; the "
                    "next job waits for it.",
                    len(shared),
                    self.stream.name,
                    running.job_id,
                )
            if running is not None and (job is None or shared):
                pause = self._finish(running, result, pause, pause_on_error)
                running = None
            if job is None or result.held is not None:
                return  # a job read but not launched has cost nothing
            self._launch(job)
            if running is not None:
                try:
                    pause = self._finish(running, result, pause, pause_on_error)
                except BaseException:
                    self._abort(job, f"job {running.job_id} before it failed")
                    raise
                if result.held is not None:
                    self._abort(job, f"the stream is held at record {result.held.record_key}")
                    return
            running = job

    def _next(self, running: _Job | None, records_read: int, result: ExportResult, started: float) -> _Job | None:
        """The next job's records and CSV, read after the running job's; None: nothing more this run."""
        stopped = stop_reason(self.stream, records_read=records_read, elapsed_seconds=self.clock() - started)
        if stopped is None:
            stopped = api_budget_stop(
                self.stream,
                ours_last_day=self.requests_before + self.writer.requests_sent + self.jobs.requests_sent,
                org_usage=self.writer.org_api_usage(),
            )
            if stopped is not None:
                log.warning("Stream '%s' stops here: %s.", self.stream.name, stopped)
        if stopped is not None:
            result.stopped_because = stopped
            return None
        after = running.last if running is not None else self.run.position
        limit = min(self.stream.bulk_job_records, self.stream.max_records_per_run - records_read)
        job = self._read(after, limit)
        return job if job.records else None

    def _read(self, after: list[str] | None, limit: int, *, until: list[str] | None = None) -> _Job:
        """Up to ``limit`` records after ``after`` (and at or before ``until``) into one job's CSV, page by page."""
        horizon = self.run.horizon(self.clock, fresh=True)  # one lookup per job: as far as it can go
        if horizon.held_back_by:
            _warn_horizon(horizon)
        data = JobData(self.columns, max_bytes=self.max_job_bytes)
        position = after
        page = min(_FIRST_PAGE_ROWS, limit)
        full = False
        while not full and len(data.records) < limit:
            _horizon, records = self.run.read(position, page, until=until, horizon=horizon)
            for record in records:
                if not data.add(record):
                    full = True  # this row and the rest are the next job's
                    break
            if full or len(records) < page:
                break
            position = position_to_json(records[-1].position)
            # The next page as large as the bytes left allow, at this job's average row so far.
            per_row = max(1, data.size // len(data.records))
            page = max(1, min(_PAGE_ROWS, limit - len(data.records), (self.max_job_bytes - data.size) // per_row))
        return _Job(after, data.records, data.csv() if data.sent else None)

    def _launch(self, job: _Job) -> None:
        """Create the job, record it, upload its CSV once and close it: Salesforce starts on it."""
        if job.data is None:
            return  # every record was rejected by the mapping: committed without Salesforce
        job.job_id = self.jobs.create()
        with self.run.conn.transaction():
            bulk_jobs.record(
                self.run.conn,
                self.stream,
                job.job_id,
                run_id=self.run.context.run_id,
                after=job.after,
                last=job.last,
                records=len(job.records),
            )
        try:
            self.jobs.upload(job.job_id, job.data)
            job.data = None
            bulk_jobs.set_state(self.run.conn, job.job_id, "uploaded")
            self.jobs.close(job.job_id)
        except RequestFailed:
            self._abort(job, "its upload failed")
            raise
        bulk_jobs.set_state(self.run.conn, job.job_id, "closed")
        log.info(
            "Bulk API 2.0 job %s: %d records of stream '%s' uploaded; Salesforce is processing them.",
            job.job_id,
            len(job.records),
            self.stream.name,
        )

    def _abort(self, job: _Job | bulk_jobs.RecordedJob, because: str) -> None:
        """Stop a job whose outcome will not be counted; its records are sent again later (upserts)."""
        if job.job_id is None:
            return
        log.warning(
            "Aborting Bulk API 2.0 job %s of stream '%s' (%s); its records are sent again.",
            job.job_id,
            self.stream.name,
            because,
        )
        try:
            self.jobs.abort(job.job_id)
        except RequestFailed as exc:
            log.warning("Could not abort job %s (%s); it is no longer counted.", job.job_id, exc)
        try:
            bulk_jobs.set_state(self.run.conn, job.job_id, "aborted")
        except psycopg.Error as exc:  # the next run aborts it again: never hide the run's own outcome
            log.warning("Could not note job %s as aborted: %s", job.job_id, exc)

    def _resume(self, result: ExportResult, pause: bool, pause_on_error: Callable[[], bool]) -> bool:
        for left in self.left:
            if result.held is not None:
                self._abort(left, f"the stream is held at record {result.held.record_key}")
                continue
            if left.state != "closed" or left.after_position != self.run.position:
                self._abort(
                    left,
                    "set aside by a reposition"
                    if left.state == "set aside"
                    else f"left {left.state} by an earlier task",
                )
                continue
            log.warning(
                "Resuming Bulk API 2.0 job %s of stream '%s', left by an earlier task while Salesforce processed it: "
                "polling it, not uploading again.",
                left.job_id,
                self.stream.name,
            )
            job = self._read(left.after_position, left.records, until=left.last_position)
            job.data, job.job_id = None, left.job_id
            try:
                pause = self._finish(job, result, pause, pause_on_error)
            except NotFound as gone:
                log.warning(
                    "Bulk API 2.0 job %s of stream '%s', left by an earlier task, is gone from Salesforce (%s). "
                    "Nothing of it counts; its records are read and sent again now.",
                    left.job_id,
                    self.stream.name,
                    gone,
                )
        return pause

    def _finish(self, job: _Job, result: ExportResult, pause: bool, pause_on_error: Callable[[], bool]) -> bool:
        """Wait for the job, match its results back to its records and commit them as one batch."""
        if job.job_id is None:
            rejected = {index: record.rejection for index, record in enumerate(job.records) if record.rejection}
        else:
            rejected = self._outcome(job)
            if not job.records:  # a resumed job whose rows have all changed since: they are read again
                bulk_jobs.set_state(self.run.conn, job.job_id, "done")
                return pause
        self._send_beside_the_job(job, rejected)
        current = self._current_rows(job, rejected)
        self._retry_transient(job, rejected, current)
        outcomes = []
        for index, record in enumerate(job.records):
            rejection = rejected.get(index)
            payload = (
                record.outside_payload
                if record.outside_payload is not None
                else current[record.key].payload
                if rejection is not None and record.key in current
                else None
            )
            outcomes.append(
                RecordOutcome(SourceRecord(record.key, record.position, record.external_id, payload), rejection)
            )
        job_id = job.job_id
        done = None if job_id is None else lambda: bulk_jobs.set_state(self.run.conn, job_id, "done")
        return _commit_outcomes(self.run, result, outcomes, pause, pause_on_error, with_it=done)

    def _outcome(self, job: _Job) -> dict[int, RecordRejected]:
        """The rejected records of a finished job, by index; a failed job or unprocessed records raise."""
        try:
            info = self.jobs.wait(job.job_id, records=sum(1 for record in job.records if record.sent))
            if info["state"] == "JobComplete":
                saved, failed = self.jobs.results(job.job_id)
        except (NotFound, JobResultsUnreadable):
            # Neither comes right by waiting: Salesforce deleted the job (7 days after it ended, "Bulk API and
            # Bulk API 2.0 Limits and Allocations") or its results cannot be read. It counts for nothing.
            bulk_jobs.set_state(self.run.conn, job.job_id, "failed")
            raise
        if info["state"] != "JobComplete":
            bulk_jobs.set_state(self.run.conn, job.job_id, "failed")
            raise RequestFailed(
                f"Bulk API 2.0 job {job.job_id} of stream '{self.stream.name}' ended {info['state']}: "
                f"{info.get('errorMessage') or 'Salesforce gave no reason'}. Nothing of it was recorded and the "
                "watermark did not move; its records are sent again."
            )
        matched = match_results(job.records, saved=saved, rejected=failed)
        if matched.unprocessed:
            bulk_jobs.set_state(self.run.conn, job.job_id, "failed")
            first = job.records[matched.unprocessed[0]]
            raise RequestFailed(
                f"Bulk API 2.0 job {job.job_id} of stream '{self.stream.name}' left {len(matched.unprocessed)} "
                f"record(s) unprocessed (the first: record {first.key}, {self.stream.external_id_field} = "
                f"{first.external_id}). Nothing of it was recorded and the watermark did not move; its records are "
                "sent again."
            )
        return matched.rejected

    def _send_beside_the_job(self, job: _Job, rejected: dict[int, RecordRejected]) -> None:
        """Send the records a CSV cannot carry exactly (``values.NotInCsv``) through sObject Collections.

        They were read with the job, so no other job or request holds them; they
        are sent once the job is done and committed with it, in source order.
        """
        beside = [index for index, record in enumerate(job.records) if record.outside_payload is not None]
        for start in range(0, len(beside), MAX_BATCH_SIZE):
            indexes = beside[start : start + MAX_BATCH_SIZE]
            records = [job.records[index] for index in indexes]
            sent = [SourceRecord(r.key, r.position, r.external_id, r.outside_payload) for r in records]
            for index, outcome in zip(indexes, self.writer.send(sent), strict=True):
                if outcome.rejection is not None:
                    rejected[index] = outcome.rejection

    def _current_rows(self, job: _Job, rejected: dict[int, RecordRejected]) -> dict[str, SourceRecord]:
        """The rows of the records Salesforce rejected, read again by key: their payloads were not kept.

        A row unchanged since the job read it maps to exactly the payload sent;
        one changed since gives its new version (the one the re-export sends).
        """
        keys = [job.records[index].key for index in rejected if job.records[index].sent]
        return self.run.records_by_key(keys) if keys else {}

    def _retry_transient(
        self, job: _Job, rejected: dict[int, RecordRejected], current: dict[str, SourceRecord]
    ) -> None:
        """Send the records rejected for a transient reason again through sObject Collections.

        A row deleted since keeps its rejection (its ExportErrors row is closed
        as source_deleted by the re-export); one that no longer maps gets the
        mapping's rejection.
        """
        retry: list[int] = []
        for index, rejection in list(rejected.items()):
            record = job.records[index]
            row = current.get(record.key)
            if not (rejection.transient and record.sent and row is not None):
                continue
            if row.payload is None:
                rejected[index] = row.rejection
            else:
                retry.append(index)
        for start in range(0, len(retry), MAX_BATCH_SIZE):
            indexes = retry[start : start + MAX_BATCH_SIZE]
            sent = [current[job.records[index].key] for index in indexes]
            for index, outcome in zip(indexes, self.writer.send(sent), strict=True):
                if outcome.rejection is None:
                    del rejected[index]
                else:
                    rejected[index] = outcome.rejection
