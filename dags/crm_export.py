"""
# CRMExport

Exports CRM records from PostgreSQL (`crm_export_postgres`) to Salesforce
(`salesforce_default`), batch by batch, one task per stream in
`include/crm_export/streams.yml`. Every 15 minutes; each task reads after its
stream's watermark, upserts by external id and commits the watermark with the
batch's `ExportErrors` rows.

## Pause on error: the Variable `crm_export_pause_on_error`

- **true** (or absent): when Salesforce rejects a record, the stream is
  **held** there. Records before it are exported; the watermark stays on the
  rejected record, so nothing after it is skipped. The task turns red.
- **false**: the rejected record is logged to `ExportErrors` and skipped; the
  run stays green but **Salesforce is incomplete** until the record is
  re-exported (`CRMExport_ExportError`, daily) or the cause is fixed.

The Variable is read at the start of each batch, so a change applies within a
running task.

## A red run: what now?

1. Open the failed task's log: its error names the stream, the record, the
   Salesforce error code, message and fields.
2. Fix the cause: usually in Salesforce (validation rule, permission, flow or
   trigger), sometimes in the source row.
3. **Clear** the failed task: it retries the held record first and carries on.
   Nothing is sent twice in effect (upserts by external id) and nothing is lost.

To keep exporting while the cause is being fixed, set
`crm_export_pause_on_error` to `false` and set it back to `true` when fixed.

A task that fails with a **request failure** (a Salesforce outage, limit or
timeout) is retried by Airflow; it never moves the watermark or writes
`ExportErrors` rows.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag

from include.crm_export.config import load_streams
from include.crm_export.names import EXPORT_DAG_ID
from include.crm_export.stream_task import run_parents_first, stream_task

STREAMS = load_streams()  # a local file: validated at parse time, no network or database


@dag(
    dag_id=EXPORT_DAG_ID,
    schedule="*/15 * * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=True,
    tags=["crm-export", "salesforce"],
    doc_md=__doc__,
    params={
        "use_bulk_api": Param(
            False,
            type="boolean",
            title="Use Bulk API 2.0",
            description="Upsert through Bulk API 2.0 jobs this run, whatever the backlog (a backfill). Without it, "
            "a stream uses them when its backlog is at least its bulk_threshold.",
        ),
        "resend_all": Param(
            False,
            type="boolean",
            title="Send unchanged records too",
            description="Send every record this run reads, also those whose payload Salesforce confirmed last "
            "(normally skipped and counted as unchanged): after someone edited records in Salesforce by hand.",
        ),
    },
    default_args={
        "owner": "data-engineering",
        "retries": 3,
        "retry_delay": timedelta(minutes=2),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=15),
    },
)
def crm_export() -> None:
    tasks: dict[str, Any] = {}
    for stream in STREAMS.values():

        @stream_task(
            stream,
            task_id=stream.task_id,
            execution_timeout=timedelta(minutes=stream.max_minutes_per_run + 5),
            doc_md=f"Exports `{stream.source}` to Salesforce `{stream.sobject}` by `{stream.external_id_field}`.",
        )
        def export(stream_name: str = stream.name, **context: Any) -> dict[str, Any]:
            from include.crm_export.tasks import export_stream_task

            return export_stream_task(stream_name, context)

        tasks[stream.name] = export()
    run_parents_first(STREAMS, tasks)


crm_export()
