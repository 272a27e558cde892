"""The daily re-export of open ExportErrors rows (CRMExport_ExportError).

Per batch: claim open rows of one stream (least recently attempted first,
skipping rows another run holds), re-read each record's *current* source
row, upsert those through the same writer as CRMExport, then record per row
in one transaction: resolved, still rejected (error and attempts updated), or
closed as source_deleted because the source row is gone.

It never touches a CRMExport watermark. It is safe beside a running CRMExport:
after a record went through, its source row is read again, and if it changed
meanwhile the newer version is sent, so an older payload can never land on
top of a newer one that CRMExport already delivered.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

import psycopg
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from include.crm_export.config import Stream, external_ids_unique_by_key, stream_definition
from include.crm_export.db import api_requests, export_errors, external_ids, fingerprints, source, watermarks
from include.crm_export.db.connection import Database, database_now
from include.crm_export.db.export_errors import OpenError, StillRejected
from include.crm_export.db.migrate import migrate
from include.crm_export.decisions import age_text, api_budget_stop, definition_refusal
from include.crm_export.errors import RejectedRecord, SettingsError, StreamBusy, StreamConfigError
from include.crm_export.export import RunContext, covered_deletes, current_records, one_record_per_external_id
from include.crm_export.mapping import ExternalIdOwners, SourceRecord, deleted_record
from include.crm_export.names import DEFAULT_REEXPORT_LIMIT, MAX_BATCH_SIZE
from include.crm_export.parents import ParentCheck
from include.crm_export.salesforce import CollectionWriter

log = logging.getLogger(__name__)

# A record whose source row keeps changing under us is left to CRMExport after this many sends.
MAX_RESENDS = 3
DRY_RUN_LINES = 100


class ReexportParams(BaseModel):
    """The trigger form's params of CRMExport_ExportError (checked again in the task)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    streams: list[StrictStr] = []
    error_codes: list[Annotated[StrictStr, Field(min_length=1)]] = []
    limit: Annotated[StrictInt, Field(ge=1)] = DEFAULT_REEXPORT_LIMIT
    dry_run: StrictBool = False


_PARAM_RULES = {
    "streams": "must be a list of stream names from {known}",
    "error_codes": "must be a list of Salesforce error codes",
    "limit": "must be a whole number of at least 1",
    "dry_run": "must be true or false",
}


@dataclass(frozen=True)
class ReexportOptions:
    error_codes: list[str] | None = None
    limit: int = DEFAULT_REEXPORT_LIMIT
    dry_run: bool = False
    batch_size: int = MAX_BATCH_SIZE
    claim_seconds: float = 900.0

    @classmethod
    def from_params(cls, params: dict[str, Any], *, known_streams: list[str]) -> tuple[ReexportOptions, list[str]]:
        """Trigger-form params to options and the chosen streams; unreadable values fail saying what is accepted."""
        raw = {name: params.get(name) for name in ReexportParams.model_fields if params.get(name) is not None}
        try:
            checked = ReexportParams.model_validate(raw)
        except ValidationError as exc:
            name = str(exc.errors()[0]["loc"][0])
            rule = _PARAM_RULES[name].format(known=sorted(known_streams))
            raise SettingsError(f"Param '{name}' {rule}; got {params.get(name)!r}") from None
        unknown = [s for s in checked.streams if s not in known_streams]
        if unknown:
            rule = _PARAM_RULES["streams"].format(known=sorted(known_streams))
            raise SettingsError(f"Param 'streams' {rule}; got {checked.streams!r} ({unknown[0]!r} is not one)")
        codes = [code.strip() for code in checked.error_codes]
        if not all(codes):
            raise SettingsError(f"Param 'error_codes' {_PARAM_RULES['error_codes']}; got {checked.error_codes!r}")
        return cls(error_codes=codes or None, limit=checked.limit, dry_run=checked.dry_run), checked.streams


@dataclass
class ReexportResult:
    stream: str
    resolved: int = 0
    still_rejected: Counter[str] = field(default_factory=Counter)
    source_deleted: int = 0
    batches: int = 0
    would_send: int = 0
    open_left: int = 0
    oldest_open_since: datetime | None = None
    dry_run: bool = False
    claiming_seconds: list[float] = field(default_factory=list)
    stopped_because: str | None = None  # the API budget, when it stopped the run early

    def summary(self, now: datetime) -> str:
        if self.dry_run:
            head = (
                f"Re-export of stream '{self.stream}' (dry run, nothing sent or changed): would send "
                f"{self.would_send} record(s), would close {self.source_deleted} whose source row is gone."
            )
        else:
            rejected = ", ".join(f"{code}: {n}" for code, n in self.still_rejected.most_common()) or "none"
            head = (
                f"Re-export of stream '{self.stream}': resolved {self.resolved}, still rejected "
                f"{sum(self.still_rejected.values())} ({rejected}), closed {self.source_deleted} "
                "(source_deleted: the source row is gone)."
            )
        if self.stopped_because:
            head = f"{head} Stopped early: {self.stopped_because}."
        if self.oldest_open_since is None:
            return f"{head} No open errors left."
        age = now - self.oldest_open_since
        return (
            f"{head} Open errors left: {self.open_left}; the oldest has been open since "
            f"{self.oldest_open_since:%Y-%m-%d %H:%M} UTC ({age_text(age.total_seconds())})."
        )


