"""What a run sends: only what changed (fingerprints), how it writes (``mode``) and what a null does (``on_null``).

Every test ends with what a user sees: Salesforce's records (the emulator's state), the watermark, the
ExportErrors rows and the API requests the org counted.
"""

from __future__ import annotations

import pytest

from tests.support.helpers import (
    assert_salesforce_matches_source,
    contacts_stream,
    insert_contacts,
    open_errors,
    salesforce_contacts,
    watermark,
    write_streams,
)

PATHS = ["sObject Collections", "Bulk API 2.0"]


def _run(run_dag, streams, path, **conf):
    run = run_dag(streams_file=streams, conf={"use_bulk_api": path == "Bulk API 2.0", **conf})
    assert run.state == "success", run.log[-3000:]
    return run


@pytest.mark.parametrize("path", PATHS)
def test_on_null_keep_leaves_salesforces_value_where_the_source_has_none(db, emulator, sf, run_dag, tmp_path, path):
    """``Phone: {column: phone, on_null: keep}``: a null source phone sends nothing (REST: the field is left out
    of the record; Bulk API 2.0: an empty cell, which "Prepare CSV Files" says leaves the field as it is), so the
    phone someone set in Salesforce stays; a phone the source has is sent, and a null in a field without it
    clears as before."""
    insert_contacts(db, 6)
    db.execute("UPDATE crm.contacts SET phone = '+1 555 0100' WHERE id IN (2, 4)")
    db.execute("UPDATE crm.contacts SET title = NULL WHERE id = 3")
    for contact in range(1, 7):
        sf.Contact.upsert(f"CRM_Contact_Id__c/{contact}", {"LastName": "Before", "Phone": "+44 20 0000", "Title": "X"})
    fields = {"LastName": "last_name", "Title": "title", "Phone": {"column": "phone", "on_null": "keep"}}
    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(fields=fields, settle_seconds=0)})

    _run(run_dag, streams, path)

    contacts = salesforce_contacts(emulator)
    assert {key: contacts[key]["Phone"] for key in sorted(contacts)} == {
        "1": "+44 20 0000",
        "2": "+1 555 0100",
        "3": "+44 20 0000",
        "4": "+1 555 0100",
        "5": "+44 20 0000",
        "6": "+44 20 0000",
    }
    assert contacts["3"]["Title"] is None  # on_null clear (the default): the source's null clears it
    assert {contacts[key]["LastName"] for key in contacts} == {f"Last{n}" for n in range(1, 7)}
    assert open_errors(db) == []
    assert watermark(db)[1] is None


def _touch(db, *, changed_every: int = 10):
    """What an ORM does on save: every contact's updated_at moves; only every ``changed_every``-th changes a
    mapped field (its title)."""
    db.execute(
        """UPDATE crm.contacts SET updated_at = now() - interval '10 minutes' + id * interval '1 millisecond',
                                   title = CASE WHEN id %% %s = 0 THEN 'Director ' || id ELSE title END""",
        (changed_every,),
    )


def _requests(emulator) -> int:
    return emulator.counters().get("api_requests", 0)


@pytest.mark.parametrize("path", PATHS)
def test_touched_but_unchanged_records_are_not_sent_and_the_watermark_passes_them(
    db, emulator, run_dag, tmp_path, path
):
    insert_contacts(db, 1000)
    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0)})
    _run(run_dag, streams, path)
    updated_before, before = emulator.counters().get("records_updated", 0), _requests(emulator)
    _touch(db)

    run = _run(run_dag, streams, path)

    assert emulator.counters().get("records_updated", 0) - updated_before == 100  # only the changed ones
    assert watermark(db)[1] is None
    assert watermark(db)[0][1] == "1000"  # past every touched record, sent or not
    assert_salesforce_matches_source(db, emulator)
    assert open_errors(db) == []
    history = db.execute(
        "SELECT exported, unchanged FROM crm_export.export_runs WHERE stream = 'contacts' ORDER BY id DESC LIMIT 1"
    ).fetchone()
    assert history == (100, 900)
    assert "unchanged (not sent): 900" in run.log
    if path == "sObject Collections":
        # 100 changed records, 200 a request: the requests of the run (describe, limits, the upserts) shrink
        # from about 1000 / 200 upserts to one.
        assert _requests(emulator) - before <= 4


