"""BulkJobs and bulk_csv against the emulator's Bulk API 2.0, through simple-salesforce's bulk2 client."""

from __future__ import annotations

import pytest

from include.crm_export.bulk_csv import job_data, match_results
from include.crm_export.bulk_jobs import BulkJobs
from include.crm_export.mapping import SourceRecord

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
    jobs = BulkJobs(sf, sobject="Contact", external_id_field=EXT, first_poll_seconds=0.05)
    job_id = jobs.create()
    jobs.upload(job_id, job_data(sent, COLUMNS))
    jobs.close(job_id)
    info = jobs.wait(job_id)
    successful, failed = jobs.results(job_id)
    return info, match_results(sent, EXT, successful=successful, failed=failed).outcomes


def test_a_job_with_rejected_records_gives_each_record_its_outcome_in_source_order(sf, emulator):
    emulator.set_timing(bulk_records_per_second=5000)
    emulator.add_rule(
        cause="validation_rule", when={"field": EXT, "op": "in", "value": ["c-7", "c-400"]}, fields=["Email"]
    )
    info, outcomes = run_job(sf, records(450))
    assert (info["state"], info["numberRecordsProcessed"], info["numberRecordsFailed"]) == ("JobComplete", 450, 2)
    rejected = [(o.record.key, o.rejection.code, o.rejection.fields) for o in outcomes if o.rejection is not None]
    assert rejected == [
        ("7", "FIELD_CUSTOM_VALIDATION_EXCEPTION", ("Email",)),
        ("400", "FIELD_CUSTOM_VALIDATION_EXCEPTION", ("Email",)),
    ]
    assert all(o is not None for o in outcomes)
    assert len(emulator.records("Contact")) == 448


def test_a_job_salesforce_fails_leaves_the_rest_unprocessed(sf, emulator):
    emulator.fail_next_bulk_job("Contact", after_records=200)
    info, outcomes = run_job(sf, records(450))
    assert info["state"] == "Failed"
    assert [o is not None for o in outcomes] == [True] * 200 + [False] * 250
