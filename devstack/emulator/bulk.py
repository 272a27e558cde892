"""Bulk API 2.0 ingest (upsert, delete, hardDelete), as the *Bulk API 2.0 and Bulk API Developer Guide* describes it.

A job is created (``POST /jobs/ingest``: object, ``externalIdFieldName``,
``operation: upsert``, ``contentType: CSV``), its data uploaded once as CSV
(``PUT /jobs/ingest/{id}/batches``, 201 Created, "Upload Job Data"), closed
(``PATCH {"state": "UploadComplete"}``, "Upload Complete": processing starts
only then) or aborted (``{"state": "Aborted"}``), polled (``GET``: state
``Open``, ``UploadComplete``, ``InProgress``, ``JobComplete``, ``Failed``,
``Aborted``; ``numberRecordsProcessed``, ``numberRecordsFailed``) and its
three result sets read as CSV ("Get Job Successful Record Results": columns
``sf__Id``, ``sf__Created`` then the uploaded ones; "Get Job Failed Record
Results": ``sf__Id``, ``sf__Error`` then the uploaded ones; "Get Job
Unprocessed Record Results": the uploaded columns), then deleted.

A ``delete`` or ``hardDelete`` job ("Create a Job": ``operation``; "Prepare
CSV Files": its data is one ``Id`` column) deletes through the same code as
sObject Collections' delete (``Org.collection_delete``: delete rules,
cascades, ``ENTITY_IS_DELETED`` for a record in the Recycle Bin); a
``hardDelete`` leaves nothing in the Recycle Bin and needs the user's "Bulk
API Hard Delete" permission (Data Loader Guide, "Enable Bulk API 2.0": hard
deleted records cannot be recovered). How Salesforce refuses a hard delete
without it the guides do not say; the stricter answer is given: the job is
refused when it is created (400 ``INVALIDJOB``), before anything is deleted.

Records go through the same validation and rules as the REST path (they are
applied 200 at a time through ``Org.upsert``), so a rule that rejects a record
rejects it here too. CSV values are text: an empty value leaves the field as
it is and ``#N/A`` empties it ("Prepare CSV Files"). A header naming a field
the object does not have fails the job ("InvalidBatch : Field name not
found"). Processing takes ``records_per_second`` (``Timing.bulk_records_per_second``;
0 = at once), so a job is ``InProgress`` for a while as in a real org. Where
the guide is silent (a second upload to one job, results before the job is
done), the stricter answer is given: refused. A job that ended is deleted after
``retention_seconds`` (7 days, as Salesforce does), then answers 404.
"""

from __future__ import annotations

import asyncio
import csv
import io
import secrets
import string
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from devstack.emulator.schema import ObjectSchema, RequestRejected

CHUNK = 200
_ID_CHARS = string.ascii_letters + string.digits

OPEN, UPLOAD_COMPLETE, IN_PROGRESS, JOB_COMPLETE, FAILED, ABORTED = (
    "Open",
    "UploadComplete",
    "InProgress",
    "JobComplete",
    "Failed",
    "Aborted",
)
_NUMBER_TYPES = {"double", "currency", "percent"}
UPSERT, DELETE, HARD_DELETE = "upsert", "delete", "hardDelete"


@dataclass
class IngestJob:
    id: str
    sobject: str
    external_id_field: str
    api_version: str
    state: str = OPEN
    created: str = field(default_factory=lambda: _now())
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    successful: list[tuple[str, bool, list[str]]] = field(default_factory=list)
    failed: list[tuple[str, str, list[str]]] = field(default_factory=list)
    processed: int = 0
    error_message: str | None = None
    uploaded: bool = False
    assignment_rule_id: str | None = None
    task: asyncio.Task | None = None
    ended_at: float | None = None  # monotonic time it reached JobComplete, Failed or Aborted
    operation: str = "upsert"  # upsert, delete or hardDelete

    def info(self) -> dict[str, Any]:
        body = {
            "id": self.id,
            "operation": self.operation,
            "object": self.sobject,
            "createdById": "005000000000001AAA",
            "createdDate": self.created,
            "systemModstamp": _now(),
            "state": self.state,
            **({"externalIdFieldName": self.external_id_field} if self.operation == UPSERT else {}),
            "concurrencyMode": "Parallel",
            "contentType": "CSV",
            "apiVersion": float(self.api_version),
            "jobType": "V2Ingest",
            "lineEnding": "LF",
            "columnDelimiter": "COMMA",
            "numberRecordsProcessed": self.processed,
            **({"assignmentRuleId": self.assignment_rule_id} if self.assignment_rule_id else {}),
            "numberRecordsFailed": len(self.failed),
            "retries": 0,
            "totalProcessingTime": 0,
        }
        if self.state == OPEN:
            body["contentUrl"] = f"services/data/v{self.api_version}/jobs/ingest/{self.id}/batches"
        if self.error_message:
            body["errorMessage"] = self.error_message
        return body

    def unprocessed(self) -> list[list[str]]:
        return self.rows[self.processed :]


