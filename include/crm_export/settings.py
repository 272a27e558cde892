"""Reading the pause Variable. Pure: no Airflow import here."""

from __future__ import annotations

from include.crm_export.errors import SettingsError

PAUSE_VARIABLE = "crm_export_pause_on_error"

_TRUE = {"true", "t", "yes", "y", "on", "1"}
_FALSE = {"false", "f", "no", "n", "off", "0"}


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
        f"Airflow Variable {PAUSE_VARIABLE} has the value {raw!r}, which is neither true nor false. "
        "Accepted values: true or false (also yes/no, on/off, 1/0, any case); delete the Variable for "
        "the default (true: pause on export errors). Fix it in Admin > Variables and clear this task."
    )
