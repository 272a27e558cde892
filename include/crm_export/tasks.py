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
from include.crm_export.salesforce import (
    SALESFORCE_CONN_ID,
    CollectionWriter,
    check_stream_against_describe,
    renewer_for,
)
from include.crm_export.salesforce import connect as connect_salesforce
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
        pause_on_error = read_pause_on_error()  # a bad value fails before anything is sent
        sf = connect_salesforce(SALESFORCE_CONN_ID)
        renewer = renewer_for(SALESFORCE_CONN_ID, sf.session)
        check_stream_against_describe(sf, stream, renewer=renewer)
        writer = CollectionWriter(
            sf, sobject=stream.sobject, external_id_field=stream.external_id_field, renewer=renewer
        )
        first = [pause_on_error]

        def pause_setting() -> bool:
            return first.pop() if first else read_pause_on_error()

        result = export_stream(
            stream,
            conninfo=conninfo_for(POSTGRES_CONN_ID),
            writer=writer,
            pause_on_error=pause_setting,
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
