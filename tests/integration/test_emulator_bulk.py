"""The emulator's Bulk API 2.0 ingest, through simple-salesforce's own ``bulk2`` client and its REST calls.

Shapes and states follow the *Bulk API 2.0 and Bulk API Developer Guide*
("Create a Job", "Upload Job Data", "Upload Complete", "Get Job Info", "Get
Job Successful/Failed/Unprocessed Record Results", "Delete a Job").
"""

from __future__ import annotations

import csv
import io
import time

import pytest
from simple_salesforce.exceptions import SalesforceOperationError

pytestmark = pytest.mark.integration

EXT = "CRM_Contact_Id__c"


def contacts_csv(ids, **overrides) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([EXT, "LastName", "Email"])
    for i in ids:
        writer.writerow([str(i), overrides.get("last_name", f"Last {i}"), f"person{i}@example.com"])
    return out.getvalue()


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def rest(sf, method: str, path: str, **kwargs):
    return sf.session.request(
        method,
        f"{sf.base_url}{path}",
        headers={"Authorization": f"Bearer {sf.session_id}", **kwargs.pop("headers", {})},
        **kwargs,
    )


def new_job(sf) -> str:
    created = rest(
        sf,
        "POST",
        "jobs/ingest",
        json={"object": "Contact", "externalIdFieldName": EXT, "operation": "upsert", "contentType": "CSV"},
    )
    assert created.status_code == 200, created.text
    assert created.json()["state"] == "Open"
    return created.json()["id"]


def upload(sf, job_id: str, data: str):
    return rest(sf, "PUT", f"jobs/ingest/{job_id}/batches", data=data.encode(), headers={"Content-Type": "text/csv"})


