"""The export run's decisions, as pure functions on plain data: no I/O, no threads.

Why a run stops, whether the stream is held (and what the person on call is
told), and what a change of the pause on error Variable during a run means.
The export loop (``export.py``) only asks these questions; the answers are
tested without PostgreSQL or Salesforce.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from include.crm_export.batch import BatchPlan, RunTally
from include.crm_export.config import Stream, definition_changes
from include.crm_export.errors import PARENT_NOT_EXPORTED, RejectedRecord
from include.crm_export.names import (
    EXPORT_DAG_ID,
    EXPORT_ERRORS_TABLE,
    PAUSE_ON_ERROR_VARIABLE,
    REEXPORT_DAG_ID,
    SCHEMA,
)
from include.crm_export.quoting import one_line, sentence, shown, sql_identifier, sql_literal
from include.crm_export.write_modes import asks_salesforce

CAUGHT_UP = "caught up"
HELD = "held at a rejected record (pause on error)"

INCONSISTENCY_WARNING = (
    f"{PAUSE_ON_ERROR_VARIABLE} is OFF: rejected records are logged to {EXPORT_ERRORS_TABLE} and skipped, so "
    f"Salesforce is now missing them until {REEXPORT_DAG_ID} re-exports them (daily) or the cause is fixed."
)


@dataclass(frozen=True)
class HeldRecord:
    """The rejected record a stream is held at (pause on error on)."""

    stream: str
    record_key: str
    external_id: str | None
    rejection: RejectedRecord
    sobject: str
    external_id_field: str

    def message(self) -> str:
        """The failed task's message: what stopped, where, why, and what to do."""
        where = (
            f"Export of stream '{self.stream}' is held at record {shown(self.record_key)} "
            f"({self.sobject}.{self.external_id_field} = {shown(self.external_id or None)})"
        )
        if self.rejection.code == PARENT_NOT_EXPORTED:
            what = (
                f"{where}. {one_line(self.rejection.message)} Records before it are "
                "exported; the watermark stays on it, so nothing after it is skipped. Fix the parent's cause and "
                "let its stream export it (clear that stream's task), then clear this task (or wait for the next "
                f"run). To go on without it for now, set the Variable {PAUSE_ON_ERROR_VARIABLE} to false: "
                f"{REEXPORT_DAG_ID} sends it after its parent. Details: "
            )
        else:
            what = (
                f"{where}: Salesforce rejected it with "
                f"{sentence(one_line(self.rejection.describe()))} Records before it are exported; the watermark stays "
                "on it, "
                "so nothing after it is skipped. Fix the cause in Salesforce or in the source row, then clear this "
                f"task (or wait for the next run) to retry it first. To skip it for now instead, set the Variable "
                f"{PAUSE_ON_ERROR_VARIABLE} to false (Salesforce stays incomplete until it is re-exported). Details: "
            )
        return (
            what + f'SELECT * FROM {SCHEMA}."{EXPORT_ERRORS_TABLE}" WHERE stream = {sql_literal(self.stream)} '
            f"AND record_key = {sql_literal(self.record_key)} AND status = 'open';"
        )


def held_record(stream: Stream, plan: BatchPlan) -> HeldRecord | None:
    """The record a committed batch holds the stream at, if any."""
    if plan.held is None:
        return None
    record, rejection = plan.held
    return HeldRecord(stream.name, record.key, record.external_id, rejection, stream.sobject, stream.external_id_field)


def stop_reason(stream: Stream, *, records_read: int, elapsed_seconds: float) -> str | None:
    """Why the run reads no further batch although the source may have more (None: read on)."""
    if records_read >= stream.max_records_per_run:
        return f"max_records_per_run ({stream.max_records_per_run}) reached"
    if elapsed_seconds >= stream.max_minutes_per_run * 60:
        return f"max_minutes_per_run ({stream.max_minutes_per_run:g}) reached"
    return None


def api_budget_stop(stream: Stream, *, ours_last_day: int, org_usage: tuple[int, int] | None) -> str | None:
    """Why the next request would overspend, if it would: crm-export's own daily budget, or the org's reserve.

    ``ours_last_day``: requests crm-export made in the last 24 hours, this run's
    included. ``org_usage``: (used, allowed) from the last Sforce-Limit-Info.
    """
    if ours_last_day >= stream.daily_api_requests:
        return (
            f"API budget: crm-export has made {ours_last_day:,} Salesforce API requests in the last 24 hours, its "
            f"daily_api_requests ({stream.daily_api_requests:,}). Nothing is lost: the next run continues once the "
            "oldest of them are more than 24 hours old"
        )
    if org_usage is not None:
        used, allowed = org_usage
        reserve = int(allowed * stream.api_reserve_percent / 100)
        left = allowed - used
        if left <= reserve:
            return (
                f"API budget: the org has used {used:,} of its {allowed:,} daily API requests; {left:,} are left, "
                f"at or below the {stream.api_reserve_percent:g}% ({reserve:,}) kept for its other integrations "
                "(api_reserve_percent). Nothing is lost: the next run continues as the rolling 24-hour usage falls"
            )
    return None


