"""Upserts by external id through sObject Collections, 200 records a request, ``allOrNone=false``."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceError, SalesforceExpiredSession, SalesforceMalformedRequest

from include.crm_export import exact_json
from include.crm_export.batch import RecordOutcome
from include.crm_export.concurrency import LOCK_CODES, Concurrency
from include.crm_export.config import Stream
from include.crm_export.deletes import delete_refusal
from include.crm_export.errors import (
    NotFound,
    RejectedRecord,
    RequestFailed,
    RequestRefused,
    ServerBusy,
    StreamConfigError,
)
from include.crm_export.fingerprints import to_send
from include.crm_export.http import SalesforceSession
from include.crm_export.mapping import SourceRecord, external_id_match_key
from include.crm_export.names import MAX_BATCH_SIZE
from include.crm_export.quoting import soql_literal
from include.crm_export.salesforce.refusals import error_code, error_message, first_error, refusal
from include.crm_export.salesforce.session import SessionRenewer
from include.crm_export.write_modes import apply_mode, asks_salesforce

log = logging.getLogger(__name__)

# Called with the request (method, path, body) and Salesforce's answer (parsed
# JSON, or the error body of a refused request): the CLI's `send` prints both.
Trace = Callable[[str, str, dict[str, Any], Any], None]


@dataclass(frozen=True)
class Saved:
    """Salesforce confirmed the record."""

    id: str
    created: bool


Result = Saved | RejectedRecord


class CollectionWriter:
    """Upserts records by external id through sObject Collections (``allOrNone=false``).

    - Results come back per record, in input order: :class:`Saved` or
      :class:`RejectedRecord`.
    - A request refused as a whole for its content (HTTP 400) is split in
      halves until the offending records are isolated; they become record
      rejections, the rest go through.
    - Transient record errors (``UNABLE_TO_LOCK_ROW`` …) are retried, those
      records only, with exponential backoff, before they count.
    - Anything that is not the records' fault raises :class:`RequestFailed`.
    """

    def __init__(
        self,
        sf: Salesforce,
        *,
        sobject: str,
        external_id_field: str,
        transient_retries: int = 3,
        request_retries: int = 2,
        backoff_seconds: float = 1.0,
        renewer: SessionRenewer | None = None,
        sleep: Callable[[float], None] = time.sleep,
        trace: Trace | None = None,
        stream: Stream | None = None,
    ) -> None:
        self.sf = sf
        self.stream = stream  # for its mode (write_modes.py): update and insert ask Salesforce first
        self.path = f"composite/sobjects/{sobject}/{external_id_field}"
        self.transient_retries = transient_retries
        self.backoff_seconds = backoff_seconds
        self.renewer = renewer
        self.sleep = sleep
        self.trace = trace
        self.requests_sent = 0  # Salesforce API requests this writer made (each counts against the org's allowance)
        self.field_types: dict[str, str] | None = None  # mapped field -> Salesforce type, from describe
        self.external_id_case_sensitive = False  # describe's caseSensitive of the external id field
        self.external_id_numeric = False  # a Number external id field (describe)
        self.org_id: str | None = None  # the org the connection reaches, when asked (writer_for)
        self.request_retries = request_retries
        self._lock = threading.Lock()  # the writer is shared by the threads of requests in flight
        self._local = threading.local()
        self._observer: Concurrency | None = None

    def observe(self, concurrency: Concurrency) -> None:
        """Tell ``concurrency`` how each request went (its time, its lock errors, a server that could not serve it)."""
        self._observer = concurrency

    def _answered(self, seconds: float, results: list[Result]) -> None:
        if self._observer is not None:
            locks = sum(1 for r in results if isinstance(r, RejectedRecord) and r.code in LOCK_CODES)
            with self._lock:
                self._observer.answered(seconds, records=len(results), lock_errors=locks)

    def _trouble(self, reason: str) -> None:
        if self._observer is not None:
            with self._lock:
                self._observer.trouble(reason)

    def org_api_usage(self) -> tuple[int, int] | None:
        """(used, allowed) in the org's rolling 24 hours, from the last response's Sforce-Limit-Info header."""
        usage = getattr(self.sf, "api_usage", {}).get("api-usage")
        return (usage.used, usage.total) if usage is not None else None

    @staticmethod
    def request_body(payloads: list[dict[str, Any]]) -> dict[str, Any]:
        return {"allOrNone": False, "records": payloads}

    def count_request(self) -> None:
        """Count the next request now, before it is made (the export checks its API budget before each send,
        while earlier sends may not have started yet); the request itself then does not count again."""
        with self._lock:
            self.requests_sent += 1

    def send(self, records: list[SourceRecord], *, counted: bool = False) -> list[RecordOutcome]:
        """Upsert the records that have a payload, and delete those marked deleted; every record gets an outcome,
        in order.

        A record the mapping could not turn into a payload keeps its rejection
        and is not sent; an unchanged one is confirmed without being sent. A
        record to delete is found by its external id (one query, with the
        mode's); one Salesforce does not have counts as deleted (``deletes.py``).
        ``counted``: its first request was counted ahead by :meth:`count_request`.
        """
        self._local.counted_ahead = 1 if counted else 0
        asks = self.stream is not None and asks_salesforce(self.stream)
        ids = self.salesforce_ids([r for r in to_send(records) if asks or r.delete])
        if asks:
            assert self.stream is not None
            records = apply_mode(self.stream, records, set(ids), self._id_key)
        sendable = to_send(records)
        upserts = [r.payload for r in sendable if not r.delete and r.payload is not None]
        found = self._found([r for r in sendable if r.delete], ids)
        upserted = iter(self.upsert(upserts) if upserts else [])
        deleted = dict(zip(found, self.delete(found), strict=True)) if found else {}
        if getattr(self._local, "counted_ahead", 0):  # counted ahead, and nothing was sent after all
            self._local.counted_ahead = 0
            with self._lock:
                self.requests_sent -= 1
        outcomes = []
        for record in records:
            if record.payload is None:
                outcomes.append(RecordOutcome(record, record.rejection))
            elif record.unchanged:
                outcomes.append(RecordOutcome(record, None))  # Salesforce holds this payload already
            elif record.delete:
                outcomes.append(self._deleted(record, ids, deleted))
            else:
                answer = next(upserted)
                outcomes.append(RecordOutcome(record, None if isinstance(answer, Saved) else answer))
        return outcomes

    def delete_by(
        self, records: list[SourceRecord], remove: Callable[[list[str]], Mapping[str, Result]]
    ) -> list[RecordOutcome]:
        """Delete records marked deleted (none unchanged or rejected) through ``remove`` (Salesforce Ids -> each
        one's answer), as :meth:`send` deletes them: the Bulk path's delete job."""
        ids = self.salesforce_ids(records)
        found = self._found(records, ids)
        answers = remove(found) if found else {}
        return [self._deleted(record, ids, answers) for record in records]

    def _found(self, records: list[SourceRecord], ids: dict[str, str]) -> list[str]:
        """The Salesforce Ids of the records to delete that Salesforce has, each once."""
        return list(dict.fromkeys(ids[key] for key in (self._match(r) for r in records) if key in ids))

    def _deleted(self, record: SourceRecord, ids: dict[str, str], answers: Mapping[str, Result]) -> RecordOutcome:
        """A delete's outcome from Salesforce's answer for its record's Id (``deletes.py`` decides what a refusal
        means); no answer: Salesforce had no record with that external id, so it is gone already."""
        answer = answers.get(ids.get(self._match(record), ""))
        refused = answer if isinstance(answer, RejectedRecord) else None
        return RecordOutcome(
            record, None if refused is None else delete_refusal(self._stream(), record.external_id, refused)
        )

    def _stream(self) -> Stream:
        if self.stream is None:
            raise ValueError("a writer deletes only for a stream (it names the external id field)")
        return self.stream

    def _match(self, record: SourceRecord) -> str:
        return self._id_key(record.external_id or "")

    def _id_key(self, external_id: str) -> str:
        """An external id as :meth:`salesforce_ids` keys it: as Salesforce matches it, and a Number field's value
        by its number (the query answers 5.0 for the 5 sent, "Number" fields are doubles in JSON)."""
        if self.external_id_numeric:
            try:
                number = Decimal(external_id)
            except InvalidOperation:
                return external_id
            return format(number.normalize(), "f") if number == number.to_integral_value() else str(number.normalize())
        return self.match_key(external_id)

    def match_key(self, external_id: str) -> str:
        """An external id as this org matches it (case-insensitively unless the field is case sensitive)."""
        return external_id_match_key(external_id, case_sensitive=self.external_id_case_sensitive)

    def salesforce_ids(self, records: list[SourceRecord]) -> dict[str, str]:
        """The Salesforce Ids of these records that Salesforce has, by external id as Salesforce matches it: one
        SOQL query, more only when the ids are too long for one ("SOQL and SOSL Limits": a WHERE clause of at
        most 4,000 characters). A record in the Recycle Bin is not found (a query leaves deleted records out)."""
        wanted = sorted({r.external_id for r in records if r.external_id})
        if not wanted:
            return {}
        stream = self._stream()
        field = stream.external_id_field
        found: dict[str, str] = {}
        for chunk in _in_lists([str(x) if self.external_id_numeric else soql_literal(x) for x in wanted]):
            soql = f"SELECT Id, {field} FROM {stream.sobject} WHERE {field} IN ({chunk})"
            for row in self._query(soql).get("records", []):
                # Salesforce names the field as its setup does, whatever the case streams.yml wrote it in.
                value = next((v for k, v in row.items() if k.lower() == field.lower()), None)
                if value is not None:
                    found[self._id_key(str(value))] = str(row["Id"])
        return found

    def _query(self, soql: str) -> dict[str, Any]:
        stream = self._stream()
        doing = f"find which records Salesforce has (stream '{stream.name}', mode: {stream.mode})"
        for attempt in range(2):
            with self._lock:
                self.requests_sent += 1
            try:
                return dict(self.sf.query_all(soql))
            except SalesforceExpiredSession as exc:
                if self.renewer is None or attempt:
                    raise refusal(exc, doing=doing) from None
                self.renewer.renew(self.sf)
            except SalesforceError as exc:
                raise refusal(exc, doing=doing) from None
            except requests.exceptions.RequestException as exc:
                raise RequestFailed(f"Could not reach Salesforce: {type(exc).__name__}: {exc}") from None
        raise AssertionError("unreachable")

    def upsert(self, payloads: list[dict[str, Any]]) -> list[Result]:
        """Upsert by external id (``PATCH composite/sobjects/<object>/<field>``): a result per payload, in order."""
        return self._write(_Call("PATCH", self.path, "upsert"), payloads)

    def delete(self, ids: list[str]) -> list[Result]:
        """Delete by Salesforce Id (``DELETE composite/sobjects?ids=…&allOrNone=false``, "Delete Records Using
        sObject Collections"): a result per Id, in order."""
        return self._write(_Call("DELETE", "composite/sobjects", "delete"), ids)

    def _write(self, call: _Call, items: list[Any]) -> list[Result]:
        """One sObject Collections call for ``items`` (at most 200), its transient record errors retried (those
        records only, with exponential backoff) before they count."""
        if len(items) > MAX_BATCH_SIZE:
            raise ValueError(f"sObject Collections take at most {MAX_BATCH_SIZE} records per request")
        results: list[Result | None] = [None] * len(items)
        pending = list(range(len(items)))
        for attempt in range(self.transient_retries + 1):
            answers = self._write_retrying(call, [items[i] for i in pending])
            retry = []
            reason = ""
            for index, answer in zip(pending, answers, strict=True):
                results[index] = answer
                if isinstance(answer, RejectedRecord) and answer.transient:
                    retry.append(index)
                    reason = reason or answer.code
            if not retry or attempt == self.transient_retries:
                break
            log.info(
                "%d record(s) hit a transient Salesforce error (%s); retrying them in %.1fs",
                len(retry),
                reason,
                self.backoff_seconds * 2**attempt,
            )
            self.sleep(self.backoff_seconds * 2**attempt)
            pending = retry
        return results  # type: ignore[return-value]

    def _write_retrying(self, call: _Call, items: list[Any]) -> list[Result]:
        """A request Salesforce could not serve (5xx, too many long-running requests) is sent again, after a
        pause and with fewer requests in flight, up to ``request_retries`` times; then it fails the run."""
        for attempt in range(self.request_retries + 1):
            try:
                return self._write_isolating(call, items)
            except ServerBusy as busy:
                self._trouble(f"HTTP {busy.status} {busy.code}")
                if attempt == self.request_retries:
                    raise ServerBusy(
                        f"{busy} (tried {attempt + 1} times)", status=busy.status, code=busy.code
                    ) from None
                wait = self.backoff_seconds * 2**attempt
                log.warning("%s; sending the request again in %.1fs", busy, wait)
                self.sleep(wait)
        raise AssertionError("unreachable")

    def _write_isolating(self, call: _Call, items: list[Any]) -> list[Result]:
        try:
            return self._send(call, items)
        except _WholeRequestRejected as rejected:
            split = _Split()
            results = self._isolate(call, items, rejected, split, same_levels=0)
            log.info(
                "Salesforce refused a request of %d records with %s; isolating the record(s) it was about took "
                "%d more request(s)",
                len(items),
                rejected.as_record_error().code,
                split.requests,
            )
            return results

    def _isolate(
        self, call: _Call, items: list[Any], rejected: _WholeRequestRejected, split: _Split, *, same_levels: int
    ) -> list[Result]:
        """Halve a refused request until the refusal is pinned on records, or shown to be no record's fault.

        Salesforce answers 400 for a request whose body it cannot take
        ("Status Codes and Error Responses", REST API Developer Guide,
        errorcodes.htm) without saying whether one record or the request as a
        whole is the cause. The docs being silent, we take the stricter
        reading: when every part, two halvings deep, is refused for the same
        reason, it is a request failure (a field the integration user lost
        access to, a mapping Salesforce cannot take), not one rejected record
        per row. That costs at most a few requests instead of up to 399.
        """
        if len(items) == 1:
            return [rejected.as_record_error()]
        middle = len(items) // 2
        halves = (items[:middle], items[middle:])
        answers: list[list[Result] | _WholeRequestRejected] = []
        for half in halves:
            split.requests += 1
            try:
                answers.append(self._send(call, half))
            except _WholeRequestRejected as refused:
                answers.append(refused)
        every_part_same = all(
            isinstance(answer, _WholeRequestRejected) and answer.same_reason(rejected) for answer in answers
        )
        levels = same_levels + 1 if every_part_same else 0
        if levels >= _SAME_REASON_LEVELS:
            raise RequestRefused(_refused_message(rejected), status=400, code=rejected.as_record_error().code)
        results: list[Result] = []
        for half, answer in zip(halves, answers, strict=True):
            if isinstance(answer, _WholeRequestRejected):
                results += self._isolate(call, half, answer, split, same_levels=levels)
            else:
                results += answer
        return results

    def _count_this_request(self) -> None:
        if getattr(self._local, "counted_ahead", 0):
            self._local.counted_ahead = 0
        else:
            with self._lock:
                self.requests_sent += 1

    def _send(self, call: _Call, items: list[Any], *, renewed: bool = False) -> list[Result]:
        body: dict[str, Any]
        sent: dict[str, Any]
        if call.method == "DELETE":
            body = {"ids": ",".join(items), "allOrNone": "false"}
            sent = {"params": body}
        else:
            body = self.request_body(items)
            # Serialized here, so numerics go out exactly (simple-salesforce would pass them through float).
            sent = {"data": exact_json.dumps(body)}
        refused: SalesforceError | None = None
        self._count_this_request()
        started = time.monotonic()
        try:
            answer = self.sf.restful(call.path, method=call.method, **sent)
        except SalesforceError as exc:
            refused = exc
        except requests.exceptions.Timeout:
            raise RequestFailed(
                f"Salesforce did not answer within {self.sf.session.default_timeout[1]:.0f}s; "
                "nothing from this request is counted, Airflow retries the task."
                if isinstance(self.sf.session, SalesforceSession)
                else "Salesforce did not answer in time"
            ) from None
        except requests.exceptions.RequestException as exc:
            raise RequestFailed(f"Could not reach Salesforce: {type(exc).__name__}: {exc}") from None
        if refused is not None:
            # Handled outside the except clause, so what it raises does not chain the client's exception.
            if self.trace is not None:
                self.trace(call.method, call.path, body, {"http_status": refused.status, "body": refused.content})
            return self._after_refusal(call, refused, items, renewed=renewed)
        if self.trace is not None:
            self.trace(call.method, call.path, body, answer)
        if not isinstance(answer, list) or len(answer) != len(items):
            raise RequestFailed(
                f"Salesforce answered {len(answer) if isinstance(answer, list) else 'no list of'} results "
                f"for {len(items)} records"
            )
        results = [_result(item) for item in answer]
        self._answered(time.monotonic() - started, results)
        return results

    def _after_refusal(self, call: _Call, exc: SalesforceError, items: list[Any], *, renewed: bool) -> list[Result]:
        """A refused request: split it (400), renew the session (401), or fail the request."""
        doing = f"{call.doing} through sObject Collections"
        if isinstance(exc, SalesforceMalformedRequest):
            raise _WholeRequestRejected(exc.content)
        if isinstance(exc, SalesforceExpiredSession):
            if self.renewer is not None and not renewed:
                log.warning("Salesforce session expired; renewing it through the connection's OAuth client")
                self.renewer.renew(self.sf)
                return self._send(call, items, renewed=True)
            raise refusal(exc, doing=doing)
        failure = refusal(exc, doing=doing)
        if isinstance(failure, NotFound):
            raise StreamConfigError(
                f"Salesforce answered 404 for {call.path}: {error_message(exc.content)}. "
                "Check the stream's sobject and external_id.field in streams.yml."
            )
        raise failure


@dataclass(frozen=True)
class _Call:
    """One kind of sObject Collections request: its method, its path, what it does (for messages)."""

    method: str
    path: str
    doing: str


# Halvings in a row whose every part Salesforce refused for the request's own reason: then it is a request failure.
_SAME_REASON_LEVELS = 2


@dataclass
class _Split:
    requests: int = 0


def _refused_message(rejected: _WholeRequestRejected) -> str:
    error = rejected.as_record_error()
    fields = f" (fields: {', '.join(error.fields)})" if error.fields else ""
    cause = (
        "The integration user probably lost access to a mapped field (field-level security), or the field was "
        "deleted or renamed: grant it edit access to the field in Salesforce, or fix the mapping in streams.yml."
        if error.code == "INVALID_FIELD"
        else "Fix what Salesforce names (the mapping in streams.yml, or the object's setup), then clear this task."
    )
    return (
        f"Salesforce refused every part of the request with HTTP 400 {error.code}: {error.message}{fields}. "
        f"This is not any one record's fault, so no record was logged to ExportErrors and the watermark did not "
        f"move. {cause}"
    )


class _WholeRequestRejected(Exception):
    def __init__(self, content: Any) -> None:
        super().__init__(str(content))
        self.content = content

    def same_reason(self, other: _WholeRequestRejected) -> bool:
        return self.as_record_error() == other.as_record_error()

    def as_record_error(self) -> RejectedRecord:
        return RejectedRecord(
            error_code(self.content, default="BAD_REQUEST"),
            str(first_error(self.content).get("message", self.content))[:500],
            tuple(first_error(self.content).get("fields") or ()),
        )


def _result(item: dict[str, Any]) -> Result:
    if item.get("success"):
        return Saved(item["id"], bool(item.get("created")))
    errors = item.get("errors") or [{"statusCode": "UNKNOWN", "message": "Salesforce gave no reason"}]
    first = errors[0]
    return RejectedRecord(
        first.get("statusCode", "UNKNOWN"), first.get("message", ""), tuple(first.get("fields") or ())
    )


_MAX_IN_LIST_CHARS = 3_500  # of the 4,000 a WHERE clause may have, the rest for the field name and the IN


def _in_lists(literals: list[str]) -> list[str]:
    """SOQL literals joined into IN lists that each fit a WHERE clause."""
    lists: list[str] = []
    current: list[str] = []
    size = 0
    for literal in literals:
        if current and size + len(literal) + 2 > _MAX_IN_LIST_CHARS:
            lists.append(", ".join(current))
            current, size = [], 0
        current.append(literal)
        size += len(literal) + 2
    if current:
        lists.append(", ".join(current))
    return lists
