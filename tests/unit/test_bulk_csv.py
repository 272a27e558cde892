"""Bulk API 2.0 job data and results, without a server."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import pytest

from include.crm_export.bulk_csv import JobData, JobRecord, match_results, parse_error, rejections, saved_ids
from include.crm_export.errors import RejectedRecord
from include.crm_export.mapping import SourceRecord

EXT = "CRM_Contact_Id__c"


def record(key: str, **payload) -> SourceRecord:
    return SourceRecord(key, (key,), key, {"attributes": {"type": "Contact"}, EXT: key, **payload})


def test_values_go_out_exactly_and_an_empty_value_empties_the_field():
    data = JobData([EXT, "LastName", "Amount__c", "Opted__c"])
    for each in (
        record("1", LastName="O'Brien, Jr.", Amount__c=Decimal("99999999999999.99"), Opted__c=True),
        record("2", LastName="Line\nbreak", Amount__c=None, Opted__c=False),
        SourceRecord("3", ("3",), "3", None, RejectedRecord("INVALID_FIELD", "bad date")),  # not sent
    ):
        data.add(each)
    assert data.csv() == (
        "CRM_Contact_Id__c,LastName,Amount__c,Opted__c\n"
        '1,"O\'Brien, Jr.",99999999999999.99,true\n'
        '2,"Line\nbreak",#N/A,false\n'
    )


def test_errors_are_read_with_colons_in_the_message():
    assert parse_error("INVALID_EMAIL_ADDRESS:Email: invalid email address: x:Email --") == RejectedRecord(
        "INVALID_EMAIL_ADDRESS", "Email: invalid email address: x", ("Email",)
    )
    assert parse_error("UNABLE_TO_LOCK_ROW:unable to obtain exclusive access to this record:") == RejectedRecord(
        "UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record", ()
    )


def rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_results_in_any_order_are_matched_back_to_source_order_by_external_id():
    records = [JobRecord(k, (k,), k) for k in ("a1", "A2", "a3", "a4")]
    records.append(JobRecord("a5", ("a5",), None, RejectedRecord("MISSING_EXTERNAL_ID", "empty")))  # not sent
    # "The order of records in the response is not guaranteed" (Get Job Successful Record Results).
    saved = saved_ids(rows('"sf__Id","sf__Created","CRM_Contact_Id__c"\n003B,true,a2\n003A,false,A1\n'), EXT)
    rejected = rejections(
        rows("sf__Id,sf__Error,CRM_Contact_Id__c\n,FIELD_CUSTOM_VALIDATION_EXCEPTION:Title must be set:Title,a3\n"),
        EXT,
    )
    results = match_results(records, saved=saved, rejected=rejected)
    assert results.rejected == {
        2: RejectedRecord("FIELD_CUSTOM_VALIDATION_EXCEPTION", "Title must be set", ("Title",)),
        4: RejectedRecord("MISSING_EXTERNAL_ID", "empty"),
    }
    assert results.unprocessed == [3]  # in neither set: not processed; 0 and 1 are confirmed


def test_results_without_the_external_id_column_are_refused():
    with pytest.raises(ValueError, match="no CRM_Contact_Id__c column"):
        saved_ids(rows("sf__Id,sf__Created,Email\n003A,true,x@example.com\n"), EXT)


def test_a_job_keeps_key_position_and_external_id_of_each_record_not_its_payload():
    data = JobData([EXT, "LastName"])
    data.add(record("1", LastName="One"))
    data.add(SourceRecord("2", ("2",), "2", None, RejectedRecord("INVALID_FIELD", "bad date")))
    assert data.records == [
        JobRecord("1", ("1",), "1"),
        JobRecord("2", ("2",), "2", RejectedRecord("INVALID_FIELD", "bad date")),
    ]
    assert [r.sent for r in data.records] == [True, False]
    assert (data.sent, data.csv()) == (1, "CRM_Contact_Id__c,LastName\n1,One\n")
