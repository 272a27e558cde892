"""Bulk API 2.0 ingest data and results, as plain data. Pure: no I/O.

The job data is CSV with the external id field and the mapped fields as
columns ("Prepare CSV Files", *Bulk API 2.0 and Bulk API Developer Guide*),
each value rendered by :mod:`values` from the same decision the sObject
Collections path sends as JSON.

Results come back in three CSV sets whose order is not guaranteed
("Get Job Successful/Failed/Unprocessed Record Results"); they are matched to
the records sent by external id, as Salesforce matches it (case-insensitively
unless describe says the field is case sensitive), giving each record in source
order its outcome: confirmed, rejected, or not processed at all.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from include.crm_export.config import Stream
from include.crm_export.errors import RejectedRecord
from include.crm_export.mapping import SourceRecord, external_id_match_key, relationship_name
from include.crm_export.values import NotInCsv, csv_line, csv_row


@dataclass(frozen=True, slots=True)
class JobRecord:
    """What a job keeps of each record it read: enough to match its result and commit it, not its payload."""

    key: str
    position: tuple[Any, ...]
    external_id: str | None
    rejection: RejectedRecord | None = None  # the mapping's: the record could not be sent
    # Set only for a record a CSV cannot carry exactly (``values.NotInCsv``) or one to delete: it goes through
    # sObject Collections beside the job, so this payload is what is sent.
    outside_payload: dict[str, Any] | None = None
    fingerprint: int | None = None  # of the payload, written when Salesforce confirms it
    unchanged: bool = False  # Salesforce confirmed this payload last: not in the CSV, confirmed as it is
    delete: bool = False  # marked deleted in the source: deleted once the job is done (``outside_payload``)

    @property
    def sent(self) -> bool:
        """In the job's CSV (so in its results)."""
        return self.rejection is None and self.outside_payload is None and not self.unchanged


class JobData:
    """A job's CSV written record by record, in source order, and the :class:`JobRecord` of each record read.

    The records' payloads are not kept: once a row is in the CSV, only its
    key, position and external id are needed to match the results. The CSV
    never grows past ``max_bytes`` (UTF-8, as uploaded): :meth:`add` refuses
    the row that would pass it, unless the job has no record yet.
    """

    def __init__(self, columns: list[str], *, max_bytes: int | None = None) -> None:
        self.columns = columns
        self.max_bytes = max_bytes
        self._bytes = io.BytesIO()
        self._bytes.write(csv_line(columns).encode("utf-8"))
        self.records: list[JobRecord] = []
        self.sent = 0

    def add(self, record: SourceRecord) -> bool:
        """Take the record (True), or leave it for the next job because this one is full (False)."""
        if record.payload is None:
            self.records.append(JobRecord(record.key, record.position, record.external_id, record.rejection))
            return True
        if record.unchanged:
            self.records.append(JobRecord(record.key, record.position, record.external_id, unchanged=True))
            return True
        fingerprint = record.fingerprint
        if record.delete:  # deleted once the job is done, in a delete job or through sObject Collections
            self.records.append(
                JobRecord(
                    record.key, record.position, record.external_id, None, record.payload, fingerprint, delete=True
                )
            )
            return True
        try:
            line = csv_row(record.payload, self.columns).encode("utf-8")
        except NotInCsv:
            self.records.append(
                JobRecord(record.key, record.position, record.external_id, None, record.payload, fingerprint)
            )
            return True
        if self.max_bytes is not None and self.records and self.size + len(line) > self.max_bytes:
            return False
        self._bytes.write(line)
        self.records.append(JobRecord(record.key, record.position, record.external_id, fingerprint=fingerprint))
        self.sent += 1
        return True

    @property
    def size(self) -> int:
        """The CSV's size so far, in bytes (UTF-8)."""
        return self._bytes.tell()

    def csv(self) -> str:
        return self._bytes.getvalue().decode("utf-8")


