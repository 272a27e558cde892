"""Many requests in flight, answered out of order (the emulator's jittered latency): the watermark stays exact.

Each test ends with Salesforce equal to the source, field by field, and the
watermark and ExportErrors exactly as one request at a time leaves them.
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.support.helpers import (
    assert_salesforce_matches_source,
    blocked,
    contacts_stream,
    insert_contacts,
    kill_when,
    open_errors,
    salesforce_contacts,
    start_cli_export,
    watermark,
    write_streams,
)

REEXPORT = "CRMExport_ExportError"


@pytest.fixture
def out_of_order(emulator):
    """Requests take 20 to 80 ms, so concurrent ones come back in any order."""
    emulator.set_timing(latency_ms=50, jitter_ms=30, per_record_ms=0.05, seed=7)
    return emulator


def streams(tmp_path, in_flight: int, **overrides):
    stream = contacts_stream(settle_seconds=0, batch_size=20, in_flight=in_flight, **overrides)
    return write_streams(tmp_path / f"s{in_flight}.yml", {"contacts": stream})


@pytest.mark.parametrize("in_flight", [1, 6])
def test_pause_on_holds_at_the_rejected_record_however_many_batches_were_in_flight(
    in_flight, db, out_of_order, run_dag, tmp_path
):
    insert_contacts(db, 300)
    rule = blocked(out_of_order, 95)  # batch 5 of 15; batches 6 to 10 are in flight when it answers
    config = streams(tmp_path, in_flight)

    held = run_dag(streams_file=config, retries=False)
    assert held.task_states["export_contacts"] == "failed"
    assert "is held at record 95" in held.log
    position, held_at = watermark(db)
    assert (position[1], held_at) == ("94", "95")
    assert [(e["record_key"], e["error_code"]) for e in open_errors(db)] == [
        ("95", "FIELD_CUSTOM_VALIDATION_EXCEPTION")
    ]
    assert set(map(str, range(1, 95))) <= set(salesforce_contacts(out_of_order))

    out_of_order.remove_rule(rule)
    assert run_dag(streams_file=config).state == "success"
    assert watermark(db)[0][1] == "300"
    assert open_errors(db) == []
    assert_salesforce_matches_source(db, out_of_order)


@pytest.mark.parametrize("in_flight", [1, 6])
def test_pause_off_records_the_rejections_of_every_batch_in_flight(
    in_flight, db, out_of_order, run_dag, pause_variable, tmp_path
):
    pause_variable("false")
    insert_contacts(db, 300)
    rule = blocked(out_of_order, 15, 55, 56, 95, 135, 299)
    config = streams(tmp_path, in_flight)

    assert run_dag(streams_file=config).state == "success"
    assert watermark(db) == (watermark(db)[0], None)
    assert watermark(db)[0][1] == "300"
    assert [e["record_key"] for e in open_errors(db)] == ["15", "55", "56", "95", "135", "299"]
    assert len(salesforce_contacts(out_of_order)) == 294

    out_of_order.remove_rule(rule)
    assert run_dag(dag_id=REEXPORT, streams_file=config).state == "success"
    assert open_errors(db) == []
    assert_salesforce_matches_source(db, out_of_order)


def test_a_503_in_one_of_several_requests_is_sent_again_within_the_run(db, out_of_order, run_dag, tmp_path):
    insert_contacts(db, 300)
    out_of_order.add_rule(fault="http_503", path="composite/sobjects/Contact", skip=3, times=1)

    run = run_dag(streams_file=streams(tmp_path, 6), retries=False)

    assert run.state == "success"
    assert "Salesforce could not upsert through sObject Collections (HTTP 503 SERVER_UNAVAILABLE)" in run.log
    assert "sending the request again in 1.0s" in run.log
    assert "backed off (HTTP 503 SERVER_UNAVAILABLE 1x)" in run.log
    assert watermark(db)[0][1] == "300"
    assert open_errors(db) == []
    assert_salesforce_matches_source(db, out_of_order)


def test_an_outage_keeps_only_the_batches_before_the_first_failed_request(db, out_of_order, run_dag, tmp_path):
    insert_contacts(db, 300)
    out_of_order.add_rule(fault="http_503", path="composite/sobjects/Contact", skip=4, times=1000)

    failed = run_dag(streams_file=streams(tmp_path, 6), retries=False)

    assert failed.task_states["export_contacts"] == "failed"
    assert "(tried 3 times)" in failed.log
    position = watermark(db)[0]
    committed = int(position[1]) if position else 0
    assert committed % 20 == 0
    assert committed <= 80
    assert set(map(str, range(1, committed + 1))) <= set(salesforce_contacts(out_of_order))
    assert open_errors(db) == []

    out_of_order.clear_rules()
    assert run_dag(streams_file=streams(tmp_path, 6)).state == "success"
    assert watermark(db)[0][1] == "300"
    assert_salesforce_matches_source(db, out_of_order)


def test_a_record_changed_while_its_request_is_in_flight_waits_for_it(db, out_of_order, run_dag, tmp_path):
    """Record 5's first request is slow; it changes meanwhile and is read again: the newer version lands last.

    Seven batches of 20, four in flight: the first request takes 6 s more, the others about 1.2 s, so record 5
    is read again (an eighth batch, once the export looks at the horizon again after a second) while its first
    request is still going. Sent at once, the new version would land first and the old one over it.
    """
    insert_contacts(db, 140)
    out_of_order.set_timing(latency_ms=1200, jitter_ms=20, seed=11)
    out_of_order.add_rule(fault="latency", path="composite/sobjects/Contact", skip=0, times=1, seconds=6)

    def change_record_5_once_its_request_is_out():
        deadline = time.monotonic() + 30
        while out_of_order.counters().get("faults.latency", 0) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        db.execute("UPDATE crm.contacts SET last_name = 'Changed', updated_at = now() WHERE id = 5")

    changer = threading.Thread(target=change_record_5_once_its_request_is_out)
    changer.start()
    run = run_dag(streams_file=streams(tmp_path, 4))
    changer.join()

    assert run.state == "success"
    assert salesforce_contacts(out_of_order)["5"]["LastName"] == "Changed"
    assert watermark(db)[0][1] == "5"  # record 5, read again, is the last in source order
    assert_salesforce_matches_source(db, out_of_order)


def test_a_worker_killed_with_requests_in_flight_loses_and_duplicates_nothing(db, out_of_order, run_dag, tmp_path):
    insert_contacts(db, 2000)
    out_of_order.set_timing(latency_ms=150, jitter_ms=100, seed=3)
    config = streams(tmp_path, 8)
    worker = start_cli_export(config)

    def some_committed() -> bool:  # some batches committed, others still in flight
        position = watermark(db)[0]
        return bool(position and int(position[1]) >= 200)

    kill_when(worker, some_committed, never="the worker never committed a batch")
    killed_at = int(watermark(db)[0][1])
    assert killed_at < 2000
    assert killed_at % 20 == 0
    assert set(map(str, range(1, killed_at + 1))) <= set(salesforce_contacts(out_of_order))

    assert run_dag(streams_file=config).state == "success"
    assert watermark(db)[0][1] == "2000"
    assert open_errors(db) == []
    assert_salesforce_matches_source(db, out_of_order)
    assert out_of_order.counters()["records_created"] == 2000  # upserts by external id: sent twice, created once
