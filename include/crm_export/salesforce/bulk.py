"""Bulk API 2.0 ingest jobs (upsert by external id) through simple-salesforce's ``bulk2`` client.

The steps of the *Bulk API 2.0 and Bulk API Developer Guide*: create a job,
upload its CSV once, close it (``UploadComplete``; Salesforce starts only
then), poll its state with backoff until ``JobComplete``, ``Failed`` or
``Aborted``, read the successful and failed results (``bulk_csv`` matches
them back to the records). Used by the export's backfill path
(``export._Backfill``), which records each job in PostgreSQL and aborts one never closed.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceError, SalesforceExpiredSession, SalesforceOperationError
from simple_salesforce.util import call_salesforce

from include.crm_export import bulk_csv
from include.crm_export.errors import JobResultsUnreadable, RejectedRecord, RequestFailed, RequestRefused
from include.crm_export.salesforce.describe import ASSIGNABLE_OBJECTS
from include.crm_export.salesforce.refusals import refusal
from include.crm_export.salesforce.session import SessionRenewer

log = logging.getLogger(__name__)

DONE_STATES = ("JobComplete", "Failed", "Aborted")


def next_poll(
    pause: float,
    last: tuple[float, int] | None,
    seen: tuple[float, int],
    *,
    records: int,
    shortest: float,
    longest: float,
) -> float:
    """How long to wait before polling a job again.

    ``last`` and ``seen``: (time, records processed) at the poll before and at
    this one. Once the job is seen to progress, the wait is the time its
    remaining records take at the rate seen (each poll is an API request, so
    none is spent while the job is far from done, and the end is not
    overslept); before that, the wait grows by half each time.
    """
    if last is None:
        return shortest
    (then, before), (now, processed) = last, seen
    if records and processed > before and now > then:
        rate = (processed - before) / (now - then)
        return min(max((records - processed) / rate, shortest), longest)
    return min(pause * 1.5, longest)


class BulkJobs:
    def __init__(
        self,
        sf: Salesforce,
        *,
        sobject: str,
        external_id_field: str,
        renewer: SessionRenewer | None = None,
        case_sensitive: bool = False,
        assignment_rules: bool = True,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        first_poll_seconds: float = 0.5,
        max_poll_seconds: float = 10.0,
        timeout_seconds: float = 3600.0,
    ) -> None:
        self.sf = sf
        self.renewer = renewer
        self.case_sensitive = case_sensitive  # describe's caseSensitive of the external id field
        self.client = getattr(sf.bulk2, sobject)._client
        self.sobject = sobject
        self.external_id_field = external_id_field
        self.sleep = sleep
        self.clock = clock
        self.first_poll_seconds = first_poll_seconds
        self.max_poll_seconds = max_poll_seconds
        self.timeout_seconds = timeout_seconds
        self.requests_sent = 0
        self.assignment_rules = assignment_rules

    def _call(self, doing: str, call: Callable[[], Any], *, renewed: bool = False) -> Any:
        """One Bulk API 2.0 request; every refusal goes through the one translation (``salesforce.refusal``)."""
        self.requests_sent += 1
        try:
            return call()
        except SalesforceExpiredSession as exc:
            if renewed or not self._renew_session():
                raise refusal(exc, doing=doing) from None
        except SalesforceError as exc:
            raise refusal(exc, doing=doing) from None
        except SalesforceOperationError as exc:  # simple-salesforce's own checks (e.g. the 100 MB data limit)
            raise RequestFailed(
                f"Could not {doing}: {exc}. Where the job's data is too large, lower the stream's bulk_job_records "
                "or bulk_job_megabytes."
            ) from None
        except requests.exceptions.RequestException as exc:
            raise RequestFailed(f"Could not reach Salesforce to {doing}: {type(exc).__name__}: {exc}") from None
        return self._call(doing, call, renewed=True)

    def _renew_session(self) -> bool:
        """Take the session the REST client holds now (renewed there, or renewed here); False if none is new.

        simple-salesforce's Bulk API 2.0 client copies the token it was built
        with, so a session renewed on the REST side would never reach it.
        """
        if self.renewer is not None:
            log.warning("Salesforce session expired during a Bulk API 2.0 request; renewing it")
            self.renewer.renew(self.sf)
        elif getattr(self.sf, "_salesforce_login_partial", None) is not None:
            # A session simple-salesforce logged in itself (password, JWT, client credentials): log in again.
            log.warning("Salesforce session expired during a Bulk API 2.0 request; logging in again")
            self.sf._refresh_session()
        token = f"Bearer {self.sf.session_id}"
        if self.client.headers.get("Authorization") == token:
            return False
        self.client.headers["Authorization"] = token
        return True

    def create(self, operation: str = "upsert") -> str:
        """ "Create a Job" (Bulk API 2.0), CSV: an upsert by the external id with the assignment rule to run, or a
        ``delete`` (its data one ``Id`` column, "Prepare CSV Files"; deleted records go to the Recycle Bin)."""
        payload = {
            "object": self.sobject,
            "operation": operation,
            "contentType": "CSV",
            "columnDelimiter": "COMMA",
            "lineEnding": "LF",
        }
        if operation == "upsert":
            payload["externalIdFieldName"] = self.external_id_field
            rule = self._assignment_rule_id
            if rule is not None:
                payload["assignmentRuleId"] = rule
        info = self._call(
            f"create a Bulk API 2.0 {operation} job on {self.sobject}",
            lambda: call_salesforce(
                url=self.client._construct_request_url(None, False),
                method="POST",
                session=self.client.session,
                headers=self.client._get_headers(self.client.JSON_CONTENT_TYPE, self.client.JSON_CONTENT_TYPE),
                data=json.dumps(payload),
            ).json(),
        )
        return str(info["id"])

    @functools.cached_property
    def _assignment_rule_id(self) -> str | None:
        """The rule a job of this stream runs. REST runs the object's active assignment rule unless told not to
        ("Assignment Rule Header", REST API Developer Guide); a Bulk API 2.0 job runs only the rule it names
        (``assignmentRuleId``, "Create a Job"). So that both paths write the same owners, a stream with
        ``assignment_rules`` on names the active rule of its Lead or Case object (asked once per run: cached, not
        when the question failed)."""
        # API names are case-insensitive in Salesforce: 'lead' is Lead.
        sobject = next((name for name in ASSIGNABLE_OBJECTS if name.lower() == self.sobject.lower()), None)
        if not self.assignment_rules or sobject is None:
            return None
        soql = f"SELECT Id FROM AssignmentRule WHERE SobjectType = '{sobject}' AND Active = true"
        try:
            answer = self._call(f"find the active assignment rule of {sobject}", lambda: self.sf.query(soql))
        except RequestFailed as exc:
            if exc.status not in (400, 403, 404):
                raise
            raise RequestRefused(
                f"{exc} A Bulk API 2.0 job of a {sobject} stream names the org's active assignment rule, so "
                "that it assigns owners as the REST path does; the integration user must be able to read "
                "AssignmentRule. Grant that, or set the stream's assignment_rules: false (owners from the "
                "source, on both paths), then clear this task.",
                status=exc.status,
                code=exc.code,
            ) from None
        records = answer.get("records") or []
        return str(records[0]["Id"]) if records else None

    def upload(self, job_id: str, data: str) -> None:
        self._call(f"take the data of job {job_id}", lambda: self.client.upload_job_data(job_id, data))

    def close(self, job_id: str) -> None:
        self._call(f"start job {job_id}", lambda: self.client.close_job(job_id))

    def abort(self, job_id: str) -> None:
        self._call(f"abort job {job_id}", lambda: self.client.abort_job(job_id, False))

    def info(self, job_id: str) -> dict[str, Any]:
        return dict(self._call(f"report on job {job_id}", lambda: self.client.get_job(job_id, False)))

    def wait(self, job_id: str, *, records: int = 0) -> dict[str, Any]:
        """Poll until the job is done; ``records``: how many were uploaded, to time the polls by its progress."""
        started, pause, last = self.clock(), self.first_poll_seconds, None
        while True:
            info = self.info(job_id)
            if info["state"] in DONE_STATES:
                return info
            now = self.clock()
            if now - started > self.timeout_seconds:
                raise RequestFailed(
                    f"Bulk API 2.0 job {job_id} is still {info['state']} after {self.timeout_seconds:.0f}s; "
                    "the next run polls it again"
                )
            seen = (now, int(info.get("numberRecordsProcessed") or 0))
            pause = next_poll(
                pause, last, seen, records=records, shortest=self.first_poll_seconds, longest=self.max_poll_seconds
            )
            last = seen
            self.sleep(pause)

    def results(self, job_id: str, *, by_id: bool = False) -> tuple[set[str], dict[str, RejectedRecord]]:
        """The external ids saved and those rejected (with their errors), read from the two result sets; ``by_id``:
        the Salesforce Ids instead, for a delete job (an Id is matched exactly).

        Each set is downloaded as bytes and read as UTF-8 (the encoding of Bulk
        API 2.0 data, "Prepare CSV Files"): a CSV response without a charset
        would otherwise be taken as ISO-8859-1 and a non-ASCII external id
        would no longer match. Only the external ids are kept, not the rows.
        """
        with tempfile.TemporaryDirectory(prefix="crm-export-bulk-") as folder:
            saved = self._download(job_id, "successfulResults", Path(folder), "list the saved records of job")
            failed = self._download(job_id, "failedResults", Path(folder), "list the failed records of job")
            # A result row repeats the values sent, up to Bulk API 2.0's 32,000 characters a field (more than
            # the csv module's default limit of 131,072 once several are quoted): no field limit when reading.
            csv.field_size_limit(sys.maxsize)
            field, exact = ("Id", True) if by_id else (self.external_id_field, self.case_sensitive)
            try:
                with saved.open(encoding="utf-8", newline="") as rows:
                    saved_ids = bulk_csv.saved_ids(csv.reader(rows), field, case_sensitive=exact)
                with failed.open(encoding="utf-8", newline="") as rows:
                    failed_ids = bulk_csv.rejections(csv.reader(rows), field, case_sensitive=exact)
                    return saved_ids, failed_ids
            except (UnicodeDecodeError, csv.Error, ValueError) as exc:
                raise JobResultsUnreadable(
                    f"The results of job {job_id} cannot be read as UTF-8 CSV: {exc}. Nothing of the job counts; "
                    "its records are sent again."
                ) from None

    def _download(self, job_id: str, kind: str, folder: Path, doing: str) -> Path:
        path = folder / f"{kind}.csv"
        self._call(f"{doing} {job_id}", lambda: self.client.download_ingest_results(str(path), job_id, kind, 1 << 20))
        return path
