"""The run's session: a stream's connections, lock and watermark, and the steps every path shares.

:class:`StreamExport` opens the session (connects, migrates, takes the
stream's lock, checks the definition, loads the watermark), reads the source
(keyset order, up to the horizon, one record per external id) and commits a
planned batch in one transaction. :class:`ExportRun` is what one run's paths
share: the pause on error in force (read again before each commit), the per-run
limits and the API budget (one formula for every path), and the commit step
(plan, commit, count, log).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import psycopg

from include.crm_export.batch import BatchPlan, RecordOutcome, plan_batch
from include.crm_export.config import Stream, change_column, external_ids_unique_by_key, stream_definition
from include.crm_export.db import capture, export_errors, external_ids, fingerprints, source, watermarks
from include.crm_export.db.connection import Database
from include.crm_export.db.migrate import migrate
from include.crm_export.decisions import (
    HELD,
    ExportResult,
    Lag,
    api_budget_stop,
    definition_refusal,
    held_record,
    pause_on_error_change,
    stop_reason,
)
from include.crm_export.errors import RejectedRecord, StreamConfigError
from include.crm_export.export.captured import captured_lag, changes_after, read_captured
from include.crm_export.fingerprints import ReadsInFlight, to_forget_before_sending, with_fingerprints
from include.crm_export.mapping import ExternalIdOwners, SourceRecord, map_row, position_to_json
from include.crm_export.parents import ParentCheck
from include.crm_export.quoting import one_line, shown
from include.crm_export.salesforce import BulkJobs, CollectionWriter

log = logging.getLogger(__name__)

HORIZON_REFRESH_SECONDS = 1.0
_MAX_ERROR_LINES_PER_BATCH = 20
_KEYS_PER_LOOKUP = 1000
# Source rows the Bulk API 2.0 path reads at a time into a job's CSV (bulk_path.py); records that can be in
# flight at once on that path are two jobs and a page.
BULK_PAGE_ROWS = 5_000


def current_records(
    conn: psycopg.Connection,
    stream: Stream,
    keys: list[str],
    column_types: dict[str, str],
    field_types: dict[str, str] | None,
) -> dict[str, SourceRecord]:
    """The current version of the given source rows, mapped, by record key; a key whose row is gone is left out."""
    found: dict[str, SourceRecord] = {}
    for start in range(0, len(keys), _KEYS_PER_LOOKUP):
        for row in source.read_rows_by_key(conn, stream, keys[start : start + _KEYS_PER_LOOKUP], column_types):
            record = map_row(stream, row, field_types)
            found[record.key] = record
    return found


def one_record_per_external_id(
    reader: psycopg.Connection,
    stream: Stream,
    records: list[SourceRecord],
    owners: ExternalIdOwners,
    column_types: dict[str, str],
    field_types: dict[str, str] | None,
) -> list[SourceRecord]:
    """The records, each one whose external id another source row holds made a rejected record naming both.

    Held means: taken by a record read before it in this run (``owners``), or
    reserved in ``crm_export.external_ids`` (by any run, the re-export's
    included) by a row that still has that external id now; one that changed
    or lost it hands it over. Each record's external id is reserved before it
    is sent.
    """
    if external_ids_unique_by_key(stream, column_types):
        return records
    wanted: dict[str, str] = {}
    for record in records:
        if record.payload is not None and record.external_id is not None and not record.delete:
            wanted.setdefault(owners.match_key(record.external_id), record.key)
    others = external_ids.reserve(reader, stream, wanted)
    if others:
        now = current_records(reader, stream, sorted(set(others.values())), column_types, field_types)
        for match, holder in others.items():
            current = now.get(holder)
            # A holder deleted since (marked deleted) holds it no more.
            kept = current.external_id if current is not None and not current.delete else None
            if kept is not None and owners.match_key(kept) == match:
                owners.held_by(match, holder)
            elif not external_ids.hand_over(reader, stream, match, holder=holder, to=wanted[match]):
                owners.held_by(match, "another row")  # taken meanwhile by another run: the stricter answer
    return owners.check_all(records)


def covered_deletes(
    reader: psycopg.Connection, stream: Stream, records: list[SourceRecord], column_types: dict[str, str]
) -> list[SourceRecord]:
    """The records, each delete whose external id a live source row (another row, not marked deleted) holds
    now confirmed as it is, nothing sent: the live row's record is that Salesforce record."""
    deletes = sorted({r.external_id for r in records if r.delete and r.external_id and not r.unchanged})
    if not deletes:
        return records
    holders = source.live_holders(reader, stream, deletes, column_types)
    return [
        replace(record, unchanged=True, fingerprint=None)
        if record.delete and record.external_id and holders.get(record.external_id, set()) - {record.key}
        else record
        for record in records
    ]