def next_batch_size(stream: Stream, *, records_read: int) -> int:
    return min(stream.batch_size, stream.max_records_per_run - records_read)


@dataclass(frozen=True)
class PauseOnErrorChange:
    """The Variable changed during a run; it applies from the next batch on."""

    now_on: bool

    def warnings(self) -> list[str]:
        changed = f"{PAUSE_ON_ERROR_VARIABLE} changed to {self.now_on} during the run; applies from this batch on."
        return [changed] if self.now_on else [changed, INCONSISTENCY_WARNING]


def pause_on_error_change(current: bool, latest: bool) -> PauseOnErrorChange | None:
    return None if latest == current else PauseOnErrorChange(latest)


@dataclass(frozen=True)
class Lag:
    """How far behind the source Salesforce is for a stream."""

    rows: int  # source rows after the watermark (exact when ``exact``, else the planner's estimate)
    exact: bool
    watermark_age_seconds: float | None  # now minus the watermark's change time (timestamptz change columns)

    def describe(self) -> str:
        rows = f"{self.rows:,} source row(s)" if self.exact else f"about {self.rows:,} source rows (estimate)"
        age = (
            f"; the watermark's change time is {age_text(self.watermark_age_seconds)} old"
            if self.watermark_age_seconds is not None
            else ""
        )
        return f"{rows} wait after the watermark{age}"


def age_text(seconds: float) -> str:
    """A duration as a person reads it in a log line: 2.0 hours, 3 minutes, 40 seconds."""
    if seconds >= 86_400:
        return f"{seconds / 86_400:.1f} days"
    if seconds >= 3_600:
        return f"{seconds / 3_600:.1f} hours"
    if seconds >= 60:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds:.0f} seconds"


@dataclass
class ExportResult:
    """What one run of one stream did; its summary is the run's closing log line."""

    stream: str
    tally: RunTally = field(default_factory=RunTally)
    held: HeldRecord | None = None
    waiting: str | None = None  # the record this run stopped before, waiting for its parent (not an error)
    stopped_because: str = CAUGHT_UP
    pause_on_error: bool = True
    skipped_with_pause_on_error_off: int = 0
    lag: Lag | None = None  # how far behind the source Salesforce is when the run ends
    in_flight_level: int = 1  # requests in flight, on average over the run
    in_flight_text: str = ""  # how the level went, for the closing line

    @property
    def held_or_waiting(self) -> str | None:
        """The record the run stopped at: held (pause on), or waiting for its parent."""
        return self.held.record_key if self.held is not None else self.waiting

    def summary(self) -> str:
        existing = (
            f"in Salesforce already (mode: insert, not sent): {self.tally.existing}; " if self.tally.existing else ""
        )
        text = (
            f"Stream '{self.stream}': exported {self.tally.exported} record(s) in {self.tally.batches} batch(es); "
            f"unchanged (not sent): {self.tally.unchanged}; {existing}deleted: {self.tally.deleted}; "
            f"rejected records: {self.tally.errors} ({self.tally.errors_text()}); stopped: {self.stopped_because}."
        )
        if self.held:
            text += f" HELD at record {shown(self.held.record_key)} ({self.held.rejection.code})."
        if self.lag:
            text += f" Lag: {self.lag.describe()}."
        if self.in_flight_text:
            text += f" Requests {self.in_flight_text}."
        return text

    def incomplete_warning(self) -> str | None:
        """Closing warning when rejected records were skipped (pause on error off)."""
        if not self.skipped_with_pause_on_error_off:
            return None
        return (
            f"Salesforce is incomplete: {self.skipped_with_pause_on_error_off} record(s) of stream '{self.stream}' "
            f"were skipped with {PAUSE_ON_ERROR_VARIABLE} off ({self.tally.errors_text()}). They are open in "
            f"{EXPORT_ERRORS_TABLE}; {REEXPORT_DAG_ID} re-exports them daily."
        )

    def add(self, plan: BatchPlan, *, pause_on_error: bool) -> None:
        """Count a committed batch; remember where the stream is held."""
        self.tally.add(plan)
        if not pause_on_error:
            self.skipped_with_pause_on_error_off += len(plan.rejected)


