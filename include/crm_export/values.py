"""What a Salesforce field receives for a source value, decided once, rendered for each wire. Pure: no I/O.

Every path (sObject Collections, Bulk API 2.0, the re-export) asks
:func:`field_value` what a source value becomes: a value to set, ``None``
(clear the field), or :class:`Unmappable` (a rejected record naming why). A
field left out of a payload keeps what Salesforce has. The answer is then
rendered for the wire at hand:

- JSON (sObject Collections): the value itself, ``null`` to clear
  (``exact_json`` keeps numbers digit for digit);
- CSV (Bulk API 2.0): :func:`csv_row` with the rules of *Valid CSV Record
  Rows* and *Prepare CSV Files* (Bulk API 2.0 and Bulk API Developer Guide):
  RFC 4180 quoting (a comma, double quote, CR or LF puts the value in quotes),
  ``#N/A`` to clear, an empty value to leave the field as it is. A value CSV
  cannot carry exactly (the text ``#N/A`` itself, which Bulk API would read
  as "clear"; a field over the 32,000 characters or a record over the 400,000
  characters of *Bulk API and Bulk API 2.0 Limits and Allocations*) raises
  :class:`NotInCsv`: that record goes through sObject Collections instead,
  so both paths leave Salesforce identical.

Salesforce stores no empty text: an empty string saves as no value, so an
empty source text is "clear" on both wires (it would be "leave as is" in CSV).
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

CSV_NULL = "#N/A"
BULK_MAX_FIELD_CHARS = 32_000
BULK_MAX_RECORD_CHARS = 400_000
# Salesforce number, currency and percent fields hold at most 18 digits ("Field Types", precision).
MAX_NUMBER_DIGITS = 18
# A number text longer than this is no number Salesforce could take; refused before it is parsed, so a
# million-digit text costs microseconds, not the minutes exact arithmetic on it would.
_MAX_NUMBER_TEXT = 200
_NUMBER_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")

# Salesforce field types (describe) whose values are text on the wire.
TEXT_TYPES = frozenset(
    {"string", "textarea", "email", "phone", "url", "picklist", "multipicklist", "combobox", "reference", "id"}
)
NUMBER_TYPES = frozenset({"double", "currency", "percent", "int", "long"})
# The shapes the REST API takes ("Valid Date and DateTime Formats"): a dateTime needs its offset.
_DATE_TEXT = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME_TEXT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?(Z|[+-]\d{2}:?\d{2})$")


class Unmappable(ValueError):
    """The source value cannot be sent to the field; the message says why (the record is rejected)."""


class NotInCsv(ValueError):
    """The value (or record) cannot be carried exactly by a Bulk API 2.0 CSV; send the record another way."""


def number(value: Decimal | float | int, *, as_given: str | None = None) -> Decimal | int:
    """A source number as Salesforce may take it: finite and at most 18 digits before the point.

    ``as_given``: the source text it was read from, for the message.
    """
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Unmappable(f"{value} is not a finite number")
        value = Decimal(repr(value))
    if isinstance(value, int):
        value = Decimal(value)
    if not value.is_finite():
        raise Unmappable(f"{value} is not a finite number")
    if value and value.adjusted() >= MAX_NUMBER_DIGITS:
        shown = _short(as_given) if as_given is not None else _short(value)
        raise Unmappable(
            f"{shown} has {value.adjusted() + 1} digits before the decimal point; a Salesforce number field holds "
            f"at most {MAX_NUMBER_DIGITS}"
        )
    if value == value.to_integral_value() and _exponent(value) >= 0:
        return int(value)  # bounded above, so this is cheap
    return value


def _exponent(value: Decimal) -> int:
    """A finite Decimal's exponent (an infinity's or NaN's is a letter; those never get here)."""
    exponent = value.as_tuple().exponent
    return exponent if isinstance(exponent, int) else 0


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else f"{text[:20]}…{text[-10:]} ({len(text)} characters)"


def number_from_text(text: str) -> Decimal | int:
    stripped = text.strip()
    if len(stripped) > _MAX_NUMBER_TEXT or not _NUMBER_TEXT.match(stripped):
        raise Unmappable(f"{_short(text)!r} is not a number")
    try:
        parsed = Decimal(stripped)
    except InvalidOperation:
        raise Unmappable(f"{_short(text)!r} is not a number") from None
    return number(parsed, as_given=repr(stripped))


