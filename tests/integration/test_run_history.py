"""Run history: each export run leaves one row in crm_export.export_runs, pruned after run_history_days."""

from __future__ import annotations

from tests.support.helpers import contacts_stream, insert_contacts, write_streams


def history(conn) -> list[dict]:
    cursor = conn.execute(
        """SELECT stream, dag_id, exported, rejected, rejected_by_code, pause_on_error, in_flight, outcome,
                  stopped_because, held_record_key, lag_rows, open_errors_by_code,
                  finished_at >= started_at AS ordered
           FROM crm_export.export_runs ORDER BY id"""
    )
    names = [column.name for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def test_each_run_is_recorded_with_what_it_did_and_why_it_stopped(db, emulator, run_dag, pause_variable, tmp_path):
    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0)})
    insert_contacts(db, 30)
    rule = emulator.add_rule(
        cause="validation_rule", when={"field": "CRM_Contact_Id__c", "op": "eq", "value": "11"}, fields=["Title"]
    )
    assert run_dag(streams_file=streams, retries=False).state == "failed"  # held at 11
    pause_variable("false")
    emulator.add_rule(cause="no_access", when={"field": "CRM_Contact_Id__c", "op": "in", "value": ["20", "21"]})
    assert run_dag(streams_file=streams).state == "success"  # 11, 20, 21 logged and skipped
    emulator.remove_rule(rule["id"])
    assert run_dag(streams_file=streams).state == "success"  # nothing new: an idle run is recorded too

    held, skipped, idle = history(db)
    assert held | {"ordered": True} == {
        "stream": "contacts",
        "dag_id": "CRMExport",
        "exported": 10,
        "rejected": 1,
        "rejected_by_code": {"FIELD_CUSTOM_VALIDATION_EXCEPTION": 1},
        "pause_on_error": True,
        "in_flight": 10,  # the default, never backed off
        "outcome": "held",
        "stopped_because": "held at a rejected record (pause on error)",
        "held_record_key": "11",
        "lag_rows": 20,
        "open_errors_by_code": {"FIELD_CUSTOM_VALIDATION_EXCEPTION": 1},
        "ordered": True,
    }
    assert (skipped["exported"], skipped["rejected"], skipped["outcome"], skipped["pause_on_error"]) == (
        17,
        3,
        "success",
        False,
    )
    assert skipped["rejected_by_code"] == {"FIELD_CUSTOM_VALIDATION_EXCEPTION": 1, "INSUFFICIENT_ACCESS_OR_READONLY": 2}
    assert skipped["open_errors_by_code"] == skipped["rejected_by_code"]
    assert (skipped["stopped_because"], skipped["lag_rows"]) == ("caught up", 0)
    assert (idle["exported"], idle["rejected"], idle["outcome"]) == (0, 0, "success")


def test_a_run_that_fails_on_a_request_is_recorded_as_failed(db, emulator, run_dag, tmp_path):
    streams = write_streams(
        tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0, batch_size=10, in_flight=1)}
    )
    insert_contacts(db, 30)
    emulator.add_rule(fault="http_503", path="composite/sobjects/Contact", skip=2, times=100)
    assert run_dag(streams_file=streams, retries=False).state == "failed"
    (failed,) = history(db)
    assert (failed["outcome"], failed["exported"], failed["rejected"]) == ("failed", 20, 0)
    assert failed["stopped_because"].startswith(
        "request failure: Salesforce could not upsert through sObject Collections (HTTP 503"
    )
    assert "503" in failed["stopped_because"]


def test_history_older_than_run_history_days_is_pruned(db, emulator, run_dag, tmp_path):
    db.execute(
        """INSERT INTO crm_export.export_runs (stream, dag_id, run_id, started_at, finished_at, exported, rejected,
                                              pause_on_error, outcome, stopped_because)
           VALUES ('contacts', 'CRMExport', 'old', now() - interval '8 days', now() - interval '8 days', 5, 0,
                   true, 'success', 'caught up'),
                  ('contacts', 'CRMExport', 'recent', now() - interval '6 days', now() - interval '6 days', 5, 0,
                   true, 'success', 'caught up'),
                  ('subscriptions', 'CRMExport', 'other stream', now() - interval '8 days',
                   now() - interval '8 days', 5, 0, true, 'success', 'caught up')"""
    )
    insert_contacts(db, 3)
    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0, run_history_days=7)})
    assert run_dag(streams_file=streams).state == "success"
    kept = db.execute("SELECT run_id FROM crm_export.export_runs WHERE run_id <> '' ORDER BY id").fetchall()
    assert [run_id for (run_id,) in kept][:2] == ["recent", "other stream"]  # another stream keeps its own
    assert len(kept) == 3
