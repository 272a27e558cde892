"""Rejections as real orgs and their automation report them (emulator rules follow Salesforce's StatusCode list)."""

from __future__ import annotations

from tests.support.helpers import contacts_stream, insert_contacts, open_errors, salesforce_contacts, write_streams

CAUSES = {
    # record: (rule cause, fields, code the record is logged with)
    "2": ("restricted_picklist", ["Title"], "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"),
    "3": ("duplicate_rule", [], "DUPLICATES_DETECTED"),
    "4": ("approval_lock", [], "ENTITY_IS_LOCKED"),
    "5": ("inactive_owner", [], "INACTIVE_OWNER_OR_USER"),
    "6": ("trigger_failure", [], "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY"),
    "7": ("field_integrity", [], "FIELD_INTEGRITY_EXCEPTION"),
}


def test_rejections_of_automation_and_setup_are_rejected_records_a_row_lock_in_a_trigger_is_retried(
    db, emulator, run_dag, pause_variable, tmp_path
):
    pause_variable("false")
    insert_contacts(db, 10)
    for key, (cause, fields, _code) in CAUSES.items():
        emulator.add_rule(cause=cause, fields=fields, when={"field": "CRM_Contact_Id__c", "op": "eq", "value": key})
    emulator.add_rule(cause="trigger_row_lock", times=1, when={"field": "CRM_Contact_Id__c", "op": "eq", "value": "8"})

    run = run_dag(streams_file=write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0)}))

    assert run.state == "success"
    logged = {e["record_key"]: (e["error_code"], e["error_message"]) for e in open_errors(db)}
    assert {key: code for key, (code, _message) in logged.items()} == {k: c[2] for k, c in CAUSES.items()}
    assert logged["2"][1] == "bad value for restricted picklist field: Engineer"
    assert "UNABLE_TO_LOCK_ROW" not in str(logged)  # record 8 went through on its retry within the run
    assert set(salesforce_contacts(emulator)) == {"1", "8", "9", "10"}


def test_api_disabled_for_the_user_fails_once_saying_what_an_admin_must_change(db, emulator, run_dag, tmp_path):
    insert_contacts(db, 5)
    emulator.add_rule(fault="api_disabled_user", path="/composite/")

    run = run_dag(streams_file=write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0)}))

    assert run.task_states["export_contacts"] == "failed"  # no retries: they cannot help
    assert "HTTP 403 API_CURRENTLY_DISABLED" in run.log
    assert '"API Enabled" permission' in run.log
    assert open_errors(db) == []
    assert salesforce_contacts(emulator) == {}


def test_request_limit_exceeded_waits_for_the_allowance_without_using_a_retry(db, emulator, run_dag, tmp_path):
    insert_contacts(db, 450)
    # The org's allowance runs out after the first batch and is back when the task runs again.
    emulator.add_rule(fault="request_limit", path="/composite/", skip=1, times=1)
    stream = contacts_stream(settle_seconds=0, request_limit_wait_minutes=0.05)

    run = run_dag(streams_file=write_streams(tmp_path / "s.yml", {"contacts": stream}), retries=False)

    assert run.state == "success"  # with no retries configured: the wait used none
    assert "waits for Salesforce's API allowance" in run.log
    assert "REQUEST_LIMIT_EXCEEDED" in run.log
    assert len(salesforce_contacts(emulator)) == 450
    assert open_errors(db) == []
