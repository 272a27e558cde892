"""CRMExport through Airflow: DagBag, dag.test(), real PostgreSQL and the Salesforce emulator.

Each test asserts what a data engineer would see: the records in Salesforce,
the watermark, the ExportErrors rows, the task state and its log.
"""

from __future__ import annotations

import json
import threading
import time

import psycopg

from devstack.stack import PROJECT_ROOT
from tests.support.helpers import (
    CONTACT_FIELDS,
    assert_salesforce_matches_source,
    contacts_stream,
    insert_contacts,
    kill_when,
    open_errors,
    salesforce_contacts,
    start_cli_export,
    watermark,
    write_streams,
)


def test_pause_on_holds_at_the_rejected_record_until_the_cause_is_fixed(db, emulator, run_crm_export):
    insert_contacts(db, 1000)
    rule = emulator.add_rule(
        cause="validation_rule",
        object="Contact",
        when={"field": "CRM_Contact_Id__c", "op": "eq", "value": "500"},
        message="Title must be set for imported contacts",
        fields=["Title"],
    )

    first = run_crm_export()
    assert first.task_states["export_contacts"] == "failed"  # failed, not up_for_retry: no pointless retries
    assert first.task_states["export_subscriptions"] == "success"
    assert first.state == "failed"
    in_salesforce = {int(k) for k in salesforce_contacts(emulator)}
    # Batches after the held one that were in flight may have landed too: upserts, sent again after the fix.
    assert set(range(1, 500)) | set(range(501, 601)) <= in_salesforce
    assert 500 not in in_salesforce
    position, held = watermark(db)
    assert held == "500"
    assert position[1] == "499"
    errors = open_errors(db)
    assert [(e["record_key"], e["error_code"], e["attempts"], e["error_fields"]) for e in errors] == [
        ("500", "FIELD_CUSTOM_VALIDATION_EXCEPTION", 1, ["Title"])
    ]
    assert errors[0]["external_id"] == "500"
    assert errors[0]["payload"]["LastName"] == "Last500"
    assert "held at record 500" in first.log
    assert "FIELD_CUSTOM_VALIDATION_EXCEPTION: Title must be set for imported contacts (fields: Title)" in first.log

    second = run_crm_export()
    assert second.task_states["export_contacts"] == "failed"
    errors = open_errors(db)
    assert [(e["id"], e["attempts"]) for e in errors] == [(errors[0]["id"], 2)]
    assert watermark(db)[1] == "500"

    emulator.remove_rule(rule["id"])
    third = run_crm_export()
    assert third.state == "success"
    assert sorted(int(k) for k in salesforce_contacts(emulator)) == list(range(1, 1001))
    assert open_errors(db) == []
    resolved = db.execute(
        'SELECT status, resolved_by, attempts FROM crm_export."ExportErrors" WHERE record_key = %s', ("500",)
    ).fetchall()
    assert resolved == [("resolved", "CRMExport", 2)]
    assert watermark(db) == (watermark(db)[0], None)
    assert watermark(db)[0][1] == "1000"


def test_pause_off_logs_and_skips_rejected_records(db, emulator, run_crm_export, pause_variable):
    pause_variable("false")
    insert_contacts(db, 1000)
    blocked = [str(i) for i in range(50, 1000, 80)]
    assert len(blocked) == 12
    emulator.add_rule(
        cause="no_access", object="Contact", when={"field": "CRM_Contact_Id__c", "op": "in", "value": blocked}
    )

    run = run_crm_export()

    assert run.state == "success"
    assert set(salesforce_contacts(emulator)) == {str(i) for i in range(1, 1001)} - set(blocked)
    position, held = watermark(db)
    assert (position[1], held) == ("1000", None)
    errors = open_errors(db)
    assert [e["record_key"] for e in errors] == blocked
    assert {e["error_code"] for e in errors} == {"INSUFFICIENT_ACCESS_OR_READONLY"}
    assert "crm_export_pause_on_error is OFF" in run.log
    assert "Salesforce is incomplete: 12 record(s) of stream 'contacts'" in run.log
    assert "INSUFFICIENT_ACCESS_OR_READONLY: 12" in run.log