def job_columns(stream: Stream, field_types: dict[str, str] | None) -> list[str]:
    """A job's CSV header: the external id field, then each mapped field in file order.

    A lookup takes two columns: the field itself (``#N/A`` in it clears the lookup) and its parent by external
    id, ``Relationship.ExternalIdField``, or ``Object:Relationship.ExternalIdField`` for a polymorphic lookup
    ("Relationship Fields in a Header Row (2.0)", Bulk API 2.0 and Bulk API Developer Guide). Each row fills one
    of the two and leaves the other empty, which leaves that column as it is; the docs are silent on a header
    with both, so a row never fills both.
    """
    relationships = getattr(field_types, "relationships", None) or {}
    columns = [stream.external_id_field]
    for field, _column in stream.fields:
        columns.append(field)
        lookup = stream.lookup(field) if stream.lookups else None
        if lookup is not None:
            known = relationships.get(field)
            name = known.name if known is not None else relationship_name(field)
            prefix = f"{lookup.object}:" if known is not None and known.polymorphic else ""
            columns.append(f"{prefix}{name}.{lookup.external_id_field}")
    return columns


def parse_error(text: str) -> RejectedRecord:
    """``sf__Error`` as ``CODE:message:fields`` (fields optional, a trailing `` --`` allowed)."""
    text = text.strip().removesuffix("--").strip()
    code, _, rest = text.partition(":")
    message, _, fields = rest.rpartition(":")
    if not message:  # no fields part
        message, fields = rest, ""
    return RejectedRecord(
        code or "UNKNOWN", message.strip(), tuple(f for f in fields.replace(";", ",").split(",") if f.strip())
    )


def _match_key(value: str, case_sensitive: bool) -> str:
    return external_id_match_key(value, case_sensitive=case_sensitive)


def _column(header: list[str], name: str, kind: str) -> int:
    for index, column in enumerate(header):
        if column.lower() == name.lower():
            return index
    raise ValueError(f"the {kind} results have no {name} column (columns: {', '.join(header) or 'none'})")


def saved_ids(rows: Iterable[list[str]], external_id_field: str, *, case_sensitive: bool = False) -> set[str]:
    """The external ids of "Get Job Successful Record Results" (rows of its CSV, header first)."""
    rows = iter(rows)
    header = next(rows, None)
    if header is None:
        return set()
    index = _column(header, external_id_field, "successful")
    return {_match_key(row[index], case_sensitive) for row in rows if len(row) > index}


def rejections(
    rows: Iterable[list[str]], external_id_field: str, *, case_sensitive: bool = False
) -> dict[str, RejectedRecord]:
    """The external ids of "Get Job Failed Record Results" and each one's ``sf__Error``."""
    rows = iter(rows)
    header = next(rows, None)
    if header is None:
        return {}
    index, error = _column(header, external_id_field, "failed"), _column(header, "sf__Error", "failed")
    return {
        _match_key(row[index], case_sensitive): parse_error(row[error]) for row in rows if len(row) > max(index, error)
    }


@dataclass(frozen=True)
class JobResults:
    """A finished job's outcome per record, by the record's index in source order.

    A record neither rejected nor unprocessed was confirmed. Rejections include
    the mapping's (records that were not sent).
    """

    rejected: dict[int, RejectedRecord]
    unprocessed: list[int]


def match_results(
    records: Sequence[JobRecord],
    *,
    saved: set[str],
    rejected: dict[str, RejectedRecord],
    case_sensitive: bool = False,
) -> JobResults:
    """Each record's outcome from the successful and failed sets; a sent record in neither was not processed."""
    by_index: dict[int, RejectedRecord] = {}
    unprocessed: list[int] = []
    for index, record in enumerate(records):
        if record.rejection is not None:
            by_index[index] = record.rejection
            continue
        if not record.sent:
            continue  # sent beside the job, through sObject Collections
        sent = _match_key(record.external_id or "", case_sensitive)
        if sent in rejected:
            by_index[index] = rejected[sent]
        elif sent not in saved:
            unprocessed.append(index)
    return JobResults(by_index, unprocessed)