@dataclass
class ReexportRun:
    """Everything one re-export of one stream works with."""

    stream: Stream
    conn: psycopg.Connection
    options: ReexportOptions
    context: RunContext
    started_at: datetime  # rows attempted since then (by this run) are not claimed again
    result: ReexportResult
    column_types: dict[str, str]
    field_types: dict[str, str] | None = None  # Salesforce types of the mapped fields, from the writer's describe
    fingerprint_number: int = 0  # the stream's number in crm_export.fingerprints
    _owners: ExternalIdOwners | None = None

    def owners(self, writer: CollectionWriter) -> ExternalIdOwners:
        """The external ids of the records this run sends, as the org matches them."""
        if self._owners is None:
            self._owners = ExternalIdOwners(
                self.stream, case_sensitive=writer.external_id_case_sensitive, remember=20_000
            )
        return self._owners

    @property
    def claimant(self) -> str:
        return f"{self.context.dag_id}/{self.context.run_id}/{self.stream.name}"


def reexport_stream(
    stream: Stream,
    *,
    database: Database,
    writer: CollectionWriter | None,
    options: ReexportOptions,
    context: RunContext,
) -> ReexportResult:
    """Re-export the open errors of ``stream``; ``writer`` may be None for a dry run."""
    with database.connect(application_name=f"crm-export reexport {stream.name}") as conn:
        migrate(conn)
        export_errors.compact_error_counts(conn)
        run = ReexportRun(
            stream,
            conn,
            options,
            context,
            started_at=database_now(conn),
            result=ReexportResult(stream.name, dry_run=options.dry_run),
            # A source that is gone or changed fails here, naming the setting.
            column_types=source.column_types(conn, stream),
            field_types=writer.field_types if writer is not None else None,
            fingerprint_number=fingerprints.stream_number(conn, stream),
        )
        _check_definition(run, org_id=writer.org_id if writer is not None else None)
        if writer is not None:  # open errors: the stream has exported before
            external_ids.fill_once(
                conn,
                stream,
                case_sensitive=writer.external_id_case_sensitive,
                exported_before=not external_ids_unique_by_key(stream, run.column_types),
            )
        log.info(
            "Re-exporting open errors of stream '%s'%s, at most %d record(s)%s",
            stream.name,
            f" with error codes {options.error_codes}" if options.error_codes else "",
            options.limit,
            " (dry run)" if options.dry_run else "",
        )
        if options.dry_run:
            _dry_run(run)
        else:
            if writer is None:
                raise ValueError("a re-export that is not a dry run needs a writer")
            if stream.logical and not _lock_capture_stream(run):
                return run.result
            try:
                _reexport(run, writer)
            finally:
                export_errors.release_claims(conn, claimant=run.claimant)
                api_requests.record(conn, stream, run_id=context.run_id, requests=writer.requests_sent)
                if stream.logical:
                    watermarks.unlock_stream(conn, stream)
        run.result.open_left, run.result.oldest_open_since = export_errors.open_error_summary(conn, stream)
        log.info(run.result.summary(database_now(conn)))
    return run.result


def _lock_capture_stream(run: ReexportRun) -> bool:
    """A capture stream is re-exported under its lock, never while it is exported: what changes after the
    re-export reads a row reaches the change table and is sent after it, so an older version (or a deleted row)
    never lands last. Busy: nothing is done now; the errors stay open for the next re-export."""
    try:
        watermarks.lock_stream(run.conn, run.stream)
    except StreamBusy as busy:
        run.result.stopped_because = f"the stream is being exported ({busy}); its errors wait for the next re-export"
        log.warning("Re-export of capture stream '%s' skipped: %s", run.stream.name, run.result.stopped_because)
        return False
    return True


def _check_definition(run: ReexportRun, *, org_id: str | None) -> None:
    """The export's own rule: records never go out under a definition its watermark does not belong to."""
    stored = watermarks.load_watermark(run.conn, run.stream)
    refused = definition_refusal(
        run.stream.name,
        current=stream_definition(run.stream, run.column_types, org_id=org_id),
        stored=stored.definition,
        exported_before=stored.exported_before,
        source_rows=lambda: source.all_rows(run.conn, run.stream, run.column_types),
        settings=run.stream,
    )
    if refused is not None:
        raise StreamConfigError(f"Nothing was re-exported. {refused}")


