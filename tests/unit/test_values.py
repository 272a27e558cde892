"""The value model: what a Salesforce field receives for a source value, and how each wire carries it."""

from __future__ import annotations

import csv
import io
import time
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from include.crm_export import exact_json
from include.crm_export.bulk_csv import JobData
from include.crm_export.mapping import SourceRecord
from include.crm_export.values import (
    BULK_MAX_FIELD_CHARS,
    CSV_NULL,
    NotInCsv,
    Unmappable,
    csv_row,
    csv_text,
    field_value,
)


@pytest.mark.parametrize(
    "text",
    [
        "Head of\rSales",  # a bare CR: RFC 4180 quotes it, or Bulk API reads a line break
        "two\nlines",
        "crlf\r\nend",
        'say "hi"',
        "a, b",
        "  spaces kept  ",
        "tab\there",
        "ünïcödé ✓ 🚀",
        "#N/A and more",
        "x" * BULK_MAX_FIELD_CHARS,
    ],
)
def test_a_csv_row_reads_back_as_exactly_the_text_sent(text):
    line = csv_row({"A": text, "B": "after"}, ["A", "B"])
    assert list(csv.reader(io.StringIO(line, newline=""))) == [[text, "after"]]


def test_clear_keep_and_null_are_told_apart_in_csv():
    # Valid CSV Record Rows (Bulk API 2.0 and Bulk API Developer Guide): empty leaves the field, #N/A clears it.
    assert csv_row({"A": None}, ["A", "B"]) == f"{CSV_NULL},\n"
    assert field_value("", "string") is None  # an emptied text clears the field on both wires
    assert field_value("", None) is None


@pytest.mark.parametrize(
    ("value", "why"),
    [("#N/A", "would clear the field"), ("x" * (BULK_MAX_FIELD_CHARS + 1), "over Bulk API 2.0's 32,000")],
)
def test_values_a_csv_cannot_carry_exactly_send_the_record_another_way(value, why):
    with pytest.raises(NotInCsv, match=why):
        csv_text(value)
    data = JobData(["A"])
    assert data.add(SourceRecord("1", (1,), "e1", {"A": value}))
    assert data.sent == 0
    assert data.records[0].outside_payload == {"A": value}


def test_a_record_over_the_bulk_record_limit_goes_another_way():
    payload = {f"F{i}": "y" * 30_000 for i in range(14)}  # 420,000 characters, each field under 32,000
    with pytest.raises(NotInCsv, match="400,000"):
        csv_row(payload, list(payload))


@pytest.mark.parametrize("text", ["1e5000", "1e1000000", "9" * 19, "1" * 1_000_000, "-1E+18"])
def test_numbers_no_salesforce_field_holds_are_rejected_in_microseconds(text):
    started = time.perf_counter()
    with pytest.raises(Unmappable):
        field_value(text, "double")
    assert time.perf_counter() - started < 0.5  # the old code took 30 s for 1e1000000, or hung


@pytest.mark.parametrize("value", [Decimal("1e5000"), float("1e300"), 10**30, Decimal("NaN"), float("inf")])
def test_source_numbers_no_salesforce_field_holds_are_rejected(value):
    with pytest.raises(Unmappable):
        field_value(value, "double")


@pytest.mark.parametrize(
    ("value", "number"),
    [
        ("1e5", 100000),
        ("123456789012345678", 123456789012345678),
        ("0.000001", Decimal("0.000001")),
        ("1e-5000", Decimal("1e-5000")),
        (1.5, Decimal("1.5")),
        (Decimal("-12.50"), Decimal("-12.50")),
    ],
)
def test_numbers_are_the_same_on_both_wires(value, number):
    sent = field_value(value, "double")
    assert sent == number
    as_json = exact_json.loads(exact_json.dumps(sent))
    assert Decimal(str(as_json)) == Decimal(csv_text(sent)) == Decimal(str(number))
    assert len(csv_text(sent)) < 40


def test_the_size_cap_refuses_the_row_that_would_pass_it():
    data = JobData(["A"], max_bytes=100)
    assert data.add(SourceRecord("1", (1,), "e1", {"A": "x" * 200}))  # a job always takes its first row
    assert not data.add(SourceRecord("2", (2,), "e2", {"A": "y"}))
    assert [r.key for r in data.records] == ["1"]


def test_a_double_to_a_text_field_is_its_text_on_both_wires():
    """A double precision column mapped to a text field: JSON would send a number, which a text field refuses
    for the whole request, while CSV sends text. Both now send the same text."""
    assert field_value(42.5, "string") == "42.5"
    assert field_value(1e20, "textarea") == "1e+20"
    with pytest.raises(Unmappable):
        field_value(float("nan"), "string")


@pytest.mark.parametrize("value", [date(2024, 1, 2), datetime(2024, 1, 2, 3, 4, tzinfo=UTC), uuid.uuid4()])
def test_what_is_no_number_is_a_rejected_record_for_a_number_field(value):
    with pytest.raises(Unmappable, match="is not a number"):
        field_value(value, "double")
