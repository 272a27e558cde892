"""What a fingerprint is, when a record is unchanged, how a request is formed around unchanged records, and what
the write modes make of a record. Pure: no I/O."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from include.crm_export.batch import MAX_RECORDS_PER_REQUEST, RecordOutcome, next_request, plan_batch
from include.crm_export.config import load_streams
from include.crm_export.errors import RejectedRecord
from include.crm_export.fingerprints import (
    ReadsInFlight,
    payload_fingerprint,
    slot,
    stream_slots,
    to_forget_before_sending,
    to_remember,
    to_send,
    with_fingerprints,
)
from include.crm_export.mapping import SourceRecord
from include.crm_export.write_modes import apply_mode

STREAM = load_streams()["contacts"]


def record(key: int, **payload) -> SourceRecord:
    body = {"attributes": {"type": "Contact"}, "CRM_Contact_Id__c": str(key), "LastName": f"Last{key}", **payload}
    return SourceRecord(str(key), (key,), str(key), body)


def test_a_fingerprint_is_the_payload_exactly_whatever_the_field_order():
    a = {"LastName": "A", "Amount__c": Decimal("1.10")}
    assert payload_fingerprint(a) == payload_fingerprint({"Amount__c": Decimal("1.10"), "LastName": "A"})
    assert payload_fingerprint(a) != payload_fingerprint({"LastName": "A", "Amount__c": Decimal("1.1")})
    assert payload_fingerprint(a) != payload_fingerprint({"LastName": "A", "Amount__c": None})
    assert payload_fingerprint({"LastName": "A"}) != payload_fingerprint({"LastName": "A", "Phone": None})
    assert payload_fingerprint({"LastName": "A"}) != payload_fingerprint({"FirstName": "A"})  # names count too
    assert payload_fingerprint({"Phone": None}) != payload_fingerprint({}) != payload_fingerprint({"Phone": ""})
    assert -(2**63) <= payload_fingerprint(a) < 2**63


def test_slots_of_one_stream_lie_in_its_range_and_apart_from_anothers():
    for number in (0, 1, 2, 65535):
        low, high = stream_slots(number)
        assert -(2**63) <= low <= high < 2**63
        for key in ("1", "C-00042", "ünïcode", ""):
            assert low <= slot(number, key) <= high
    assert stream_slots(1)[1] < stream_slots(2)[0]


def test_a_record_is_unchanged_only_when_salesforce_confirmed_exactly_its_payload():
    one, two, three = record(1), record(2), record(3)
    confirmed = {"1": payload_fingerprint(one.payload), "2": payload_fingerprint(record(2, Title="Old").payload)}
    marked = with_fingerprints([one, two, three], confirmed, str.lower)
    assert [r.unchanged for r in marked] == [True, False, False]
    assert all(r.fingerprint is not None for r in marked)
    assert [r.unchanged for r in with_fingerprints([one], None, str.lower)] == [False]  # --resend-all
    unmappable = SourceRecord("4", (4,), None, None, RejectedRecord("X", "no"))
    assert with_fingerprints([unmappable], {}, str.lower) == [unmappable]
    # Before they are sent, the fingerprints of the records to send are dropped: only those there are.
    assert to_forget_before_sending(marked, confirmed, str.lower) == ["2"]


def test_a_fingerprint_belongs_to_the_salesforce_record_whichever_row_wrote_it():
    """By external id as Salesforce matches it: row 9 taking over external id C-1 from row 1 compares with what
    row 1 had sent under it."""
    first = SourceRecord("1", (1,), "C-1", {"CRM_Contact_Id__c": "C-1", "LastName": "A"})
    confirmed = {"c-1": payload_fingerprint(first.payload)}
    taken_over = SourceRecord("9", (9,), "c-1", {"CRM_Contact_Id__c": "C-1", "LastName": "A"})
    assert with_fingerprints([taken_over], confirmed, str.lower)[0].unchanged


def test_a_commit_remembers_the_fingerprints_of_records_confirmed_now_and_of_no_other():
    sent, unchanged, rejected = with_fingerprints([record(1), record(2), record(3)], {}, str.lower)
    unchanged = replace(unchanged, unchanged=True)
    plan = plan_batch(
        [RecordOutcome(sent, None), RecordOutcome(unchanged, None), RecordOutcome(rejected, RejectedRecord("X", "no"))],
        pause_on_error=False,
    )
    assert plan.fingerprints == {"1": sent.fingerprint}
    assert (plan.exported, plan.unchanged, plan.confirmed_keys) == (1, 1, ("1", "2"))
    held = plan_batch(
        [RecordOutcome(sent, None), RecordOutcome(rejected, RejectedRecord("X", "no")), RecordOutcome(unchanged, None)],
        pause_on_error=True,
    )
    assert held.fingerprints == {"1": sent.fingerprint}
    assert held.unchanged == 0
    assert to_remember([unchanged]) == {}


def test_a_request_gathers_batch_size_records_to_send_across_unchanged_ones():
    records = [replace(record(n), unchanged=n % 10 != 0) for n in range(1, 3001)]  # every tenth changed
    first, rest = next_request(records, 200)
    assert len(to_send(first)) == 200
    assert first[-1].key == "2009"  # the 200th to send and the unchanged ones after it, up to the 201st
    assert len(to_send(rest)) == 100
    assert next_request(rest, 200) == (rest, [])
    unchanged = [replace(record(n), unchanged=True) for n in range(MAX_RECORDS_PER_REQUEST + 5)]
    capped, left = next_request(unchanged, 200)
    assert (len(capped), len(left)) == (MAX_RECORDS_PER_REQUEST, 5)
    # A row changed between two reads of one request: its later version goes in the next request.
    again = [record(1), record(2), replace(record(1), position=(3,))]
    assert next_request(again, 200) == (again[:2], again[2:])


def test_update_mode_rejects_what_salesforce_lacks_and_insert_mode_leaves_what_it_has():
    records = [record(1), record(2), replace(record(3), unchanged=True)]
    updating = STREAM.model_copy(update={"mode": "update"})
    one, two, three = apply_mode(updating, records, {"1"}, str.lower)
    assert one == records[0]
    assert two.payload is None
    assert two.why_not_sent().code == "CRM_EXPORT_NOT_IN_SALESFORCE"
    assert "mode: update" in two.why_not_sent().message
    assert three == records[2]
    inserting = STREAM.model_copy(update={"mode": "insert"})
    one, two, three = apply_mode(inserting, records, {"1"}, str.lower)
    assert (one.unchanged, one.fingerprint, one.exists_already) == (True, None, True)
    assert two == records[1]
    assert not three.exists_already  # unchanged, whatever Salesforce has
    # Not sent, and counted apart from the unchanged and from what was written.
    plan = plan_batch([RecordOutcome(r, None) for r in (one, two, three)], pause_on_error=True)
    assert (plan.exported, plan.unchanged, plan.existing) == (1, 1, 1)
    assert apply_mode(STREAM, records, set(), str.lower) == records


def test_a_commit_writes_no_fingerprint_of_a_record_read_again_since_and_drops_it_instead():
    reads = ReadsInFlight()
    reads.read(["a", "b"])
    reads.read(["b"])  # b's row changed and was read again before the first read is committed
    with reads.committing({"a": 1, "b": 2}, ["a", "b"]) as (write, drop):
        assert (write, drop) == ({"a": 1}, ["b"])
    with reads.committing({"b": 3}, ["b"]) as (write, drop):  # the second read's commit: nothing after it
        assert (write, drop) == ({"b": 3}, [])
    reads.read(["b"])
    with reads.committing({"b": 4}, ["b", "never-read"]) as (write, drop):
        assert (write, drop) == ({"b": 4}, [])


def test_a_read_of_a_key_whose_fingerprint_a_commit_is_writing_waits_until_the_commit_is_in():
    """Else its lookup could miss the fingerprint the commit is writing, and not drop it before sending."""
    import threading

    reads = ReadsInFlight()
    reads.read(["a"])
    other_read = threading.Event()
    with reads.committing({"a": 1}, ["a"]) as (write, _):
        assert write == {"a": 1}
        reads.read(["z"])  # another key: no wait
        waiting = threading.Thread(target=lambda: (reads.read(["a", "y"]), other_read.set()))
        waiting.start()
        assert not other_read.wait(0.3)
    assert other_read.wait(10)
    waiting.join()
    with reads.committing({"a": 2, "y": 3}, ["a", "y"]) as (write, drop):
        assert (write, drop) == ({"a": 2, "y": 3}, [])


def test_a_record_looked_at_is_what_dataclasses_replace_makes_every_other_field_kept():
    record = SourceRecord("7", (7, "x"), "C-7", {"LastName": "A"}, None, None, False, True, True)
    assert record.looked_at(5, unchanged=True) == replace(record, fingerprint=5, unchanged=True)
    assert record.looked_at(5, unchanged=True) is not record
    assert record.fingerprint is None


def test_reads_are_counted_per_record_so_two_records_of_one_key_in_one_read_settle_apart():
    reads = ReadsInFlight()
    reads.read(["r1", "r1"])  # a covered delete and the row that took its external id
    reads.read(["r1"])  # the row changed and read again
    with reads.committing({}, ["r1"]) as (write, drop):  # the covered delete
        assert (write, drop) == ({}, [])
    with reads.committing({"r1": 1}, ["r1"]) as (write, drop):  # the row's first read: a later read is pending
        assert (write, drop) == ({}, ["r1"])


def test_a_run_that_started_with_no_fingerprint_looks_up_only_keys_it_wrote():
    reads = ReadsInFlight(none_kept_before=True)
    assert reads.read(["a", "b"]) == []
    with reads.committing({"a": 1}, ["a", "b"]) as (write, _):
        assert write == {"a": 1}
    assert reads.read(["a", "b", "a"]) == ["a", "a"]
    assert ReadsInFlight().read(["a", "b"]) == ["a", "b"]  # fingerprints kept before: every key is looked up
    written = [f"K-{n}" for n in range(20_000)]
    with reads.committing(dict.fromkeys(written, 0), []):
        pass
    assert reads.read(written) == written  # the filter never forgets a key