def test_a_reposition_and_resend_all_send_unchanged_records_again(db, emulator, run_dag, tmp_path):
    """A reposition forgets what Salesforce confirmed (the definition may have changed); ``--resend-all`` sends
    what it reads once, unchanged or not, for records someone edited in Salesforce by hand."""
    from tests.support.helpers import cli

    insert_contacts(db, 300)
    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0)})
    _run(run_dag, streams, "sObject Collections")
    _touch(db, changed_every=1_000_000)  # touched, nothing changed
    emulator_before = emulator.counters().get("records_updated", 0)

    hand_edit = cli("export", "--stream", "contacts", "--pause-on-error", "true", streams=streams)
    assert hand_edit.returncode == 0, hand_edit.stderr[-2000:]
    assert "unchanged (not sent): 300" in hand_edit.stdout
    assert emulator.counters().get("records_updated", 0) == emulator_before

    _touch(db, changed_every=1_000_000)
    resent = cli("export", "--stream", "contacts", "--pause-on-error", "true", "--resend-all", streams=streams)
    assert resent.returncode == 0, resent.stderr[-2000:]
    assert "exported 300 record(s)" in resent.stdout
    assert emulator.counters().get("records_updated", 0) == emulator_before + 300

    moved = cli("reposition", "--stream", "contacts", "--from-start", "--yes", streams=streams)
    assert moved.returncode == 0, moved.stderr[-2000:]
    _run(run_dag, streams, "sObject Collections")
    assert emulator.counters().get("records_updated", 0) == emulator_before + 600
    assert_salesforce_matches_source(db, emulator)


def _fingerprints(db) -> int:
    from include.crm_export.db import fingerprints

    return fingerprints.count(db)


def test_skip_unchanged_false_sends_every_record_read_and_leaves_no_fingerprint_to_go_stale(db, emulator, tmp_path):
    """``skip_unchanged: false``: a touched record is sent whether it changed or not, and the stream keeps no
    fingerprints. Those written before it was turned off are dropped, so turning it on again never compares with
    one older than what Salesforce holds (a record changed while off and changed back would be skipped)."""
    from tests.support.helpers import cli

    def export(skip_unchanged: bool) -> str:
        stream = contacts_stream(settle_seconds=0, skip_unchanged=skip_unchanged)
        streams = write_streams(tmp_path / "s.yml", {"contacts": stream})
        done = cli("export", "--stream", "contacts", "--pause-on-error", "true", streams=streams)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    insert_contacts(db, 300)
    export(True)
    assert _fingerprints(db) == 300
    title = db.execute("SELECT title FROM crm.contacts WHERE id = 1").fetchone()[0]

    updated = emulator.counters().get("records_updated", 0)
    _touch(db, changed_every=1_000_000)  # touched, nothing changed
    db.execute("UPDATE crm.contacts SET title = 'Changed while off' WHERE id = 1")
    assert "exported 300 record(s)" in export(False)
    assert emulator.counters().get("records_updated", 0) == updated + 300
    assert _fingerprints(db) == 0
    assert salesforce_contacts(emulator)["1"]["Title"] == "Changed while off"

    db.execute("UPDATE crm.contacts SET title = %s, updated_at = now() - interval '1 minute' WHERE id = 1", (title,))
    export(True)
    assert salesforce_contacts(emulator)["1"]["Title"] == title
    assert_salesforce_matches_source(db, emulator)
    assert watermark(db)[0][1] == "1"
    assert watermark(db)[1] is None
    assert open_errors(db) == []


