"""Pure state logic: the pause setting, mapping, and what a batch's results mean."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from include.crm_export.batch import RecordOutcome, plan_batch
from include.crm_export.config import load_streams
from include.crm_export.errors import RejectedRecord, SettingsError
from include.crm_export.mapping import map_row, position_to_json
from include.crm_export.pause_variable import parse_pause_on_error
from include.crm_export.values import field_value, json_value

STREAM = load_streams()["contacts"]


@pytest.mark.parametrize("raw", ["true", "True", " yes ", "ON", "1", '"true"'])
def test_pause_on_spellings(raw):
    assert parse_pause_on_error(raw) is True


@pytest.mark.parametrize("raw", ["false", "FALSE", "no", "off", "0"])
def test_pause_off_spellings(raw):
    assert parse_pause_on_error(raw) is False


def test_pause_absent_means_on():
    assert parse_pause_on_error(None) is True


@pytest.mark.parametrize("raw", ["maybe", "", "2", "tru"])
def test_unreadable_pause_value_names_the_variable_and_accepted_values(raw):
    with pytest.raises(SettingsError) as raised:
        parse_pause_on_error(raw)
    assert "crm_export_pause_on_error" in str(raised.value)
    assert "Accepted values: true or false" in str(raised.value)


def row(**overrides):
    base = {column: None for column in STREAM.source_columns}
    base.update(id=7, updated_at=datetime(2024, 5, 1, 12, 0, tzinfo=UTC), last_name="Lovelace")
    base.update(overrides)
    return base


def test_map_row_builds_the_upsert_payload():
    record = map_row(
        STREAM, row(birthdate=date(1815, 12, 10), lifetime_value=Decimal("12.50"), opted_out_of_email=True)
    )
    assert record.key == "7"
    assert record.external_id == "7"
    assert record.payload["attributes"] == {"type": "Contact"}
    assert record.payload["CRM_Contact_Id__c"] == "7"
    assert record.payload["Birthdate"] == "1815-12-10"
    assert record.payload["Lifetime_Value__c"] == 12.5
    assert record.payload["HasOptedOutOfEmail"] is True
    assert record.payload["FirstName"] is None


def test_values_json_cannot_carry_become_record_errors():
    record = map_row(STREAM, row(lifetime_value=Decimal("NaN")))
    assert record.payload is None
    assert record.rejection.code == "CRM_EXPORT_INVALID_SOURCE_VALUE"
    assert record.rejection.fields == ("Lifetime_Value__c",)
    assert map_row(STREAM, row(first_name=b"bytes")).rejection.code == "CRM_EXPORT_INVALID_SOURCE_VALUE"


def test_timestamps_go_out_in_utc():
    assert json_value(datetime(2024, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)) == "2024-01-01T12:00:00.123Z"
    assert json_value(datetime(2024, 1, 1, 12, 0)) == "2024-01-01T12:00:00.000Z"
    assert json_value(Decimal("3")) == 3


def test_positions_round_trip_as_exact_text():
    moment = datetime(2024, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert position_to_json((moment, 42)) == ["2024-01-01T12:00:00.123456+00:00", "42"]


def outcomes(*codes):
    result = []
    for index, code in enumerate(codes, start=1):
        record = map_row(STREAM, row(id=index))
        result.append(RecordOutcome(record, RejectedRecord(code, "no") if code else None))
    return result


def test_pause_on_commits_up_to_the_first_rejection_and_holds_it():
    plan = plan_batch(outcomes(None, None, "FIELD_CUSTOM_VALIDATION_EXCEPTION", None, "OTHER"), pause_on_error=True)
    assert plan.confirmed_keys == ("1", "2")
    assert plan.new_position[-1] == 2
    assert plan.held[0].key == "3"
    assert [r.key for r, _ in plan.rejected] == ["3"]  # one row, not one per later failure


def test_pause_on_with_the_first_record_rejected_keeps_the_watermark():
    plan = plan_batch(outcomes("X", None), pause_on_error=True)
    assert plan.new_position is None
    assert plan.confirmed_keys == ()


def test_pause_off_moves_past_every_rejection():
    plan = plan_batch(outcomes(None, "A", None, "B"), pause_on_error=False)
    assert plan.new_position[-1] == 4
    assert plan.held is None
    assert [r.key for r, _ in plan.rejected] == ["2", "4"]
    assert plan.confirmed_keys == ("1", "3")


def test_clean_batch():
    plan = plan_batch(outcomes(None, None), pause_on_error=True)
    assert (plan.held, plan.rejected, plan.exported) == (None, (), 2)


def test_transient_codes_are_typed():
    assert RejectedRecord("UNABLE_TO_LOCK_ROW", "x").transient
    assert not RejectedRecord("FIELD_CUSTOM_VALIDATION_EXCEPTION", "x").transient


def test_exact_json_keeps_every_digit():
    from include.crm_export import exact_json

    values = {"a": Decimal("9999999999999999.99"), "b": Decimal("-0.000001"), "c": "x\\u0000decimal:1", "d": 1.5}
    text = exact_json.dumps(values)
    assert '"a": 9999999999999999.99' in text
    assert exact_json.loads(text) == {**values, "d": Decimal("1.5")}


@pytest.mark.parametrize(
    ("value", "field_type", "sent"),
    [
        (date(1990, 1, 31), "date", "1990-01-31"),
        ("1990-01-31", "date", "1990-01-31"),
        (datetime(2024, 7, 30, 20, 54, 16, 123456, tzinfo=UTC), "datetime", "2024-07-30T20:54:16.123Z"),
        ("2024-07-30T20:54:16.000+0000", "datetime", "2024-07-30T20:54:16.000+0000"),
        (123, "string", "123"),
        (Decimal("9999999999999999.99"), "string", "9999999999999999.99"),
        ("12.50", "currency", Decimal("12.50")),
        ("", "date", None),
        ("", "string", None),  # Salesforce stores no empty text: clear, on every path
        (True, "boolean", True),
    ],
)
def test_values_go_out_as_the_salesforce_field_takes_them(value, field_type, sent):
    assert field_value(value, field_type) == sent


@pytest.mark.parametrize(
    ("value", "field_type", "says"),
    [
        ("31/12/1990", "date", "not a date Salesforce takes"),
        ("20240730", "date", "not a date Salesforce takes"),
        (datetime(2024, 7, 30, 1, 2, tzinfo=UTC), "date", "has a time of day"),
        (date(2024, 7, 30), "datetime", "is a date; the Salesforce field takes a date and time"),
        ("2024-07-30 20:54:16", "datetime", "not a date and time Salesforce takes"),
        ("yes", "boolean", "not true or false"),
        ("12,5", "double", "not a number"),
        (True, "string", "the Salesforce field takes text"),
    ],
)
def test_values_a_salesforce_field_would_refuse_become_rejected_records_naming_the_column(value, field_type, says):
    stream = STREAM.model_copy(update={"fields": (("X__c", "x"),), "deletes_column": None})
    row = {"updated_at": datetime(2026, 1, 1, tzinfo=UTC), "id": 7, "x": value}
    record = map_row(stream, row, {"X__c": field_type})
    assert record.payload is None
    assert record.rejection.code == "CRM_EXPORT_INVALID_SOURCE_VALUE"
    assert record.rejection.fields == ("X__c",)
    assert record.rejection.message.startswith("Source column x: ")
    assert says in record.rejection.message