@dataclass(frozen=True)
class RunContext:
    dag_id: str
    run_id: str


class StreamExport:
    """One stream's export session: its connections, its lock and the steps of a batch.

    Opened with :meth:`open` (connects, migrates, takes the stream's lock,
    loads the watermark); closed with the context manager.
    """

    def __init__(
        self,
        stream: Stream,
        *,
        conn: psycopg.Connection,
        reader: psycopg.Connection,
        context: RunContext,
        field_types: dict[str, str] | None = None,
        external_id_case_sensitive: bool = False,
        org_id: str | None = None,
        resend_all: bool = False,
        move_changes: bool = False,
    ):
        """``move_changes``: a capture stream's slot is moved into the change table first (only under the
        stream's lock, which :meth:`open` takes; a dry run reads what is there)."""
        self.stream = stream
        self.resend_all = resend_all  # send every record read, unchanged or not (``--resend-all``)
        self.field_types = field_types  # Salesforce types of the mapped fields (describe), for the mapping
        # Every record read this run that can still be in flight (a Collections request, or one of the two Bulk
        # API 2.0 jobs that may run at once), by external id: one Salesforce record, one source row.
        self.sent_ids = ExternalIdOwners(
            stream,
            case_sensitive=external_id_case_sensitive,
            remember=max(20_000, 2 * stream.bulk_job_records + BULK_PAGE_ROWS),
        )
        self.conn = conn  # commits (watermark, ExportErrors) and holds the stream's lock
        self.reader = reader  # reads the source, so a read never waits for a commit
        self.context = context
        self.column_types = source.column_types(conn, stream)
        # None: a capture stream, which follows its table's commit order (captured.py), not a change column.
        self.change = None if stream.logical else change_column(stream, self.column_types[stream.order_by[0]])
        if stream.logical:
            capture.check_table(conn, stream)
        if stream.logical and move_changes:
            moved = capture.move_changes(conn, stream, self.column_types[stream.key])
            retained = capture.retained_wal_bytes(conn, stream) or 0
            too_much = retained > capture.wal_limit_bytes(capture.slot_name(stream), [stream])
            log.log(
                logging.WARNING if too_much else logging.INFO,
                "Moved %d change(s) of %s from replication slot %s; the server keeps %.1f MB of WAL for it%s.",
                moved,
                stream.source,
                capture.slot_name(stream),
                retained / 1e6,
                " (more than it should: the slot's restart point waits for the server's next note of running "
                "transactions, or for a transaction open since long before this run)"
                if too_much
                else "",
            )
        self.blind_spot = source.activity_blind_spot(conn)
        self.watermark = watermarks.load_watermark(conn, stream)
        self.fingerprint_number = fingerprints.stream_number(conn, stream)
        if not self.watermark.exported_before or not stream.skip_unchanged:
            # A stream at its start sends every record: nothing confirmed before (a watermark deleted by hand)
            # may stand for what Salesforce holds now. One that does not skip unchanged records keeps none: what
            # it sends meanwhile would leave them stale for when it skips again.
            fingerprints.forget(conn, stream)
        # Read, not committed: which fingerprints a commit may write, and which keys a read must look up.
        self.reads_in_flight = ReadsInFlight(
            none_kept_before=stream.skip_unchanged and not fingerprints.any_kept(conn, self.fingerprint_number)
        )
        external_ids.fill_once(
            conn,
            stream,
            case_sensitive=external_id_case_sensitive,
            exported_before=self.watermark.exported_before
            and not external_ids_unique_by_key(stream, self.column_types),
        )
        self.position = self.watermark.position  # where the watermark is now: moved by each commit
        exported_changes = changes_after(self.position) if stream.logical else None
        if exported_changes is not None:
            capture.forget_exported(conn, stream, exported_changes)
        self.definition = stream_definition(stream, self.column_types, org_id=org_id)
        stored = self.watermark.definition or {}
        if org_id is None and "org" in stored:  # not asked this time (no writer): the org stays as recorded
            self.definition["org"] = stored["org"]
        self._check_definition()
        if not stream.logical and source.is_view(conn, stream):
            self._check_every_row_has_a_place()
        self._own_backends = (conn.info.backend_pid, reader.info.backend_pid)
        self._horizon: source.Horizon | None = None
        self._horizon_looked_up = 0.0
        # Resolving open errors costs a statement per batch; skip it while the
        # stream has none (the common case).
        self._has_open_errors = export_errors.has_open_errors(conn, stream)

    def _check_definition(self) -> None:
        """A watermark taken under another stream definition is never continued silently.

        The current definition is written with the run's first commit (or its
        idle-run note), not here: a run that has not committed anything has
        changed nothing.
        """
        refused = definition_refusal(
            self.stream.name,
            current=self.definition,
            stored=self.watermark.definition,
            exported_before=self.watermark.exported_before,
            source_rows=lambda: source.all_rows(self.reader, self.stream, self.column_types),
            settings=self.stream,
        )
        if refused is not None:
            raise StreamConfigError(refused)

    def _check_every_row_has_a_place(self) -> None:
        key = source.rows_without_a_place(self.reader, self.stream)
        if key is not None:
            raise StreamConfigError(
                f"Stream config error in stream '{self.stream.name}', field 'order_by': row {shown(key)} of "
                f"{self.stream.source} has NULL in {', '.join(self.stream.order_by)}, so it has no place in the "
                "export's order and would never be exported. Nothing was sent. Fill it in the view (for example "
                "COALESCE(updated_at, created_at)) or in the data, then clear this task."
            )

    @classmethod
    def open(
        cls,
        stream: Stream,
        database: Database,
        context: RunContext,
        *,
        exits: ExitStack,
        writer: CollectionWriter | None = None,
        resend_all: bool = False,
    ) -> StreamExport:
        name = f"crm-export {stream.name}"
        conn = exits.enter_context(database.connect(application_name=name))
        reader = exits.enter_context(database.connect(application_name=f"{name} reader"))
        migrate(conn)
        watermarks.lock_stream(conn, stream)
        export_errors.compact_error_counts(conn)
        return cls(
            stream,
            conn=conn,
            reader=reader,
            context=context,
            field_types=writer.field_types if writer is not None else None,
            external_id_case_sensitive=writer.external_id_case_sensitive if writer is not None else False,
            org_id=writer.org_id if writer is not None else None,
            resend_all=resend_all,
            move_changes=True,
        )

    def horizon(self, clock: Callable[[], float] = time.monotonic, *, fresh: bool = False) -> source.Horizon:
        """How far the source may be read now (a capture stream: all it holds, committed by construction)."""
        if self.change is None:
            return source.Horizon(None, datetime.now(UTC), None)
        # An older horizon is still safe (only more conservative), so it is
        # looked up again at most once a second rather than per batch.
        if fresh or self._horizon is None or clock() - self._horizon_looked_up >= HORIZON_REFRESH_SECONDS:
            self._horizon_looked_up = clock()
            self._horizon = source.export_horizon(
                self.reader, self.stream, self.change, exclude_backends=self._own_backends
            )
        return self._horizon

    def read(
        self,
        after: list[str] | None,
        limit: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        until: list[str] | None = None,
        horizon: source.Horizon | None = None,
        resend_all: bool | None = None,
    ) -> tuple[source.Horizon, list[SourceRecord]]:
        """The next ``limit`` records after ``after``, never past the horizon (``horizon``, or the current one),
        one record per external id, each marked unchanged if Salesforce confirmed its payload last (unless
        ``resend_all``, by default the session's)."""
        horizon = horizon or self.horizon(clock)
        if self.stream.logical:
            records = read_captured(self, after, limit)
        else:
            rows = source.read_batch(
                self.reader,
                self.stream,
                after=after,
                horizon=horizon.at,
                column_types=self.column_types,
                limit=limit,
                until=until,
            )
            records = [map_row(self.stream, row, self.field_types) for row in rows]
        records = one_record_per_external_id(
            self.reader, self.stream, self.deletes_covered(records), self.sent_ids, self.column_types, self.field_types
        )
        every_record = self.resend_all if resend_all is None else resend_all
        return horizon, self._to_be_sent(records, every_record=every_record)

    def _to_be_sent(
        self, records: list[SourceRecord], *, every_record: bool, read_again: bool = False
    ) -> list[SourceRecord]:
        """The records marked unchanged where Salesforce confirmed their payload last (unless ``every_record``);
        the fingerprints of the others are dropped now, before they are sent (``fingerprints.py``). A stream that
        does not skip unchanged records (``skip_unchanged: false``) sends them all and writes no fingerprint.
        ``read_again``: newer versions of records read before and not committed yet, which stand in for them
        (counted as read once already)."""
        if not self.stream.skip_unchanged:
            return records
        match_key = self.sent_ids.match_key
        read = self._read_keys(records)
        maybe_kept = read if read_again else self.reads_in_flight.read(read)
        confirmed = fingerprints.confirmed(self.reader, self.fingerprint_number, sorted(set(maybe_kept)))
        marked = with_fingerprints(records, None if every_record else confirmed, match_key)
        fingerprints.forget_keys(
            self.reader, self.fingerprint_number, to_forget_before_sending(marked, confirmed, match_key)
        )
        return marked

    def _read_keys(self, records: list[SourceRecord]) -> list[str]:
        """The key of each record read that a commit may write a fingerprint of (those with a payload), once per
        record: a commit counts each record it settles, and one read can hold a key twice (a covered delete and
        the row that took its external id, a capture stream's row read and then its change)."""
        match_key = self.sent_ids.match_key
        return [match_key(r.external_id) for r in records if r.payload is not None and r.external_id]

    def not_taken(self, records: list[SourceRecord]) -> None:
        """Records read and left for a later read (the rows after a full Bulk API job): not in flight."""
        if self.stream.skip_unchanged:
            self.reads_in_flight.not_taken(self._read_keys(records))

    def deletes_covered(self, records: list[SourceRecord]) -> list[SourceRecord]:
        """Each delete whose external id a live source row holds now made a record confirmed as it is: that row
        writes the Salesforce record (a row deleted and another one taking its external id, a key changed): the
        record stays, with the live row's values, and keeps its Salesforce Id."""
        return covered_deletes(self.reader, self.stream, records, self.column_types)

    def current_rows(self, keys: list[str]) -> dict[str, SourceRecord]:
        """The current version of these rows, mapped, by key (a key whose row is gone is left out)."""
        return current_records(self.reader, self.stream, keys, self.column_types, self.field_types)

    def records_by_key(self, keys: list[str]) -> dict[str, SourceRecord]:
        """The current version of these rows, to be sent (never taken for unchanged): rows of a Bulk API job, read
        again to be sent beside it, each committed as the job's record it stands for."""
        found = current_records(self.reader, self.stream, keys, self.column_types, self.field_types)
        records = self._to_be_sent(list(found.values()), every_record=True, read_again=True)
        return {record.key: record for record in records}

    def commit(
        self,
        plan: BatchPlan,
        *,
        with_it: Callable[[], None] | None = None,
    ) -> None:
        """Write the batch's ExportErrors changes and advance the watermark, in one transaction (with
        ``with_it``)."""
        self._has_open_errors = self._has_open_errors or bool(plan.rejected)
        match_key = self.sent_ids.match_key
        confirmed = {match_key(external_id): value for external_id, value in plan.fingerprints.items()}
        # Counted as read as _read_keys counts them (a confirmed record has its payload): a record whose payload a
        # write mode took away was counted too and is left counted, which only makes a later read of it drop its
        # fingerprint instead of writing it.
        settled = [*map(match_key, plan.confirmed_ids), *self._read_keys([record for record, _ in plan.rejected])]
        with (
            self.reads_in_flight.committing(confirmed, settled) as (remember, read_again),
            self.conn.transaction(),
        ):
            if self._has_open_errors:
                keys = [*plan.confirmed_keys, *(record.key for record, _ in plan.rejected)]
                export_errors.lock_open_rows(self.conn, self.stream, keys)
            export_errors.record_rejections(
                self.conn, self.stream, plan.rejected, dag_id=self.context.dag_id, run_id=self.context.run_id
            )
            rejected = [match_key(record.external_id) for record, _ in plan.rejected if record.external_id]
            fingerprints.settle(self.conn, self.fingerprint_number, remember=remember, forget=[*rejected, *read_again])
            if plan.confirmed_keys and self._has_open_errors:
                export_errors.resolve_errors(
                    self.conn, self.stream, list(plan.confirmed_keys), resolved_by=self.context.dag_id
                )
            watermarks.advance_watermark(
                self.conn,
                self.stream,
                position=plan.new_position,
                held_record_key=plan.held[0].key if plan.held else None,
                # A batch whose first record waits moves nothing, so a hold from an earlier run stays as it is.
                keep_hold=plan.waiting is not None and plan.new_position is None,
                waiting_record_key=plan.waiting[0].key if plan.waiting else None,
                settled_keys=(*plan.confirmed_keys, *(record.key for record, _ in plan.rejected)),
                exported=plan.exported,
                run_id=self.context.run_id,
                definition=self.definition,
            )
            exported_changes = changes_after(position_to_json(plan.new_position)) if plan.new_position else None
            if self.stream.logical and exported_changes is not None:
                capture.forget_exported(self.conn, self.stream, exported_changes)  # below the watermark now
            if with_it is not None:
                with_it()
        if plan.new_position is not None:
            self.position = position_to_json(plan.new_position)

    def lag(self) -> Lag | None:
        """How far behind the source the stream is now (closing log line, metrics); never fails the run."""
        try:
            if self.stream.logical:
                return captured_lag(self.reader, self.stream, self.position, self.column_types)
            return source.lag(self.reader, self.stream, self.position, self.column_types)
        except psycopg.Error as exc:
            log.warning("Could not measure the lag of stream '%s': %s", self.stream.name, exc)
            return None

    def note_idle_run(self) -> None:
        """A run that committed nothing (caught up, or stopped by its limits or the API budget). A held record
        whose source row is gone no longer waits: the hold is released (its ExportErrors row is closed as
        source_deleted by the re-export). A held record still in the source keeps the hold."""
        held = self.watermark.held_record_key
        gone = held is not None and not source.read_rows_by_key(self.reader, self.stream, [held], self.column_types)
        if gone:
            log.warning(
                "Stream '%s' was held at record %s, which is gone from the source; the hold is released.",
                self.stream.name,
                held,
            )
        watermarks.note_run(
            self.conn, self.stream, run_id=self.context.run_id, definition=self.definition, release_hold=gone
        )


