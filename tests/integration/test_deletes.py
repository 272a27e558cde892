"""Deletes (``deletes: {column: …}``): a source row marked deleted has its Salesforce record deleted, found by the
stream's external id, on both paths, under the pause rules, through the re-export.

Every test ends with what a user sees: Salesforce's records (the emulator's state; a row marked deleted is absent),
the watermark, the ExportErrors rows, the run's history and message.
"""

from __future__ import annotations

import pytest

from tests.support.helpers import (
    assert_salesforce_matches_source,
    contacts_stream,
    insert_contacts,
    kill_when,
    open_errors,
    salesforce_contacts,
    start_cli_export,
    table_stream,
    watermark,
    write_streams,
)

PATHS = ["sObject Collections", "Bulk API 2.0"]
DELETES = {"deletes": {"column": "deleted_at"}, "settle_seconds": 0}


def _streams(tmp_path, **overrides):
    return write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(**{**DELETES, **overrides})})


def _run(run_dag, streams, path="sObject Collections", **conf):
    run = run_dag(streams_file=streams, retries=False, conf={"use_bulk_api": path == "Bulk API 2.0", **conf})
    assert run.state == "success", run.log[-3000:]
    return run


def _mark_deleted(db, *ids):
    db.execute("UPDATE crm.contacts SET deleted_at = now() WHERE id = ANY(%s)", (list(ids),))


def _last_run(db):
    return db.execute(
        """SELECT exported, unchanged, deleted, rejected FROM crm_export.export_runs
           WHERE stream = 'contacts' ORDER BY id DESC LIMIT 1"""
    ).fetchone()


def _block_delete(emulator, *ids):
    """A record Salesforce will not delete (another record depends on it: DELETE_FAILED)."""
    return emulator.add_rule(
        cause="delete_blocked",
        on="delete",
        when={"field": "CRM_Contact_Id__c", "op": "in", "value": [str(i) for i in ids]},
        message="Your attempt to delete this contact could not be completed because it is associated with a case",
    )["id"]


@pytest.mark.parametrize("path", PATHS)
def test_rows_marked_deleted_are_deleted_in_salesforce_and_not_asked_again(db, emulator, run_dag, tmp_path, path):
    """A row marked deleted is deleted by its external id; one Salesforce never had (marked deleted before its
    first export) or someone deleted by hand (in the Recycle Bin) counts as deleted without a delete. Touched
    again while still deleted, it is unchanged: nothing is asked."""
    insert_contacts(db, 300)
    streams = _streams(tmp_path)
    _run(run_dag, streams, path)
    assert len(salesforce_contacts(emulator)) == 300
    by_hand = salesforce_contacts(emulator)["7"]["Id"]
    emulator.delete_record("Contact", by_hand)
    deleted_before = emulator.counters().get("records_deleted", 0)

    _mark_deleted(db, *range(10, 40), 7)
    insert_contacts(db, 1, start=301)
    _mark_deleted(db, 301)  # never exported
    run = _run(run_dag, streams, path)

    assert emulator.counters().get("records_deleted", 0) - deleted_before == 30  # the hand-deleted one is gone
    contacts = salesforce_contacts(emulator)
    assert set(contacts) == {str(n) for n in range(1, 301)} - {str(n) for n in range(10, 40)} - {"7"}
    assert_salesforce_matches_source(db, emulator)
    assert _last_run(db) == (0, 0, 32, 0)
    assert "deleted: 32" in run.log
    position, held = watermark(db)
    assert position[1] == "301"
    assert held is None
    assert open_errors(db) == []

    requests_before = emulator.counters().get("api_requests", 0)
    db.execute("UPDATE crm.contacts SET title = title WHERE deleted_at IS NOT NULL")  # touched, still deleted
    _run(run_dag, streams, path)
    assert _last_run(db) == (0, 32, 0, 0)
    assert emulator.counters().get("records_deleted", 0) - deleted_before == 30
    if path == "sObject Collections":  # describe, the org's id and limits; no query, no delete
        assert emulator.counters().get("api_requests", 0) - requests_before <= 4