def test_a_worker_killed_mid_run_leaves_no_fingerprint_for_a_send_never_confirmed(db, emulator, tmp_path):
    """Requests after the first hang in Salesforce and never land; the worker is killed with them in flight.
    Their records' new fingerprints were never written, so the next run sends them (a fingerprint written when
    a record is read or sent, not when its confirmation commits, would skip them and leave Salesforce stale)."""
    from tests.support.helpers import cli, kill_when, start_cli_export

    insert_contacts(db, 600)
    streams = write_streams(
        tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0, batch_size=100, in_flight=4)}
    )
    assert cli("export", "--stream", "contacts", "--pause-on-error", "true", streams=streams).returncode == 0
    db.execute(
        """UPDATE crm.contacts SET last_name = 'Changed' || id,
                                   updated_at = now() - interval '10 minutes' + id * interval '1 millisecond'"""
    )
    emulator.add_rule(fault="hang", path="composite/sobjects/Contact", skip=1)
    worker = start_cli_export(streams)

    def first_committed_rest_hanging() -> bool:
        position = watermark(db)[0]
        return bool(position and position[1] == "100" and emulator.counters().get("faults.hang", 0) >= 3)

    kill_when(worker, first_committed_rest_hanging, never="the worker never committed its first request")
    assert {key: c["LastName"] for key, c in salesforce_contacts(emulator).items() if int(key) > 100} == {
        str(n): f"Last{n}" for n in range(101, 601)
    }
    emulator.clear_rules()

    again = cli("export", "--stream", "contacts", "--pause-on-error", "true", streams=streams)

    assert again.returncode == 0, again.stderr[-2000:]
    assert "exported 500 record(s)" in again.stdout
    assert watermark(db)[1] is None
    assert watermark(db)[0][1] == "600"
    assert_salesforce_matches_source(db, emulator)


@pytest.mark.parametrize("pause_on_error", [True, False])
def test_update_mode_never_creates_a_record_salesforce_lacks(
    db, emulator, sf, run_dag, pause_variable, tmp_path, pause_on_error
):
    """``mode: update``: contacts 1-5 exist in Salesforce and are updated; 6-8 do not and are rejected records
    with their own code (found with one query per request), held at (pause on) or skipped past (pause off), until
    they exist; then the re-export (or the held run) updates them."""
    insert_contacts(db, 8)
    for contact in range(1, 6):
        sf.Contact.upsert(f"CRM_Contact_Id__c/{contact}", {"LastName": "Before"})
    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0, mode="update")})
    pause_variable("true" if pause_on_error else "false")

    run = run_dag(streams_file=streams)

    assert set(salesforce_contacts(emulator)) == {"1", "2", "3", "4", "5"}  # nothing created
    assert {c["LastName"] for c in salesforce_contacts(emulator).values()} == {f"Last{n}" for n in range(1, 6)}
    errors = open_errors(db)
    assert {e["error_code"] for e in errors} == {"CRM_EXPORT_NOT_IN_SALESFORCE"}
    if pause_on_error:
        assert run.state == "failed"
        assert [e["record_key"] for e in errors] == ["6"]
        assert watermark(db) == (watermark(db)[0], "6")
        assert "only updates (mode: update)" in run.log
    else:
        assert run.state == "success", run.log[-3000:]
        assert [e["record_key"] for e in errors] == ["6", "7", "8"]
        assert watermark(db)[0][1] == "8"

    for contact in range(6, 9):  # someone creates them in Salesforce
        sf.Contact.upsert(f"CRM_Contact_Id__c/{contact}", {"LastName": "Before"})
    if pause_on_error:
        assert run_dag(streams_file=streams).state == "success"
    else:
        assert run_dag(streams_file=streams, dag_id="CRMExport_ExportError").state == "success"
    assert open_errors(db) == []
    assert_salesforce_matches_source(db, emulator)


