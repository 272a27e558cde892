"""The export of one stream (CRMExport): the run, as the steps of its delivery path.

``export_stream`` opens the run's session (``session.py``), picks its path
(Bulk API 2.0 jobs for a backfill, ``bulk_path.py``, else sObject Collections
requests, ``collections_path.py``: the interface is in ``paths.py``) and runs
the path's steps until it is finished or the stream is held: read what is
next, send what is ready, commit what is answered in source order. A request
failure raises before anything of it is committed, so the watermark and
ExportErrors never move for it; after a hold or a failure what is still in
flight is dropped (upserts: sent again later).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import psycopg

from include.crm_export import __version__
from include.crm_export.concurrency import Concurrency
from include.crm_export.config import Stream
from include.crm_export.db import api_requests, run_history
from include.crm_export.db.connection import Database
from include.crm_export.db.migrate import migrate
from include.crm_export.decisions import INCONSISTENCY_WARNING, ExportResult
from include.crm_export.errors import RequestFailed
from include.crm_export.export.bulk_path import BulkPath
from include.crm_export.export.collections_path import CollectionsPath
from include.crm_export.export.paths import DeliveryPath
from include.crm_export.export.session import ExportRun, RunContext, StreamExport
from include.crm_export.mapping import SourceRecord
from include.crm_export.quoting import shown
from include.crm_export.salesforce import BulkJobs, CollectionWriter

log = logging.getLogger(__name__)


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
    resend_all: bool = False,
) -> ExportResult:
    """Export ``stream`` until caught up, held, or out of its per-run budget.

    With ``bulk`` (Bulk API 2.0 jobs), a run whose backlog is at least the
    stream's ``bulk_threshold``, or one asked to (``force_bulk``), or one
    with a job left by a killed task, goes through Bulk API 2.0 jobs, with the
    same watermark, pause and ExportErrors rules. Otherwise up to
    ``stream.in_flight`` sObject Collections requests go out at once (fewer
    while Salesforce struggles, see ``concurrency.py``). A record whose payload
    Salesforce confirmed last is not sent (``fingerprints.py``), unless
    ``resend_all``.
    """
    started = clock()
    concurrency = Concurrency(stream.in_flight, stream.slow_request_seconds)
    writer.observe(concurrency)
    with (
        ExitStack() as exits,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"crm-export-{stream.name}-read") as reads,
        ThreadPoolExecutor(max_workers=concurrency.ceiling, thread_name_prefix=f"crm-export-{stream.name}") as pool,
    ):
        session = StreamExport.open(stream, database, context, exits=exits, writer=writer, resend_all=resend_all)
        pause = pause_on_error()
        run = ExportRun(
            session,
            ExportResult(stream.name, pause_on_error=pause),
            pause_on_error,
            pause,
            writer,
            bulk,
            requests_before=api_requests.used_last_day(session.conn),
            clock=clock,
            started=started,
        )
        exits.callback(lambda: _count_requests(run))
        _log_start(session, pause)
        path: DeliveryPath = BulkPath.for_run(run, force=force_bulk) or CollectionsPath(
            run, concurrency, reads=reads, pool=pool
        )
        try:
            _deliver(run, path)
        except Exception as failure:
            path.drop_in_flight("the failed request", failed=True)
            _finish_result(run, concurrency)
            _record_run(session, run.result, clock() - started, failure=failure)
            raise
        _finish_result(run, concurrency)
        if run.result.tally.batches == 0:
            session.note_idle_run()
        run.result.lag = session.lag()
        _record_run(session, run.result, clock() - started)

    log.info(run.result.summary())
    warning = run.result.incomplete_warning()
    if warning:
        log.warning("%s", warning)
    return run.result


def _deliver(run: ExportRun, path: DeliveryPath) -> None:
    """The path's steps until it has nothing left to read, send or commit, or the stream is held."""
    path.resume()
    while not run.stopped and not path.finished():
        path.read_next()
        path.send_ready()
        path.commit_answered()
        if not run.stopped:
            path.wait()
    if run.result.held is not None:
        path.drop_in_flight(f"the stream is held at record {shown(run.result.held.record_key)}")
    elif run.result.waiting is not None:
        path.drop_in_flight(f"record {shown(run.result.waiting)}, which waits for its parent")


def _finish_result(run: ExportRun, concurrency: Concurrency) -> None:
    run.result.in_flight_level = round(concurrency.average)
    run.result.in_flight_text = concurrency.describe()


def _failure_text(failure: Exception) -> str:
    """Why a failed run stopped, as the run history shows it."""
    if isinstance(failure, RequestFailed):
        return f"request failure: {failure}"
    return f"{type(failure).__name__}: {failure}"


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


def _count_requests(run: ExportRun) -> None:
    requests = run.requests_sent()
    session = run.session
    try:
        api_requests.record(session.conn, session.stream, run_id=session.context.run_id, requests=requests)
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
