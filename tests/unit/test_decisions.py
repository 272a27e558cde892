"""The export run's pure decisions: why it stops, where it is held, and a pause on error flip mid-run."""

from __future__ import annotations

from include.crm_export.batch import RecordOutcome, plan_batch
from include.crm_export.config import load_streams
from include.crm_export.decisions import (
    CAUGHT_UP,
    INCONSISTENCY_WARNING,
    OK,
    RETAINING,
    ExportResult,
    held_record,
    next_batch_size,
    pause_on_error_change,
    slot_alert_for,
    stop_reason,
)
from include.crm_export.errors import RejectedRecord
from include.crm_export.mapping import SourceRecord

STREAM = load_streams()["contacts"].model_copy(update=dict(max_records_per_run=450, max_minutes_per_run=2))
RULE = RejectedRecord("FIELD_CUSTOM_VALIDATION_EXCEPTION", "Title must be set", ("Title",))


def record(key: int) -> SourceRecord:
    return SourceRecord(str(key), (f"2026-01-01T00:00:{key:02d}", key), str(key), {"LastName": "x"})


def test_a_run_reads_on_until_a_per_run_budget_is_used_up():
    assert stop_reason(STREAM, records_read=200, elapsed_seconds=10) is None
    assert stop_reason(STREAM, records_read=450, elapsed_seconds=10) == "max_records_per_run (450) reached"
    assert stop_reason(STREAM, records_read=200, elapsed_seconds=120) == "max_minutes_per_run (2) reached"


def test_the_last_batch_is_cut_to_the_record_budget():
    assert next_batch_size(STREAM, records_read=0) == 200
    assert next_batch_size(STREAM, records_read=400) == 50


def test_a_batch_with_a_rejection_under_pause_on_error_holds_the_stream_at_that_record():
    plan = plan_batch([RecordOutcome(record(1), None), RecordOutcome(record(2), RULE)], pause_on_error=True)
    held = held_record(STREAM, plan)
    assert held is not None
    assert held.record_key == "2"
    message = held.message()
    assert message.startswith("Export of stream 'contacts' is held at record 2 (Contact.CRM_Contact_Id__c = 2)")
    for part in ("FIELD_CUSTOM_VALIDATION_EXCEPTION: Title must be set (fields: Title)", "clear this task"):
        assert part in message
    assert "crm_export_pause_on_error to false" in message


def test_pause_on_error_off_holds_nothing_and_counts_what_it_skipped():
    plan = plan_batch([RecordOutcome(record(1), RULE), RecordOutcome(record(2), None)], pause_on_error=False)
    assert held_record(STREAM, plan) is None
    result = ExportResult("contacts", pause_on_error=False)
    result.add(plan, pause_on_error=False)
    assert result.stopped_because == CAUGHT_UP
    assert result.incomplete_warning().startswith("Salesforce is incomplete: 1 record(s) of stream 'contacts'")
    assert "FIELD_CUSTOM_VALIDATION_EXCEPTION: 1" in result.summary()


WAITS = RejectedRecord("CRM_EXPORT_PARENT_NOT_EXPORTED", "Waiting for its parent", ("AccountId",), waits=True)


def test_a_record_that_waits_ends_the_batch_before_it_under_either_pause():
    for pause in (True, False):
        outcomes = [RecordOutcome(record(1), None), RecordOutcome(record(2), WAITS), RecordOutcome(record(3), RULE)]
        plan = plan_batch(outcomes, pause_on_error=pause)
        assert plan.new_position == record(1).position
        assert plan.confirmed_keys == ("1",)
        assert plan.rejected == ()  # no ExportErrors row for it, nor for what came after it
        assert plan.held is None
        assert plan.waiting == (record(2), WAITS)


def test_a_record_that_waits_first_commits_nothing_and_a_hold_before_it_wins():
    first = plan_batch([RecordOutcome(record(1), WAITS), RecordOutcome(record(2), None)], pause_on_error=True)
    assert (first.new_position, first.confirmed_keys, first.waiting) == (None, (), (record(1), WAITS))
    held = plan_batch([RecordOutcome(record(1), RULE), RecordOutcome(record(2), WAITS)], pause_on_error=True)
    assert held.held == (record(1), RULE)
    assert held.waiting is None
    skipped = plan_batch([RecordOutcome(record(1), RULE), RecordOutcome(record(2), WAITS)], pause_on_error=False)
    assert skipped.rejected == ((record(1), RULE),)
    assert skipped.waiting == (record(2), WAITS)
    assert skipped.new_position == record(1).position


def test_nothing_skipped_means_no_incomplete_warning():
    result = ExportResult("contacts")
    result.add(plan_batch([RecordOutcome(record(1), None)], pause_on_error=True), pause_on_error=True)
    assert result.incomplete_warning() is None


def test_flipping_pause_on_error_mid_run_warns_and_turning_it_off_warns_about_salesforce():
    assert pause_on_error_change(True, True) is None
    turned_off = pause_on_error_change(True, False)
    assert turned_off is not None
    assert INCONSISTENCY_WARNING in turned_off.warnings()
    turned_on = pause_on_error_change(False, True)
    assert turned_on is not None
    assert INCONSISTENCY_WARNING not in turned_on.warnings()