def test_transient_row_lock_is_retried_within_the_run(db, emulator, run_crm_export):
    insert_contacts(db, 300)
    emulator.add_rule(cause="row_lock", when={"field": "CRM_Contact_Id__c", "op": "eq", "value": "250"}, times=2)

    run = run_crm_export()

    assert run.state == "success"
    assert len(salesforce_contacts(emulator)) == 300
    assert db.execute('SELECT count(*) FROM crm_export."ExportErrors"').fetchone()[0] == 0
    assert emulator.counters()["record_errors.UNABLE_TO_LOCK_ROW"] == 2


def test_outage_mid_run_fails_the_task_and_keeps_committed_batches(db, emulator, run_crm_export, tmp_path):
    """One request at a time, so which batches were answered is certain (tests/integration/test_in_flight.py: many)."""
    insert_contacts(db, 1000)
    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(in_flight=1)})
    emulator.add_rule(fault="http_503", path="composite/sobjects/Contact", skip=2, times=1000)

    failed = run_crm_export(streams_file=streams, retries=False)

    assert failed.task_states["export_contacts"] == "failed"
    assert watermark(db) == (watermark(db)[0], None)
    assert watermark(db)[0][1] == "400"
    assert db.execute('SELECT count(*) FROM crm_export."ExportErrors"').fetchone()[0] == 0
    assert "Salesforce could not upsert through sObject Collections (HTTP 503 SERVER_UNAVAILABLE)" in failed.log
    assert "(tried 3 times)" in failed.log
    assert "watermark did not move" in failed.log

    emulator.clear_rules()
    rerun = run_crm_export()
    assert rerun.state == "success"
    assert_salesforce_matches_source(db, emulator)
    assert emulator.counters()["records_created"] == 1000


def test_hanging_salesforce_fails_within_the_timeout(db, emulator, run_crm_export, stack, monkeypatch):
    connection = stack.emulator_info.airflow_connection()
    connection["extra"]["timeout"] = 2
    monkeypatch.setenv("AIRFLOW_CONN_SALESFORCE_DEFAULT", json.dumps(connection))
    insert_contacts(db, 600)
    emulator.add_rule(fault="hang", path="composite/sobjects/Contact", skip=1, times=1, seconds=60)

    started = time.monotonic()
    failed = run_crm_export(retries=False)
    assert time.monotonic() - started < 45

    assert failed.task_states["export_contacts"] == "failed"
    position = watermark(db)[0]
    # Whole batches answered before the one that hung, in source order: which ones depends on arrival order.
    assert (position[1] if position else None) in (None, "200", "400")
    assert "Salesforce did not answer within 2s" in failed.log
    rerun = run_crm_export()
    assert rerun.state == "success"
    assert_salesforce_matches_source(db, emulator)


def test_unreadable_pause_variable_fails_without_sending(db, emulator, run_crm_export, pause_variable):
    pause_variable("maybe")
    insert_contacts(db, 10)

    run = run_crm_export()

    assert run.task_states == {
        "export_accounts": "failed",
        "export_contacts": "failed",
        "export_subscriptions": "failed",
        "all_streams_succeeded": "failed",  # keeps the run red although children of a failed parent ran
    }
    assert "Airflow Variable crm_export_pause_on_error has the value 'maybe'" in run.log
    assert "Accepted values: true or false" in run.log
    assert emulator.records("Contact") == []
    assert watermark(db) == (None, None)


def test_pause_variable_spellings(db, emulator, run_crm_export, pause_variable):
    insert_contacts(db, 20)
    emulator.add_rule(cause="validation_rule", when={"field": "CRM_Contact_Id__c", "op": "eq", "value": "5"})
    pause_variable(" OFF ")
    assert run_crm_export().state == "success"
    assert len(salesforce_contacts(emulator)) == 19