def _reexport(run: ReexportRun, writer: CollectionWriter) -> None:
    stream, result = run.stream, run.result
    processed = 0
    ours_before = api_requests.used_last_day(run.conn)
    while processed < run.options.limit:
        over_budget = api_budget_stop(
            stream, ours_last_day=ours_before + writer.requests_sent, org_usage=writer.org_api_usage()
        )
        if over_budget is not None:
            result.stopped_because = over_budget
            log.warning("Re-export of stream '%s' stops here: %s.", stream.name, over_budget)
            break
        claiming_started = time.perf_counter()
        batch = export_errors.claim_open_errors(
            run.conn,
            stream,
            claimant=run.claimant,
            claim_seconds=run.options.claim_seconds,
            not_attempted_since=run.started_at,
            limit=min(run.options.batch_size, run.options.limit - processed),
            error_codes=run.options.error_codes,
        )
        result.claiming_seconds.append(time.perf_counter() - claiming_started)
        if not batch:
            break
        processed += len(batch)
        result.batches += 1
        current = _current_records(run, [e.record_key for e in batch])
        if stream.logical:
            # A row gone from a captured table was deleted there: its record is deleted in Salesforce too (a
            # refused delete retried), found by the external id the error recorded.
            for error in batch:
                if error.record_key not in current and error.external_id:
                    current[error.record_key] = deleted_record(stream, error.record_key, (), error.external_id)
        current = {r.key: r for r in covered_deletes(run.conn, stream, list(current.values()), run.column_types)}
        gone = [e for e in batch if e.record_key not in current]
        present = [e for e in batch if e.record_key in current]
        # What the export last confirmed of these records no longer says what Salesforce holds once they are
        # sent from here: the export sends them again next time it reads them, never skips them as unchanged.
        match_key = run.owners(writer).match_key
        sending = [current[e.record_key].external_id for e in present]
        fingerprints.forget_keys(run.conn, run.fingerprint_number, [match_key(x) for x in sending if x])
        outcomes = _send_current(run, writer, [current[e.record_key] for e in present])
        if stream.lookups:  # a child whose parent is still not in Salesforce: why, as the export says it
            check = ParentCheck(run.conn, stream)
            outcomes = [(record, check.explain(rejection)) for record, rejection in outcomes]
        resolved: list[int] = []
        still_rejected: list[StillRejected] = []
        for error, (record, rejection) in zip(present, outcomes, strict=True):
            if rejection is None:
                resolved.append(error.id)
                continue
            still_rejected.append(StillRejected(error.id, record.payload, rejection))
            result.still_rejected[rejection.code] += 1
            log.warning(
                "Record %s of stream '%s' is still rejected: %s (attempt %d)",
                error.record_key,
                stream.name,
                rejection.describe(),
                error.attempts + 1,
            )
        for error in gone:
            log.info(
                "Record %s of stream '%s' is gone from the source; closing its error as source_deleted",
                error.record_key,
                stream.name,
            )
        export_errors.record_reexport(
            run.conn,
            claimant=run.claimant,
            resolved=resolved,
            still_rejected=still_rejected,
            source_deleted=[e.id for e in gone],
            dag_id=run.context.dag_id,
            run_id=run.context.run_id,
        )
        result.resolved += len(resolved)
        result.source_deleted += len(gone)


def _current_records(run: ReexportRun, keys: list[str]) -> dict[str, SourceRecord]:
    return current_records(run.conn, run.stream, keys, run.column_types, run.field_types)


def _send_current(
    run: ReexportRun, writer: CollectionWriter, records: list[SourceRecord]
) -> list[tuple[SourceRecord, RejectedRecord | None]]:
    """Send records; re-send any whose source row changed while it was in flight."""
    final: dict[str, tuple[SourceRecord, RejectedRecord | None]] = {}
    owners = run.owners(writer)
    pending = one_record_per_external_id(run.conn, run.stream, records, owners, run.column_types, run.field_types)
    for _ in range(MAX_RESENDS):
        if not pending:
            break
        for outcome in writer.send(pending):
            final[outcome.record.key] = (outcome.record, outcome.rejection)
        sent_ok = [r.key for r in pending if final[r.key][1] is None]
        now = source.positions_by_key(run.conn, run.stream, sent_ok, run.column_types) if sent_ok else {}
        changed = [key for key in sent_ok if key in now and now[key] != final[key][0].position]
        if not changed:
            break
        log.info("%d record(s) changed in the source while being re-exported; sending their new version", len(changed))
        again = list(_current_records(run, changed).values())
        pending = one_record_per_external_id(run.conn, run.stream, again, owners, run.column_types, run.field_types)
    return [final[r.key] for r in records]


def _dry_run(run: ReexportRun) -> None:
    errors: list[OpenError] = export_errors.peek_open_errors(
        run.conn,
        run.stream,
        not_attempted_since=run.started_at,
        limit=run.options.limit,
        error_codes=run.options.error_codes,
    )
    current = _current_records(run, [e.record_key for e in errors]) if errors else {}
    for index, error in enumerate(errors):
        show = index < DRY_RUN_LINES
        if error.record_key not in current:
            run.result.source_deleted += 1
            if show:
                log.info("Would close record %s (%s): its source row is gone", error.record_key, error.error_code)
            continue
        run.result.would_send += 1
        if show:
            record = current[error.record_key]
            log.info(
                "Would send record %s (open with %s, %d attempt(s)): %s",
                error.record_key,
                error.error_code,
                error.attempts,
                record.payload if record.payload is not None else record.why_not_sent().describe(),
            )
