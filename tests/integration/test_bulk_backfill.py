"""Backfills through Bulk API 2.0 jobs: same watermark, pause on error and ExportErrors as sObject Collections."""

from __future__ import annotations

from tests.support.helpers import (
    assert_salesforce_matches_source,
    blocked,
    contacts_stream,
    insert_contacts,
    kill_when,
    open_errors,
    salesforce_contacts,
    start_cli_export,
    watermark,
    write_streams,
)

REEXPORT = "CRMExport_ExportError"


def streams(tmp_path, **overrides):
    settings = {"settle_seconds": 0, "bulk_threshold": 2000, "bulk_job_records": 1000, **overrides}
    return write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(**settings)})


def jobs_created(emulator) -> int:
    return emulator.counters().get("bulk.jobs_created", 0)


def test_a_backlog_at_the_threshold_goes_through_bulk_jobs_and_a_small_one_through_collections(
    db, emulator, run_dag, tmp_path
):
    insert_contacts(db, 2500)
    config = streams(tmp_path, bulk_job_records=2500)
    run = run_dag(streams_file=config, retries=False)
    assert run.state == "success", run.log[-3000:]
    assert "so this run upserts through Bulk API 2.0 jobs of up to 2,500 records" in run.log
    assert jobs_created(emulator) == 1
    assert watermark(db)[0][1] == "2500"
    assert_salesforce_matches_source(db, emulator)
    api_requests = db.execute("SELECT sum(requests) FROM crm_export.api_requests").fetchone()[0]
    assert api_requests < 2500 / 200  # a job costs a handful of requests (create, upload, close, poll, results)

    insert_contacts(db, 100, start=2501, age="1 minute")
    assert run_dag(streams_file=config).state == "success"
    assert jobs_created(emulator) == 1  # 100 waiting: sObject Collections
    assert_salesforce_matches_source(db, emulator)

    insert_contacts(db, 10, start=2601, age="30 seconds")
    assert run_dag(streams_file=config, conf={"use_bulk_api": True}).state == "success"
    assert jobs_created(emulator) == 2  # asked for
    assert_salesforce_matches_source(db, emulator)


def test_rejections_in_a_job_hold_at_the_first_in_source_order_or_are_all_logged(
    db, emulator, run_dag, pause_variable, tmp_path
):
    insert_contacts(db, 2500)
    rule = blocked(emulator, 1700, 1500)
    config = streams(tmp_path)

    held = run_dag(streams_file=config, retries=False)
    assert held.task_states["export_contacts"] == "failed"
    assert "is held at record 1500" in held.log
    # The third job, uploaded while the second ran, is aborted: nothing after the held record counts.
    assert "(the stream is held at record 1500); its records are sent again" in held.log
    position, held_at = watermark(db)
    assert (position[1], held_at) == ("1499", "1500")
    assert [(e["record_key"], e["error_code"], e["error_fields"]) for e in open_errors(db)] == [
        ("1500", "FIELD_CUSTOM_VALIDATION_EXCEPTION", ["Title"])
    ]
    # Its payload was not kept through the job: read again by key, it is exactly what was sent.
    assert {k: open_errors(db)[0]["payload"][k] for k in ("CRM_Contact_Id__c", "LastName", "Lifetime_Value__c")} == {
        "CRM_Contact_Id__c": "1500",
        "LastName": "Last1500",
        "Lifetime_Value__c": 2250,
    }

    pause_variable("false")
    assert run_dag(streams_file=config).state == "success"
    assert watermark(db) == (watermark(db)[0], None)
    assert watermark(db)[0][1] == "2500"
    assert [(e["record_key"], e["attempts"]) for e in open_errors(db)] == [("1500", 2), ("1700", 1)]

    emulator.remove_rule(rule)
    assert run_dag(dag_id=REEXPORT, streams_file=config).state == "success"
    assert open_errors(db) == []
    assert_salesforce_matches_source(db, emulator)


def test_a_job_salesforce_fails_records_nothing_and_the_next_run_sends_it_again(db, emulator, run_dag, tmp_path):
    insert_contacts(db, 2500)
    emulator.fail_next_bulk_job("Contact", after_records=300)  # the first job fails part-way
    config = streams(tmp_path)

    failed = run_dag(streams_file=config, retries=False)
    assert failed.task_states["export_contacts"] == "failed"
    assert "ended Failed" in failed.log
    assert "Nothing of it was recorded and the watermark did not move" in failed.log
    assert watermark(db)[0] is None  # some records are in Salesforce, but nothing of a failed job counts
    # The next job was uploaded while the first one ran; it is aborted and counts for nothing either.
    assert "before it failed); its records are sent again" in failed.log
    assert 0 < len(salesforce_contacts(emulator)) < 2500
    assert open_errors(db) == []

    assert run_dag(streams_file=config).state == "success"
    assert watermark(db)[0][1] == "2500"
    assert_salesforce_matches_source(db, emulator)


