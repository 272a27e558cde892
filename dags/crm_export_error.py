"""
# CRMExport_ExportError

Re-exports the open rows of `crm_export."ExportErrors"` every day, so records
Salesforce rejected reach it once the cause is fixed: no ticket, no script.

For each stream it takes open errors in batches, least recently attempted
first, reads each record's **current** source row (never an old payload) and
upserts it exactly as `CRMExport` does. Per record:

- it goes through: the row is **resolved** (`resolved_by` = this DAG);
- Salesforce rejects it again (still rejected): the row stays **open** with
  the new error code, message and fields, and one more attempt counted;
- its source row is gone: the row is closed as **source_deleted**, nothing sent.

It never moves a `CRMExport` watermark and is safe to run beside `CRMExport`
and beside another run of itself (rows are claimed; a claimed row is skipped).

## Manual runs (Trigger DAG w/ config)

- `streams`: only these streams (empty: all)
- `error_codes`: only rows with these Salesforce error codes (empty: all)
- `limit`: at most this many records per stream
- `dry_run`: log what would be sent or closed; send and change nothing

The log ends with a summary per stream: resolved, still rejected by error code,
closed, and the age of the oldest open error.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag

from include.crm_export.config import load_streams
from include.crm_export.names import DEFAULT_REEXPORT_LIMIT, REEXPORT_DAG_ID
from include.crm_export.stream_task import run_parents_first, stream_task

STREAMS = load_streams()  # a local file: validated at parse time, no network or database


@dag(
    dag_id=REEXPORT_DAG_ID,
    schedule="0 4 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=True,
    tags=["crm-export", "salesforce"],
    doc_md=__doc__,
    params={
        "streams": Param(
            [],
            type="array",
            items={"type": "string", "enum": sorted(STREAMS)},
            title="Streams",
            description="Re-export only these streams; leave empty for all.",
        ),
        "error_codes": Param(
            [],
            type="array",
            items={"type": "string"},
            title="Salesforce error codes",
            description="Re-export only errors with these codes (e.g. UNABLE_TO_LOCK_ROW); empty for all.",
        ),
        "limit": Param(
            DEFAULT_REEXPORT_LIMIT,
            type="integer",
            minimum=1,
            title="Limit",
            description="At most this many per stream.",
        ),
        "dry_run": Param(False, type="boolean", title="Dry run", description="Log what would be sent; send nothing."),
    },
    default_args={
        "owner": "data-engineering",
        "retries": 3,
        "retry_delay": timedelta(minutes=5),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=30),
        "execution_timeout": timedelta(hours=2),
    },
)
def crm_export_error() -> None:
    tasks: dict[str, Any] = {}
    for stream in STREAMS.values():

        @stream_task(
            stream,
            task_id=stream.reexport_task_id,
            doc_md=f"Re-exports open ExportErrors of stream `{stream.name}` to Salesforce `{stream.sobject}`.",
        )
        def reexport(stream_name: str = stream.name, **context: Any) -> dict[str, Any]:
            from include.crm_export.tasks import reexport_stream_task

            return reexport_stream_task(stream_name, context)

        tasks[stream.name] = reexport()
    run_parents_first(STREAMS, tasks)


crm_export_error()
