"""The Bulk API 2.0 path: a backfill through ingest jobs of up to ``bulk_job_records`` records each.

A job gathers ``bulk_job_records`` records to send and the unchanged records
read between them (not in its CSV, confirmed with it in source order), up to
:data:`~include.crm_export.config.BULK_JOB_READ_FACTOR` times that many records in all: a job's size counts
what Salesforce processes, not what was read.

Taken when a run's backlog is at least the stream's ``bulk_threshold``, when
asked (``use_bulk_api``), or when a killed task left a job. While Salesforce
processes one job, the next is read, uploaded and closed, so reading and
processing overlap; at most two jobs are in Salesforce at once, they never hold
the same record (the next waits, read but not uploaded, until the first is
done) and their outcomes are committed in source order, exactly as with one
job at a time. Rows are streamed into the job's CSV page by page and only key,
position and external id are kept per record, so memory does not grow with the
job's payloads. A record a CSV cannot carry exactly goes through sObject
Collections beside its job.

The job id is recorded before its data is uploaded; a job left by a killed
task is resumed first (polled, never uploaded again) or, never closed,
aborted. A job that fails or leaves records unprocessed is a request failure:
nothing of it is recorded and the watermark does not move; the job after it is
aborted. Records rejected for a transient reason are sent again through sObject
Collections before they count.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from functools import cached_property

import psycopg

from include.crm_export.batch import RecordOutcome, identities
from include.crm_export.bulk_csv import JobData, JobRecord, job_columns, match_results
from include.crm_export.config import BULK_JOB_READ_FACTOR
from include.crm_export.db import bulk_jobs
from include.crm_export.errors import JobResultsUnreadable, NotFound, RejectedRecord, RequestFailed
from include.crm_export.export.paths import in_flight_already
from include.crm_export.export.session import BULK_PAGE_ROWS, ExportRun
from include.crm_export.mapping import SourceRecord, position_to_json
from include.crm_export.names import MAX_BATCH_SIZE
from include.crm_export.quoting import shown
from include.crm_export.salesforce import BulkJobs
from include.crm_export.write_modes import asks_salesforce

log = logging.getLogger(__name__)

# What Salesforce answers when asked to abort a job that has already ended (Bulk API 2.0 "Abort a Job" takes
# only Open, UploadComplete and InProgress jobs).
_ENDED = "INVALIDJOBSTATE"
_FIRST_PAGE_ROWS = 1_000  # before the job's row width is known
# A job's deletes go in a Bulk API 2.0 delete job from this many on; fewer go through sObject Collections. A
# delete job costs about decisions.BULK_JOB_REQUESTS requests however large; Collections one per 200 records.
# Finding the Ids costs the same on both (queries of up to 4,000 characters).
DELETE_JOB_RECORDS = 1_000


@dataclass
class _Job:
    """One Bulk API 2.0 job of a run. Of each record only key, position and external id are kept."""

    after: list[str] | None  # the position its records follow
    records: list[JobRecord]
    data: str | None  # its CSV until uploaded; None once uploaded, or when nothing of it can be sent
    job_id: str | None = None  # None: not created in Salesforce (yet, or because nothing can be sent)

    @property
    def last(self) -> list[str]:
        return position_to_json(self.records[-1].position)

    @cached_property
    def keys(self) -> frozenset[str]:
        return identities(self.records)


class BulkPath:
    def __init__(self, run: ExportRun, jobs: BulkJobs, left: list[bulk_jobs.RecordedJob]) -> None:
        self.run, self.jobs, self.left = run, jobs, left
        self.stream = run.stream
        self.columns = job_columns(self.stream, run.writer.field_types)
        self.max_job_bytes = self.stream.bulk_job_megabytes * 1_000_000
        self.launched: deque[_Job] = deque()  # closed, in Salesforce, oldest first: at most two
        self.next: _Job | None = None  # read, not launched yet
        self.exhausted = False  # nothing more is read this run
        self.records_read = 0
        self._failed: _Job | None = None

    @classmethod
    def for_run(cls, run: ExportRun, *, force: bool) -> BulkPath | None:
        """The Bulk path when this run takes it: a job left by a killed task, asked to, or a backlog of at least
        ``bulk_threshold``."""
        if run.bulk is None:
            return None
        stream = run.stream
        left = bulk_jobs.unfinished(run.session.conn, stream)
        if stream.logical and not left:
            if force:
                log.warning(
                    "Stream '%s' follows its table's changes (capture: logical); it goes through sObject "
                    "Collections, not Bulk API 2.0.",
                    stream.name,
                )
            return None
        if asks_salesforce(stream) and not left:
            if force:
                log.warning(
                    "Stream '%s' writes in mode %s, which needs Salesforce asked per request; it goes through "
                    "sObject Collections, not Bulk API 2.0.",
                    stream.name,
                    stream.mode,
                )
            return None
        if not (force or left or stream.bulk_threshold):
            return None
        if not (force or left):
            lag = run.session.lag()
            if lag is None or lag.rows < stream.bulk_threshold:
                return None
            log.info(
                "Stream '%s': %s; at least bulk_threshold (%s), so this run upserts through Bulk API 2.0 jobs of up "
                "to %s records to send.",
                stream.name,
                lag.describe(),
                f"{stream.bulk_threshold:,}",
                f"{stream.bulk_job_records:,}",
            )
        return cls(run, run.bulk, left)

    def resume(self) -> None:
        """Jobs a killed task left: one closed and next in line is polled and committed (never uploaded again);
        any other is aborted. A delete job left is dealt with first: one never closed is aborted, any other is
        waited for until it ends (Salesforce does not say that an abort stops the records in progress at once, so
        the stricter choice: no delete of it may land after what this run writes). Its outcome is not counted:
        its upsert job's records are read again, and their deletes asked again."""
        for left in sorted(self.left, key=lambda job: job.operation != "delete"):
            if left.operation == "delete":
                self._end_left_delete_job(left)
                continue
            if self.run.stopped:
                self._abort(left, f"the stream stopped at record {shown(self.run.result.held_or_waiting)}", must=True)
                continue
            if left.state != "closed" or left.after_position != self.run.session.position:
                self._abort(
                    left,
                    "set aside by a reposition"
                    if left.state == "set aside"
                    else f"left {left.state} by an earlier task",
                    must=True,
                )
                continue
            log.warning(
                "Resuming Bulk API 2.0 job %s of stream '%s', left by an earlier task while Salesforce processed it: "
                "polling it, not uploading again.",
                left.job_id,
                self.stream.name,
            )
            # Read as that task read it: a record it took for unchanged was not in its CSV, whatever is asked now.
            job = self._read(left.after_position, left.records, until=left.last_position, resend_all=False)
            job.data, job.job_id = None, left.job_id
            try:
                self._finish(job)
            except NotFound as gone:
                log.warning(
                    "Bulk API 2.0 job %s of stream '%s', left by an earlier task, is gone from Salesforce (%s). "
                    "Nothing of it counts; its records are read and sent again now.",
                    left.job_id,
                    self.stream.name,
                    gone,
                )

    def _end_left_delete_job(self, left: bulk_jobs.RecordedJob) -> None:
        because = "a delete job left by an earlier task; its deletes are asked again"
        try:
            # Asked, not taken from what was recorded: a job set aside by a reposition may have been closed.
            if self.jobs.info(left.job_id)["state"] == "Open":  # never closed: Salesforce has not started on it
                self._abort(left, because, must=True)
                return
            log.warning(
                "Waiting for Bulk API 2.0 delete job %s of stream '%s' to end (%s).",
                left.job_id,
                self.stream.name,
                because,
            )
            info = self.jobs.wait(left.job_id, records=left.records)
        except NotFound:
            info = {"state": "gone from Salesforce"}
        bulk_jobs.set_state(self.run.session.conn, left.job_id, "done" if info["state"] == "JobComplete" else "failed")
        log.info("Bulk API 2.0 delete job %s ended %s.", left.job_id, info["state"])

    def read_next(self) -> None:
        """Read the next job's records into its CSV, after the last job launched (or the watermark)."""
        if self.next is not None or self.exhausted or self.run.stopped or len(self.launched) >= 2:
            return
        if self.run.limit_reached(self.records_read) or self.run.over_budget():
            self.exhausted = True
            return
        after = self.launched[-1].last if self.launched else self.run.session.position
        limit = min(
            BULK_JOB_READ_FACTOR * self.stream.bulk_job_records, self.stream.max_records_per_run - self.records_read
        )
        job = self._read(after, limit, to_send=self.stream.bulk_job_records)
        if not job.records:
            self.exhausted = True
            return
        self.records_read += len(job.records)
        self.next = job

    def send_ready(self) -> None:
        """Launch the job read, unless it shares a record with the job Salesforce is processing: then it waits."""
        if self.next is None or len(self.launched) >= 2:
            return
        shared = in_flight_already(self.next.keys, (job.keys for job in self.launched))
        if shared:
            log.info(
                "%d record(s) of stream '%s' changed while job %s, which sends their earlier version, runs; the "
                "next job waits for it.",
                sum(1 for record in self.next.records if identities([record]) & shared),
                self.stream.name,
                self.launched[-1].job_id,
            )
            return
        self._launch(self.next)
        self.launched.append(self.next)
        self.next = None

    def commit_answered(self) -> None:
        """Finish the oldest job (poll, match results, commit) once another stands behind it, or none will."""
        if not self.launched or self.run.stopped:
            return
        if len(self.launched) == 1 and self.next is None and not self.exhausted:
            return  # read the next job first, so it is uploaded while Salesforce processes this one
        head = self.launched.popleft()
        self._failed = head
        self._finish(head)
        self._failed = None

    def wait(self) -> None:
        """Nothing to wait for here: finishing a job polls it."""

    def finished(self) -> bool:
        return not self.launched and self.next is None and self.exhausted

    def drop_in_flight(self, because: str, *, failed: bool = False) -> int:
        """Abort the jobs still in Salesforce after a hold, or after a job of theirs failed; a job read but not
        launched cost nothing. A job left running by another failure (a lost connection, a refused upload) stays
        closed: the next run resumes it by polling."""
        self.next = None
        if failed and self._failed is None:
            return 0
        if self._failed is not None:
            because = f"job {self._failed.job_id} before it failed"
        dropped = len(self.launched)
        while self.launched:
            self._abort(self.launched.popleft(), because)
        return dropped

    def _read(
        self,
        after: list[str] | None,
        limit: int,
        *,
        to_send: int | None = None,
        until: list[str] | None = None,
        resend_all: bool | None = None,
    ) -> _Job:
        """Up to ``limit`` records after ``after`` (and at or before ``until``) into one job's CSV, page by page,
        and up to ``to_send`` records in the CSV (None: as many as ``limit`` allows)."""
        horizon = self.run.session.horizon(self.run.clock, fresh=True)  # one lookup per job: as far as it can go
        self.run.note_horizon(horizon, every_time=True)
        data = JobData(self.columns, max_bytes=self.max_job_bytes)
        position = after
        page = min(_FIRST_PAGE_ROWS, limit)
        full = False
        while not full and len(data.records) < limit and (to_send is None or data.sent < to_send):
            _horizon, records = self.run.session.read(
                position, page, until=until, horizon=horizon, resend_all=resend_all
            )
            for index, record in enumerate(records):
                if (to_send is not None and data.sent == to_send) or not data.add(record):
                    full = True  # this row and the rest are the next job's
                    self.run.session.not_taken(records[index:])
                    break
            if full or len(records) < page:
                break
            position = position_to_json(records[-1].position)
            # The next page as large as the bytes left allow, at this job's average row so far.
            per_row = max(1, data.size // len(data.records))
            page = max(1, min(BULK_PAGE_ROWS, limit - len(data.records), (self.max_job_bytes - data.size) // per_row))
        return _Job(after, data.records, data.csv() if data.sent else None)

    def _launch(self, job: _Job) -> None:
        """Create the job, record it, upload its CSV once and close it: Salesforce starts on it."""
        if job.data is None:
            return  # every record was rejected by the mapping: committed without Salesforce
        job.job_id = self.jobs.create()
        with self.run.session.conn.transaction():
            bulk_jobs.record(
                self.run.session.conn,
                self.stream,
                job.job_id,
                run_id=self.run.session.context.run_id,
                after=job.after,
                last=job.last,
                records=len(job.records),
            )
        try:
            self.jobs.upload(job.job_id, job.data)
            job.data = None
            bulk_jobs.set_state(self.run.session.conn, job.job_id, "uploaded")
            self.jobs.close(job.job_id)
        except RequestFailed:
            self._abort(job, "its upload failed")
            raise
        bulk_jobs.set_state(self.run.session.conn, job.job_id, "closed")
        log.info(
            "Bulk API 2.0 job %s: %d records of stream '%s' uploaded; Salesforce is processing them.",
            job.job_id,
            sum(1 for record in job.records if record.sent),
            self.stream.name,
        )

    def _abort(self, job: _Job | bulk_jobs.RecordedJob, because: str, *, must: bool = False) -> None:
        """Stop a job whose outcome will not be counted; its records are sent again later (upserts).

        A job Salesforce would not abort may still be running, and its older values could land after newer
        ones: it stays recorded, so the next run aborts it first. ``must``: then nothing more is sent now.
        """
        if job.job_id is None:
            return
        log.warning(
            "Aborting Bulk API 2.0 job %s of stream '%s' (%s); its records are sent again.",
            job.job_id,
            self.stream.name,
            because,
        )
        try:
            self.jobs.abort(job.job_id)
        except NotFound:
            pass  # Salesforce no longer has it: nothing of it runs
        except RequestFailed as exc:
            if exc.code != _ENDED:  # a job that ended cannot be aborted, and runs no more
                log.warning(
                    "Could not abort Bulk API 2.0 job %s (%s). It may still be running, so it stays recorded and "
                    "the next run aborts it before its records are sent another way.",
                    job.job_id,
                    exc,
                )
                if must:
                    raise RequestFailed(
                        f"Bulk API 2.0 job {job.job_id} of stream '{self.stream.name}' could not be aborted ({exc}) "
                        "and may still be running; nothing more is sent until it is aborted or done, so an older "
                        "version of its records never lands last. Airflow retries the task."
                    ) from None
                return
        try:
            bulk_jobs.set_state(self.run.session.conn, job.job_id, "aborted")
        except psycopg.Error as exc:  # the next run aborts it again: never hide the run's own outcome
            log.warning("Could not note job %s as aborted: %s", job.job_id, exc)

    def _finish(self, job: _Job) -> None:
        """Wait for the job, match its results back to its records and commit them as one batch."""
        if job.job_id is None:
            rejected = {index: record.rejection for index, record in enumerate(job.records) if record.rejection}
        else:
            rejected = self._outcome(job)
            if not job.records:  # a resumed job whose rows have all changed since: they are read again
                bulk_jobs.set_state(self.run.session.conn, job.job_id, "done")
                return
        self._send_beside_the_job(job, rejected)
        current = self._current_rows(job, rejected)
        retried = self._retry_transient(job, rejected, current)
        outcomes = []
        for index, record in enumerate(job.records):
            rejection = rejected.get(index)
            row = current.get(record.key) if index in retried or rejection is not None else None
            payload = record.outside_payload if record.outside_payload is not None else row.payload if row else None
            # What Salesforce confirmed: the job's row, or for a record sent again, the version sent again.
            fingerprint = row.fingerprint if index in retried and row is not None else record.fingerprint
            sent = SourceRecord(
                record.key,
                record.position,
                record.external_id,
                payload,
                None,
                fingerprint,
                record.unchanged,
                record.delete,
            )
            outcomes.append(RecordOutcome(sent, rejection))
        job_id = job.job_id
        done = None if job_id is None else lambda: bulk_jobs.set_state(self.run.session.conn, job_id, "done")
        self.run.commit_outcomes(outcomes, with_it=done)

    def _outcome(self, job: _Job) -> dict[int, RejectedRecord]:
        """The rejected records of a finished job, by index; a failed job or unprocessed records raise."""
        assert job.job_id is not None, "a job with nothing sent has no outcome in Salesforce"
        job_id = job.job_id
        try:
            info = self.jobs.wait(job_id, records=sum(1 for record in job.records if record.sent))
            if info["state"] == "JobComplete":
                saved, failed = self.jobs.results(job_id)
        except (NotFound, JobResultsUnreadable):
            # Neither comes right by waiting: Salesforce deleted the job (7 days after it ended, "Bulk API and
            # Bulk API 2.0 Limits and Allocations") or its results cannot be read. It counts for nothing.
            bulk_jobs.set_state(self.run.session.conn, job_id, "failed")
            raise
        if info["state"] != "JobComplete":
            bulk_jobs.set_state(self.run.session.conn, job_id, "failed")
            raise RequestFailed(
                f"Bulk API 2.0 job {job.job_id} of stream '{self.stream.name}' ended {info['state']}: "
                f"{info.get('errorMessage') or 'Salesforce gave no reason'}. Nothing of it was recorded and the "
                "watermark did not move; its records are sent again."
            )
        matched = match_results(job.records, saved=saved, rejected=failed, case_sensitive=self.jobs.case_sensitive)
        if matched.unprocessed:
            bulk_jobs.set_state(self.run.session.conn, job_id, "failed")
            first = job.records[matched.unprocessed[0]]
            raise RequestFailed(
                f"Bulk API 2.0 job {job.job_id} of stream '{self.stream.name}' left {len(matched.unprocessed)} "
                f"record(s) unprocessed (the first: record {shown(first.key)}, {self.stream.external_id_field} = "
                f"{shown(first.external_id)}). Nothing of it was recorded and the watermark did not move; its records "
                "are sent again."
            )
        return matched.rejected

    def _send_beside_the_job(self, job: _Job, rejected: dict[int, RejectedRecord]) -> None:
        """Send the records a CSV cannot carry exactly (``values.NotInCsv``) through sObject Collections, and delete
        those marked deleted: through sObject Collections, or when there are at least :data:`DELETE_JOB_RECORDS`,
        in one Bulk API 2.0 delete job.

        They were read with the job, so no other job or request holds them; they
        are sent once the job is done and committed with it, in source order.
        """

        def sent(index: int) -> SourceRecord:
            r = job.records[index]
            return SourceRecord(r.key, r.position, r.external_id, r.outside_payload, delete=r.delete)

        beside = [index for index, record in enumerate(job.records) if record.outside_payload is not None]
        deletes = [index for index in beside if job.records[index].delete]
        outcomes: list[tuple[int, RecordOutcome]] = []
        if len(deletes) >= DELETE_JOB_RECORDS:
            beside = [index for index in beside if not job.records[index].delete]
            gone = self.run.writer.delete_by([sent(index) for index in deletes], lambda ids: self._delete_job(job, ids))
            outcomes += zip(deletes, gone, strict=True)
        for start in range(0, len(beside), MAX_BATCH_SIZE):
            indexes = beside[start : start + MAX_BATCH_SIZE]
            outcomes += zip(indexes, self.run.writer.send([sent(index) for index in indexes]), strict=True)
        for index, outcome in outcomes:
            if outcome.rejection is not None:
                rejected[index] = outcome.rejection

    def _delete_job(self, job: _Job, ids: list[str]) -> dict[str, RejectedRecord]:
        """Delete these Salesforce Ids in one Bulk API 2.0 delete job ("Create a Job", operation ``delete``); the
        refusals by Id. Recorded first, so the next run deals with a job a killed task left before anything else is
        sent (:meth:`resume`). A job that fails or leaves records unprocessed is a request failure, as an upsert
        job's."""
        job_id = self.jobs.create("delete")
        with self.run.session.conn.transaction():
            bulk_jobs.record(
                self.run.session.conn,
                self.stream,
                job_id,
                run_id=self.run.session.context.run_id,
                after=job.after,
                last=job.last,
                records=len(ids),
                operation="delete",
            )
        try:
            self.jobs.upload(job_id, "Id\n" + "".join(f"{salesforce_id}\n" for salesforce_id in ids))
            self.jobs.close(job_id)
        except RequestFailed:
            self._abort(_Job(job.after, [], None, job_id), "its upload failed")
            raise
        bulk_jobs.set_state(self.run.session.conn, job_id, "closed")
        log.info(
            "Bulk API 2.0 delete job %s: %d records of stream '%s' marked deleted%s.",
            job_id,
            len(ids),
            self.stream.name,
            "" if job.job_id is None else f", after upsert job {job.job_id}",
        )
        info = self.jobs.wait(job_id, records=len(ids))
        failed_state = info["state"] != "JobComplete"
        saved, refused = (set(), {}) if failed_state else self.jobs.results(job_id, by_id=True)
        unprocessed = [
            salesforce_id for salesforce_id in ids if salesforce_id not in saved and salesforce_id not in refused
        ]
        if failed_state or unprocessed:
            bulk_jobs.set_state(self.run.session.conn, job_id, "failed")
            why = (
                f"ended {info['state']}: {info.get('errorMessage') or 'Salesforce gave no reason'}"
                if failed_state
                else f"left {len(unprocessed)} record(s) unprocessed (the first: Id {unprocessed[0]})"
            )
            raise RequestFailed(
                f"Bulk API 2.0 delete job {job_id} of stream '{self.stream.name}' {why}. Nothing of it (nor of the "
                "records read with it) was recorded and the watermark did not move; they are read and sent again."
            )
        bulk_jobs.set_state(self.run.session.conn, job_id, "done")
        # Refused for a transient reason (a row lock): deleted again through sObject Collections, which retries
        # such refusals itself, before they count, as an upsert job's are sent again (_retry_transient).
        transient = [salesforce_id for salesforce_id, rejection in refused.items() if rejection.transient]
        for start in range(0, len(transient), MAX_BATCH_SIZE):
            chunk = transient[start : start + MAX_BATCH_SIZE]
            for salesforce_id, answer in zip(chunk, self.run.writer.delete(chunk), strict=True):
                if isinstance(answer, RejectedRecord):
                    refused[salesforce_id] = answer
                else:
                    del refused[salesforce_id]
        return refused

    def _current_rows(self, job: _Job, rejected: dict[int, RejectedRecord]) -> dict[str, SourceRecord]:
        """The rows of the records Salesforce rejected, read again by key: their payloads were not kept.

        A row unchanged since the job read it maps to exactly the payload sent;
        one changed since gives its new version (the one the re-export sends).
        """
        keys = [job.records[index].key for index in rejected if job.records[index].sent]
        return self.run.session.records_by_key(keys) if keys else {}

    def _retry_transient(
        self, job: _Job, rejected: dict[int, RejectedRecord], current: dict[str, SourceRecord]
    ) -> set[int]:
        """Send the records rejected for a transient reason again through sObject Collections.

        A row deleted since keeps its rejection (its ExportErrors row is closed
        as source_deleted by the re-export); one that no longer maps gets the
        mapping's rejection.
        """
        retry: list[int] = []
        for index, rejection in list(rejected.items()):
            record = job.records[index]
            row = current.get(record.key)
            if not (rejection.transient and record.sent and row is not None):
                continue
            if row.payload is None:
                if row.rejection is not None:
                    rejected[index] = row.rejection
            else:
                retry.append(index)
        for start in range(0, len(retry), MAX_BATCH_SIZE):
            indexes = retry[start : start + MAX_BATCH_SIZE]
            sent = [current[job.records[index].key] for index in indexes]
            for index, outcome in zip(indexes, self.run.writer.send(sent), strict=True):
                if outcome.rejection is None:
                    del rejected[index]
                else:
                    rejected[index] = outcome.rejection
        return set(retry)
