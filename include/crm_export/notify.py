"""Notifications when a stream changes state: held, recovered, rejecting too many records.

Each channel is off until its Airflow connection exists:

- ``crm_export_email`` (type SMTP): mail through the SMTP provider's
  ``SmtpNotifier``; its extras name the recipients (``to``, comma-separated)
  and the sender (``from_email``).
- ``crm_export_slack`` (type Slack Incoming Webhook): a message through the
  Slack provider's ``SlackWebhookNotifier``; the webhook URL (or its token) is
  the connection's password.

The replication slots of change capture are watched the same way: a message
when the server keeps more WAL for one than ``alert_retained_wal_mb``, one
when that ends. Every export task looks at every slot of the database, so a
slot whose stream fails early, or that no stream follows any more, is still
announced while any stream runs.

One message per change of state and channel (remembered in PostgreSQL), never
one per run; a channel that fails to deliver is logged and tried again by the
next run, the others are not repeated, and the export's outcome never depends
on a notification.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from include.crm_export.config import Stream, load_streams
from include.crm_export.db import capture, watermarks
from include.crm_export.db.connection import Database
from include.crm_export.decisions import Alert, ExportResult, alert_for, slot_alert_for
from include.crm_export.names import EMAIL_CONN_ID, SLACK_CONN_ID

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Channel:
    name: str  # as stored in stream_alerts
    conn_id: str
    send: Callable[[Any, Alert], None]  # (the Airflow connection, the alert)


def _send_email(connection: Any, alert: Alert) -> None:
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    extras = connection.extra_dejson
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


def slack_text(alert: Alert) -> str:
    """The alert as Slack mrkdwn: bold subject, the body as a code block.

    Slack wants &, < and > escaped (so no text becomes a link or a mention);
    a run of backticks in a record key must not close the code block, so a
    zero-width space goes between them (mrkdwn has no escape for backticks).
    """

    def escape(text: str) -> str:
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("`", "`\u200b")

    return f"*{escape(alert.subject)}*\n```{escape(alert.body)}```"


def _send_slack(connection: Any, alert: Alert) -> None:
    from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

    SlackWebhookNotifier(slack_webhook_conn_id=SLACK_CONN_ID, text=slack_text(alert), unfurl_links=False).notify({})


CHANNELS = (Channel("email", EMAIL_CONN_ID, _send_email), Channel("slack", SLACK_CONN_ID, _send_slack))


def _configured() -> list[tuple[Channel, Any]]:
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    found = []
    for channel in CHANNELS:
        try:
            found.append((channel, BaseHook.get_connection(channel.conn_id)))
        except AirflowNotFoundException:
            continue  # this channel is off
    return found


def notify_state_change(stream: Stream, result: ExportResult, database: Database) -> list[Alert]:
    """Send, on each configured channel, the notification this run calls for there; the alerts sent."""
    channels = _configured()
    if not channels:
        return []
    sent = []
    try:
        with database.connect(application_name=f"crm-export {stream.name} notify") as conn:
            for channel, connection in channels:
                alert = alert_for(watermarks.alert_state(conn, stream, channel.name), result, stream)
                if alert is None:
                    continue
                if not _deliver(channel, connection, alert, f"stream '{stream.name}'"):
                    continue
                watermarks.set_alert_state(conn, stream, channel.name, alert.state)
                sent.append(alert)
    except Exception as exc:
        log.warning("Could not notify about stream '%s' (the next run tries again): %s", stream.name, exc)
    return sent


def _deliver(channel: Channel, connection: Any, alert: Alert, about: str) -> bool:
    try:
        channel.send(connection, alert)
    except Exception as exc:  # a notification must never cost the export its outcome
        log.warning(
            "Could not send the %s notification for %s (connection %s; the next run tries again): %s",
            channel.name,
            about,
            channel.conn_id,
            exc,
        )
        return False
    log.info("Notified by %s: %s", channel.name, alert.subject)
    return True


def notify_slots(database: Database) -> list[Alert]:
    """Send, on each configured channel, what the replication slots of this database call for; the alerts sent.

    A slot's state is locked while its message goes out, and the slot looked at again once it is locked, so
    two tasks running at once announce a change once, and never one the other has seen end; a task that finds
    it locked leaves it to the other. Never raises: a task's own outcome does not depend on it.
    """
    sent: list[Alert] = []
    try:
        channels = _configured()
        if not channels:
            return []
        streams = list(load_streams().values())
        with database.connect(application_name="crm-export slots notify", lock_timeout_ms=5_000) as conn:
            listed = {str(slot["slot"]) for slot in capture.slots(conn, streams)}
            for channel, connection in channels:
                for slot in sorted(listed | watermarks.slots_alerted(conn, channel.name)):
                    alert = _slot_alert(conn, streams, slot, channel, connection)
                    if alert is not None:
                        sent.append(alert)
    except Exception as exc:
        log.warning("Could not notify about the replication slots (the next run tries again): %s", exc)
    return sent


def _slot_alert(conn: Any, streams: list[Stream], slot: str, channel: Channel, connection: Any) -> Alert | None:
    watermarks.add_slot_alert(conn, slot, channel.name)  # committed before the lock: no task waits on its insert
    with conn.transaction():
        previous = watermarks.claim_slot_alert(conn, slot, channel.name)
        if previous is None:
            return None  # another task is announcing it
        now = capture.slots(conn, streams, only=slot)
        alert = slot_alert_for(previous, slot, now[0] if now else None)
        if alert is None and not now:
            watermarks.set_slot_alert(conn, slot, channel.name, previous, gone=True)  # nothing left to say
        if alert is None or not _deliver(channel, connection, alert, f"replication slot {slot}"):
            return None
        watermarks.set_slot_alert(conn, slot, channel.name, alert.state, gone=not now)
        return alert
