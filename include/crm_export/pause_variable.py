"""The pause on error setting (the Airflow Variable ``crm_export_pause_on_error``). Pure: no Airflow import."""

from __future__ import annotations

from include.crm_export.errors import SettingsError
from include.crm_export.names import (
    EXPORT_DAG_ID,
    EXPORT_ERRORS_TABLE,
    PAUSE_ON_ERROR_VARIABLE,
    REEXPORT_DAG_ID,
    SCHEMA,
)

_TRUE = {"true", "t", "yes", "y", "on", "1"}
_FALSE = {"false", "f", "no", "n", "off", "0"}

# Shown in Admin > Variables when the Variable is created (local run, CRM Export page).
PAUSE_ON_ERROR_DESCRIPTION = (
    f"Pause on error for {EXPORT_DAG_ID}. "
    "true (the default, also when this Variable is absent): when Salesforce rejects a record, the export is held "
    "at it: its watermark stays there and the run turns red; after you fix the cause and clear the task it resumes "
    "at that record. Nothing is skipped. "
    f'false: rejected records are logged to {SCHEMA}."{EXPORT_ERRORS_TABLE}" and skipped, and the run stays green. '
    f"WARNING: Salesforce is then incomplete and inconsistent with the source until {REEXPORT_DAG_ID} "
    "re-exports those records (daily) after the cause is fixed. Turn it off only deliberately, for a known error, "
    "and back on once that is fixed. Accepted values: true or false."
)


def parse_pause_on_error(raw: str | None) -> bool:
    """``None`` (Variable absent) means on; anything unreadable is an error, never a guess."""
    if raw is None:
        return True
    value = str(raw).strip().strip('"').strip("'").lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(
        f"Airflow Variable {PAUSE_ON_ERROR_VARIABLE} has the value {raw!r}, which is neither true nor false. "
        "Accepted values: true or false (also yes/no, on/off, 1/0, any case); delete the Variable for "
        "the default (true: pause on error). Fix it in Admin > Variables and clear this task."
    )
