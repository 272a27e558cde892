"""CRMExport_ExportError through Airflow on the real parts: the daily re-export of ExportErrors."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import psycopg
import pytest

from devstack.stack import PROJECT_ROOT
from tests.support.helpers import (
    assert_salesforce_matches_source,
    contacts_stream,
    insert_contacts,
    open_errors,
    salesforce_contacts,
    start_cli_export,
    watermark,
    write_streams,
)

REEXPORT = "CRMExport_ExportError"


def errors_by_status(conn: psycopg.Connection) -> dict[str, int]:
    rows = conn.execute('SELECT status, count(*) FROM crm_export."ExportErrors" GROUP BY status').fetchall()
    return dict(rows)


def log_errors_with_pause_off(db, emulator, run_dag, pause_variable, *, rules):
    pause_variable("false")
    insert_contacts(db, 300)
    ids = [emulator.add_rule(**rule)["id"] for rule in rules]
    assert run_dag().state == "success"
    return ids


def test_cause_removed_reexport_resolves_everything(db, emulator, run_dag, pause_variable):
    blocked = ["10", "20", "30", "40"]
    (rule,) = log_errors_with_pause_off(
        db,
        emulator,
        run_dag,
        pause_variable,
        rules=[{"cause": "validation_rule", "when": {"field": "CRM_Contact_Id__c", "op": "in", "value": blocked}}],
    )
    assert [e["record_key"] for e in open_errors(db)] == blocked
    position_before = watermark(db)

    emulator.remove_rule(rule)
    run = run_dag(dag_id=REEXPORT)

    assert run.state == "success"
    assert errors_by_status(db) == {"resolved": 4}
    assert db.execute("""SELECT DISTINCT resolved_by FROM crm_export."ExportErrors" """).fetchall() == [
        ("CRMExport_ExportError",)
    ]
    assert len(salesforce_contacts(emulator)) == 300
    assert_salesforce_matches_source(db, emulator)
    assert watermark(db) == position_before  # never moves a CRMExport watermark
    assert "Re-export of stream 'contacts': resolved 4, still rejected 0 (none), closed 0" in run.log
    assert "No open errors left." in run.log


def test_still_failing_rows_stay_open_with_attempts_counted(db, emulator, run_dag, pause_variable):
    _access, validation = log_errors_with_pause_off(
        db,
        emulator,
        run_dag,
        pause_variable,
        rules=[
            {"cause": "no_access", "when": {"field": "CRM_Contact_Id__c", "op": "in", "value": ["5", "6"]}},
            {"cause": "validation_rule", "when": {"field": "CRM_Contact_Id__c", "op": "eq", "value": "7"}},
        ],
    )
    emulator.remove_rule(validation)
    emulator.add_rule(cause="flow_failure", when={"field": "CRM_Contact_Id__c", "op": "eq", "value": "6"})

    run = run_dag(dag_id=REEXPORT)

    assert run.state == "success"
    still_open = {e["record_key"]: (e["error_code"], e["attempts"]) for e in open_errors(db)}
    assert still_open == {"5": ("INSUFFICIENT_ACCESS_OR_READONLY", 2), "6": ("INSUFFICIENT_ACCESS_OR_READONLY", 2)}
    assert errors_by_status(db) == {"open": 2, "resolved": 1}
    assert "still rejected 2 (INSUFFICIENT_ACCESS_OR_READONLY: 2)" in run.log
    assert "the oldest has been open since" in run.log

    run_dag(dag_id=REEXPORT)
    assert {e["attempts"] for e in open_errors(db)} == {3}


def test_changed_source_row_sends_current_values_not_the_old_payload(db, emulator, run_dag, pause_variable):
    (rule,) = log_errors_with_pause_off(
        db,
        emulator,
        run_dag,
        pause_variable,
        rules=[{"cause": "validation_rule", "when": {"field": "CRM_Contact_Id__c", "op": "eq", "value": "42"}}],
    )
    db.execute("UPDATE crm.contacts SET title = 'Head of Data', email = 'new42@example.com' WHERE id = 42")
    emulator.remove_rule(rule)

    run_dag(dag_id=REEXPORT)

    record = salesforce_contacts(emulator)["42"]
    assert (record["Title"], record["Email"]) == ("Head of Data", "new42@example.com")
    assert open_errors(db) == []


def test_source_row_gone_closes_the_error_without_sending(db, emulator, run_dag, pause_variable):
    log_errors_with_pause_off(
        db,
        emulator,
        run_dag,
        pause_variable,
        rules=[{"cause": "no_access", "when": {"field": "CRM_Contact_Id__c", "op": "in", "value": ["8", "9"]}}],
    )
    db.execute("DELETE FROM crm.contacts WHERE id = 8")
    requests_before = emulator.counters()["api_requests"]

    run = run_dag(dag_id=REEXPORT)

    rows = dict(db.execute('SELECT record_key, status FROM crm_export."ExportErrors"').fetchall())
    assert rows == {"8": "source_deleted", "9": "open"}
    assert "8" not in salesforce_contacts(emulator)
    assert "closed 1 (source_deleted: the source row is gone)" in run.log
    # Each stream task describes its object and its parents' (accounts 1, contacts 2, subscriptions 2) and asks the
    # org id (3), then one upsert of record 9: 9 requests, none for record 8.
    assert emulator.counters()["api_requests"] - requests_before <= 9


def test_manual_run_with_params_and_dry_run(db, emulator, run_dag, pause_variable):
    log_errors_with_pause_off(
        db,
        emulator,
        run_dag,
        pause_variable,
        rules=[
            {"cause": "no_access", "when": {"field": "CRM_Contact_Id__c", "op": "in", "value": ["1", "2"]}},
            {"cause": "validation_rule", "when": {"field": "CRM_Contact_Id__c", "op": "eq", "value": "3"}},
        ],
    )
    emulator.clear_rules()

    dry = run_dag(dag_id=REEXPORT, conf={"dry_run": True})
    assert dry.state == "success"
    assert errors_by_status(db) == {"open": 3}
    assert "would send 3 record(s)" in dry.log

    only_validation = run_dag(
        dag_id=REEXPORT, conf={"streams": ["contacts"], "error_codes": ["FIELD_CUSTOM_VALIDATION_EXCEPTION"]}
    )
    assert only_validation.task_states == {
        "reexport_accounts": "skipped",
        "reexport_contacts": "success",
        "reexport_subscriptions": "skipped",
        "all_streams_succeeded": "success",
    }
    assert [e["record_key"] for e in open_errors(db)] == ["1", "2"]

    limited = run_dag(dag_id=REEXPORT, conf={"limit": 1})
    assert limited.state == "success"
    assert [e["record_key"] for e in open_errors(db)] == ["2"]


def test_bad_params_are_refused_when_triggering(db, emulator, run_dag, pause_variable):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="param limit"):
        run_dag(dag_id=REEXPORT, conf={"limit": 0})
    with pytest.raises(ParamValidationError, match="param streams"):
        run_dag(dag_id=REEXPORT, conf={"streams": ["leads"]})


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"limit": 0}, "Param 'limit'"),
        ({"limit": True}, "Param 'limit'"),
        ({"streams": ["leads"]}, "Param 'streams'"),
        ({"error_codes": "UNABLE_TO_LOCK_ROW"}, "Param 'error_codes'"),
        ({"dry_run": "yes"}, "Param 'dry_run'"),
    ],
)
def test_params_are_checked_again_in_the_task(params, says):
    from include.crm_export.errors import SettingsError
    from include.crm_export.tasks import reexport_options

    with pytest.raises(SettingsError, match=says):
        reexport_options(params)


def test_least_recently_attempted_first(db, emulator, run_dag, pause_variable):
    log_errors_with_pause_off(
        db,
        emulator,
        run_dag,
        pause_variable,
        rules=[{"cause": "no_access", "when": {"field": "CRM_Contact_Id__c", "op": "in", "value": ["1", "2", "3"]}}],
    )
    db.execute(
        """UPDATE crm_export."ExportErrors" SET last_attempt_at = now() - CAST(record_key || ' hours' AS interval)"""
    )
    run_dag(dag_id=REEXPORT, conf={"limit": 1})
    attempts = dict(db.execute('SELECT record_key, attempts FROM crm_export."ExportErrors"').fetchall())
    assert attempts == {"1": 1, "2": 1, "3": 2}  # record 3 was waiting longest


def test_request_level_fault_mid_run_loses_nothing(db, emulator, run_dag, pause_variable, tmp_path):
    blocked = [str(i) for i in range(1, 301, 3)]
    (rule,) = log_errors_with_pause_off(
        db,
        emulator,
        run_dag,
        pause_variable,
        rules=[{"cause": "no_access", "when": {"field": "CRM_Contact_Id__c", "op": "in", "value": blocked}}],
    )
    emulator.remove_rule(rule)
    emulator.add_rule(fault="http_503", path="composite/sobjects/Contact", skip=0, times=1000)  # an outage
    first = run_dag(dag_id=REEXPORT, retries=False)

    assert first.task_states["reexport_contacts"] == "failed"
    statuses = errors_by_status(db)
    assert statuses == {"open": 100}
    assert db.execute('SELECT count(*) FROM crm_export."ExportErrors" WHERE claimed_by IS NOT NULL').fetchone()[0] == 0

    emulator.clear_rules()
    second = run_dag(dag_id=REEXPORT)  # the stream exactly as exported: a changed mapping would be refused
    assert second.state == "success"
    assert errors_by_status(db) == {"resolved": 100}
    assert_salesforce_matches_source(db, emulator)


def test_two_reexport_runs_at_once_send_each_record_once(db, emulator, run_dag, pause_variable):
    blocked = [str(i) for i in range(1, 301)]
    (rule,) = log_errors_with_pause_off(
        db,
        emulator,
        run_dag,
        pause_variable,
        rules=[{"cause": "no_access", "when": {"field": "CRM_Contact_Id__c", "op": "in", "value": blocked}}],
    )
    emulator.remove_rule(rule)
    db.execute("DELETE FROM crm.contacts WHERE id > 300")
    emulator.add_rule(fault="latency", path="composite/sobjects/Contact", seconds=0.3)
    before = emulator.counters().get("records_created", 0)

    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "include.crm_export", "reexport", "--stream", "contacts", "--batch-size", "50"],
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=120)[0] for w in workers]

    assert all(w.returncode == 0 for w in workers), outputs
    assert errors_by_status(db) == {"resolved": 300}
    assert emulator.counters()["records_created"] - before == 300  # each record sent once, by one run
    assert emulator.counters().get("records_updated", 0) == 0


def test_reexport_beside_a_running_crm_export_leaves_salesforce_equal_to_source(
    db, emulator, run_dag, pause_variable, tmp_path, project_conninfo
):
    streams = write_streams(tmp_path / "streams.yml", {"contacts": contacts_stream(settle_seconds=0)})
    pause_variable("false")
    insert_contacts(db, 600)
    rule = emulator.add_rule(
        cause="no_access", when={"field": "CRM_Contact_Id__c", "op": "regex", "value": "^[0-9]*5$"}
    )
    assert run_dag(streams_file=streams).state == "success"
    assert len(open_errors(db)) == 60
    emulator.remove_rule(rule["id"])
    emulator.add_rule(fault="latency", path="composite/sobjects/Contact", seconds=0.05)

    stop = threading.Event()

    def keep_changing_source() -> None:
        n = 0
        with psycopg.connect(project_conninfo, autocommit=True) as writer:
            while not stop.is_set():
                n += 1
                writer.execute(
                    "UPDATE crm.contacts SET title = %s "
                    "WHERE id IN (SELECT id FROM crm.contacts ORDER BY random() LIMIT 20)",
                    (f"Title v{n}",),
                )
                writer.execute("INSERT INTO crm.contacts (id, last_name) VALUES (%s, 'New')", (10_000 + n,))
                time.sleep(0.02)

    changer = threading.Thread(target=keep_changing_source)
    changer.start()
    exporter = start_cli_export(streams, pause_on_error="false")
    try:
        reexport = run_dag(dag_id=REEXPORT, streams_file=streams)
    finally:
        stop.set()
        changer.join()
        exporter.wait(120)
    assert reexport.state == "success"

    # Once the source is quiet, one more CRMExport run catches up with the last changes.
    time.sleep(0.05)
    assert run_dag(streams_file=streams).state == "success"
    assert open_errors(db) == []
    assert_salesforce_matches_source(db, emulator)