def test_the_api_budget_stops_a_run_before_it_overspends():
    from include.crm_export.decisions import api_budget_stop

    stream = STREAM.model_copy(update=dict(daily_api_requests=1000, api_reserve_percent=10))
    assert api_budget_stop(stream, ours_last_day=999, org_usage=(80_000, 100_000)) is None
    ours = api_budget_stop(stream, ours_last_day=1000, org_usage=None)
    assert ours.startswith("API budget: crm-export has made 1,000 Salesforce API requests in the last 24 hours")
    org = api_budget_stop(stream, ours_last_day=10, org_usage=(90_000, 100_000))
    assert "10,000 are left, at or below the 10% (10,000) kept for its other integrations" in org


def slot(retained_mb: float, *, stream: str | None = "people", limit_mb: float = 1000, lost: bool = False) -> dict:
    return {
        "lost": lost,
        "slot": "crm_export_people",
        "stream": stream,
        "retained_wal_bytes": int(retained_mb * 1e6),
        "limit_bytes": int(limit_mb * 1e6),
        "too_much": retained_mb > limit_mb,
        "active": False,
    }


def test_a_slot_that_keeps_too_much_wal_is_announced_once_and_its_end_once():
    name = "crm_export_people"
    assert slot_alert_for(OK, name, slot(3)) is None
    alert = slot_alert_for(OK, name, slot(1500))
    assert alert is not None
    assert alert.state == RETAINING
    assert alert.subject == "CRMExport: replication slot crm_export_people keeps 1,500.0 MB of WAL"
    assert "the alert is at 1,000.0 MB" in alert.body
    assert "export_people" in alert.body
    assert "capture drop --stream people" in alert.body
    assert slot_alert_for(RETAINING, name, slot(2500)) is None  # still too much: said already
    back = slot_alert_for(RETAINING, name, slot(3))
    assert back is not None
    assert back.state == OK
    assert "under the alert's 1,000.0 MB" in back.body


def test_a_slot_no_stream_follows_says_how_to_drop_it_and_a_dropped_slot_is_announced_once():
    name = "crm_export_people"
    orphan = slot_alert_for(OK, name, slot(5, stream=None, limit_mb=1))
    assert orphan is not None
    assert orphan.state == RETAINING
    assert "No stream in the stream file follows it" in orphan.body
    assert "SELECT pg_drop_replication_slot('crm_export_people'); DROP PUBLICATION IF EXISTS" in orphan.body
    dropped = slot_alert_for(RETAINING, name, None)
    assert dropped is not None
    assert dropped.state == OK
    assert dropped.subject.endswith("was dropped")
    assert slot_alert_for(OK, name, None) is None


def test_a_slot_hovering_at_its_limit_is_announced_back_under_only_below_80_percent_and_a_lost_one_at_once():
    name = "crm_export_people"
    assert slot_alert_for(RETAINING, name, slot(900)) is None  # under the limit, above 80%: still the same state
    back = slot_alert_for(RETAINING, name, slot(790))
    assert back is not None
    assert back.state == OK
    lost = slot_alert_for(OK, name, slot(0, lost=True))
    assert lost is not None
    assert lost.state == RETAINING
    assert lost.subject == "CRMExport: replication slot crm_export_people lost WAL it needed"
    assert "capture drop --stream people, then capture setup --stream people" in lost.body


def test_what_sending_everything_again_costs_follows_the_path_a_run_takes():
    """The mapping-change refusal says what a re-position from the start costs (issue 24): sObject Collections
    requests of batch_size below bulk_threshold, Bulk API 2.0 jobs from it on (upsert mode only), and a query per
    request in update and insert mode; with the share of the stream's daily_api_requests."""
    from include.crm_export.decisions import Lag, definition_refusal, resend_cost

    stream = STREAM.model_copy(update=dict(bulk_threshold=50_000, bulk_job_records=50_000, daily_api_requests=100_000))
    few = resend_cost(stream, Lag(2_001, exact=True, watermark_age_seconds=None))
    assert "The source holds 2,001 row(s)" in few
    assert "about 11 API requests through sObject Collections (200 records a request)" in few
    assert "under 0.1% of daily_api_requests (100,000)" in few
    many = resend_cost(stream, Lag(1_000_000, exact=False, watermark_age_seconds=None))
    assert "about 1,000,000 (the planner's estimate)" in many
    assert "20 Bulk API 2.0 job(s) of up to 50,000 records, about 120 API requests" in many
    update = resend_cost(stream.model_copy(update=dict(mode="update")), Lag(1_000_000, True, None))
    assert "about 10,000 API requests through sObject Collections (200 records a request, each with a query" in update
    assert "10.0% of daily_api_requests" in update

    old = {"source": "crm.contacts", "fields": [["LastName", "last_name"]]}
    new = {"source": "crm.contacts", "fields": [["Department", "department"], ["LastName", "last_name"]]}
    counted = []

    def rows() -> Lag:
        counted.append(1)
        return Lag(2_001, True, None)

    refusal = definition_refusal(
        "contacts", current=new, stored=old, exported_before=True, source_rows=rows, settings=stream
    )
    assert refusal is not None
    assert "fields was {LastName: last_name} and is now {Department: department, LastName: last_name}" in refusal
    assert few in refusal
    # Only a mapping change counts the source: another change is refused without asking it.
    other = definition_refusal(
        "contacts",
        current={**old, "source": "crm.people"},
        stored=old,
        exported_before=True,
        source_rows=rows,
        settings=stream,
    )
    assert other is not None
    assert "The source holds" not in other
    assert counted == [1]
