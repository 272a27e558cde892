"""Task bodies: the one call each DAG task makes. Airflow-facing, thin.

Connections, Variables and hooks are read here, at run time, never at import.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from include.crm_export import lineage
from include.crm_export.config import Stream, load_streams
from include.crm_export.db.connection import Database, database_failure
from include.crm_export.errors import (
    RequestFailed,
    RequestLimitExceeded,
    RequestRefused,
    SessionExpired,
    SettingsError,
    StreamBusy,
    StreamConfigError,
    StreamStuck,
)
from include.crm_export.export import RunContext, export_stream
from include.crm_export.metrics import emit_run_metrics
from include.crm_export.names import PAUSE_ON_ERROR_VARIABLE
from include.crm_export.notify import notify_slots, notify_state_change
from include.crm_export.pause_variable import parse_pause_on_error
from include.crm_export.reexport import ReexportOptions, reexport_stream
from include.crm_export.salesforce import bulk_jobs_for, writer_for

log = logging.getLogger(__name__)


def read_pause_on_error() -> bool:
    """The Variable, read fresh each call (so a toggle applies at the next batch)."""
    from airflow.sdk import Variable

    return parse_pause_on_error(Variable.get(PAUSE_ON_ERROR_VARIABLE, default=None))


@contextmanager
def airflow_outcome(what: str, stream_name: str, *, in_flight: str) -> Iterator[None]:
    """Each kind of failure as the Airflow outcome it calls for, with the message the person on call reads.

    Settings and config a person must fix, a stuck lock, and a request
    Salesforce will keep refusing fail at once (no retries); the used-up API
    allowance reschedules; any other request failure is retried by Airflow; a
    stream another run is exporting is skipped.
    """
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    try:
        yield
    except (SettingsError, StreamConfigError, StreamStuck) as exc:
        log.error("%s", exc)
        raise AirflowFailException(str(exc)) from None
    except RequestRefused as exc:
        message = f"{what} stopped by a request failure that retrying cannot fix: {exc}"
        log.error("%s", message)
        raise AirflowFailException(message) from None
    except RequestLimitExceeded as exc:
        raise _wait_for_the_api_allowance(stream_name, exc) from None
    except SessionExpired as exc:  # the layer that met it knows no stream: name the connection to renew
        named = SessionExpired(
            f"{exc} Stream '{stream_name}' uses connection '{_connection_of(stream_name)}'.",
            status=exc.status,
            code=exc.code,
        )
        log.error("%s stopped by a request failure: %s %s; Airflow retries the task.", what, named, in_flight)
        raise named from None
    except RequestFailed as exc:
        log.error("%s stopped by a request failure: %s %s; Airflow retries the task.", what, exc, in_flight)
        raise
    except psycopg.OperationalError as exc:
        failure = database_failure(exc, what)
        log.error("%s", failure)
        raise failure from None
    except StreamBusy as exc:
        log.warning("%s", exc)
        raise AirflowSkipException(str(exc)) from None


def _connection_of(stream_name: str) -> str:
    try:
        return load_streams()[stream_name].connection
    except (StreamConfigError, KeyError):
        return "?"


def export_stream_task(stream_name: str, context: dict[str, Any]) -> dict[str, Any]:
    """Body of ``CRMExport.export_<stream>``; ``context`` is the task's Airflow context.

    Whatever its outcome, the task then looks at the replication slots of change capture (notify.py).
    """
    try:
        return _export_stream(stream_name, context)
    finally:
        notify_slots(Database())


def _export_stream(stream_name: str, context: dict[str, Any]) -> dict[str, Any]:
    from airflow.sdk.exceptions import AirflowFailException

    dag_id, run_id = context["dag"].dag_id, context["run_id"]

    with airflow_outcome(
        f"Stream '{stream_name}'",
        stream_name,
        in_flight=(
            "Batches answered before it are committed; nothing of that request or after it was recorded, so the "
            "watermark did not move past it"
        ),
    ):
        stream = load_streams()[stream_name]
        read_pause_on_error()  # a bad value fails before anything is sent
        database = Database()
        writer = writer_for(stream)
        result = export_stream(
            stream,
            database=database,
            writer=writer,
            pause_on_error=read_pause_on_error,
            context=RunContext(dag_id=dag_id, run_id=run_id),
            bulk=bulk_jobs_for(stream, writer),
            force_bulk=bool(context["params"].get("use_bulk_api", False)),
            resend_all=bool(context["params"].get("resend_all", False)),
        )
    emit_run_metrics(result)
    notify_state_change(stream, result, database)
    report_lineage(
        context,
        stream,
        database,
        writer.org_id,
        written=result.tally.exported,
        rejected_by_code=dict(result.tally.errors_by_code),
        summary={
            "stopped_because": result.stopped_because,
            "held": result.held is not None,
            "unchanged": result.tally.unchanged,
            "existing": result.tally.existing,
            "deleted": result.tally.deleted,
        },
    )
    if result.held is not None:
        message = result.held.message()
        log.error("%s", message)
        raise AirflowFailException(message)
    return {
        "stream": stream_name,
        "exported": result.tally.exported,
        "unchanged": result.tally.unchanged,
        "existing": result.tally.existing,
        "deleted": result.tally.deleted,
        "rejected_by_code": dict(result.tally.errors_by_code),
        "stopped_because": result.stopped_because,
        "pause_on_error": result.pause_on_error,
    }


def report_lineage(
    context: dict[str, Any],
    stream: Stream,
    database: Database,
    org_id: str | None,
    *,
    written: int,
    rejected_by_code: dict[str, int],
    summary: dict[str, Any],
) -> None:
    """What the run read and wrote, for OpenLineage and (when it changed Salesforce) as an Asset event.

    Never changes the run's outcome: what it cannot tell is logged and left out.
    """
    try:
        host, port, dbname = database.location()
        lineage.report(
            context,
            lineage.RunLineage(
                source=lineage.source_dataset(host, port, dbname, stream.source_schema, stream.source_table),
                target=lineage.target_dataset(org_id, stream.sobject),
                asset_uri=lineage.salesforce_asset_uri(stream.connection, stream.sobject),
                stream=stream.name,
                written=written,
                rejected=sum(rejected_by_code.values()),
                rejected_by_code=rejected_by_code,
                org_id=org_id,
                extra=summary,
            ),
        )
    except Exception as exc:
        log.warning("No lineage or asset event for stream '%s' this run: %s: %s", stream.name, type(exc).__name__, exc)


def _wait_for_the_api_allowance(stream_name: str, exc: RequestLimitExceeded) -> Exception:
    """Reschedule the task (no retry used up): batches before it are committed, nothing after it was recorded."""
    from airflow.sdk.exceptions import AirflowRescheduleException

    wait = timedelta(minutes=load_streams()[stream_name].request_limit_wait_minutes)
    at = datetime.now(UTC) + wait
    log.warning(
        "Stream '%s' waits for Salesforce's API allowance: %s Everything before the refused request is committed; "
        "the task is rescheduled for %s (in %s), which uses none of Airflow's retries.",
        stream_name,
        exc,
        f"{at:%Y-%m-%d %H:%M:%S} UTC",
        wait,
    )
    return AirflowRescheduleException(at)


def reexport_options(params: dict[str, Any]) -> tuple[ReexportOptions, list[str]]:
    """Trigger-form params to options and the chosen streams (empty: all)."""
    return ReexportOptions.from_params(params, known_streams=list(load_streams()))


def reexport_stream_task(stream_name: str, context: dict[str, Any]) -> dict[str, Any]:
    """Body of ``CRMExport_ExportError.reexport_<stream>``; ``context`` is the task's Airflow context."""
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    params, dag_id, run_id = dict(context["params"]), context["dag"].dag_id, context["run_id"]

    try:
        options, selected = reexport_options(params)
    except SettingsError as exc:
        log.error("%s", exc)
        raise AirflowFailException(str(exc)) from None
    if selected and stream_name not in selected:
        raise AirflowSkipException(f"Stream '{stream_name}' is not among the streams chosen for this run: {selected}")
    with airflow_outcome(
        f"Re-export of stream '{stream_name}'",
        stream_name,
        in_flight="Rows of the batch in flight stay open and are retried",
    ):
        stream = load_streams()[stream_name]
        database = Database()
        writer = None if options.dry_run else writer_for(stream)
        result = reexport_stream(
            stream,
            database=database,
            writer=writer,
            options=options,
            context=RunContext(dag_id=dag_id, run_id=run_id),
        )
    report_lineage(
        context,
        stream,
        database,
        None if writer is None else writer.org_id,
        written=result.resolved,
        rejected_by_code=dict(result.still_rejected),
        summary={"source_deleted": result.source_deleted, "open_left": result.open_left, "dry_run": result.dry_run},
    )
    return {
        "stream": stream_name,
        "resolved": result.resolved,
        "still_rejected": dict(result.still_rejected),
        "source_deleted": result.source_deleted,
        "open_left": result.open_left,
        "dry_run": result.dry_run,
    }
