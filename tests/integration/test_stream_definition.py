"""A watermark remembers what it is a position in; a changed stream is never continued silently."""

from __future__ import annotations

from tests.support.helpers import cli, contacts_stream, insert_contacts, salesforce_contacts, watermark, write_streams


def test_a_changed_order_is_refused_until_the_stream_is_repositioned(db, emulator, run_dag, tmp_path):
    insert_contacts(db, 20)
    first = write_streams(tmp_path / "first.yml", {"contacts": contacts_stream(settle_seconds=0)})
    assert run_dag(streams_file=first).state == "success"
    exported_at = watermark(db)[0]
    assert len(salesforce_contacts(emulator)) == 20

    db.execute("ALTER TABLE crm.contacts ADD COLUMN changed_at timestamptz NOT NULL DEFAULT now()")
    changed = write_streams(
        tmp_path / "changed.yml", {"contacts": contacts_stream(settle_seconds=0, order_by=["changed_at", "id"])}
    )
    refused = run_dag(streams_file=changed, retries=False)
    assert refused.task_states["export_contacts"] == "failed"
    assert "Stream 'contacts' changed since its watermark was set: order_by was updated_at timestamp with time" in (
        refused.log
    )
    assert "python -m include.crm_export reposition --stream contacts --from-start" in refused.log
    assert watermark(db)[0] == exported_at

    emulator.reset()
    done = cli("reposition", "--stream", "contacts", "--from-start", "--yes", "--reason", "new order", streams=changed)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "re-positioned from the start" in done.stdout
    audit = db.execute(
        "SELECT repositioned_by, old_position, new_position, reason FROM crm_export.stream_repositions"
    ).fetchall()
    assert len(audit) == 1
    assert audit[0][0].startswith("cli:")
    assert (audit[0][1], audit[0][2], audit[0][3]) == (exported_at, None, "new order")

    assert run_dag(streams_file=changed).state == "success"
    assert len(salesforce_contacts(emulator)) == 20  # everything again, in the new order


def test_reposition_from_a_change_time_re_exports_only_what_changed_since(db, emulator, run_dag, tmp_path):
    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0)})
    insert_contacts(db, 10, age="3 hours")
    insert_contacts(db, 10, start=11, age="1 hour")
    assert run_dag(streams_file=streams).state == "success"
    emulator.reset()
    since = db.execute("SELECT min(updated_at) FROM crm.contacts WHERE id > 10").fetchone()[0]

    done = cli("reposition", "--stream", "contacts", "--from-change-time", since.isoformat(), "--yes", streams=streams)
    assert done.returncode == 0, done.stderr[-2000:]
    assert run_dag(streams_file=streams).state == "success"
    assert set(salesforce_contacts(emulator)) == {str(i) for i in range(11, 21)}


def test_reposition_releases_a_held_record(db, emulator, run_dag, tmp_path):
    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0)})
    insert_contacts(db, 10)
    emulator.add_rule(cause="validation_rule", when={"field": "CRM_Contact_Id__c", "op": "eq", "value": "4"})
    assert run_dag(streams_file=streams, retries=False).state == "failed"
    assert watermark(db)[1] == "4"
    done = cli("reposition", "--stream", "contacts", "--from-start", "--yes", streams=streams)
    assert done.returncode == 0
    assert watermark(db) == (None, None)


def test_a_mapping_change_is_refused_with_what_sending_everything_again_costs(db, emulator, run_dag, tmp_path):
    """Issue 24: a field added to the mapping would leave every record exported before without it, so the run
    refuses until the person chooses, and says what re-sending everything costs in API requests."""
    insert_contacts(db, 450)
    first = write_streams(tmp_path / "first.yml", {"contacts": contacts_stream(settle_seconds=0)})
    assert run_dag(streams_file=first).state == "success"
    exported_at = watermark(db)[0]
    fields = {**contacts_stream()["fields"], "Department": "department"}
    changed = write_streams(tmp_path / "changed.yml", {"contacts": contacts_stream(settle_seconds=0, fields=fields)})
    db.execute("UPDATE crm.contacts SET department = 'Sales', updated_at = now() - interval '1 minute' WHERE id = 1")

    refused = run_dag(streams_file=changed, retries=False)

    assert refused.task_states["export_contacts"] == "failed"
    assert "Records exported before carry the old field mapping in Salesforce" in refused.log
    assert (
        "The source holds 450 row(s): sending them all again takes about 3 API requests through sObject "
        "Collections (200 records a request), under 0.1% of daily_api_requests (100,000)." in refused.log
    )
    assert watermark(db)[0] == exported_at
    assert salesforce_contacts(emulator)["1"].get("Department") is None  # nothing was sent