def test_insert_mode_creates_only_and_leaves_a_record_salesforce_has(db, emulator, sf, run_dag, tmp_path):
    insert_contacts(db, 6)
    sf.Contact.upsert("CRM_Contact_Id__c/3", {"LastName": "Kept by Salesforce"})
    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0, mode="insert")})

    run = run_dag(streams_file=streams)

    assert run.state == "success", run.log[-3000:]
    contacts = salesforce_contacts(emulator)
    assert {key: c["LastName"] for key, c in contacts.items()} == {
        "1": "Last1",
        "2": "Last2",
        "3": "Kept by Salesforce",
        "4": "Last4",
        "5": "Last5",
        "6": "Last6",
    }
    assert "exported 5 record(s)" in run.log
    # Counted apart from the unchanged: Salesforce's record may differ from the row, it is only left alone.
    assert "unchanged (not sent): 0; in Salesforce already (mode: insert, not sent): 1;" in run.log
    assert db.execute("SELECT exported, unchanged, existing FROM crm_export.export_runs").fetchall() == [(5, 0, 1)]
    assert watermark(db)[0][1] == "6"
    assert open_errors(db) == []

    db.execute("UPDATE crm.contacts SET last_name = 'Changed', updated_at = now() - interval '1 minute'")
    assert run_dag(streams_file=streams).state == "success"
    assert {c["LastName"] for c in salesforce_contacts(emulator).values()} == {"Kept by Salesforce"} | {
        f"Last{n}" for n in (1, 2, 4, 5, 6)
    }  # created once, never updated


def test_a_write_mode_that_is_not_known_is_refused(tmp_path):
    from include.crm_export.config import load_streams
    from include.crm_export.errors import StreamConfigError

    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(mode="merge")})
    with pytest.raises(StreamConfigError, match=r"field 'mode'.*'upsert', 'update' or 'insert'"):
        load_streams(streams)


def test_a_record_salesforce_took_in_a_batch_that_was_not_committed_is_never_taken_for_unchanged(
    db, emulator, run_dag, tmp_path
):
    """Held at record 5, the stream does not commit record 300 of the same request although Salesforce applied
    it. Record 300 then goes back to what Salesforce had confirmed before: its fingerprint was dropped when it was
    sent, so it is sent again rather than skipped as unchanged (which would leave Salesforce with the newer
    title while the watermark passes it)."""
    from tests.support.helpers import blocked

    insert_contacts(db, 400)
    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0)})
    _run(run_dag, streams, "sObject Collections")
    rule = blocked(emulator, 5)
    db.execute(
        """UPDATE crm.contacts SET title = CASE id WHEN 5 THEN 'X' ELSE 'Newer' END,
                                   updated_at = now() - interval '1 minute' + id * interval '1 millisecond'
           WHERE id IN (5, 300)"""
    )
    assert run_dag(streams_file=streams).state == "failed"
    assert watermark(db)[1] == "5"
    assert salesforce_contacts(emulator)["300"]["Title"] == "Newer"  # applied, not committed

    db.execute("UPDATE crm.contacts SET title = 'Engineer', updated_at = now() - interval '30 seconds' WHERE id = 300")
    emulator.remove_rule(rule)
    _run(run_dag, streams, "sObject Collections")

    assert salesforce_contacts(emulator)["300"]["Title"] == "Engineer"
    assert watermark(db)[1] is None
    assert_salesforce_matches_source(db, emulator)