@dataclass
class ExportRun:
    """What one run of one stream shares between its paths (sObject Collections, Bulk API 2.0 jobs)."""

    session: StreamExport
    result: ExportResult
    pause_on_error: Callable[[], bool]  # the Variable, read again before each commit
    pause: bool  # the pause on error in force
    writer: CollectionWriter
    bulk: BulkJobs | None
    requests_before: int  # crm-export's Salesforce API requests in the last 24 hours before this run
    clock: Callable[[], float] = time.monotonic
    started: float = 0.0
    _warned_about_horizon: bool = False

    @property
    def stream(self) -> Stream:
        return self.session.stream

    @property
    def held(self) -> bool:
        return self.result.held is not None

    @property
    def stopped(self) -> bool:
        """Held, or stopped before a record that waits for its parent: nothing more is sent or committed."""
        return self.held or self.result.waiting is not None

    def requests_sent(self) -> int:
        return self.writer.requests_sent + (self.bulk.requests_sent if self.bulk is not None else 0)

    def limit_reached(self, records_read: int) -> bool:
        """The run's own limits (max_records_per_run, max_minutes_per_run): no more reading when reached."""
        stopped = stop_reason(self.stream, records_read=records_read, elapsed_seconds=self.clock() - self.started)
        if stopped is not None:
            self.result.stopped_because = stopped
        return stopped is not None

    def over_budget(self, *, running: int = 0) -> bool:
        """Would the next request overspend crm-export's daily budget or the org's reserve? Then the run stops.

        ``running``: requests still running, which the org's last answer may not count yet.
        """
        usage = self.writer.org_api_usage()
        stopped = api_budget_stop(
            self.stream,
            ours_last_day=self.requests_before + self.requests_sent(),
            org_usage=None if usage is None else (usage[0] + running, usage[1]),
        )
        if stopped is not None:
            self.result.stopped_because = stopped
            log.warning("Stream '%s' stops here: %s.", self.stream.name, stopped)
        return stopped is not None

    def note_horizon(self, horizon: source.Horizon, *, every_time: bool = False) -> None:
        if horizon.held_back_by and (every_time or not self._warned_about_horizon):
            self._warned_about_horizon = True
            warn_horizon(horizon)

    def commit_outcomes(self, outcomes: list[RecordOutcome], *, with_it: Callable[[], None] | None = None) -> None:
        """The one commit step of every path: plan the batch's outcomes under the pause on error in force now,
        commit the plan (``with_it`` in the same transaction), count and log it, and note a hold."""
        if self.result.tally.batches:
            self._reread_pause_on_error()
        if self.stream.lookups and any(outcome.rejection is not None for outcome in outcomes):
            # On the connection of the commits (this thread's): the reader serves the thread that reads ahead.
            check = ParentCheck(self.session.conn, self.stream)
            outcomes = [
                RecordOutcome(outcome.record, check.explain(outcome.rejection, outcome.record.key))
                for outcome in outcomes
            ]
        plan = plan_batch(outcomes, pause_on_error=self.pause)
        self.session.commit(plan, with_it=with_it)
        self.result.add(plan, pause_on_error=self.pause)
        _log_batch(self.stream, plan, self.pause)
        self.result.held = held_record(self.stream, plan)
        if self.result.held is not None:
            self.result.stopped_because = HELD
        elif plan.waiting is not None:
            self._note_waiting(plan.waiting)

    def _note_waiting(self, waiting: tuple[SourceRecord, RejectedRecord]) -> None:
        record, rejection = waiting
        self.result.waiting = record.key
        self.result.stopped_because = f"record {shown(record.key)} waits for its parent"
        log.warning(
            "Stream '%s' stops before record %s for this run (not an error: no ExportErrors row, no hold). %s "
            "The next run starts at it.",
            self.stream.name,
            shown(record.key),
            one_line(rejection.message),
        )

    def _reread_pause_on_error(self) -> None:
        latest = self.pause_on_error()
        change = pause_on_error_change(self.pause, latest)
        if change is not None:
            for warning in change.warnings():
                log.warning("%s", warning)
            self.result.pause_on_error = latest
        self.pause = latest