def test_a_boolean_column_marks_a_row_deleted_when_true(db, emulator, run_dag, tmp_path):
    """``deletes: {column: is_deleted}`` on a boolean column: true deletes; false and NULL do not."""
    db.execute("DROP TABLE IF EXISTS crm.flagged")
    db.execute(
        """CREATE TABLE crm.flagged (id int PRIMARY KEY, ext text, last_name text, is_deleted boolean,
                                     changed timestamptz NOT NULL DEFAULT now() - interval '1 hour')"""
    )
    db.execute(
        "INSERT INTO crm.flagged (id, ext, last_name) SELECT g, 'F' || g, 'Flag' || g FROM generate_series(1, 6) g"
    )
    stream = table_stream("crm.flagged", key="id", change="changed", deletes={"column": "is_deleted"})
    streams = write_streams(tmp_path / "s.yml", {"contacts": stream})
    _run(run_dag, streams)
    db.execute(
        """UPDATE crm.flagged SET changed = now() - interval '30 minutes',
                  is_deleted = CASE id WHEN 1 THEN true WHEN 2 THEN false WHEN 3 THEN NULL WHEN 4 THEN true END"""
    )

    _run(run_dag, streams)

    assert set(salesforce_contacts(emulator)) == {"F2", "F3", "F5", "F6"}
    assert _last_run(db)[2] == 2
    assert_salesforce_matches_source(db, emulator)
    db.execute("DROP TABLE crm.flagged")


def _twenty_contacts_with_5_that_salesforce_will_not_delete(db, emulator, run_dag, tmp_path):
    """Contacts 1-20 exported; then 3, 5 and 8 marked deleted, and Salesforce refuses to delete 5."""
    insert_contacts(db, 20)
    streams = _streams(tmp_path)
    _run(run_dag, streams)
    rule = _block_delete(emulator, 5)
    _mark_deleted(db, 3, 5, 8)
    return streams, rule


def test_a_refused_delete_holds_the_stream_with_pause_on_and_goes_through_once_fixed(
    db, emulator, run_dag, pause_variable, tmp_path
):
    streams, rule = _twenty_contacts_with_5_that_salesforce_will_not_delete(db, emulator, run_dag, tmp_path)
    pause_variable("true")

    held = run_dag(streams_file=streams, retries=False)

    assert held.state == "failed"
    assert held.task_states["export_contacts"] == "failed"
    assert "held at record 5" in held.log
    assert "Salesforce refused to delete the Contact with CRM_Contact_Id__c = 5" in held.log
    assert "associated with a case" in held.log
    [error] = open_errors(db)
    assert (error["record_key"], error["error_code"]) == ("5", "DELETE_FAILED")
    assert "refused to delete" in error["error_message"]
    assert "marked deleted (deleted_at)" in error["error_message"]
    assert watermark(db)[1] == "5"
    # 8 went in the same request as 5 and may be deleted already (as an upsert after a held record may have
    # landed); it is above the watermark, so the next run deletes it again, and finds it gone.
    assert "3" not in salesforce_contacts(emulator)
    assert "5" in salesforce_contacts(emulator)

    emulator.remove_rule(rule)  # the case is moved to another contact
    _run(run_dag, streams)

    assert not {"3", "5", "8"} & set(salesforce_contacts(emulator))
    assert_salesforce_matches_source(db, emulator)
    assert open_errors(db) == []
    assert watermark(db)[1] is None


def test_a_refused_delete_with_pause_off_is_logged_and_the_reexport_deletes_it(
    db, emulator, run_dag, pause_variable, tmp_path
):
    streams, rule = _twenty_contacts_with_5_that_salesforce_will_not_delete(db, emulator, run_dag, tmp_path)
    pause_variable("false")

    _run(run_dag, streams)

    [error] = open_errors(db)
    assert (error["record_key"], error["error_code"]) == ("5", "DELETE_FAILED")
    assert set(salesforce_contacts(emulator)) == {str(n) for n in range(1, 21)} - {"3", "8"}
    assert watermark(db)[1] is None
    assert watermark(db)[0][1] == "8"

    emulator.remove_rule(rule)
    assert run_dag(dag_id="CRMExport_ExportError", streams_file=streams, retries=False).state == "success"

    assert "5" not in salesforce_contacts(emulator)
    assert_salesforce_matches_source(db, emulator)
    assert open_errors(db) == []