def test_a_row_read_again_before_its_first_read_is_committed_keeps_no_fingerprint_of_the_first(
    db, tmp_path, monkeypatch
):
    """A row changed during a run is read again, maybe before its first read is committed. The second read
    looked its fingerprint up before that commit wrote it, so it would not drop it before being sent: were the
    first commit to write it, a worker killed before the second read is committed would leave it standing for
    a payload Salesforce may no longer hold, and the row changed back to that payload would never be sent."""
    from contextlib import ExitStack

    from include.crm_export.batch import RecordOutcome, plan_batch
    from include.crm_export.config import load_streams
    from include.crm_export.db.connection import Database
    from include.crm_export.export import RunContext, StreamExport
    from include.crm_export.mapping import position_to_json

    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0)})
    monkeypatch.setenv("CRM_EXPORT_STREAMS_FILE", str(streams))
    stream = load_streams()["contacts"]
    insert_contacts(db, 3)

    def read(run, after):
        return run.read(after, 10, horizon=run.horizon(fresh=True))[1]

    with ExitStack() as exits:  # a run killed before its second read of row 2 is committed
        run = StreamExport.open(stream, Database(), RunContext("CRMExport", "run-1"), exits=exits)
        first = read(run, run.watermark.position)
        assert [r.key for r in first] == ["1", "2", "3"]
        db.execute("UPDATE crm.contacts SET title = 'Changed', updated_at = now() - interval '10 minutes' WHERE id = 2")
        assert [(r.key, r.payload["Title"]) for r in read(run, position_to_json(first[-1].position))] == [
            ("2", "Changed")
        ]
        run.commit(plan_batch([RecordOutcome(r, None) for r in first], pause_on_error=True))

    db.execute("UPDATE crm.contacts SET title = 'Engineer', updated_at = now() - interval '5 minutes' WHERE id = 2")
    with ExitStack() as exits:
        run = StreamExport.open(stream, Database(), RunContext("CRMExport", "run-2"), exits=exits)
        [back] = read(run, run.watermark.position)
    # Salesforce may hold "Changed": the row as it was first read is sent again, never taken for unchanged.
    assert (back.key, back.payload["Title"], back.unchanged) == ("2", "Engineer", False)


def test_a_key_read_twice_in_one_read_is_counted_twice_so_its_commits_still_see_the_later_read(
    db, tmp_path, monkeypatch
):
    """Row 1 marked deleted and row 9, which took its external id, are read together (one Salesforce record,
    two records read, committed apart); row 9 is then changed and read again before they are committed. Counted
    once for the two, the first commit would leave the second thinking no later read is pending."""
    from contextlib import ExitStack

    from include.crm_export.batch import RecordOutcome, next_request, plan_batch
    from include.crm_export.config import load_streams
    from include.crm_export.db.connection import Database
    from include.crm_export.export import RunContext, StreamExport
    from include.crm_export.mapping import position_to_json
    from tests.support.helpers import table_stream

    db.execute("DROP TABLE IF EXISTS crm.reused")
    db.execute(
        """CREATE TABLE crm.reused (id int PRIMARY KEY, ext text, last_name text, deleted_at timestamptz,
                                    changed timestamptz NOT NULL)"""
    )
    db.execute(
        """INSERT INTO crm.reused VALUES (1, 'R1', 'First', now(), now() - interval '20 minutes'),
                                         (9, 'R1', 'A', NULL, now() - interval '10 minutes')"""
    )
    stream = table_stream("crm.reused", key="id", change="changed", deletes={"column": "deleted_at"})
    monkeypatch.setenv("CRM_EXPORT_STREAMS_FILE", str(write_streams(tmp_path / "s.yml", {"contacts": stream})))
    contacts = load_streams()["contacts"]

    def read(run, after):
        return run.read(after, 10, horizon=run.horizon(fresh=True))[1]

    with ExitStack() as exits:  # a run killed before its second read of row 9 is committed
        run = StreamExport.open(contacts, Database(), RunContext("CRMExport", "run-1"), exits=exits)
        first = read(run, run.watermark.position)
        assert [(r.key, r.delete, r.unchanged) for r in first] == [("1", True, True), ("9", False, False)]
        covered, rest = next_request(first, 200)
        assert [[r.key for r in covered], [r.key for r in rest]] == [["1"], ["9"]]  # one Salesforce record
        db.execute("UPDATE crm.reused SET last_name = 'B', changed = now() - interval '5 minutes' WHERE id = 9")
        assert [r.payload["LastName"] for r in read(run, position_to_json(first[-1].position))] == ["B"]
        for request in (covered, rest):
            run.commit(plan_batch([RecordOutcome(r, None) for r in request], pause_on_error=True))

    db.execute("UPDATE crm.reused SET last_name = 'A', changed = now() - interval '2 minutes' WHERE id = 9")
    with ExitStack() as exits:
        run = StreamExport.open(contacts, Database(), RunContext("CRMExport", "run-2"), exits=exits)
        [back] = read(run, run.watermark.position)
    assert (back.key, back.payload["LastName"], back.unchanged) == ("9", "A", False)  # Salesforce may hold B
    db.execute("DROP TABLE crm.reused")


