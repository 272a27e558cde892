"""Every path keeps the promise: one rule for values, refusals, external ids and stream state.

sObject Collections and the Bulk API 2.0 backfill must leave Salesforce, the
watermark and ExportErrors identical for the same source, because both ask the
same functions what a value becomes, what a refusal means, and how the
stream's state moves.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from devstack.stack import PROJECT_ROOT
from tests.support.helpers import (
    cli,
    contacts_stream,
    insert_contacts,
    open_errors,
    salesforce_contacts,
    table_stream,
    watermark,
    write_streams,
)

BULK = {"use_bulk_api": True}

# (notes, score): each row carries one awkward text and one number-like text. Valid CSV Record Rows and
# Prepare CSV Files (Bulk API 2.0 and Bulk API Developer Guide) give the CSV side; the REST side is JSON.
CORPUS: list[tuple[str | None, str | None]] = [
    ("", "1e5"),  # emptied: clears on both paths (an empty CSV value would leave the old one)
    (None, "0.000001"),
    ("#N/A", "-12.5"),  # the text itself, not Bulk API's "clear"
    ("Head of\rSales", "123456789012345678"),  # a bare CR
    ("two\nlines", "1e-5000"),
    ("crlf\r\nend", None),
    ('say "hi", twice ""', "  42  "),
    ("a,b,c", "0"),
    ("  lead and trail  ", "-0.5"),
    ("tab\there", "1E+3"),
    ("ünïcödé ✓ 🚀 漢字", "7"),
    ("x" * 32_001, "8"),  # past Bulk API 2.0's 32,000 characters a field: still delivered
    ("y" * 131_073, "9"),  # past the field's 131,072: rejected by Salesforce, on both paths alike
    ("ok", "1e5000"),  # no Salesforce number field holds it: rejected naming the column
    ("ok", "1" * 5000),  # the same, found in microseconds
    ("ok", "12,5"),  # not a number
]


def _awkward_table(db) -> None:
    db.execute("CREATE SCHEMA IF NOT EXISTS crm_test")
    db.execute("DROP TABLE IF EXISTS crm_test.awkward")
    db.execute(
        """CREATE TABLE crm_test.awkward (id int PRIMARY KEY, ext text NOT NULL, last_name text NOT NULL,
                                          notes text, score text,
                                          updated_at timestamptz NOT NULL DEFAULT now() - interval '1 hour')"""
    )


def _awkward_stream(tmp_path, **overrides):
    stream = table_stream(
        "crm_test.awkward",
        key="id",
        change="updated_at",
        fields={"LastName": "last_name", "Notes__c": "notes", "Score__c": "score"},
        **overrides,
    )
    return write_streams(tmp_path / "awkward.yml", {"contacts": stream})


def _forget_the_stream(db, emulator) -> None:
    emulator.reset()
    db.execute(
        'TRUNCATE crm_export.stream_watermarks, crm_export."ExportErrors", crm_export.bulk_jobs, '
        "crm_export.export_runs, crm_export.api_requests, crm_export.external_ids, crm_export.external_ids_filled"
    )


def _export_the_corpus(db, emulator, run_dag, config, conf) -> tuple[dict, list, list]:
    """Old values first, then the corpus over them: what Salesforce, ExportErrors and the watermark end with."""
    _forget_the_stream(db, emulator)
    db.execute("TRUNCATE crm_test.awkward")
    db.execute(
        """INSERT INTO crm_test.awkward (id, ext, last_name, notes, score)
           SELECT g, 'a-' || g, 'Last' || g, 'old notes', '1' FROM generate_series(1, %s) g""",
        (len(CORPUS),),
    )
    assert run_dag(streams_file=config, conf=conf).state == "success"
    for n, (notes, score) in enumerate(CORPUS, start=1):
        db.execute(
            "UPDATE crm_test.awkward SET notes = %s, score = %s, updated_at = now() - interval '30 minutes' "
            "WHERE id = %s",
            (notes, score, n),
        )
    run = run_dag(streams_file=config, conf=conf)
    assert run.state == "success", run.log[-3000:]
    records = {
        r["CRM_Contact_Id__c"]: {k: r.get(k) for k in ("LastName", "Notes__c", "Score__c")}
        for r in emulator.records("Contact")
    }
    errors = [(e["record_key"], e["error_code"], e["error_message"][:60]) for e in open_errors(db)]
    position, held = watermark(db)
    return records, errors, (position[1:], held)  # the key; the change time differs between the two loads


def test_awkward_values_leave_salesforce_identical_on_collections_and_bulk(
    db, emulator, run_dag, pause_variable, tmp_path
):
    pause_variable("false")
    _awkward_table(db)
    config = _awkward_stream(tmp_path, bulk_threshold=0)

    by_collections = _export_the_corpus(db, emulator, run_dag, config, conf=None)
    assert emulator.counters().get("bulk.jobs_created", 0) == 0
    by_bulk = _export_the_corpus(db, emulator, run_dag, config, conf=BULK)
    assert emulator.counters()["bulk.jobs_created"] == 2

    assert by_bulk == by_collections  # Salesforce field by field, ExportErrors and the watermark
    records, errors, (position, held) = by_collections
    assert records["a-1"]["Notes__c"] is None  # emptied in the source: cleared, not left as 'old notes'
    assert records["a-3"]["Notes__c"] == "#N/A"
    assert records["a-4"]["Notes__c"] == "Head of\rSales"
    assert records["a-6"]["Notes__c"] == "crlf\r\nend"
    assert records["a-7"]["Notes__c"] == 'say "hi", twice ""'
    assert records["a-9"]["Notes__c"] == "  lead and trail  "
    assert records["a-11"]["Notes__c"] == "ünïcödé ✓ 🚀 漢字"
    assert records["a-12"]["Notes__c"] == "x" * 32_001
    assert Decimal(str(records["a-1"]["Score__c"])) == Decimal("1e5")
    assert Decimal(str(records["a-5"]["Score__c"])) == Decimal("1e-5000")
    assert records["a-6"]["Score__c"] is None
    codes = {key: code for key, code, _ in errors}
    assert codes == {
        "13": "STRING_TOO_LONG",
        "14": "CRM_EXPORT_INVALID_SOURCE_VALUE",
        "15": "CRM_EXPORT_INVALID_SOURCE_VALUE",
        "16": "CRM_EXPORT_INVALID_SOURCE_VALUE",
    }
    assert records["a-14"]["Notes__c"] == "old notes"  # rejected records keep what Salesforce had
    messages = {key: message for key, _, message in errors}
    assert messages["14"].startswith("Source column score: '1e5000' has 5001 digits")
    assert (position, held) == ([str(len(CORPUS))], None)


def test_a_number_no_field_holds_holds_the_stream_with_pause_on_and_names_the_column(db, emulator, run_dag, tmp_path):
    _awkward_table(db)
    db.execute(
        """INSERT INTO crm_test.awkward (id, ext, last_name, score)
           VALUES (1, 'a-1', 'L1', '2'), (2, 'a-2', 'L2', '1e1000000'), (3, 'a-3', 'L3', '3')"""
    )
    run = run_dag(streams_file=_awkward_stream(tmp_path), retries=False)
    assert run.task_states["export_contacts"] == "failed"
    assert "held at record 2" in run.log
    assert "Source column score: '1e1000000' has 1000001 digits before the decimal point" in run.log
    assert watermark(db)[1] == "2"
    assert "a-2" not in salesforce_contacts(emulator)


def test_a_nul_in_a_salesforce_error_message_is_stored_not_a_failed_commit(
    db, emulator, run_dag, pause_variable, tmp_path
):
    pause_variable("false")
    insert_contacts(db, 5)
    emulator.add_rule(
        cause="validation_rule",
        when={"field": "CRM_Contact_Id__c", "op": "eq", "value": "3"},
        message="Title may not contain \u0000 (NUL)",
        fields=["Title"],
    )
    config = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0)})
    run = run_dag(streams_file=config, retries=False)
    assert run.state == "success", run.log[-3000:]
    [error] = open_errors(db)
    assert (error["record_key"], error["error_message"]) == ("3", "Title may not contain \ufffd (NUL)")
    assert watermark(db)[0][1] == "5"


def _people(db, tmp_path) -> Path:
    """A table of people (id, ext, last_name, updated_at) and a Contact stream over it; returns the streams file."""
    db.execute("CREATE SCHEMA IF NOT EXISTS crm_test")
    db.execute("DROP TABLE IF EXISTS crm_test.people")
    db.execute(
        """CREATE TABLE crm_test.people (id int PRIMARY KEY, ext text, last_name text,
                                         updated_at timestamptz NOT NULL DEFAULT now() - interval '1 hour')"""
    )
    return write_streams(
        tmp_path / "s.yml", {"contacts": table_stream("crm_test.people", key="id", change="updated_at")}
    )


def _exported_with_one_rejected(db, emulator, run_dag, config, *, last_name: str) -> None:
    """Export the people once, Salesforce rejecting the one named ``last_name`` (open in ExportErrors)."""
    rule = emulator.add_rule(cause="validation_rule", when={"field": "LastName", "op": "eq", "value": last_name})
    assert run_dag(streams_file=config).state == "success"
    emulator.remove_rule(rule["id"])


@pytest.mark.parametrize("conf", [None, BULK], ids=["collections", "bulk"])
def test_two_rows_with_one_external_id_are_one_rejected_record_naming_both_keys(
    conf, db, emulator, run_dag, pause_variable, tmp_path
):
    """Salesforce matches a text external id case-insensitively unless the field is case sensitive
    (Field Types, External ID), so 'abc' and 'ABC' are one Salesforce record."""
    config = _people(db, tmp_path)
    db.execute(
        """INSERT INTO crm_test.people (id, ext, last_name, updated_at) VALUES
           (1, 'one', 'First', now() - interval '50 minutes'), (2, 'abc', 'Lower', now() - interval '40 minutes'),
           (3, 'three', 'Third', now() - interval '30 minutes'), (4, 'ABC', 'Upper', now() - interval '20 minutes'),
           (5, 'five', 'Fifth', now() - interval '10 minutes')"""
    )

    held = run_dag(streams_file=config, retries=False, conf=conf)
    assert held.task_states["export_contacts"] == "failed"
    assert "held at record 4" in held.log
    assert "Source rows 2 and 4 of crm_test.people both have CRM_Contact_Id__c = ABC" in held.log
    [error] = open_errors(db)
    assert (error["record_key"], error["error_code"]) == ("4", "CRM_EXPORT_DUPLICATE_EXTERNAL_ID")
    # Row 5 went out in the same request as row 4 and is simply sent again later; row 2 is not overwritten.
    assert {k: r["LastName"] for k, r in salesforce_contacts(emulator).items() if k != "five"} == {
        "one": "First",
        "abc": "Lower",
        "three": "Third",
    }

    pause_variable("false")
    assert run_dag(streams_file=config, conf=conf).state == "success"
    assert salesforce_contacts(emulator)["abc"]["LastName"] == "Lower"  # not overwritten by row 4
    assert sorted(salesforce_contacts(emulator)) == ["abc", "five", "one", "three"]


def _bulk_config(tmp_path, **overrides):
    stream = contacts_stream(settle_seconds=0, bulk_threshold=1, bulk_job_records=1000, **overrides)
    return write_streams(tmp_path / "s.yml", {"contacts": stream})


def test_the_org_allowance_used_up_on_the_bulk_path_reschedules_like_on_collections(db, emulator, run_dag, tmp_path):
    insert_contacts(db, 1500)
    emulator.add_rule(fault="request_limit", path="/jobs/ingest", method="POST", skip=1, times=1)
    run = run_dag(streams_file=_bulk_config(tmp_path, request_limit_wait_minutes=0.05), retries=False)
    assert run.state == "success", run.log[-3000:]  # with no retries configured: the wait used none
    assert "waits for Salesforce's API allowance" in run.log
    assert len(salesforce_contacts(emulator)) == 1500


def test_api_disabled_on_the_bulk_path_fails_at_once_saying_what_to_do(db, emulator, run_dag, tmp_path):
    insert_contacts(db, 1500)
    emulator.add_rule(fault="api_disabled_org", path="/jobs/ingest", method="POST")
    run = run_dag(streams_file=_bulk_config(tmp_path))  # retries configured: not used
    assert run.task_states["export_contacts"] == "failed"
    assert "API_DISABLED_FOR_ORG" in run.log
    assert "an admin must enable it" in run.log
    assert emulator.counters()["faults.api_disabled_org"] == 1  # refused once, not retried pointlessly
    assert open_errors(db) == []


def test_a_session_revoked_during_a_bulk_job_is_renewed_for_the_bulk_client_too(
    db, emulator, run_dag, stack, monkeypatch, tmp_path
):
    import json

    monkeypatch.setenv(
        "AIRFLOW_CONN_SALESFORCE_DEFAULT", json.dumps(stack.emulator_info.client_credentials_connection())
    )
    insert_contacts(db, 2500)
    emulator.add_rule(fault="session_expiry", path="/jobs/ingest", method="GET", times=1)
    run = run_dag(streams_file=_bulk_config(tmp_path), retries=False)
    assert run.state == "success", run.log[-3000:]
    assert "logging in again" in run.log
    assert len(salesforce_contacts(emulator)) == 2500


def test_a_reposition_sets_a_left_bulk_job_aside_instead_of_counting_it(db, emulator, run_dag, tmp_path):
    insert_contacts(db, 2000)
    config = _bulk_config(tmp_path)
    _a_job_left_by_a_killed_task(db)
    done = cli("reposition", "--stream", "contacts", "--from-start", "--yes", streams=config)
    assert done.returncode == 0, done.stderr
    assert db.execute("SELECT state FROM crm_export.bulk_jobs").fetchone()[0] == "set aside"

    run = run_dag(streams_file=config)
    assert run.state == "success", run.log[-3000:]
    assert "set aside by a reposition" in run.log
    assert db.execute("SELECT state FROM crm_export.bulk_jobs WHERE run_id = 'left'").fetchone()[0] == "aborted"
    assert len(salesforce_contacts(emulator)) == 2000


def _a_job_left_by_a_killed_task(db) -> None:
    """A job a killed task left closed, at the start of the stream; Salesforce does not know it (any more)."""
    last = db.execute("SELECT updated_at::text FROM crm.contacts WHERE id = 1000").fetchone()[0]
    db.execute(
        """INSERT INTO crm_export.bulk_jobs (job_id, stream, run_id, state, after_position, last_position, records)
           VALUES ('750000000000001AAA', 'contacts', 'left', 'closed', NULL, %s, 1000)""",
        (f'["{last}", "1000"]',),
    )


def test_a_left_job_salesforce_no_longer_knows_is_sent_again_not_polled_forever(db, emulator, run_dag, tmp_path):
    """Salesforce deletes jobs 7 days after they end (Bulk API and Bulk API 2.0 Limits and Allocations)."""
    insert_contacts(db, 2000)
    _a_job_left_by_a_killed_task(db)
    run = run_dag(streams_file=_bulk_config(tmp_path), retries=False)
    assert run.state == "success", run.log[-3000:]
    assert "is gone from Salesforce" in run.log
    assert db.execute("SELECT state FROM crm_export.bulk_jobs WHERE run_id = 'left'").fetchone()[0] == "failed"
    assert len(salesforce_contacts(emulator)) == 2000
    assert watermark(db)[0][1] == "2000"


def test_reposition_from_a_change_time_on_local_timestamps_takes_the_writers_zone(db, emulator, run_dag, tmp_path):
    db.execute("CREATE SCHEMA crm_test")
    db.execute(
        """CREATE TABLE crm_test.local (id int PRIMARY KEY, ext text NOT NULL, last_name text,
                                        changed timestamp without time zone NOT NULL)"""
    )
    # New York writers stamp local time: row 1 changed 5 hours ago, row 2 3 hours ago.
    db.execute(
        """INSERT INTO crm_test.local VALUES
           (1, 'e1', 'Before', (now() - interval '5 hours') AT TIME ZONE 'America/New_York'),
           (2, 'e2', 'After', (now() - interval '3 hours') AT TIME ZONE 'America/New_York')"""
    )
    stream = table_stream(
        "crm_test.local", key="id", change="changed", change_stamp={"writer_time_zones": ["America/New_York"]}
    )
    config = write_streams(tmp_path / "s.yml", {"contacts": stream})
    assert run_dag(streams_file=config).state == "success"
    assert emulator.counters()["records_created"] == 2

    since = db.execute("SELECT to_char(now() - interval '4 hours', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')").fetchone()[0]
    done = cli("reposition", "--stream", "contacts", "--from-change-time", since, "--yes", streams=config)
    assert done.returncode == 0, done.stderr
    assert run_dag(streams_file=config).state == "success"
    assert emulator.counters().get("records_updated", 0) == 1  # row 2 again, row 1 not


def test_a_lost_database_connection_says_what_happened_and_loses_nothing(
    db, emulator, run_dag, project_conninfo, tmp_path
):
    import threading

    import psycopg

    insert_contacts(db, 3000)
    emulator.set_timing(latency_ms=100)
    config = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0, in_flight=4)})

    def terminate_the_export_once_it_committed() -> None:
        with psycopg.connect(project_conninfo, autocommit=True) as admin:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                position = admin.execute(
                    "SELECT position FROM crm_export.stream_watermarks WHERE stream = 'contacts'"
                ).fetchone()
                if position and position[0]:
                    admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name LIKE 'crm-export contacts%%'"
                    )
                    return
                time.sleep(0.02)

    killer = threading.Thread(target=terminate_the_export_once_it_committed)
    killer.start()
    try:
        run = run_dag(streams_file=config, retries=False)
    finally:
        killer.join()
        emulator.set_timing(latency_ms=0)
    assert run.task_states["export_contacts"] == "failed"
    assert "lost its PostgreSQL connection (crm_export_postgres)" in run.log
    assert "Every batch committed before it stays" in run.log
    assert open_errors(db) == []

    assert run_dag(streams_file=config).state == "success"
    assert watermark(db)[0][1] == "3000"
    assert len(salesforce_contacts(emulator)) == 3000
    assert open_errors(db) == []


def test_a_held_record_deleted_with_nothing_after_it_releases_the_hold(db, emulator, run_dag, tmp_path):
    insert_contacts(db, 5)
    emulator.add_rule(
        cause="validation_rule", when={"field": "CRM_Contact_Id__c", "op": "eq", "value": "5"}, message="No"
    )
    config = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0)})
    assert run_dag(streams_file=config, retries=False).task_states["export_contacts"] == "failed"
    assert watermark(db)[1] == "5"

    db.execute("DELETE FROM crm.contacts WHERE id = 5")
    run = run_dag(streams_file=config)
    assert run.state == "success"
    assert "was held at record 5, which is gone from the source; the hold is released" in run.log
    assert watermark(db)[1] is None
    assert db.execute("SELECT held_since FROM crm_export.stream_watermarks").fetchone()[0] is None


def test_the_reexport_refuses_a_changed_stream_definition_like_the_export(
    db, emulator, run_dag, pause_variable, tmp_path
):
    pause_variable("false")
    insert_contacts(db, 5)
    rule = emulator.add_rule(
        cause="validation_rule", when={"field": "CRM_Contact_Id__c", "op": "eq", "value": "2"}, message="No"
    )["id"]
    config = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0)})
    assert run_dag(streams_file=config).state == "success"
    emulator.remove_rule(rule)
    changed = write_streams(
        tmp_path / "changed.yml",
        {"contacts": contacts_stream(settle_seconds=0, external_id={"field": "CRM_Contact_Id__c", "column": "email"})},
    )
    run = run_dag(dag_id="CRMExport_ExportError", streams_file=changed, retries=False)
    assert run.task_states["reexport_contacts"] == "failed"
    assert "Nothing was re-exported. Stream 'contacts' changed since its watermark was set" in run.log
    assert [e["record_key"] for e in open_errors(db)] == ["2"]
    assert "person2@example.com" not in salesforce_contacts(emulator)


def test_the_reexport_stays_within_the_daily_api_budget(db, emulator, run_dag, pause_variable, tmp_path):
    pause_variable("false")
    insert_contacts(db, 5)
    rule = emulator.add_rule(
        cause="validation_rule", when={"field": "CRM_Contact_Id__c", "op": "in", "value": ["2", "4"]}, message="No"
    )["id"]
    config = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0)})
    assert run_dag(streams_file=config).state == "success"
    emulator.remove_rule(rule)
    spent = db.execute("SELECT sum(requests) FROM crm_export.api_requests").fetchone()[0]
    tight = write_streams(
        tmp_path / "tight.yml", {"contacts": contacts_stream(settle_seconds=0, daily_api_requests=spent)}
    )
    run = run_dag(dag_id="CRMExport_ExportError", streams_file=tight)
    assert run.state == "success"
    assert "stops here: API budget" in run.log
    assert len(open_errors(db)) == 2  # nothing sent over the budget


def test_a_job_salesforce_would_not_abort_is_aborted_before_its_records_go_another_way(db, emulator, run_dag, tmp_path):
    """Job 1 fails; aborting job 2, which Salesforce is still processing, is refused once. Job 2 must not be
    forgotten: its older values could land after the next run's newer ones."""
    insert_contacts(db, 2000)
    config = write_streams(
        tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0, bulk_threshold=0, bulk_job_records=1000)}
    )
    emulator.set_timing(bulk_records_per_second=100)
    emulator.fail_next_bulk_job("Contact", after_records=200)  # job 1 fails after its first chunk
    # PATCH 1 closes job 1, PATCH 2 closes job 2, PATCH 3 aborts job 2: refused.
    emulator.add_rule(fault="http_503", path="/jobs/ingest", method="PATCH", skip=2, times=1)
    first = run_dag(streams_file=config, retries=False, conf=BULK)
    assert first.task_states["export_contacts"] == "failed"
    assert "It may still be running, so it stays recorded" in first.log
    states = [s for (s,) in db.execute("SELECT state FROM crm_export.bulk_jobs ORDER BY created_at").fetchall()]
    assert states == ["failed", "closed"]

    db.execute("UPDATE crm.contacts SET last_name = 'NEW', updated_at = now() - interval '1 second' WHERE id = 2000")
    second = run_dag(streams_file=config, retries=False, conf=BULK)
    assert second.state == "success", second.log[-3000:]
    assert "(left closed by an earlier task); its records are sent again" in second.log
    emulator.set_timing(bulk_records_per_second=0)
    time.sleep(1)  # had job 2 been left running, it would land its old row 2000 about now
    assert salesforce_contacts(emulator)["2000"]["LastName"] == "NEW"
    assert watermark(db)[0][1] == "2000"