@pytest.mark.parametrize("path", PATHS)
def test_a_deleted_row_that_comes_back_is_written_again(db, emulator, run_dag, pause_variable, tmp_path, path):
    """Deleted, then no longer marked deleted: the next run upserts it (a new record: the deleted one is in the
    Recycle Bin). A refused delete whose row comes back before the re-export is upserted by the re-export."""
    insert_contacts(db, 10)
    streams = _streams(tmp_path)
    _run(run_dag, streams, path)
    _mark_deleted(db, 2, 4)
    pause_variable("false")
    rule = _block_delete(emulator, 4)
    _run(run_dag, streams, path)
    assert "2" not in salesforce_contacts(emulator)
    assert "4" in salesforce_contacts(emulator)
    assert [e["record_key"] for e in open_errors(db)] == ["4"]

    db.execute("UPDATE crm.contacts SET deleted_at = NULL, title = 'Back' WHERE id IN (2, 4)")
    _run(run_dag, streams, path)
    assert run_dag(dag_id="CRMExport_ExportError", streams_file=streams, retries=False).state == "success"

    contacts = salesforce_contacts(emulator)
    assert contacts["2"]["Title"] == "Back"
    assert contacts["4"]["Title"] == "Back"
    assert_salesforce_matches_source(db, emulator)
    assert open_errors(db) == []
    emulator.remove_rule(rule)


def test_a_deletes_column_that_is_never_null_is_refused(db, emulator, run_dag, tmp_path):
    """Every row would count as deleted: refused before anything is sent, naming the setting."""
    insert_contacts(db, 3)
    streams = _streams(tmp_path, deletes={"column": "opted_out_of_email_text"})
    failed = run_dag(streams_file=streams, retries=False)
    assert failed.state == "failed"
    assert "field 'deletes.column'" in failed.log
    assert "has no column 'opted_out_of_email_text'" in failed.log

    streams = _streams(tmp_path, deletes={"column": "updated_at"})
    failed = run_dag(streams_file=streams, retries=False)
    assert failed.state == "failed"
    assert "field 'deletes.column'" in failed.log
    assert "never NULL, so every row would count as deleted" in failed.log
    assert salesforce_contacts(emulator) == {}


@pytest.mark.parametrize("path", PATHS)
def test_a_row_marked_deleted_whose_external_id_another_row_takes_leaves_the_record_to_that_row(
    db, emulator, run_dag, tmp_path, path
):
    """Row 1 is marked deleted and row 9 takes its external id in the same stretch of changes: one Salesforce
    record, written by the live row; it keeps its Id, and nothing is rejected as a duplicate."""
    db.execute("DROP TABLE IF EXISTS crm.reused")
    db.execute(
        """CREATE TABLE crm.reused (id int PRIMARY KEY, ext text, last_name text, deleted_at timestamptz,
                                    changed timestamptz NOT NULL DEFAULT now() - interval '1 hour')"""
    )
    db.execute("INSERT INTO crm.reused (id, ext, last_name) VALUES (1, 'R1', 'First'), (2, 'R2', 'Second')")
    stream = table_stream("crm.reused", key="id", change="changed", deletes={"column": "deleted_at"})
    streams = write_streams(tmp_path / "s.yml", {"contacts": stream})
    _run(run_dag, streams, path)
    record_id = salesforce_contacts(emulator)["R1"]["Id"]

    db.execute("UPDATE crm.reused SET deleted_at = now(), changed = now() - interval '20 minutes' WHERE id = 1")
    db.execute(
        "INSERT INTO crm.reused (id, ext, last_name, changed) VALUES (9, 'R1', 'Ninth', now() - interval '10 minutes')"
    )
    _run(run_dag, streams, path)

    contacts = salesforce_contacts(emulator)
    assert (contacts["R1"]["Id"], contacts["R1"]["LastName"]) == (record_id, "Ninth")
    assert open_errors(db) == []
    assert_salesforce_matches_source(db, emulator)
    db.execute("DROP TABLE crm.reused")


def _bulk_jobs(db):
    return db.execute("SELECT operation, state, records FROM crm_export.bulk_jobs ORDER BY created_at").fetchall()


