"""Stuck states end visibly: a deleted held record, a lock left by a session whose worker is gone."""

from __future__ import annotations

import time

import psycopg

from tests.dags.conftest import (
    contacts_stream,
    insert_contacts,
    open_errors,
    salesforce_contacts,
    watermark,
    write_streams,
)

REEXPORT = "CRMExport_ExportError"


def test_a_held_record_deleted_from_the_source_clears_the_hold(db, emulator, run_dag, pause_variable, tmp_path):
    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0)})
    insert_contacts(db, 10)
    emulator.add_rule(cause="validation_rule", when={"field": "CRM_Contact_Id__c", "op": "eq", "value": "4"})
    assert run_dag(streams_file=streams, retries=False).state == "failed"
    assert watermark(db)[1] == "4"

    db.execute("DELETE FROM crm.contacts WHERE id = 4")
    assert run_dag(streams_file=streams).state == "success"
    assert watermark(db)[1] is None
    assert set(salesforce_contacts(emulator)) == {str(i) for i in range(1, 11)} - {"4"}

    assert run_dag(dag_id=REEXPORT, streams_file=streams).state == "success"
    assert open_errors(db) == []
    closed = db.execute("""SELECT status FROM crm_export."ExportErrors" WHERE record_key = '4'""").fetchone()
    assert closed == ("source_deleted",)


def lock_like_a_dead_worker(project_conninfo: str) -> psycopg.Connection:
    holder = psycopg.connect(project_conninfo, autocommit=True, application_name="crm-export contacts")
    holder.execute("SELECT pg_advisory_lock(hashtextextended('crm_export.stream:contacts', 0))")
    return holder


def test_a_lock_held_briefly_skips_the_run(db, emulator, run_dag, project_conninfo, tmp_path):
    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0)})
    insert_contacts(db, 5)
    with lock_like_a_dead_worker(project_conninfo):
        run = run_dag(streams_file=streams)
    assert run.task_states["export_contacts"] == "skipped"
    assert "is being exported by another process right now" in run.log
    assert salesforce_contacts(emulator) == {}


def test_a_lock_held_longer_than_any_run_fails_naming_its_holder(db, emulator, run_dag, project_conninfo, tmp_path):
    stream = contacts_stream(settle_seconds=0, lock_stale_after_minutes=0.01)
    streams = write_streams(tmp_path / "s.yml", {"contacts": stream})
    insert_contacts(db, 5)
    with lock_like_a_dead_worker(project_conninfo) as holder:
        pid = holder.info.backend_pid
        time.sleep(1.0)
        run = run_dag(streams_file=streams, retries=False)
    assert run.task_states["export_contacts"] == "failed"
    assert f"SELECT pg_terminate_backend({pid});" in run.log
    assert "crm-export contacts" in run.log
    assert salesforce_contacts(emulator) == {}
    assert run_dag(streams_file=streams).state == "success"  # once the session is gone, it carries on
    assert len(salesforce_contacts(emulator)) == 5