def wait_until(sf, job_id: str, states: set[str], timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = rest(sf, "GET", f"jobs/ingest/{job_id}").json()
        if info["state"] in states:
            return info
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {states}")


def test_a_bare_bulk2_upsert_works_and_rejections_come_back_per_record(sf, emulator):
    emulator.add_rule(cause="validation_rule", when={"field": EXT, "op": "in", "value": ["7", "300"]}, fields=["Email"])
    (result,) = sf.bulk2.Contact.upsert(records=rows(contacts_csv(range(1, 501))), external_id_field=EXT, wait=0.1)
    assert (result["numberRecordsProcessed"], result["numberRecordsFailed"]) == (500, 2)
    failed = sf.bulk2.Contact.get_failed_records(result["job_id"])
    assert sorted(r[EXT] for r in rows(failed)) == ["300", "7"]
    assert all(r["sf__Error"].startswith("FIELD_CUSTOM_VALIDATION_EXCEPTION:") for r in rows(failed))
    successful = rows(sf.bulk2.Contact.get_successful_records(result["job_id"]))
    assert len(successful) == 498
    assert {r["sf__Created"] for r in successful} == {"true"}
    assert all(r["sf__Id"].startswith("003") for r in successful)
    assert len(emulator.records("Contact")) == 498

    (again,) = sf.bulk2.Contact.upsert(records=rows(contacts_csv(range(1, 3))), external_id_field=EXT, wait=0.1)
    assert {r["sf__Created"] for r in rows(sf.bulk2.Contact.get_successful_records(again["job_id"]))} == {"false"}


def test_a_job_takes_time_can_be_aborted_and_says_what_was_not_processed(sf, emulator):
    emulator.set_timing(bulk_records_per_second=2000)
    job_id = new_job(sf)
    assert upload(sf, job_id, contacts_csv(range(1, 3001))).status_code == 201
    assert upload(sf, job_id, contacts_csv(range(1, 3))).status_code == 409  # one upload per job
    assert rest(sf, "GET", f"jobs/ingest/{job_id}/successfulResults").status_code == 409  # not done yet
    closed = rest(sf, "PATCH", f"jobs/ingest/{job_id}", json={"state": "UploadComplete"})
    assert closed.json()["state"] == "UploadComplete"
    info = wait_until(sf, job_id, {"InProgress"})
    assert info["numberRecordsProcessed"] < 3000
    time.sleep(0.3)
    assert rest(sf, "PATCH", f"jobs/ingest/{job_id}", json={"state": "Aborted"}).json()["state"] == "Aborted"
    info = rest(sf, "GET", f"jobs/ingest/{job_id}").json()
    done = rows(rest(sf, "GET", f"jobs/ingest/{job_id}/successfulResults").text)
    left = rows(rest(sf, "GET", f"jobs/ingest/{job_id}/unprocessedrecords").text)
    assert 0 < len(done) < 3000
    assert len(done) == info["numberRecordsProcessed"]
    assert len(done) + len(left) == 3000
    assert [r[EXT] for r in left] == [str(i) for i in range(len(done) + 1, 3001)]  # in upload order
    assert len(emulator.records("Contact")) == len(done)
    assert rest(sf, "DELETE", f"jobs/ingest/{job_id}").status_code == 204
    assert rest(sf, "GET", f"jobs/ingest/{job_id}").status_code == 404


def test_a_job_the_org_fails_keeps_what_it_did_and_lists_the_rest(sf, emulator):
    emulator.fail_next_bulk_job("Contact", after_records=400)
    job_id = new_job(sf)
    upload(sf, job_id, contacts_csv(range(1, 1001)))
    rest(sf, "PATCH", f"jobs/ingest/{job_id}", json={"state": "UploadComplete"})
    info = wait_until(sf, job_id, {"Failed", "JobComplete"})
    assert info["state"] == "Failed"
    assert "errorMessage" in info
    assert len(rows(rest(sf, "GET", f"jobs/ingest/{job_id}/successfulResults").text)) == 400
    assert len(rows(rest(sf, "GET", f"jobs/ingest/{job_id}/unprocessedrecords").text)) == 600
    with pytest.raises(SalesforceOperationError, match="InvalidBatch : Field name not found : NoSuchField__c"):
        sf.bulk2.Contact.upsert(records=[{EXT: "x", "NoSuchField__c": "1", "LastName": "X"}], external_id_field=EXT)


def test_ingest_requests_count_and_meet_the_same_faults(sf, emulator):
    before = emulator.counters().get("api_requests", 0)
    emulator.add_rule(fault="http_503", path="jobs/ingest", times=1)
    assert (
        rest(
            sf, "POST", "jobs/ingest", json={"object": "Contact", "externalIdFieldName": EXT, "operation": "upsert"}
        ).status_code
        == 503
    )
    job_id = new_job(sf)
    assert emulator.counters()["api_requests"] == before + 2
    unknown = rest(
        sf, "POST", "jobs/ingest", json={"object": "Contact", "externalIdFieldName": "LastName", "operation": "upsert"}
    )
    assert unknown.status_code == 400
    assert rest(sf, "PATCH", f"jobs/ingest/{job_id}", json={"state": "Aborted"}).json()["state"] == "Aborted"


def test_empty_leaves_a_field_and_na_clears_it_as_the_csv_rules_say(sf, emulator):
    """Valid CSV Record Rows: "Empty field values are ignored when you update records. To set a field value to
    null, use a field value of #N/A." A quoted value keeps a comma, a CR and an LF."""
    first = new_job(sf)
    upload(sf, first, f'{EXT},LastName,Title,Department\n1,One,"Head of\rSales, EMEA",Ops\n')
    rest(sf, "PATCH", f"jobs/ingest/{first}", json={"state": "UploadComplete"})
    wait_until(sf, first, {"JobComplete"})
    second = new_job(sf)
    upload(sf, second, f"{EXT},LastName,Title,Department\n1,One,,#N/A\n")
    rest(sf, "PATCH", f"jobs/ingest/{second}", json={"state": "UploadComplete"})
    wait_until(sf, second, {"JobComplete"})
    (stored,) = emulator.records("Contact")
    assert (stored["Title"], stored["Department"]) == ("Head of\rSales, EMEA", None)


def test_an_ended_job_is_deleted_after_the_retention_then_answers_404(sf, emulator):
    """Bulk API and Bulk API 2.0 Limits and Allocations: jobs in a terminal state are deleted after 7 days."""
    job_id = new_job(sf)
    upload(sf, job_id, contacts_csv([1]))
    rest(sf, "PATCH", f"jobs/ingest/{job_id}", json={"state": "UploadComplete"})
    wait_until(sf, job_id, {"JobComplete"})
    assert rest(sf, "GET", f"jobs/ingest/{job_id}").status_code == 200
    emulator.keep_ended_bulk_jobs_for(0)
    time.sleep(0.01)
    gone = rest(sf, "GET", f"jobs/ingest/{job_id}")
    assert gone.status_code == 404
    assert gone.json()[0]["errorCode"] == "NOT_FOUND"


def _ids_csv(ids) -> str:
    return "Id\n" + "".join(f"{i}\n" for i in ids)


def test_a_delete_job_deletes_by_id_through_simple_salesforces_bulk2_and_says_which_it_could_not(sf, emulator):
    """Bulk API 2.0 ``delete`` ("Create a Job": operation; "Prepare CSV Files": one Id column): what it deletes
    goes to the Recycle Bin (a GET by Id answers ENTITY_IS_DELETED), a record a delete rule protects and one
    deleted already come back as failed records with their codes."""
    sf.bulk2.Contact.upsert(records=rows(contacts_csv(range(1, 6))), external_id_field=EXT, wait=0.1)
    ids = {r[EXT]: r["Id"] for r in emulator.records("Contact")}
    emulator.delete_record("Contact", ids["4"])  # in the Recycle Bin already
    emulator.add_rule(cause="delete_blocked", on="delete", when={"field": EXT, "op": "eq", "value": "2"})

    (result,) = sf.bulk2.Contact.delete(records=rows(_ids_csv(ids[k] for k in ("1", "2", "3", "4"))), wait=0.1)

    assert (result["numberRecordsProcessed"], result["numberRecordsFailed"]) == (4, 2)
    failed = {
        r["Id"]: r["sf__Error"].split(":")[0] for r in rows(sf.bulk2.Contact.get_failed_records(result["job_id"]))
    }
    assert failed == {ids["2"]: "DELETE_FAILED", ids["4"]: "ENTITY_IS_DELETED"}
    successful = rows(sf.bulk2.Contact.get_successful_records(result["job_id"]))
    assert sorted(r["sf__Id"] for r in successful) == sorted([ids["1"], ids["3"]])
    assert sorted(r[EXT] for r in emulator.records("Contact")) == ["2", "5"]
    gone = rest(sf, "GET", f"sobjects/Contact/{ids['1']}")
    assert (gone.status_code, gone.json()[0]["errorCode"]) == (404, "ENTITY_IS_DELETED")


def test_a_hard_delete_needs_its_permission_and_leaves_nothing_in_the_recycle_bin(sf, emulator):
    sf.bulk2.Contact.upsert(records=rows(contacts_csv(range(1, 3))), external_id_field=EXT, wait=0.1)
    ids = {r[EXT]: r["Id"] for r in emulator.records("Contact")}
    body = {"object": "Contact", "operation": "hardDelete", "contentType": "CSV"}
    refused = rest(sf, "POST", "jobs/ingest", json=body)
    assert refused.status_code == 400
    assert refused.json()[0]["errorCode"] == "INVALIDJOB"
    assert "Bulk API Hard Delete" in refused.json()[0]["message"]

    emulator.allow_hard_delete()
    (result,) = sf.bulk2.Contact.hard_delete(records=rows(_ids_csv([ids["1"]])), wait=0.1)

    assert (result["numberRecordsProcessed"], result["numberRecordsFailed"]) == (1, 0)
    assert [r[EXT] for r in emulator.records("Contact")] == ["2"]
    gone = rest(sf, "GET", f"sobjects/Contact/{ids['1']}")
    assert (gone.status_code, gone.json()[0]["errorCode"]) == (404, "NOT_FOUND")