def _column_target(schema: ObjectSchema, column: str) -> Any:
    """What a header column sets: a field (its spec), or for ``[Object:]Relationship.Field`` the reference
    field, the parent's object and the parent's field ("Relationship Fields in a Header Row (2.0)"; the object
    is required when the field points at several); None when the object has neither."""
    spec = schema.field_named(column)
    if spec is not None:
        return spec
    relationship, dot, field = column.partition(".")
    if not dot or not field or "." in field:
        return None
    sobject, colon, name = relationship.rpartition(":")
    reference = schema.reference_named(name)
    if reference is None:
        return None
    if not colon:
        if len(reference.reference_to) != 1:
            return None
        sobject = reference.reference_to[0]
    if sobject not in reference.reference_to:
        return None
    return reference, sobject, field


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+0000"


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def _job_id() -> str:
    """Unique across restarts of the emulator, as a real org's ids are."""
    return "750" + "".join(secrets.choice(_ID_CHARS) for _ in range(12)) + "AAA"


class BulkIngest:
    """The org's ingest jobs."""

    def __init__(self, org: Any) -> None:
        self.org = org
        self.jobs: dict[str, IngestJob] = {}
        # "Jobs that are older than 7 days are deleted if they are in a terminal state" (Bulk API and Bulk API
        # 2.0 Limits and Allocations); settable so a test can see a job expire.
        self.retention_seconds = 7 * 86_400.0

    def cancel_all(self) -> None:
        for job in self.jobs.values():
            if job.task is not None:
                job.task.cancel()

    def create(self, body: Any, version: str) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise RequestRejected(400, "INVALIDJOB", "The request body must be a JSON object")
        operation = body.get("operation")
        if operation not in (UPSERT, DELETE, HARD_DELETE):
            raise RequestRejected(
                400, "INVALIDJOB", f"Unsupported operation: {operation!r} (upsert, delete or hardDelete)"
            )
        if operation == HARD_DELETE and not self.org.hard_delete_allowed:
            raise RequestRejected(
                400,
                "INVALIDJOB",
                "The user does not have the Bulk API Hard Delete permission needed for operation hardDelete",
            )
        if body.get("contentType", "CSV") != "CSV" or body.get("columnDelimiter", "COMMA") != "COMMA":
            raise RequestRejected(400, "INVALIDJOB", "Only CSV with COMMA delimiters is served")
        schema: ObjectSchema = self.org.schema(str(body.get("object")))
        if operation != UPSERT:
            job_id = _job_id()
            self.jobs[job_id] = IngestJob(job_id, schema.name, "", version, operation=operation)
            self.org.counters["bulk.jobs_created"] += 1
            return self.jobs[job_id].info()
        external = schema.field_named(str(body.get("externalIdFieldName")))
        if external is None or not external.external_id:
            raise RequestRejected(
                400, "INVALIDJOB", f"Invalid external ID field: {body.get('externalIdFieldName')} on {schema.name}"
            )
        rule_id = body.get("assignmentRuleId")
        rules = self.org.assignment_rules
        if rule_id is not None and (rule_id not in rules or rules[rule_id].sobject != schema.name):
            raise RequestRejected(400, "INVALIDJOB", f"Invalid assignmentRuleId: {rule_id!r}")
        job_id = _job_id()
        job = IngestJob(job_id, schema.name, external.name, version, assignment_rule_id=rule_id)
        self.jobs[job_id] = job
        self.org.counters["bulk.jobs_created"] += 1
        return job.info()

    def job(self, job_id: str) -> IngestJob:
        job = self.jobs.get(job_id)
        if job is not None and job.ended_at is not None and time.monotonic() - job.ended_at > self.retention_seconds:
            del self.jobs[job_id]
            job = None
        if job is None:
            raise RequestRejected(404, "NOT_FOUND", f"Could not find the job {job_id}")
        return job

    def upload(self, job_id: str, data: bytes) -> None:
        job = self.job(job_id)
        if job.state != OPEN or job.uploaded:
            # The guide speaks of one upload per job; a second one is refused (the stricter reading).
            raise RequestRejected(409, "INVALIDJOBSTATE", f"Job {job_id} is not open for data (state {job.state})")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestRejected(400, "INVALIDBATCH", "The job data is not UTF-8") from None
        rows = list(csv.reader(io.StringIO(text)))
        if not rows:
            raise RequestRejected(400, "INVALIDBATCH", "The job data has no header row")
        job.columns, job.rows, job.uploaded = rows[0], rows[1:], True
        self.org.counters["bulk.records_uploaded"] += len(job.rows)

    def change_state(self, job_id: str, body: Any, records_per_second: float) -> dict[str, Any]:
        job = self.job(job_id)
        wanted = body.get("state") if isinstance(body, dict) else None
        if wanted == UPLOAD_COMPLETE:
            if job.state != OPEN:
                raise RequestRejected(409, "INVALIDJOBSTATE", f"Job {job_id} is {job.state}, not Open")
            job.state = UPLOAD_COMPLETE
            job.task = asyncio.get_running_loop().create_task(self._process(job, records_per_second))
        elif wanted == ABORTED:
            if job.state in (JOB_COMPLETE, FAILED, ABORTED):
                raise RequestRejected(409, "INVALIDJOBSTATE", f"Job {job_id} is {job.state} and cannot be aborted")
            job.state, job.ended_at = ABORTED, time.monotonic()
            if job.task is not None:
                job.task.cancel()
        else:
            raise RequestRejected(400, "INVALIDJOB", "state must be UploadComplete or Aborted")
        return job.info()

    def delete(self, job_id: str) -> None:
        job = self.job(job_id)
        if job.state in (OPEN, IN_PROGRESS):
            raise RequestRejected(409, "INVALIDJOBSTATE", f"Job {job_id} is {job.state}: abort or wait for it first")
        del self.jobs[job_id]

    def results(self, job_id: str, kind: str) -> str:
        if kind not in ("successfulResults", "failedResults", "unprocessedrecords"):
            raise RequestRejected(404, "NOT_FOUND", f"The requested resource does not exist: {kind}")
        job = self.job(job_id)
        if job.state not in (JOB_COMPLETE, FAILED, ABORTED):
            raise RequestRejected(409, "INVALIDJOBSTATE", f"Job {job_id} is {job.state}: no results yet")
        if kind == "successfulResults":
            return _csv(
                ["sf__Id", "sf__Created", *job.columns], [[i, str(c).lower(), *r] for i, c, r in job.successful]
            )
        if kind == "failedResults":
            return _csv(["sf__Id", "sf__Error", *job.columns], [["", e, *r] for _, e, r in job.failed])
        return _csv(job.columns, job.unprocessed())

    async def _process(self, job: IngestJob, records_per_second: float) -> None:
        await asyncio.sleep(0)
        if job.state == ABORTED:
            return
        if job.operation != UPSERT:
            await self._process_deletes(job, records_per_second)
            return
        schema: ObjectSchema = self.org.schema(job.sobject)
        unknown = [column for column in job.columns if _column_target(schema, column) is None]
        for column in job.columns:
            target = _column_target(schema, column)
            if isinstance(target, tuple):
                try:
                    indexed = self.org.schema(target[1]).field_named(target[2])
                except RequestRejected:
                    indexed = None
                if indexed is None or not indexed.external_id:
                    unknown.append(column)
        if unknown or job.external_id_field.lower() not in (c.lower() for c in job.columns):
            job.state, job.ended_at = FAILED, time.monotonic()
            missing = unknown[0] if unknown else job.external_id_field
            job.error_message = f"InvalidBatch : Field name not found : {missing}"
            return
        job.state = IN_PROGRESS
        after, how = self.org.bulk_failure(job.sobject) or (None, None)
        for start in range(0, len(job.rows), CHUNK):
            if job.state == ABORTED:
                return
            if how == "fail" and start >= after:
                job.state, job.ended_at = FAILED, time.monotonic()
                job.error_message = "InternalServerError : the job failed while processing (emulated)"
                return
            chunk = job.rows[start : start + CHUNK]
            for row, outcome in zip(chunk, self._apply(job, schema, chunk), strict=True):
                if how == "unrecorded" and job.processed >= after:
                    pass  # processed, but its result is not recorded
                elif outcome.get("success"):
                    job.successful.append((outcome["id"], bool(outcome.get("created")), row))
                else:
                    error = outcome["errors"][0]
                    fields = ":".join(error.get("fields") or [])
                    job.failed.append(("", f"{error['statusCode']}:{error['message']}:{fields}", row))
                job.processed += 1
            self.org.counters["bulk.records_processed"] += len(chunk)
            # Salesforce processes a job in the background: the org answers other requests meanwhile.
            await asyncio.sleep(len(chunk) / records_per_second if records_per_second else 0)
        job.state, job.ended_at = JOB_COMPLETE, time.monotonic()

    async def _process_deletes(self, job: IngestJob, records_per_second: float) -> None:
        """A delete or hardDelete job: its one column is ``Id`` ("Prepare CSV Files"); each chunk is deleted as
        sObject Collections deletes (allOrNone false), a hard delete leaving nothing in the Recycle Bin."""
        if [column.lower() for column in job.columns] != ["id"]:
            job.state, job.ended_at = FAILED, time.monotonic()
            job.error_message = f"InvalidBatch : a {job.operation} job takes one column, Id, not {job.columns}"
            return
        job.state = IN_PROGRESS
        for start in range(0, len(job.rows), CHUNK):
            if job.state == ABORTED:
                return
            chunk = job.rows[start : start + CHUNK]
            in_bin = set(self.org.recycle_bin)
            outcomes = self.org.collection_delete([row[0] if row else "" for row in chunk])
            if job.operation == HARD_DELETE:
                for gone in set(self.org.recycle_bin) - in_bin:
                    del self.org.recycle_bin[gone]
            for row, outcome in zip(chunk, outcomes, strict=True):
                if outcome.get("success"):
                    job.successful.append((outcome["id"], False, row))
                else:
                    error = outcome["errors"][0]
                    job.failed.append(("", f"{error['statusCode']}:{error['message']}:", row))
                job.processed += 1
            self.org.counters["bulk.records_processed"] += len(chunk)
            await asyncio.sleep(len(chunk) / records_per_second if records_per_second else 0)
        job.state, job.ended_at = JOB_COMPLETE, time.monotonic()

    def _apply(self, job: IngestJob, schema: ObjectSchema, chunk: list[list[str]]) -> list[dict[str, Any]]:
        records = []
        problems: list[str | None] = []
        for row in chunk:
            try:
                records.append(self._record(job, schema, row))
                problems.append(None)
            except ValueError as exc:
                records.append(None)
                problems.append(str(exc))
        sendable = [r for r in records if r is not None]
        answers = iter(
            self.org.upsert(
                job.sobject,
                job.external_id_field,
                {"allOrNone": False, "records": sendable},
                assign=self.org.bulk_assignment(job.assignment_rule_id),
            )
            if sendable
            else []
        )
        outcomes = []
        for record, problem in zip(records, problems, strict=True):
            if record is None:
                outcomes.append({"success": False, "errors": [{"statusCode": "INVALID_FIELD", "message": problem}]})
            else:
                outcomes.append(next(answers))
        return outcomes

    @staticmethod
    def _record(job: IngestJob, schema: ObjectSchema, row: list[str]) -> dict[str, Any]:
        if len(row) != len(job.columns):
            raise ValueError(f"the row has {len(row)} values for {len(job.columns)} columns")
        record: dict[str, Any] = {"attributes": {"type": job.sobject}}
        for column, text in zip(job.columns, row, strict=True):
            if text == "":
                continue  # an empty value leaves the field as it is
            spec = schema.field_named(column)
            if spec is None:  # [Object:]Relationship.Field: the parent by one of its indexed fields
                reference, sobject, field = _column_target(schema, column)
                if text == "#N/A":
                    raise ValueError(f"{column}: #N/A cannot name a parent; clear {reference.name} instead")
                record[reference.relationship_name] = {"attributes": {"type": sobject}, field: text}
                continue
            if text == "#N/A":
                record[spec.name] = None
            elif spec.type in _NUMBER_TYPES or spec.type == "int":
                try:
                    number = Decimal(text)
                except InvalidOperation:
                    raise ValueError(f"{spec.name}: '{text}' is not a valid value for the type {spec.type}") from None
                record[spec.name] = int(number) if spec.type == "int" and number == number.to_integral() else number
            elif spec.type == "boolean":
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(f"{spec.name}: '{text}' is not a valid value for the type boolean")
                record[spec.name] = text.lower() in ("true", "1")
            else:
                record[spec.name] = text
        return record
