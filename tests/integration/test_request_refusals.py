"""A request Salesforce refuses as a whole is a request failure, not a flood of rejected records."""

from __future__ import annotations

from tests.support.helpers import (
    contacts_stream,
    insert_contacts,
    open_errors,
    salesforce_contacts,
    watermark,
    write_streams,
)


def test_a_mapped_field_hidden_mid_run_fails_the_task_once_without_a_flood(
    db, emulator, run_dag, pause_variable, tmp_path
):
    """Field-level security revoked after the first batch: INVALID_FIELD for every part of the next request."""
    pause_variable("false")  # the flood would happen with pause on error off: every record an ExportErrors row
    insert_contacts(db, 600)
    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0)})
    emulator.add_rule(fault="latency", path="/composite/", seconds=0)  # counts collection requests
    emulator.set_field_access("Contact", "Title", visible=False, after_requests=1)

    run = run_dag(streams_file=streams)

    assert run.state == "failed"
    assert run.task_states["export_contacts"] == "failed"  # at once: retrying cannot fix it
    assert "refused every part of the request with HTTP 400 INVALID_FIELD" in run.log
    assert "No such column 'Title' on sobject of type Contact" in run.log
    assert "grant it edit access to the field" in run.log
    assert open_errors(db) == []
    assert len(salesforce_contacts(emulator)) == 200  # the request answered before access was revoked
    position = watermark(db)[0]
    assert position is None or position[1] == "200"  # committed only if that was the first batch
    collection_requests = emulator.counters()["faults.latency"]
    # The first request, then at most 5 for each of the other two batches in flight (not 399).
    assert collection_requests <= 1 + 5 * 2, collection_requests

    emulator.set_field_access("Contact", "Title", visible=True)
    assert run_dag(streams_file=streams).state == "success"
    assert len(salesforce_contacts(emulator)) == 600