def test_a_run_that_sends_nothing_keeps_a_hold_whose_record_still_waits(db, emulator, run_dag, tmp_path):
    """Stopped by the API budget before sending anything: the held record is still there, so is the hold."""
    insert_contacts(db, 5)
    emulator.add_rule(
        cause="validation_rule", when={"field": "CRM_Contact_Id__c", "op": "eq", "value": "5"}, message="No"
    )
    config = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0)})
    assert run_dag(streams_file=config, retries=False).task_states["export_contacts"] == "failed"
    spent = db.execute("SELECT sum(requests) FROM crm_export.api_requests").fetchone()[0]
    tight = write_streams(
        tmp_path / "tight.yml", {"contacts": contacts_stream(settle_seconds=0, daily_api_requests=spent)}
    )
    run = run_dag(streams_file=tight, retries=False)
    assert "stops here: API budget" in run.log
    assert "hold is released" not in run.log
    assert watermark(db)[1] == "5"


def _reexport_in_the_background(config):
    return subprocess.Popen(
        [sys.executable, "-m", "include.crm_export", "reexport", "--stream", "contacts"],
        cwd=PROJECT_ROOT,
        env={**os.environ, "CRM_EXPORT_STREAMS_FILE": str(config)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_the_reexport_and_the_export_never_send_one_external_id_from_two_rows(
    db, emulator, run_dag, pause_variable, tmp_path
):
    """Row 1 ('dup') is open in ExportErrors, row 2 ('DUP') is new; the re-export and the export send at the same
    time. The external id is reserved before sending, so one of them is a rejected record, whichever came first."""
    pause_variable("false")
    config = _people(db, tmp_path)
    db.execute("INSERT INTO crm_test.people (id, ext, last_name) VALUES (1, 'dup', 'One')")
    _exported_with_one_rejected(db, emulator, run_dag, config, last_name="One")

    db.execute("INSERT INTO crm_test.people (id, ext, last_name, updated_at) VALUES (2, 'DUP', 'Two', now())")
    emulator.set_timing(latency_ms=4000)
    reexport = _reexport_in_the_background(config)
    try:
        run = run_dag(streams_file=config, retries=False)
        reexport.communicate(timeout=120)
    finally:
        if reexport.poll() is None:
            reexport.kill()
        emulator.set_timing(latency_ms=0)
    assert run.state == "success"
    (record,) = salesforce_contacts(emulator).values()
    [error] = open_errors(db)
    assert error["error_code"] == "CRM_EXPORT_DUPLICATE_EXTERNAL_ID"
    sent = "1" if record["LastName"] == "One" else "2"
    assert error["record_key"] != sent  # the other row waits, open, naming both


def test_a_row_changed_during_the_reexport_is_sent_again_only_if_its_new_external_id_is_free(
    db, emulator, run_dag, pause_variable, tmp_path
):
    pause_variable("false")
    config = _people(db, tmp_path)
    db.execute("INSERT INTO crm_test.people (id, ext, last_name) VALUES (1, 'a', 'One'), (2, 'b', 'Two')")
    _exported_with_one_rejected(db, emulator, run_dag, config, last_name="Two")

    emulator.set_timing(latency_ms=4000)
    reexport = _reexport_in_the_background(config)
    try:
        deadline = time.monotonic() + 90
        while (
            time.monotonic() < deadline
            and not db.execute(
                """SELECT claimed_by FROM crm_export."ExportErrors" WHERE record_key = '2' AND claimed_by IS NOT NULL"""
            ).fetchone()
        ):
            time.sleep(0.05)
        time.sleep(1)  # its request is in flight: row 2 now takes row 1's external id
        db.execute("UPDATE crm_test.people SET ext = 'A', updated_at = now() WHERE id = 2")
        reexport.communicate(timeout=120)
    finally:
        if reexport.poll() is None:
            reexport.kill()
        emulator.set_timing(latency_ms=0)
    assert salesforce_contacts(emulator)["a"]["LastName"] == "One"  # row 1 keeps its record
    assert [(e["record_key"], e["error_code"]) for e in open_errors(db)] == [("2", "CRM_EXPORT_DUPLICATE_EXTERNAL_ID")]


def test_rows_exported_before_the_upgrade_hold_their_external_ids(db, emulator, run_dag, tmp_path):
    config = _people(db, tmp_path)
    db.execute("INSERT INTO crm_test.people (id, ext, last_name) VALUES (1, 'dup', 'One')")
    assert run_dag(streams_file=config).state == "success"
    # As a database exported by 0.1.0 is: no external id recorded anywhere.
    db.execute("TRUNCATE crm_export.external_ids, crm_export.external_ids_filled")

    db.execute("INSERT INTO crm_test.people (id, ext, last_name, updated_at) VALUES (2, 'DUP', 'Two', now())")
    run = run_dag(streams_file=config, retries=False)
    assert "held at record 2" in run.log
    assert salesforce_contacts(emulator)["dup"]["LastName"] == "One"
