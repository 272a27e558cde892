"""Task bodies: the one call each DAG task makes. Airflow-facing, thin.

Connections, Variables and hooks are read here, at run time, never at import.
"""

from __future__ import annotations

import logging
from typing import Any

from include.crm_export.config import load_streams
from include.crm_export.db.connection import POSTGRES_CONN_ID, conninfo_for
from include.crm_export.errors import RequestFailed, SettingsError, StreamBusy, StreamConfigError
from include.crm_export.export import RunContext, export_stream
from include.crm_export.salesforce import writer_for
from include.crm_export.settings import PAUSE_VARIABLE, parse_pause_on_error

log = logging.getLogger(__name__)


def read_pause_on_error() -> bool:
    """The Variable, read fresh each call (so a toggle applies at the next batch)."""
    from airflow.sdk import Variable

    return parse_pause_on_error(Variable.get(PAUSE_VARIABLE, default=None))


def export_stream_task(stream_name: str, *, dag_id: str, run_id: str) -> dict[str, Any]:
    """Body of ``CRMExport.export_<stream>``."""
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    try:
        stream = load_streams()[stream_name]
        read_pause_on_error()  # a bad value fails before anything is sent
        writer = writer_for(stream)
        result = export_stream(
            stream,
            conninfo=conninfo_for(POSTGRES_CONN_ID),
            writer=writer,
            pause_on_error=read_pause_on_error,
            context=RunContext(dag_id=dag_id, run_id=run_id),
        )
    except (SettingsError, StreamConfigError) as exc:
        log.error("%s", exc)
        raise AirflowFailException(str(exc)) from None
    except RequestFailed as exc:
        log.error(
            "Stream '%s' stopped: %s Nothing of the batch in flight was recorded and the watermark did not move; "
            "Airflow retries the task.",
            stream_name,
            exc,
        )
        raise
    except StreamBusy as exc:
        log.warning("%s", exc)
        raise AirflowSkipException(str(exc)) from None
    if result.held is not None:
        message = result.held.message()
        log.error("%s", message)
        raise AirflowFailException(message)
    return {
        "stream": stream_name,
        "exported": result.tally.exported,
        "record_errors": dict(result.tally.errors_by_code),
        "stopped_because": result.stopped_because,
        "pause_on_error": result.pause_on_error,
    }


def reexport_stream_task(stream_name: str, *, params: dict[str, Any], dag_id: str, run_id: str) -> dict[str, Any]:
    """Body of ``CRMExport_ExportError.reexport_<stream>``."""
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from include.crm_export.reexport import reexport_stream

    try:
        options, selected = reexport_options(params)
    except SettingsError as exc:
        log.error("%s", exc)
        raise AirflowFailException(str(exc)) from None
    if selected and stream_name not in selected:
        raise AirflowSkipException(f"Stream '{stream_name}' is not among the streams chosen for this run: {selected}")
    try:
        stream = load_streams()[stream_name]
        writer = None
        if not options.dry_run:
            writer = writer_for(stream)
        result = reexport_stream(
            stream,
            conninfo=conninfo_for(POSTGRES_CONN_ID),
            writer=writer,
            options=options,
            dag_id=dag_id,
            run_id=run_id,
        )
    except StreamConfigError as exc:
        log.error("%s", exc)
        raise AirflowFailException(str(exc)) from None
    except RequestFailed as exc:
        log.error(
            "Re-export of stream '%s' stopped: %s Rows of the batch in flight stay open and are retried; "
            "Airflow retries the task.",
            stream_name,
            exc,
        )
        raise
    return {
        "stream": stream_name,
        "resolved": result.resolved,
        "still_failing": dict(result.still_failing),
        "source_gone": result.source_gone,
        "open_left": result.open_left,
        "dry_run": result.dry_run,
    }


def reexport_options(params: dict[str, Any]) -> tuple[Any, list[str]]:
    """Trigger-form params to options; unreadable values fail with what is accepted."""
    from include.crm_export.reexport import ReexportOptions

    streams = params.get("streams") or []
    codes = params.get("error_codes") or []
    limit = params.get("limit", 50_000)
    dry_run = params.get("dry_run", False)
    known = set(load_streams())
    if not isinstance(streams, list) or any(s not in known for s in streams):
        raise SettingsError(f"Param 'streams' must be a list of stream names from {sorted(known)}; got {streams!r}")
    if not isinstance(codes, list) or not all(isinstance(c, str) and c.strip() for c in codes):
        raise SettingsError(f"Param 'error_codes' must be a list of Salesforce error codes; got {codes!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise SettingsError(f"Param 'limit' must be a whole number of at least 1; got {limit!r}")
    if not isinstance(dry_run, bool):
        raise SettingsError(f"Param 'dry_run' must be true or false; got {dry_run!r}")
    options = ReexportOptions(error_codes=[c.strip() for c in codes] or None, limit=limit, dry_run=dry_run)
    return options, streams