def definition_refusal(
    stream: str,
    *,
    current: dict[str, Any],
    stored: dict[str, Any] | None,
    exported_before: bool,
    source_rows: Callable[[], Lag | None] | None = None,
    settings: Stream | None = None,
) -> str | None:
    """Why the stream may not be exported (or re-exported) under its current definition, if it may not.

    A watermark taken under another definition is never continued silently;
    a stream that exported nothing under the old one has nothing to protect.
    ``source_rows`` (asked only when the mapping changed) and ``settings``:
    for what sending everything again would cost (:func:`resend_cost`).
    """
    if stored is None or not exported_before:
        return None
    changes = definition_changes(stored, current)
    if not changes:
        return None
    rows = source_rows() if _mapping_changed(changes) and source_rows is not None and settings is not None else None
    cost = resend_cost(settings, rows) if rows is not None and settings is not None else None
    return stream_changed_message(stream, changes, cost=cost)


def _mapping_changed(changes: list[str]) -> bool:
    return any(change.startswith("fields ") for change in changes)


# What one Bulk API 2.0 job costs in API requests, however many records it holds: create, upload, close, a
# poll or more, the successful and the failed results.
BULK_JOB_REQUESTS = 6


def resend_cost(stream: Stream, rows: Lag) -> str:
    """What sending every source row of the stream again costs in API requests, by the path a run takes: Bulk
    API 2.0 jobs for a backlog of at least ``bulk_threshold`` (upsert mode), otherwise sObject Collections
    requests of ``batch_size`` (with a query each in update and insert mode)."""
    count = f"{rows.rows:,}" if rows.exact else f"about {rows.rows:,} (the planner's estimate)"
    if not asks_salesforce(stream) and stream.bulk_threshold and rows.rows >= stream.bulk_threshold:
        jobs = -(-rows.rows // stream.bulk_job_records)
        requests = jobs * BULK_JOB_REQUESTS
        how = (
            f"{jobs:,} Bulk API 2.0 job(s) of up to {stream.bulk_job_records:,} records, "
            f"about {requests:,} API requests"
        )
    else:
        per_request = 2 if asks_salesforce(stream) else 1
        requests = -(-rows.rows // stream.batch_size) * per_request
        query = f", each with a query ({stream.mode} mode)" if per_request == 2 else ""
        how = (
            f"about {requests:,} API requests through sObject Collections "
            f"({stream.batch_size} records a request{query})"
        )
    share = 100 * requests / stream.daily_api_requests
    return (
        f"The source holds {count} row(s): sending them all again takes {how}, "
        f"{f'{share:.1f}%' if share >= 0.1 else 'under 0.1%'} of daily_api_requests "
        f"({stream.daily_api_requests:,})."
    )


def stream_changed_message(stream: str, changes: list[str], *, cost: str | None = None) -> str:
    """The failed task's message when streams.yml (or the source) changed under a watermark; ``cost``: what
    sending everything again takes (:func:`resend_cost`), when known."""
    mapping = (
        " Records exported before carry the old field mapping in Salesforce: re-position from the start to send "
        "every record again with the new one (one API request per 200 records, or a few Bulk API 2.0 jobs above "
        "bulk_threshold), or from a change time such as now to apply it only to records that change from then on."
        + (f" {cost}" if cost else "")
        if _mapping_changed(changes)
        else ""
    )
    return (
        f"Stream '{stream}' changed since its watermark was set: {'; '.join(changes)}. The watermark is a position "
        "in the old definition, so continuing could skip or repeat records; nothing was sent."
        f"{mapping} Re-position the "
        "stream on purpose, from the start or from a change time: python -m include.crm_export reposition "
        f"--stream {stream} --from-start (or --from-change-time 2026-01-01T00:00:00Z), or the Re-position action "
        "on the CRM Export page. Then clear this task."
    )


OK = "ok"
REJECTING = "rejecting"


@dataclass(frozen=True)
class Alert:
    """One notification: a stream changed state."""

    state: str  # the state it announces (stored, so the next run does not say it again)
    subject: str  # one line, whatever the record key holds: it becomes a mail header
    body: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "subject", one_line(self.subject))


def stream_state(result: ExportResult, stream: Stream) -> str:
    """held:<record>, rejecting (pause on error off, too many rejected), or ok."""
    if result.held is not None:
        return f"held:{result.held.record_key}"
    sent = result.tally.exported + result.tally.deleted + result.tally.errors
    if not result.pause_on_error and sent and result.tally.errors * 100 > stream.alert_rejected_percent * sent:
        return REJECTING
    return OK


def alert_for(previous: str, result: ExportResult, stream: Stream) -> Alert | None:
    """The notification a run calls for: one per change of state, never one per run."""
    state = stream_state(result, stream)
    if state == previous:
        return None
    name = f"stream '{stream.name}'"
    if result.held is not None:
        return Alert(
            state, f"{EXPORT_DAG_ID}: {name} is held at record {shown(result.held.record_key)}", result.held.message()
        )
    if state == REJECTING:
        sent = result.tally.exported + result.tally.deleted + result.tally.errors
        return Alert(
            state,
            f"{EXPORT_DAG_ID}: {name} rejected {result.tally.errors} of {sent} records",
            f"{result.summary()} More than {stream.alert_rejected_percent:g}% of the records sent were rejected "
            f"with {PAUSE_ON_ERROR_VARIABLE} off ({result.tally.errors_text()}); they are open in "
            f"{EXPORT_ERRORS_TABLE}. Fix the cause in Salesforce or the source; {REEXPORT_DAG_ID} re-exports them.",
        )
    if previous.startswith("held:"):
        return Alert(
            state,
            f"{EXPORT_DAG_ID}: {name} recovered",
            f"The {name} is no longer held at record {shown(previous.removeprefix('held:'))} (it went through, or "
            "left the source); the export carries on. " + result.summary(),
        )
    return Alert(
        state, f"{EXPORT_DAG_ID}: {name} recovered", f"Rejections are back below the threshold. {result.summary()}"
    )


RETAINING = "retaining"


def slot_state(previous: str, found: dict[str, Any] | None) -> str:
    """retaining while the server keeps more WAL for the slot than its limit, or lost WAL it needed; announced
    as over only once it is back under 80% of the limit, so a slot hovering at the limit is not announced at
    every crossing."""
    if found is None:
        return OK
    if found["lost"] or found["too_much"]:
        return RETAINING
    if previous == RETAINING and found["retained_wal_bytes"] > 0.8 * found["limit_bytes"]:
        return RETAINING
    return OK


def slot_alert_for(previous: str, slot: str, found: dict[str, Any] | None) -> Alert | None:
    """The notification a replication slot calls for (``found``: its row of ``capture.slots``, None: the slot is
    gone): one when the server starts keeping too much WAL for it, one when that ends; never one per run."""
    state = slot_state(previous, found)
    if state == previous:
        return None
    if found is None:
        return Alert(
            state,
            f"{EXPORT_DAG_ID}: replication slot {slot} was dropped",
            f"The replication slot {slot} no longer exists, so the server no longer keeps WAL for it.",
        )
    kept = f"{found['retained_wal_bytes'] / 1e6:,.1f} MB"
    limit = f"{found['limit_bytes'] / 1e6:,.1f} MB"
    if state == OK:
        return Alert(
            state,
            f"{EXPORT_DAG_ID}: replication slot {slot} is back under its WAL alert",
            f"The server keeps {kept} of WAL for the replication slot {slot}, under the alert's {limit}.",
        )
    stream = found["stream"]
    if found["lost"]:
        again = (
            f"python -m include.crm_export capture drop --stream {stream}, then capture setup --stream {stream} "
            "(the stream starts over with a read of the whole table)"
            if stream is not None
            else f"SELECT pg_drop_replication_slot({sql_literal(slot)}); no stream follows it"
        )
        return Alert(
            state,
            f"{EXPORT_DAG_ID}: replication slot {slot} lost WAL it needed",
            f"The server removed WAL the replication slot {slot} still needed (wal_status lost: "
            "max_slot_wal_keep_size), so the changes it held can no longer be read. Start over: " + again + ".",
        )
    if stream is None:
        cause = (
            "No stream in the stream file follows it any more, so nothing moves it: the server keeps every WAL "
            "segment written since, until its disk is full. If the stream is gone for good, drop the slot and its "
            f"publication: SELECT pg_drop_replication_slot({sql_literal(slot)}); DROP PUBLICATION IF EXISTS "
            f"{sql_identifier(slot)}; "
            "If it is coming back, put the stream back in the stream file."
        )
    else:
        cause = (
            f"Only the task export_{stream} of {EXPORT_DAG_ID} moves it, at the start of each run. Check that the "
            f"DAG is on and that the task gets that far (its log says 'Moved N change(s) ... from replication slot "
            f"{slot}'); a failing task or a DAG left off makes the server keep every WAL segment written since, "
            f"until its disk is full. If the stream is not wanted any more: python -m include.crm_export capture "
            f"drop --stream {stream}. A stream that does move it keeps more than one run's WAL only while a "
            "transaction stays open on the server."
        )
    return Alert(
        state,
        f"{EXPORT_DAG_ID}: replication slot {slot} keeps {kept} of WAL",
        f"The server keeps {kept} of WAL for the replication slot {slot} (the alert is at {limit}, "
        f"alert_retained_wal_mb). {cause}",
    )