def warn_horizon(horizon: source.Horizon) -> None:
    holder = horizon.held_back_by
    if holder is None:
        return
    if holder["kind"] == "prepared":
        since = f"no earlier than {holder['since']}" if holder["since"] else "at an unknown time"
        log.warning(
            "Not reading rows changed after %s: prepared transaction %r (owner %s, prepared %s, started %s) may "
            "still commit rows with older change timestamps. The export catches up once it is finished: "
            "COMMIT PREPARED %r or ROLLBACK PREPARED %r.",
            horizon.at if horizon.at is not None else "the watermark",
            holder["gid"],
            holder["owner"],
            holder["prepared"],
            since,
            holder["gid"],
            holder["gid"],
        )
        return
    log.warning(
        "Not reading rows changed after %s: a transaction open since %s (pid %s, user %s, %s, %s, %s) may still "
        "commit rows with older change timestamps. The export catches up once it ends.",
        horizon.at,
        holder["since"],
        holder["pid"],
        holder["user"] or "unknown",
        holder["backend_type"],
        holder["application_name"] or "unknown application",
        holder["state"],
    )


def _log_batch(stream: Stream, plan: BatchPlan, pause: bool) -> None:
    for record, rejection in plan.rejected[:_MAX_ERROR_LINES_PER_BATCH]:
        log.warning(
            "Stream '%s' record %s (%s = %s) rejected: %s%s",
            stream.name,
            record.key,
            stream.external_id_field,
            record.external_id,
            rejection.describe(),
            "" if pause else " - skipped (pause on error off), open in ExportErrors",
        )
    if len(plan.rejected) > _MAX_ERROR_LINES_PER_BATCH:
        log.warning(
            "… and %d more rejected record(s) in this batch; all are open in ExportErrors.",
            len(plan.rejected) - _MAX_ERROR_LINES_PER_BATCH,
        )
    log.info(
        "Batch committed: %d exported, %d rejected; watermark now %s",
        plan.exported,
        len(plan.rejected),
        position_to_json(plan.new_position) if plan.new_position is not None else "unchanged",
    )
