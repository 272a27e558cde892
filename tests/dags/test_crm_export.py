"""CRMExport through Airflow: DagBag, dag.test(), real PostgreSQL and the Salesforce emulator.

Each test asserts what a data engineer would see: the records in Salesforce,
the watermark, the ExportErrors rows, the task state and its log.
"""

from __future__ import annotations

from tests.dags.conftest import insert_contacts, open_errors, salesforce_contacts, watermark


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
    assert sorted(int(k) for k in salesforce_contacts(emulator)) == list(range(1, 500)) + list(range(501, 601))
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
