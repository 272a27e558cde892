"""BulkJobs and bulk_csv against the emulator's Bulk API 2.0, through simple-salesforce's bulk2 client."""

from __future__ import annotations

import pytest

from include.crm_export.bulk_csv import JobData, match_results
from include.crm_export.mapping import SourceRecord
from include.crm_export.salesforce import BulkJobs

pytestmark = pytest.mark.integration

EXT = "CRM_Contact_Id__c"
COLUMNS = [EXT, "LastName", "Email"]


def records(n: int) -> list[SourceRecord]:
    return [
        SourceRecord(
            str(i),
            (str(i),),
            f"c-{i}",
            {"attributes": {"type": "Contact"}, EXT: f"c-{i}", "LastName": f"Last {i}", "Email": f"p{i}@example.com"},
        )
        for i in range(1, n + 1)
    ]


def run_job(sf, sent: list[SourceRecord]) -> tuple[dict, list]:
    """The job's info and each record's outcome in source order: None saved, a rejection, or "unprocessed"."""
    jobs = BulkJobs(sf, sobject="Contact", external_id_field=EXT, first_poll_seconds=0.05)
    job_id = jobs.create()
    data = JobData(COLUMNS)
    for record in sent:
        data.add(record)
    jobs.upload(job_id, data.csv())
    jobs.close(job_id)
    info = jobs.wait(job_id)
    saved, failed = jobs.results(job_id)
    matched = match_results(data.records, saved=saved, rejected=failed)
    unprocessed = set(matched.unprocessed)
    return info, ["unprocessed" if i in unprocessed else matched.rejected.get(i) for i in range(len(sent))]


def test_a_job_with_rejected_records_gives_each_record_its_outcome_in_source_order(sf, emulator):
    emulator.set_timing(bulk_records_per_second=5000)
    emulator.add_rule(
        cause="validation_rule", when={"field": EXT, "op": "in", "value": ["c-7", "c-400"]}, fields=["Email"]
    )
    info, outcomes = run_job(sf, records(450))
    assert (info["state"], info["numberRecordsProcessed"], info["numberRecordsFailed"]) == ("JobComplete", 450, 2)
    rejected = [(str(i + 1), o.code, o.fields) for i, o in enumerate(outcomes) if o is not None]
    assert rejected == [
        ("7", "FIELD_CUSTOM_VALIDATION_EXCEPTION", ("Email",)),
        ("400", "FIELD_CUSTOM_VALIDATION_EXCEPTION", ("Email",)),
    ]
    assert len(emulator.records("Contact")) == 448


def test_a_job_salesforce_fails_leaves_the_rest_unprocessed(sf, emulator):
    emulator.fail_next_bulk_job("Contact", after_records=200)
    info, outcomes = run_job(sf, records(450))
    assert info["state"] == "Failed"
    assert outcomes == [None] * 200 + ["unprocessed"] * 250


def test_non_ascii_external_ids_are_matched_although_the_results_name_no_charset(sf, emulator):
    # Bulk API 2.0 data is UTF-8 ("Prepare CSV Files"); the results are "Formats: CSV" with no charset named,
    # which requests would read as ISO-8859-1, and then no external id with an accent would match.
    sent = [
        SourceRecord(
            str(i),
            (str(i),),
            f"ü-{i}-Łódź",
            {"attributes": {"type": "Contact"}, EXT: f"ü-{i}-Łódź", "LastName": f"Müller {i}", "Email": None},
        )
        for i in range(1, 4)
    ]
    emulator.add_rule(cause="validation_rule", when={"field": EXT, "op": "in", "value": ["ü-2-Łódź"]}, fields=["Email"])
    info, outcomes = run_job(sf, sent)
    assert info["state"] == "JobComplete"
    assert [None if o is None else o.code for o in outcomes] == [None, "FIELD_CUSTOM_VALIDATION_EXCEPTION", None]
    assert sorted(r["LastName"] for r in emulator.records("Contact")) == ["Müller 1", "Müller 3"]