def test_a_mass_delete_on_the_bulk_path_goes_in_one_bulk_delete_job(db, emulator, run_dag, pause_variable, tmp_path):
    """1,100 rows marked deleted on the Bulk path: their Ids found by query, then deleted in one Bulk API 2.0
    delete job ("Create a Job", operation delete, after the upsert job of the rows changed with them). One deleted
    by hand counts as deleted without being sent; one refused for a row lock is deleted again before it counts;
    one Salesforce refuses (DELETE_FAILED) is a rejected record, and with pause off the re-export deletes it once
    fixed."""
    insert_contacts(db, 1200)
    streams = _streams(tmp_path)
    _run(run_dag, streams, "Bulk API 2.0")
    emulator.delete_record("Contact", salesforce_contacts(emulator)["7"]["Id"])
    deleted_before = emulator.counters().get("records_deleted", 0)
    rule = _block_delete(emulator, 500)
    emulator.add_rule(  # once: refused in the job, then deleted through sObject Collections before it counts
        cause="row_lock", on="delete", times=1, when={"field": "CRM_Contact_Id__c", "op": "eq", "value": "600"}
    )
    pause_variable("false")

    _mark_deleted(db, *range(1, 1101))
    db.execute("UPDATE crm.contacts SET title = 'Changed' WHERE id > 1150")
    run = _run(run_dag, streams, "Bulk API 2.0")

    # The upsert job's records are the 1,150 read (50 in its CSV); the hand-deleted one is not in the delete job.
    assert _bulk_jobs(db)[-2:] == [("upsert", "done", 1150), ("delete", "done", 1099)]
    assert emulator.counters().get("records_deleted", 0) - deleted_before == 1098
    assert _last_run(db) == (50, 0, 1099, 1)
    assert "Bulk API 2.0 delete job" in run.log
    [error] = open_errors(db)
    assert (error["record_key"], error["error_code"]) == ("500", "DELETE_FAILED")
    assert error["error_message"].startswith("Salesforce refused to delete the Contact with CRM_Contact_Id__c = 500")
    assert set(salesforce_contacts(emulator)) == {"500"} | {str(n) for n in range(1101, 1201)}

    emulator.remove_rule(rule)
    assert run_dag(dag_id="CRMExport_ExportError", streams_file=streams, retries=False).state == "success"
    assert_salesforce_matches_source(db, emulator)
    assert open_errors(db) == []


def test_a_delete_job_left_by_a_killed_task_ends_before_its_records_are_read_again(db, emulator, run_dag, tmp_path):
    """Killed while Salesforce processes the delete job: the next run waits for it to end first (a delete still
    running could land after a row that came back is written again), resumes the upsert job by polling, and asks
    the deletes again; those done already count as deleted."""
    insert_contacts(db, 1100)
    streams = _streams(tmp_path, bulk_threshold=1000)
    _run(run_dag, streams, "Bulk API 2.0")
    _mark_deleted(db, *range(1, 1051))
    db.execute("UPDATE crm.contacts SET title = 'Changed' WHERE id > 1050")
    emulator.set_timing(bulk_records_per_second=300)  # the delete job takes about 3.5 s
    worker = start_cli_export(streams)
    kill_when(
        worker,
        lambda: db.execute(
            "SELECT 1 FROM crm_export.bulk_jobs WHERE operation = 'delete' AND state = 'closed'"
        ).fetchone(),
        never="the worker never closed a delete job",
    )
    emulator.set_timing(bulk_records_per_second=0)
    assert watermark(db)[0][1] == "1100"  # the first export's: nothing of the killed run was committed

    resumed = _run(run_dag, streams, "Bulk API 2.0")
    assert "Waiting for Bulk API 2.0 delete job" in resumed.log
    assert "a delete job left by an earlier task; its deletes are asked again" in resumed.log
    assert {state for _, state, _ in _bulk_jobs(db)} == {"done"}
    assert emulator.counters().get("records_deleted", 0) == 1050  # the deletes asked again found nothing left
    assert set(salesforce_contacts(emulator)) == {str(n) for n in range(1051, 1101)}
    assert_salesforce_matches_source(db, emulator)
    assert watermark(db)[0][1] == "1100"
    assert open_errors(db) == []