def json_value(value: Any) -> Any:
    """A PostgreSQL value as the REST API expects it, without knowing the field's type."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return None if value == "" else value
    if isinstance(value, int | float | Decimal):
        return number(value)
    if isinstance(value, datetime):
        # timestamp without time zone is taken as UTC.
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise Unmappable(f"a {type(value).__name__} value cannot be sent to Salesforce")


def field_value(value: Any, field_type: str | None) -> Any:
    """What the Salesforce field of ``field_type`` receives for a source value: a value, or None (clear it).

    Raises :class:`Unmappable` with the reason when the field cannot take it.
    Without a type (no describe), only the wire's own limits apply.
    """
    if value is None or not field_type:
        return json_value(value)
    if isinstance(value, str) and value.strip() == "" and field_type not in TEXT_TYPES:
        return None  # an empty source value is no value
    if field_type in NUMBER_TYPES:
        return _as_number(value)
    if field_type in TEXT_TYPES:
        return _as_text(value)
    take = _BY_TYPE.get(field_type)
    return take(value) if take is not None else json_value(value)


def _as_date(value: Any) -> Any:
    if isinstance(value, datetime):
        raise Unmappable(f"{value.isoformat()} has a time of day; the Salesforce field takes a date")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str) and _DATE_TEXT.match(value) and _parses(date.fromisoformat, value):
        return value
    raise Unmappable(f"{_short(value)!r} is not a date Salesforce takes (YYYY-MM-DD)")


def _as_datetime(value: Any) -> Any:
    if isinstance(value, datetime):
        return json_value(value)
    if isinstance(value, date):
        raise Unmappable(f"{value.isoformat()} is a date; the Salesforce field takes a date and time")
    if isinstance(value, str) and _DATETIME_TEXT.match(value):
        return value
    raise Unmappable(f"{_short(value)!r} is not a date and time Salesforce takes (2024-07-30T20:54:16.000Z)")


def _as_boolean(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    raise Unmappable(f"{_short(value)!r} is not true or false")


def _as_number(value: Any) -> Any:
    if isinstance(value, str):
        return number_from_text(value)
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise Unmappable(f"{_short(value)!r} is not a number")
    return json_value(value)


def _as_text(value: Any) -> Any:
    if isinstance(value, bool):
        raise Unmappable(f"{value!r} is true or false; the Salesforce field takes text")
    if isinstance(value, int | Decimal | uuid.UUID):
        return str(value)  # exactly as the source has it
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Unmappable(f"{value} is not a finite number")
        return repr(value)  # the shortest text that reads back as the same double
    return json_value(value)


_BY_TYPE = {"date": _as_date, "datetime": _as_datetime, "boolean": _as_boolean}


def _parses(parse: Any, value: str) -> bool:
    try:
        parse(value)
    except ValueError:
        return False
    return True


def csv_text(value: Any) -> str:
    """One field of a Bulk API 2.0 CSV row, unquoted: ``#N/A`` clears; :class:`NotInCsv` if CSV cannot carry it."""
    if value is None:
        return CSV_NULL
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        # Fixed point where that is short; far from 1 the exact scientific form (both wires take it).
        return format(value, "f") if -30 <= _exponent(value) <= 0 else str(value)
    text = str(value)
    if text == CSV_NULL:
        raise NotInCsv(f"the text {CSV_NULL} would clear the field in a Bulk API 2.0 CSV")
    if len(text) > BULK_MAX_FIELD_CHARS:
        raise NotInCsv(f"a value of {len(text):,} characters is over Bulk API 2.0's {BULK_MAX_FIELD_CHARS:,}")
    return text


def _quoted(text: str) -> str:
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def csv_line(values: Sequence[str]) -> str:
    """One RFC 4180 line (LF-terminated, the job's default ``lineEnding``)."""
    return ",".join(_quoted(value) for value in values) + "\n"


def _csv_column(payload: Mapping[str, Any], column: str) -> str:
    """One column's text: a field's value, or for ``[Object:]Relationship.Field`` the parent's external id."""
    if column in payload:
        return csv_text(payload[column])
    relationship, dot, field = column.rpartition(".")
    if dot:
        parent = payload.get(relationship.rpartition(":")[2])
        if isinstance(parent, Mapping) and field in parent:
            return csv_text(parent[field])
    return ""


def csv_row(payload: Mapping[str, Any], columns: Sequence[str]) -> str:
    """A payload as one CSV line for ``columns``: a field the payload leaves out is empty (Salesforce keeps it)."""
    values = [_csv_column(payload, column) for column in columns]
    if sum(len(value) for value in values) > BULK_MAX_RECORD_CHARS:
        raise NotInCsv(f"the record is over Bulk API 2.0's {BULK_MAX_RECORD_CHARS:,} characters")
    return csv_line(values)