def test_a_job_failed_from_its_first_record_records_nothing(db, emulator, run_dag, tmp_path):
    insert_contacts(db, 2500)
    emulator.fail_next_bulk_job("Contact", after_records=0)
    failed = run_dag(streams_file=streams(tmp_path), retries=False)
    assert failed.task_states["export_contacts"] == "failed"
    assert watermark(db)[0] is None
    assert open_errors(db) == []
    # None of the failed job's records is in Salesforce; the job after it (uploaded meanwhile) was aborted.
    assert all(int(key) > 1000 for key in salesforce_contacts(emulator))
    assert "before it failed); its records are sent again" in failed.log


def test_records_a_completed_job_has_no_result_for_are_unprocessed_and_nothing_of_the_job_counts(
    db, emulator, run_dag, tmp_path
):
    # "Results are not recorded for batches that exceed the daily batch allocation" (Get Job Successful Record
    # Results): the job is JobComplete, yet 700 of its records are in neither the successful nor the failed set.
    insert_contacts(db, 2500)
    emulator.leave_bulk_results_unrecorded("Contact", after_records=300)
    config = streams(tmp_path)
    failed = run_dag(streams_file=config, retries=False)
    assert failed.task_states["export_contacts"] == "failed"
    assert "left 700 record(s) unprocessed (the first: record 301, CRM_Contact_Id__c = 301)" in failed.log
    assert watermark(db)[0] is None
    assert open_errors(db) == []

    assert run_dag(streams_file=config).state == "success"
    assert watermark(db)[0][1] == "2500"
    assert open_errors(db) == []
    assert_salesforce_matches_source(db, emulator)


def test_transient_rejections_are_sent_again_through_collections_before_they_count(db, emulator, run_dag, tmp_path):
    insert_contacts(db, 2500)
    emulator.add_rule(
        cause="row_lock", when={"field": "CRM_Contact_Id__c", "op": "in", "value": ["10", "2222"]}, times=1
    )
    assert run_dag(streams_file=streams(tmp_path)).state == "success"
    assert open_errors(db) == []
    assert_salesforce_matches_source(db, emulator)


def test_a_task_killed_while_salesforce_processes_its_jobs_resumes_them_by_polling(db, emulator, run_dag, tmp_path):
    insert_contacts(db, 2000)
    emulator.set_timing(bulk_records_per_second=400)  # each job of 1000 takes about 2.5 s
    config = streams(tmp_path)
    worker = start_cli_export(config)

    def two_jobs_closed() -> list:
        # The second job is uploaded and closed while Salesforce processes the first: kill with both running.
        rows = db.execute(
            "SELECT job_id FROM crm_export.bulk_jobs WHERE state = 'closed' ORDER BY created_at"
        ).fetchall()
        return rows if len(rows) == 2 else []

    closed = kill_when(worker, two_jobs_closed, never="the worker never had two jobs running")
    assert watermark(db)[0] is None
    assert jobs_created(emulator) == 2

    resumed = run_dag(streams_file=config)
    assert resumed.state == "success"
    for (job_id,) in closed:
        assert f"Resuming Bulk API 2.0 job {job_id}" in resumed.log
    assert jobs_created(emulator) == 2  # both polled, in source order, none uploaded again
    assert emulator.counters()["bulk.records_uploaded"] == 2000
    assert watermark(db)[0][1] == "2000"
    assert db.execute("SELECT DISTINCT state FROM crm_export.bulk_jobs").fetchall() == [("done",)]
    assert_salesforce_matches_source(db, emulator)
    assert emulator.counters()["records_created"] == 2000


def test_a_record_changed_while_its_job_runs_waits_for_that_job_before_its_new_version_is_sent(
    db, emulator, run_dag, tmp_path
):
    # The next job is read and uploaded while Salesforce processes the one before. Record 995 changes just after
    # the first job (holding its old version, processed late in that job) is closed, so the next job holds its new
    # version, early on. Were both jobs running at once, the old version would land last.
    insert_contacts(db, 1500)
    emulator.set_timing(bulk_records_per_second=400)  # 1000 records: about 2.5 s
    db.execute(
        """CREATE FUNCTION pg_temp.change_995() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             UPDATE crm.contacts SET last_name = 'Changed', updated_at = now() WHERE id = 995;
             RETURN NULL;
           END $$;
           CREATE TRIGGER change_a_record_of_the_first_job AFTER UPDATE ON crm_export.bulk_jobs
           FOR EACH ROW WHEN (NEW.state = 'closed' AND NEW.records = 1000) EXECUTE FUNCTION pg_temp.change_995()"""
    )
    run = run_dag(streams_file=streams(tmp_path, bulk_threshold=0), conf={"use_bulk_api": True})
    assert run.state == "success"
    assert "1 record(s) of stream 'contacts' changed while job" in run.log
    assert salesforce_contacts(emulator)["995"]["LastName"] == "Changed"
    assert_salesforce_matches_source(db, emulator)


