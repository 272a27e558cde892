"""Bulk API 2.0 job data and results, without a server."""

from __future__ import annotations

from decimal import Decimal

from include.crm_export.bulk_csv import job_data, match_results, parse_error
from include.crm_export.errors import RecordRejected
from include.crm_export.mapping import SourceRecord

EXT = "CRM_Contact_Id__c"


def record(key: str, **payload) -> SourceRecord:
    return SourceRecord(key, (key,), key, {"attributes": {"type": "Contact"}, EXT: key, **payload})


def test_values_go_out_exactly_and_an_empty_value_empties_the_field():
    data = job_data(
        [
            record("1", LastName="O'Brien, Jr.", Amount__c=Decimal("99999999999999.99"), Opted__c=True),
            record("2", LastName="Line\nbreak", Amount__c=None, Opted__c=False),
            SourceRecord("3", ("3",), "3", None, RecordRejected("INVALID_FIELD", "bad date")),  # not sent
        ],
        [EXT, "LastName", "Amount__c", "Opted__c"],
    )
    assert data == (
        "CRM_Contact_Id__c,LastName,Amount__c,Opted__c\n"
        '1,"O\'Brien, Jr.",99999999999999.99,true\n'
        '2,"Line\nbreak",#N/A,false\n'
    )


def test_errors_are_read_with_colons_in_the_message():
    assert parse_error("INVALID_EMAIL_ADDRESS:Email: invalid email address: x:Email --") == RecordRejected(
        "INVALID_EMAIL_ADDRESS", "Email: invalid email address: x", ("Email",)
    )
    assert parse_error("UNABLE_TO_LOCK_ROW:unable to obtain exclusive access to this record:") == RecordRejected(
        "UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record", ()
    )


def test_results_in_any_order_are_matched_back_to_source_order_by_external_id():
    records = [record("a1"), record("A2"), record("a3"), record("a4")]
    successful = "sf__Id,sf__Created,CRM_Contact_Id__c\n003B,true,a2\n003A,false,a1\n"
    failed = "sf__Id,sf__Error,CRM_Contact_Id__c\n,FIELD_CUSTOM_VALIDATION_EXCEPTION:Title must be set:Title,a3\n"
    results = match_results(records, EXT, successful=successful, failed=failed)
    assert [None if o is None else o.rejection for o in results.outcomes] == [
        None,
        None,
        RecordRejected("FIELD_CUSTOM_VALIDATION_EXCEPTION", "Title must be set", ("Title",)),
        None,
    ]
    assert results.outcomes[0] is not None  # confirmed
    assert results.outcomes[3] is None  # in neither set: not processed
    assert results.unprocessed == 1
