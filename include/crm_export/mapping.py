"""Source rows to Salesforce payloads. Pure: no I/O.

A row that cannot be turned into a payload (no external id, a value JSON
cannot carry) becomes a :class:`RecordRejected` for that record, so one bad
row never crashes a batch. Whether a value suits the Salesforce field (type,
length, required) is Salesforce's call: its answer is the error people need.
"""

from __future__ import annotations

import math
import re
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


# Salesforce field types (describe) whose values are text on the wire.
_TEXT_TYPES = frozenset(
    {"string", "textarea", "email", "phone", "url", "picklist", "multipicklist", "combobox", "reference", "id"}
)
_NUMBER_TYPES = frozenset({"double", "currency", "percent", "int", "long"})
# The shapes the REST API takes ("Valid Date and DateTime Formats"): a dateTime needs its offset.
_DATE_TEXT = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME_TEXT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?(Z|[+-]\d{2}:?\d{2})$")


def to_field_value(value: Any, field_type: str | None) -> Any:
    """A source value as the Salesforce field of ``field_type`` takes it, or :class:`_Unmappable` saying why not.

    Without a type (no describe), only JSON's own limits apply (:func:`to_json_value`).
    """
    if value is None or not field_type:
        return to_json_value(value)
    if isinstance(value, str) and value.strip() == "" and field_type not in _TEXT_TYPES:
        return None  # an empty source value is no value
    if field_type == "date":
        if isinstance(value, datetime):
            raise _Unmappable(f"{value.isoformat()} has a time of day; the Salesforce field takes a date")
        if isinstance(value, date):
            return value.isoformat()
        if isinstance(value, str) and _DATE_TEXT.match(value) and _parses(date.fromisoformat, value):
            return value
        raise _Unmappable(f"{value!r} is not a date Salesforce takes (YYYY-MM-DD)")
    if field_type == "datetime":
        if isinstance(value, datetime):
            return to_json_value(value)
        if isinstance(value, date):
            raise _Unmappable(f"{value.isoformat()} is a date; the Salesforce field takes a date and time")
        if isinstance(value, str) and _DATETIME_TEXT.match(value):
            return value
        raise _Unmappable(f"{value!r} is not a date and time Salesforce takes (2024-07-30T20:54:16.000Z)")
    if field_type == "boolean":
        if isinstance(value, bool):
            return value
        raise _Unmappable(f"{value!r} is not true or false")
    if field_type in _NUMBER_TYPES:
        if isinstance(value, bool):
            raise _Unmappable(f"{value!r} is not a number")
        if isinstance(value, str):
            try:
                value = Decimal(value.strip())
            except ArithmeticError:
                raise _Unmappable(f"{value!r} is not a number") from None
        return to_json_value(value)
    if field_type in _TEXT_TYPES:
        if isinstance(value, bool):
            raise _Unmappable(f"{value!r} is true or false; the Salesforce field takes text")
        if isinstance(value, int | Decimal | uuid.UUID):
            return str(value)  # exactly as the source has it
        if isinstance(value, datetime | date):
            return to_json_value(value)
    return to_json_value(value)


def _parses(parse: Any, value: str) -> bool:
    try:
        parse(value)
    except ValueError:
        return False
    return True


def position_to_json(position: tuple[Any, ...]) -> list[str]:
    """The watermark as stored: the order_by values as exact text (PostgreSQL casts them back)."""
    out = []
    for value in position:
        if isinstance(value, datetime | date):
            out.append(value.isoformat())
        else:
            out.append(str(value))
    return out


def map_row(stream: Stream, row: dict[str, Any], field_types: dict[str, str] | None = None) -> SourceRecord:
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
            payload[sf_field] = to_field_value(row[column], (field_types or {}).get(sf_field))
        except _Unmappable as exc:
            return SourceRecord(
                key,
                position,
                external_id,
                None,
                RecordRejected(INVALID_SOURCE_VALUE, f"Source column {column}: {exc}", (sf_field,)),
            )
    return SourceRecord(key, position, external_id, payload)