def test_broken_stream_config_fails_dag_parsing(tmp_path, monkeypatch, airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bad = contacts_stream(order_by=["updated_at"])
    monkeypatch.setenv("CRM_EXPORT_STREAMS_FILE", str(write_streams(tmp_path / "streams.yml", {"contacts": bad})))
    bag = DagBag(str(PROJECT_ROOT / "dags"))
    assert len(bag.import_errors) == 2  # both DAG files read the streams config
    for error in bag.import_errors.values():
        assert "stream 'contacts', field 'order_by'" in error
    assert bag.dags == {}


def test_stream_config_that_salesforce_does_not_match_fails_the_task(
    db, emulator, run_crm_export, tmp_path, monkeypatch
):
    stream = contacts_stream(fields={**CONTACT_FIELDS, "Shoe_Size__c": "title"})
    run = run_crm_export(streams_file=write_streams(tmp_path / "streams.yml", {"contacts": stream}))
    assert run.task_states == {"export_contacts": "failed"}
    assert "stream 'contacts', field 'fields.Shoe_Size__c'" in run.log
    assert emulator.counters().get("records_created", 0) == 0

    missing_column = contacts_stream(fields={**CONTACT_FIELDS, "Phone": "mobile"})
    run = run_crm_export(streams_file=write_streams(tmp_path / "streams2.yml", {"contacts": missing_column}))
    assert "crm.contacts has no column 'mobile'" in run.log


def test_source_rows_that_cannot_be_sent_become_record_errors(db, emulator, run_crm_export, pause_variable, tmp_path):
    pause_variable("false")
    insert_contacts(db, 100)
    db.execute("UPDATE crm.contacts SET last_name = NULL WHERE id = 10")
    db.execute("UPDATE crm.contacts SET first_name = repeat('x', 41) WHERE id = 20")
    db.execute("UPDATE crm.contacts SET email = 'not an email' WHERE id = 30")
    db.execute("UPDATE crm.contacts SET lifetime_value = 'NaN' WHERE id = 40")
    streams = write_streams(tmp_path / "streams.yml", {"contacts": contacts_stream(settle_seconds=0)})

    run = run_crm_export(streams_file=streams)

    assert run.state == "success"
    codes = {e["record_key"]: e["error_code"] for e in open_errors(db)}
    assert codes == {
        "10": "REQUIRED_FIELD_MISSING",
        "20": "STRING_TOO_LONG",
        "30": "INVALID_EMAIL_ADDRESS",
        "40": "CRM_EXPORT_INVALID_SOURCE_VALUE",
    }
    assert len(salesforce_contacts(emulator)) == 96


def test_a_value_salesforce_would_refuse_is_a_rejected_record_naming_the_column(
    db, emulator, run_crm_export, pause_variable, tmp_path
):
    """The mapping sends only what the org takes (its field types from describe), so a bad date never costs a
    refused request (a real org refuses the whole request with JSON_PARSER_ERROR and names no field)."""
    pause_variable("false")
    insert_contacts(db, 200)
    db.execute("CREATE SCHEMA crm_test")
    db.execute(
        """CREATE VIEW crm_test.contacts AS
           SELECT id, last_name, updated_at, id * 10 AS title_number,
                  CASE WHEN id = 123 THEN '31/12/1990' ELSE birthdate::text END AS birthdate_text
           FROM crm.contacts"""
    )
    stream = contacts_stream(
        source="crm_test.contacts",
        fields={"LastName": "last_name", "Birthdate": "birthdate_text", "Title": "title_number"},
    )

    run = run_crm_export(streams_file=write_streams(tmp_path / "streams.yml", {"contacts": stream}))

    assert run.state == "success"
    ((key, code, fields, message),) = [
        (e["record_key"], e["error_code"], e["error_fields"], e["error_message"]) for e in open_errors(db)
    ]
    assert (key, code, fields) == ("123", "CRM_EXPORT_INVALID_SOURCE_VALUE", ["Birthdate"])
    assert message == "Source column birthdate_text: '31/12/1990' is not a date Salesforce takes (YYYY-MM-DD)"
    contacts = salesforce_contacts(emulator)
    assert set(contacts) == {str(i) for i in range(1, 201)} - {"123"}
    assert contacts["7"]["Title"] == "70"  # a number to a text field goes as its exact text
    assert emulator.counters().get("request_errors.JSON_PARSER_ERROR", 0) == 0


def test_failure_between_export_errors_and_watermark_changes_neither(db, emulator, run_crm_export, pause_variable):
    pause_variable("false")
    insert_contacts(db, 50)
    emulator.add_rule(cause="no_access", when={"field": "CRM_Contact_Id__c", "op": "eq", "value": "7"})
    db.execute("CREATE SCHEMA crm_test")
    db.execute(
        """CREATE FUNCTION crm_test.fail() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'could not extend file (simulated disk full)'; END $$"""
    )
    db.execute(
        """CREATE TRIGGER fail_watermark_update BEFORE UPDATE ON crm_export.stream_watermarks
           FOR EACH ROW WHEN (NEW.position IS DISTINCT FROM OLD.position) EXECUTE FUNCTION crm_test.fail()"""
    )

    run = run_crm_export(retries=False)

    assert run.task_states["export_contacts"] == "failed"
    assert "simulated disk full" in run.log
    assert db.execute('SELECT count(*) FROM crm_export."ExportErrors"').fetchone()[0] == 0
    assert watermark(db) == (None, None)


def test_late_committed_row_is_not_skipped(db, emulator, run_crm_export, project_conninfo, tmp_path):
    streams = write_streams(tmp_path / "streams.yml", {"contacts": contacts_stream(settle_seconds=0)})
    insert_contacts(db, 10)
    with psycopg.connect(project_conninfo) as slow_writer:
        # A transaction that started before the rows below but commits after the first run.
        slow_writer.execute("INSERT INTO crm.contacts (id, last_name) VALUES (100, 'Late')")
        time.sleep(0.2)
        insert_contacts(db, 10, start=11, age="0 seconds")

        first = run_crm_export(streams_file=streams)
        assert first.state == "success"
        assert set(salesforce_contacts(emulator)) == {str(i) for i in range(1, 11)}
        assert "may still commit rows with older change timestamps" in first.log
        slow_writer.commit()

    second = run_crm_export(streams_file=streams)
    assert second.state == "success"
    assert set(salesforce_contacts(emulator)) == {str(i) for i in range(1, 21)} | {"100"}


def test_a_later_success_resolves_the_open_error(db, emulator, run_crm_export, pause_variable, tmp_path):
    streams = write_streams(tmp_path / "streams.yml", {"contacts": contacts_stream(settle_seconds=0)})
    pause_variable("false")
    insert_contacts(db, 30)
    rule = emulator.add_rule(cause="flow_failure", when={"field": "CRM_Contact_Id__c", "op": "eq", "value": "3"})
    run_crm_export(streams_file=streams)
    assert [e["record_key"] for e in open_errors(db)] == ["3"]

    emulator.remove_rule(rule["id"])
    db.execute("UPDATE crm.contacts SET title = 'Fixed' WHERE id = 3")
    time.sleep(0.05)
    run_crm_export(streams_file=streams)

    assert open_errors(db) == []
    assert salesforce_contacts(emulator)["3"]["Title"] == "Fixed"


def test_expired_session_is_renewed_when_the_connection_allows_it(db, emulator, run_crm_export, stack, monkeypatch):
    info = stack.emulator_info
    insert_contacts(db, 400)
    emulator.add_rule(fault="invalid_session", path="composite/sobjects/Contact", skip=1, times=1)
    connection = info.airflow_connection()
    connection["extra"].update(oauth_client_id=info.client_id, oauth_client_secret=info.client_secret)
    monkeypatch.setenv("AIRFLOW_CONN_SALESFORCE_DEFAULT", json.dumps(connection))

    run = run_crm_export()

    assert run.state == "success"
    assert len(salesforce_contacts(emulator)) == 400
    assert emulator.counters()["sessions_issued"] == 1
    assert info.access_token not in run.log
    assert info.client_secret not in run.log


def test_expired_session_without_a_way_to_renew_fails_clearly(
    db, emulator, run_crm_export, stack, tmp_path, monkeypatch
):
    """The message names the connection to renew: the stream's own, not salesforce_default."""
    monkeypatch.setenv("AIRFLOW_CONN_SALESFORCE_SANDBOX", json.dumps(stack.emulator_info.airflow_connection()))
    streams = write_streams(
        tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0, connection="salesforce_sandbox")}
    )
    insert_contacts(db, 10)
    emulator.expire_sessions()

    run = run_crm_export(retries=False, streams_file=streams)

    assert run.task_states["export_contacts"] == "failed"
    assert "401 INVALID_SESSION_ID" in run.log
    assert "Put a fresh access token in the connection" in run.log
    assert "Stream 'contacts' uses connection 'salesforce_sandbox'" in run.log
    assert stack.emulator_info.access_token not in run.log


