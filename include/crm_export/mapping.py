"""Source rows to Salesforce payloads. Pure: no I/O.

A row that cannot be turned into a payload (no external id, a value JSON
cannot carry) becomes a :class:`RecordRejected` for that record, so one bad
row never crashes a batch. Whether a value suits the Salesforce field (type,
length, required) is Salesforce's call: its answer is the error people need.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from include.crm_export.config import Stream
from include.crm_export.errors import INVALID_SOURCE_VALUE, MISSING_EXTERNAL_ID, RecordRejected

# Every source read also selects the key's PostgreSQL text form under this
# name: that is the record key stored in ExportErrors and in the watermark, and
# casting it back to the key's type finds the row (char(n), citext, uuid …).
RECORD_KEY = "crm_export$record_key"


@dataclass(frozen=True)
class SourceRecord:
    """One source row on its way to Salesforce."""

    key: str
    position: tuple[Any, ...]  # the row's order_by values
    external_id: str | None
    payload: dict[str, Any] | None  # None when the row cannot be mapped
    rejection: RecordRejected | None = None


class _Unmappable(ValueError):
    pass


def to_json_value(value: Any) -> Any:
    """A PostgreSQL value as the REST API expects it."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Unmappable(f"{value} is not a finite number")
        return value
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise _Unmappable(f"{value} is not a finite number")
        # Exact, digit for digit (see exact_json): never through float.
        return int(value) if value == value.to_integral_value() and value.as_tuple().exponent >= 0 else value
    if isinstance(value, datetime):
        # timestamp without time zone is taken as UTC.
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise _Unmappable(f"a {type(value).__name__} value cannot be sent to Salesforce")


def position_to_json(position: tuple[Any, ...]) -> list[str]:
    """The watermark as stored: the order_by values as exact text (PostgreSQL casts them back)."""
    out = []
    for value in position:
        if isinstance(value, datetime | date):
            out.append(value.isoformat())
        else:
            out.append(str(value))
    return out


def map_row(stream: Stream, row: dict[str, Any]) -> SourceRecord:
    key = row[RECORD_KEY] if RECORD_KEY in row else str(row[stream.key])
    position = tuple(row[column] for column in stream.order_by)
    raw_external_id = row[stream.external_id_column]
    if raw_external_id is None or str(raw_external_id).strip() == "":
        return SourceRecord(
            key,
            position,
            None,
            None,
            RecordRejected(
                MISSING_EXTERNAL_ID,
                f"Source column {stream.external_id_column} is empty, so the record has no "
                f"{stream.external_id_field} to upsert by. Fill it in the source.",
                (stream.external_id_field,),
            ),
        )
    external_id = str(raw_external_id)
    payload: dict[str, Any] = {"attributes": {"type": stream.sobject}, stream.external_id_field: external_id}
    for sf_field, column in stream.fields:
        try:
            payload[sf_field] = to_json_value(row[column])
        except _Unmappable as exc:
            return SourceRecord(
                key,
                position,
                external_id,
                None,
                RecordRejected(INVALID_SOURCE_VALUE, f"Source column {column}: {exc}", (sf_field,)),
            )
    return SourceRecord(key, position, external_id, payload)
