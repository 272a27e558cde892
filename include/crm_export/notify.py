"""Notifications when a stream changes state: held, recovered, rejecting too many records.

Off until the Airflow connection ``crm_export_email`` (type SMTP) exists; its
extras name the recipients (``to``, comma-separated) and the sender
(``from_email``). Mail goes through the SMTP provider's ``SmtpNotifier``.
One message per change of state (remembered in PostgreSQL), never one per
run; a failure to send is logged and retried by the next run, and never
fails the export.
"""

from __future__ import annotations

import html
import logging

from include.crm_export.config import Stream
from include.crm_export.db import watermarks
from include.crm_export.db.connection import Database
from include.crm_export.decisions import Alert, ExportResult, alert_for
from include.crm_export.names import EMAIL_CONN_ID

log = logging.getLogger(__name__)


def notify_state_change(stream: Stream, result: ExportResult, database: Database) -> Alert | None:
    """Send the notification this run calls for, if any and if notifications are configured."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        connection = BaseHook.get_connection(EMAIL_CONN_ID)
    except AirflowNotFoundException:
        return None  # notifications are off
    try:
        with database.connect(application_name=f"crm-export {stream.name} notify") as conn:
            alert = alert_for(watermarks.alert_state(conn, stream), result, stream)
            if alert is None:
                return None
            _send_email(connection, alert)
            watermarks.set_alert_state(conn, stream, alert.state)
            log.info("Notified %s: %s", connection.extra_dejson.get("to"), alert.subject)
            return alert
    except Exception as exc:  # a notification must never cost the export its outcome
        log.warning("Could not send the notification for stream '%s' (the next run tries again): %s", stream.name, exc)
        return None


def _send_email(connection: object, alert: Alert) -> None:
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    extras = connection.extra_dejson  # type: ignore[attr-defined]
    recipients = [address.strip() for address in str(extras.get("to", "")).split(",") if address.strip()]
    if not recipients:
        raise ValueError(f"the connection {EMAIL_CONN_ID} names no recipients: set its extra 'to'")
    SmtpNotifier(
        to=recipients,
        from_email=extras.get("from_email"),
        smtp_conn_id=EMAIL_CONN_ID,
        subject=alert.subject,
        html_content=f"<pre style='white-space: pre-wrap'>{html.escape(alert.body)}</pre>",
    ).notify({})
