"""Stuck states end visibly: a deleted held record, a lock left by a session whose worker is gone."""

from __future__ import annotations

import time

import psycopg

from tests.support.helpers import (
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


def wait_until_blocked(conn: psycopg.Connection, pid: int) -> None:
    """Until backend ``pid`` waits for a row lock."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        row = conn.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        if row and row[0] == "Lock":
            return
        time.sleep(0.02)
    raise AssertionError(f"backend {pid} never waited for a lock")


def test_export_and_reexport_lock_export_errors_in_one_order_and_never_deadlock(
    db, project_conninfo, tmp_path, monkeypatch
):
    """The export's commit and the re-export's outcome touch the same open rows at once, keys against ids reversed.

    Open errors for records 4, 3, 2, 1 get ids 1..4. A third session holds row id 1; the re-export's write waits
    there, then the export's commit of records 1..4 arrives. Locking by key (as once) the export would take ids
    4, 3, 2 before waiting for id 1, and the re-export, granted id 1 first, would wait for id 2: PostgreSQL
    would kill one of them (deadlock detected) and its work would be retried. In id order neither holds
    anything while it waits.
    """
    from concurrent.futures import ThreadPoolExecutor
    from contextlib import ExitStack
    from datetime import UTC, datetime

    from include.crm_export.batch import BatchPlan
    from include.crm_export.config import load_streams
    from include.crm_export.db import export_errors
    from include.crm_export.db.connection import Database
    from include.crm_export.export import RunContext, StreamExport

    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0)})
    monkeypatch.setenv("CRM_EXPORT_STREAMS_FILE", str(streams))
    stream = load_streams()["contacts"]
    insert_contacts(db, 4)
    for key in ("4", "3", "2", "1"):
        db.execute(
            """INSERT INTO crm_export."ExportErrors" (stream, sobject, record_key, external_id, error_code,
                                                       error_message) VALUES ('contacts', 'Contact', %s, %s,
                                                       'UNABLE_TO_LOCK_ROW', 'unable to obtain exclusive access')""",
            (key, key),
        )
    with psycopg.connect(project_conninfo, autocommit=True) as reexport, ExitStack() as exits:
        claimed = export_errors.claim_open_errors(
            reexport,
            stream,
            claimant="reexport-run",
            claim_seconds=600,
            not_attempted_since=datetime.now(UTC),
            limit=10,
            error_codes=None,
        )
        assert len(claimed) == 4
        export = StreamExport.open(stream, Database(), RunContext("CRMExport", "export-run"), exits=exits)
        blocker = exits.enter_context(psycopg.connect(project_conninfo))
        blocker.execute("""SELECT 1 FROM crm_export."ExportErrors" WHERE id = 1 FOR UPDATE""")

        with ThreadPoolExecutor(2) as pool:
            reexport_done = pool.submit(
                export_errors.record_reexport,
                reexport,
                claimant="reexport-run",
                resolved=[1, 2, 3, 4],
                still_rejected=[],
                source_deleted=[],
                dag_id="CRMExport_ExportError",
                run_id="reexport-run",
            )
            wait_until_blocked(db, reexport.info.backend_pid)
            plan = BatchPlan(new_position=None, confirmed_keys=("1", "2", "3", "4"), rejected=(), held=None)
            export_done = pool.submit(export.commit, plan)
            wait_until_blocked(db, export.conn.info.backend_pid)
            blocker.commit()
            reexport_done.result(timeout=30)  # a deadlock would raise psycopg.errors.DeadlockDetected here
            export_done.result(timeout=30)

    statuses = db.execute("""SELECT record_key, status FROM crm_export."ExportErrors" ORDER BY id""").fetchall()
    assert statuses == [("4", "resolved"), ("3", "resolved"), ("2", "resolved"), ("1", "resolved")]
