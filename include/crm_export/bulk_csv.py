"""Bulk API 2.0 ingest data and results, as plain data. Pure: no I/O.

The job data is CSV with the external id field and the mapped fields as
columns ("Prepare CSV Files", *Bulk API 2.0 and Bulk API Developer Guide*):
numbers in their exact text (never through float), booleans ``true``/``false``,
and an empty source value as ``#N/A`` (an empty CSV value would leave the
Salesforce field as it is, where the sObject Collections path sends null).

Results come back in three CSV sets whose order is not guaranteed
("Get Job Successful/Failed/Unprocessed Record Results"); they are matched to
the records sent by external id (case-insensitively, as Salesforce matches a
text external id unless it is case sensitive), giving each record in source
order its outcome: confirmed, rejected, or not processed at all.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from include.crm_export.batch import RecordOutcome
from include.crm_export.errors import RecordRejected
from include.crm_export.mapping import SourceRecord

NULL = "#N/A"


def csv_value(value: Any) -> str:
    if value is None:
        return NULL
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def job_data(records: Iterable[SourceRecord], columns: list[str]) -> str:
    """The CSV of the records that have a payload, one row each, in the order given."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for record in records:
        if record.payload is not None:
            writer.writerow([csv_value(record.payload.get(column)) for column in columns])
    return out.getvalue()


def parse_error(text: str) -> RecordRejected:
    """``sf__Error`` as ``CODE:message:fields`` (fields optional, a trailing `` --`` allowed)."""
    text = text.strip().removesuffix("--").strip()
    code, _, rest = text.partition(":")
    message, _, fields = rest.rpartition(":")
    if not message:  # no fields part
        message, fields = rest, ""
    return RecordRejected(
        code or "UNKNOWN", message.strip(), tuple(f for f in fields.replace(";", ",").split(",") if f.strip())
    )


@dataclass(frozen=True)
class JobResults:
    """A finished job's outcome per record, in source order; ``None``: Salesforce did not process it."""

    outcomes: list[RecordOutcome | None]

    @property
    def unprocessed(self) -> int:
        return sum(1 for outcome in self.outcomes if outcome is None)


def match_results(
    records: list[SourceRecord],
    external_id_field: str,
    *,
    successful: str,
    failed: str,
    case_sensitive: bool = False,
) -> JobResults:
    """Each record's outcome from the successful and failed sets; a record in neither was not processed.

    A record without a payload keeps the rejection the mapping gave it (it was not sent).
    """

    def key(value: str | None) -> str | None:
        return None if value is None else value if case_sensitive else value.lower()

    saved = {key(row.get(external_id_field)) for row in csv.DictReader(io.StringIO(successful))}
    rejected = {
        key(row.get(external_id_field)): parse_error(row.get("sf__Error", ""))
        for row in csv.DictReader(io.StringIO(failed))
    }
    outcomes: list[RecordOutcome | None] = []
    for record in records:
        if record.payload is None:
            outcomes.append(RecordOutcome(record, record.rejection))
            continue
        sent = key(csv_value(record.payload.get(external_id_field)))
        if sent in rejected:
            outcomes.append(RecordOutcome(record, rejected[sent]))
        elif sent in saved:
            outcomes.append(RecordOutcome(record, None))
        else:
            outcomes.append(None)
    return JobResults(outcomes)
