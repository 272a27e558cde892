"""Every fixed name of crm-export, in one place. Pure: no imports of Airflow or a driver.

Users, their runbooks and their SQL rely on these names; everything else in
the package imports them from here instead of spelling them again.
"""

from __future__ import annotations

# DAGs
EXPORT_DAG_ID = "CRMExport"
REEXPORT_DAG_ID = "CRMExport_ExportError"
EXPORT_TASK_PREFIX = "export_"
REEXPORT_TASK_PREFIX = "reexport_"
# In a DAG whose streams have lookups: fails when a stream's task failed, so the run stays red (stream_task.py).
STREAMS_SUCCEEDED_TASK_ID = "all_streams_succeeded"
CLI_DAG_ID = "cli"  # recorded as dag_id for work done from the command line

# Airflow Variable and connections
PAUSE_ON_ERROR_VARIABLE = "crm_export_pause_on_error"
SALESFORCE_CONN_ID = "salesforce_default"
POSTGRES_CONN_ID = "crm_export_postgres"
EMAIL_CONN_ID = "crm_export_email"  # SMTP connection for notifications (extras: to, from_email); absent = off
SLACK_CONN_ID = (
    "crm_export_slack"  # Slack Incoming Webhook connection for notifications (password: webhook URL); absent = off
)

# The project's own PostgreSQL schema and tables
SCHEMA = "crm_export"
EXPORT_ERRORS_TABLE = "ExportErrors"
WATERMARKS_TABLE = "stream_watermarks"
MIGRATIONS_TABLE = "schema_migrations"

# ExportErrors.status values
OPEN = "open"
RESOLVED = "resolved"
SOURCE_DELETED = "source_deleted"  # the record's source row is gone; nothing left to send
ERROR_STATUSES = (OPEN, RESOLVED, SOURCE_DELETED)

# Limits
MAX_BATCH_SIZE = 200  # records per sObject Collections request (Salesforce's limit)
# sObject Collections requests a stream keeps in flight. Salesforce does not limit concurrent requests shorter
# than 20 s; longer ones are capped at 25 per production org ("API Request Limits and Allocations"), which is
# our ceiling so that even slow requests never trip it.
MAX_IN_FLIGHT = 25
DEFAULT_IN_FLIGHT = 10
DEFAULT_REEXPORT_LIMIT = 50_000  # records per stream and CRMExport_ExportError run, unless the params say otherwise

# The streams file
STREAMS_FILE_ENV = "CRM_EXPORT_STREAMS_FILE"