def test_worker_killed_between_salesforce_write_and_watermark_commit(db, emulator, run_crm_export, project_conninfo):
    insert_contacts(db, 1000)
    db.execute("INSERT INTO crm_export.stream_watermarks (stream) VALUES ('contacts')")
    with psycopg.connect(project_conninfo) as blocker:
        # Hold the watermark row, so the worker blocks right after its first Salesforce write.
        blocker.execute("SELECT * FROM crm_export.stream_watermarks WHERE stream = 'contacts' FOR UPDATE")
        worker = start_cli_export()

        def blocked_after_a_write() -> bool:
            waiting = db.execute(
                """SELECT count(*) FROM pg_stat_activity
                   WHERE application_name = 'crm-export contacts' AND wait_event_type = 'Lock'"""
            ).fetchone()[0]
            return bool(waiting and emulator.counters().get("records_created", 0) >= 200)

        # settle: the next batch goes out while the first one's commit waits
        kill_when(worker, blocked_after_a_write, never="the worker never blocked on the watermark commit", settle=0.5)
        blocker.rollback()

    in_salesforce = len(emulator.records("Contact"))
    # Sent, but not committed to the watermark: the first batch, and those in flight beside it.
    assert in_salesforce % 200 == 0
    assert in_salesforce >= 200
    assert watermark(db) == (None, None)

    rerun = run_crm_export()

    assert rerun.state == "success"
    assert_salesforce_matches_source(db, emulator)
    counters = emulator.counters()
    assert counters["records_created"] == 1000
    assert counters["records_updated"] == in_salesforce  # the replayed batches: upserted again, not duplicated


def test_turning_pause_off_applies_within_a_running_task(db, emulator, run_crm_export, pause_variable, tmp_path):
    """The Variable is read again before each batch is committed (one request at a time here, so the toggle
    lands between batches for certain)."""
    from airflow.models.variable import Variable

    insert_contacts(db, 1000)
    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(in_flight=1)})
    emulator.add_rule(cause="validation_rule", when={"field": "CRM_Contact_Id__c", "op": "eq", "value": "900"})
    emulator.add_rule(fault="latency", path="composite/sobjects/Contact", seconds=0.3)

    def toggle_after_first_batch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if watermark(db)[0] is not None:
                Variable.set("crm_export_pause_on_error", "false")
                return
            time.sleep(0.05)

    toggler = threading.Thread(target=toggle_after_first_batch)
    toggler.start()
    run = run_crm_export(streams_file=streams)
    toggler.join()

    assert run.state == "success"
    assert "crm_export_pause_on_error changed to False during the run" in run.log
    assert [e["record_key"] for e in open_errors(db)] == ["900"]
    assert len(salesforce_contacts(emulator)) == 999
    assert watermark(db)[0][1] == "1000"