def test_a_job_none_of_whose_records_can_be_sent_is_committed_without_salesforce(
    db, emulator, run_dag, pause_variable, tmp_path
):
    insert_contacts(db, 2500)
    # JSON and CSV cannot carry NaN. The update stamps the rows anew: they come last, 1-500 in the second job
    # and 501-1000 as a third job without a single record to send.
    db.execute("UPDATE crm.contacts SET lifetime_value = 'NaN' WHERE id <= 1000")
    pause_variable("false")
    config = streams(tmp_path)
    assert run_dag(streams_file=config).state == "success"
    assert jobs_created(emulator) == 2
    assert watermark(db)[0][1] == "1000"
    errors = open_errors(db)
    assert (len(errors), {e["error_code"] for e in errors}) == (1000, {"CRM_EXPORT_INVALID_SOURCE_VALUE"})

    db.execute("UPDATE crm.contacts SET lifetime_value = id * 1.5 WHERE id <= 1000")
    assert run_dag(dag_id=REEXPORT, streams_file=config).state == "success"
    assert open_errors(db) == []
    assert_salesforce_matches_source(db, emulator)


def test_no_job_is_started_once_the_daily_api_budget_is_spent(db, emulator, run_dag, tmp_path):
    insert_contacts(db, 2500)
    tight = streams(tmp_path, daily_api_requests=3)  # create, upload, close: the first job spends it
    first = run_dag(streams_file=tight)
    assert first.state == "success"
    assert "stops here: API budget: crm-export has made 3 Salesforce API requests" in first.log
    assert jobs_created(emulator) == 1
    assert watermark(db)[0][1] == "1000"  # the job started is finished and committed

    again = run_dag(streams_file=tight)
    assert "API budget: crm-export has made" in again.log
    assert jobs_created(emulator) == 1

    assert run_dag(streams_file=streams(tmp_path, daily_api_requests=1000)).state == "success"
    assert watermark(db)[0][1] == "2500"
    assert_salesforce_matches_source(db, emulator)


def test_a_job_stops_taking_rows_at_its_size_limit(db, emulator, run_dag, tmp_path):
    # Bulk API 2.0 takes at most 150 MB a job ("Bulk API and Bulk API 2.0 Limits and Allocations"). With
    # bulk_job_megabytes at its least, 1 MB, and rows about 250 bytes wide, a job holds about 4,000 rows although
    # bulk_job_records allows 5,000.
    insert_contacts(db, 10_000)
    db.execute("UPDATE crm.contacts SET title = repeat('t', 120), last_name = 'Last' || id || repeat('n', 60)")
    row_bytes = db.execute(
        "SELECT min(length(id::text) * 2 + length(first_name) + length(last_name) + length(email) + 120 + 20) "
        "FROM crm.contacts"
    ).fetchone()[0]
    config = streams(tmp_path, bulk_job_megabytes=1, bulk_job_records=5000)
    assert run_dag(streams_file=config).state == "success"
    sizes = [n for (n,) in db.execute("SELECT records FROM crm_export.bulk_jobs ORDER BY created_at").fetchall()]
    assert sum(sizes) == 10_000
    assert len(sizes) == jobs_created(emulator) == 3
    assert max(sizes) <= 1_000_000 // row_bytes + 1  # no page ran past the megabyte
    assert watermark(db)[0][1] == "10000"
    assert_salesforce_matches_source(db, emulator)


def test_a_job_never_closed_is_aborted_and_its_records_sent_again(db, emulator, run_dag, sf, tmp_path):
    from include.crm_export.salesforce import BulkJobs

    insert_contacts(db, 2500)
    jobs = BulkJobs(sf, sobject="Contact", external_id_field="CRM_Contact_Id__c")
    job_id = jobs.create()
    db.execute(
        """INSERT INTO crm_export.bulk_jobs (job_id, stream, run_id, state, last_position, records)
           VALUES (%s, 'contacts', 'killed', 'uploaded', '["x", "1"]', 1000)""",
        (job_id,),
    )
    run = run_dag(streams_file=streams(tmp_path))
    assert run.state == "success"
    assert f"Aborting Bulk API 2.0 job {job_id} of stream 'contacts' (left uploaded by an earlier task)" in run.log
    assert jobs.info(job_id)["state"] == "Aborted"
    assert db.execute("SELECT state FROM crm_export.bulk_jobs WHERE job_id = %s", (job_id,)).fetchone() == ("aborted",)
    assert_salesforce_matches_source(db, emulator)