def test_a_bulk_api_job_counts_the_records_it_sends_not_the_unchanged_ones_read_between_them(
    db, emulator, run_dag, tmp_path
):
    """3,000 rows touched, 300 changed, bulk_job_records 1,000: one job of 300 records (sized by rows read, it
    was three jobs of 100)."""
    insert_contacts(db, 3000)
    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0, bulk_job_records=1000)})
    _run(run_dag, streams, "Bulk API 2.0")
    jobs = emulator.counters().get("bulk.jobs_created", 0)
    assert jobs == 3
    db.execute(
        """UPDATE crm.contacts SET updated_at = now() - interval '10 minutes' + id * interval '1 millisecond',
                                   title = CASE WHEN id % 10 = 0 THEN 'Director' ELSE title END"""
    )

    run = _run(run_dag, streams, "Bulk API 2.0")

    assert emulator.counters()["bulk.jobs_created"] - jobs == 1
    assert db.execute("SELECT records FROM crm_export.bulk_jobs ORDER BY created_at DESC LIMIT 1").fetchone() == (3000,)
    assert "exported 300 record(s)" in run.log
    assert "unchanged (not sent): 2700" in run.log
    assert watermark(db)[0][1] == "3000"
    assert_salesforce_matches_source(db, emulator)


def test_a_first_export_looks_up_only_what_it_wrote_and_drops_that_before_sending_it_again(db, tmp_path, monkeypatch):
    """A run that starts with no fingerprint kept looks up only keys it wrote itself. Rows it exported and then
    reads again: the changed one has its fingerprint dropped before it is sent, the touched one is unchanged."""
    from contextlib import ExitStack

    from include.crm_export.batch import RecordOutcome, plan_batch
    from include.crm_export.config import load_streams
    from include.crm_export.db import fingerprints
    from include.crm_export.db.connection import Database
    from include.crm_export.export import RunContext, StreamExport
    from include.crm_export.mapping import position_to_json

    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0)})
    monkeypatch.setenv("CRM_EXPORT_STREAMS_FILE", str(streams))
    insert_contacts(db, 3)
    with ExitStack() as exits:
        run = StreamExport.open(load_streams()["contacts"], Database(), RunContext("CRMExport", "r"), exits=exits)
        first = run.read(run.watermark.position, 10, horizon=run.horizon(fresh=True))[1]
        run.commit(plan_batch([RecordOutcome(r, None) for r in first], pause_on_error=True))
        kept = fingerprints.confirmed(db, run.fingerprint_number, ["1", "2", "3"])
        assert sorted(kept) == ["1", "2", "3"]
        db.execute(
            """UPDATE crm.contacts SET updated_at = now() - interval '10 minutes' + id * interval '1 millisecond',
                                       title = CASE WHEN id = 2 THEN 'Changed' ELSE title END
               WHERE id IN (2, 3)"""
        )
        again = run.read(position_to_json(first[-1].position), 10, horizon=run.horizon(fresh=True))[1]
        assert [(r.key, r.unchanged) for r in again] == [("2", False), ("3", True)]
        assert fingerprints.confirmed(db, run.fingerprint_number, ["1", "2", "3"]) == {"1": kept["1"], "3": kept["3"]}
