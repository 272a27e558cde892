"""Change capture through logical decoding (``capture: logical``): a stream follows its table's commit order
through a replication slot, deletes included, with no change column, no settle window and no horizon.

Every test ends with what a user sees: Salesforce's records (the emulator's state; a deleted row's record is
absent), the watermark, the ExportErrors rows, the slot's retained WAL, the command's message.
"""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest

from devstack.stack import PROJECT_ROOT
from include.crm_export.config import parse_config
from include.crm_export.db import capture
from include.crm_export.errors import StreamConfigError
from tests.support.helpers import (
    assert_salesforce_matches_source,
    cli,
    contacts_stream,
    kill_when,
    open_errors,
    salesforce_contacts,
    watermark,
    write_streams,
)

STREAM = "people"


def people_stream(**overrides):
    """Contacts from crm.people by CRM_Contact_Id__c = ext (not the key), following the table's commits."""
    return {
        "source": "crm.people",
        "key": "id",
        "capture": "logical",
        "sobject": "Contact",
        "external_id": {"field": "CRM_Contact_Id__c", "column": "ext"},
        "fields": {"LastName": "last_name", "Title": "title"},
        **overrides,
    }


@pytest.fixture
def people(db, tmp_path, monkeypatch):
    """crm.people (REPLICA IDENTITY FULL: a delete carries the external id), its stream file, and capture set up
    through the CLI; the slot is dropped after the test."""
    db.execute(
        """CREATE TABLE crm.people (id bigint PRIMARY KEY, ext text NOT NULL, last_name text NOT NULL, title text);
           ALTER TABLE crm.people REPLICA IDENTITY FULL"""
    )
    streams = write_streams(tmp_path / "s.yml", {STREAM: people_stream()})
    monkeypatch.setenv("CRM_EXPORT_STREAMS_FILE", str(streams))
    done = cli("capture", "setup", "--stream", STREAM, streams=streams)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "created replication slot crm_export_people" in done.stdout
    yield streams
    cli("capture", "drop", "--stream", STREAM, streams=streams)


def _stream():
    return parse_config({"streams": {STREAM: people_stream()}})[STREAM]


def _insert(db, ids, *, title="Engineer"):
    db.execute(
        """INSERT INTO crm.people (id, ext, last_name, title)
           SELECT g, 'P-' || g, 'Person ' || g, %s FROM unnest(%s::bigint[]) g""",
        (title, list(ids)),
    )


def _run(run_dag, streams):
    run = run_dag(streams_file=streams, retries=False)
    assert run.state == "success", run.log[-3000:]
    return run


def _history(db):
    return db.execute(
        """SELECT exported, deleted, rejected FROM crm_export.export_runs WHERE stream = %s
           ORDER BY id DESC LIMIT 1""",
        (STREAM,),
    ).fetchone()


def _retained_wal(db) -> int:
    return capture.retained_wal_bytes(db, _stream()) or 0


def _restart(db) -> int:
    """Where the slot's retained WAL begins."""
    return int(
        db.execute(
            "SELECT pg_wal_lsn_diff(restart_lsn, '0/0')::bigint FROM pg_replication_slots WHERE slot_name = %s",
            (capture.slot_name(_stream()),),
        ).fetchone()[0]
    )


def _wal_now(db) -> int:
    return int(db.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint").fetchone()[0])


def test_updates_that_touch_no_timestamp_inserts_and_hard_deletes_all_arrive(db, emulator, run_dag, people):
    _insert(db, range(1, 51))
    _run(run_dag, people)
    assert len(salesforce_contacts(emulator)) == 50
    assert watermark(db, STREAM)[0][0] == "changes"  # the read of the table is done; on to the slot's changes

    db.execute("UPDATE crm.people SET title = 'Director' WHERE id <= 10")  # no timestamp anywhere
    db.execute("DELETE FROM crm.people WHERE id IN (20, 21, 22)")
    _insert(db, [51, 52])
    db.execute("UPDATE crm.people SET id = 60, ext = 'P-60' WHERE id = 30")  # a new key: the old one's row is gone
    _run(run_dag, people)

    contacts = salesforce_contacts(emulator)
    assert {contacts[f"P-{n}"]["Title"] for n in range(1, 11)} == {"Director"}
    assert not {"P-20", "P-21", "P-22", "P-30"} & set(contacts)
    assert {"P-51", "P-52", "P-60"} <= set(contacts)
    assert_salesforce_matches_source(db, emulator, STREAM)
    assert _history(db)[1] == 4  # 20, 21, 22 and the old key 30
    assert open_errors(db, STREAM) == []
    # Exported changes leave the change table; the slot keeps no WAL beyond the last run.
    assert db.execute("SELECT count(*) FROM crm_export.captured_changes").fetchone()[0] == 0
    assert _retained_wal(db) < 1_000_000


def test_a_transaction_held_open_across_runs_arrives_once_it_commits(db, emulator, run_dag, people, project_conninfo):
    """No settle window and no horizon: what committed is sent at once, and a transaction still open is sent
    when it commits, however long it stays open, without holding back anything committed meanwhile."""
    _insert(db, range(1, 6))
    _run(run_dag, people)
    with psycopg.connect(project_conninfo) as writer:  # a transaction, open across the next run
        writer.execute("UPDATE crm.people SET title = 'Late' WHERE id = 2")
        db.execute("UPDATE crm.people SET title = 'Early' WHERE id = 3")  # committed after the other began
        _run(run_dag, people)
        contacts = salesforce_contacts(emulator)
        assert contacts["P-3"]["Title"] == "Early"
        assert contacts["P-2"]["Title"] == "Engineer"
        writer.commit()
    _run(run_dag, people)

    assert salesforce_contacts(emulator)["P-2"]["Title"] == "Late"
    assert_salesforce_matches_source(db, emulator, STREAM)


def test_a_refused_delete_is_logged_and_the_reexport_deletes_the_record(db, emulator, run_dag, pause_variable, people):
    _insert(db, range(1, 6))
    _run(run_dag, people)
    rule = emulator.add_rule(
        cause="delete_blocked",
        on="delete",
        when={"field": "CRM_Contact_Id__c", "op": "eq", "value": "P-4"},
        message="This contact has open cases",
    )
    pause_variable("false")
    db.execute("DELETE FROM crm.people WHERE id IN (3, 4)")
    _run(run_dag, people)

    [error] = open_errors(db, STREAM)
    assert (error["record_key"], error["external_id"], error["error_code"]) == ("4", "P-4", "DELETE_FAILED")
    assert "whose source row was deleted: This contact has open cases." in error["error_message"]
    assert "P-4" in salesforce_contacts(emulator)

    emulator.remove_rule(rule["id"])
    assert run_dag(dag_id="CRMExport_ExportError", streams_file=people, retries=False).state == "success"
    assert "P-4" not in salesforce_contacts(emulator)
    assert_salesforce_matches_source(db, emulator, STREAM)
    assert open_errors(db, STREAM) == []


def test_setup_refuses_a_table_whose_deletes_would_not_say_which_record(db, tmp_path):
    """The external id is not the key and the replica identity is the primary key: a delete would carry the key
    only. Refused, saying what to change; nothing is created."""
    db.execute("CREATE TABLE crm.people (id bigint PRIMARY KEY, ext text, last_name text, title text)")
    streams = write_streams(tmp_path / "s.yml", {STREAM: people_stream()})
    refused = cli("capture", "setup", "--stream", STREAM, streams=streams)
    assert refused.returncode == 1
    assert "ALTER TABLE crm.people REPLICA IDENTITY FULL" in refused.stderr
    assert "carries only its replica identity (id), not ext" in refused.stderr
    assert db.execute("SELECT count(*) FROM pg_replication_slots").fetchone()[0] == 0

    db.execute("CREATE VIEW crm.people_view AS SELECT * FROM crm.people")
    streams = write_streams(tmp_path / "v.yml", {STREAM: people_stream(source="crm.people_view")})
    refused = cli("capture", "setup", "--stream", STREAM, streams=streams)
    assert "is not a table" in refused.stderr

    db.execute("CREATE TABLE crm.parted (id bigint, ext text, last_name text, title text) PARTITION BY RANGE (id)")
    streams = write_streams(tmp_path / "p.yml", {STREAM: people_stream(source="crm.parted")})
    refused = cli("capture", "setup", "--stream", STREAM, streams=streams)
    assert "is a partitioned table" in refused.stderr


def test_setup_refuses_a_role_that_may_not_use_replication_naming_what_to_grant(db):
    db.execute("DROP ROLE IF EXISTS crm_export_no_replication")
    db.execute("CREATE ROLE crm_export_no_replication NOREPLICATION")
    try:
        db.execute("SET ROLE crm_export_no_replication")
        with pytest.raises(StreamConfigError) as refused:
            capture.check_server(db, _stream())
    finally:
        db.execute("RESET ROLE")
        db.execute("DROP ROLE crm_export_no_replication")
    assert "role crm_export_no_replication may not use replication slots" in str(refused.value)
    assert 'ALTER ROLE "crm_export_no_replication" WITH REPLICATION' in str(refused.value)
    assert 'GRANT rds_replication TO "crm_export_no_replication"' in str(refused.value)


def test_setup_on_a_server_without_logical_decoding_says_where_to_turn_it_on(tmp_path):
    """A server as most are set up (wal_level=replica, PostgreSQL's default): refused before anything is created,
    naming the setting on one's own server, RDS/Aurora, Cloud SQL and Azure."""
    from devstack.postgres import EmbeddedPostgres

    server = EmbeddedPostgres(tmp_path / "replica", wal_level="replica")
    address = server.start()
    try:
        with psycopg.connect(address.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE SCHEMA crm")
            conn.execute("CREATE TABLE crm.people (id bigint PRIMARY KEY, ext text NOT NULL, last_name text)")
            with pytest.raises(StreamConfigError) as refused:
                capture.setup(conn, _stream())
            assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone()[0] == 0
    finally:
        server.stop()
    message = str(refused.value)
    assert "the server's wal_level is replica, and logical decoding needs logical" in message
    for where in ("ALTER SYSTEM SET wal_level = logical", "rds.logical_replication = 1", "cloudsql.logical_decoding"):
        assert where in message
    assert "Azure Database for PostgreSQL flexible server" in message


def test_a_slot_someone_else_moved_stops_the_stream_and_says_how_to_start_over(db, emulator, run_dag, people):
    _insert(db, range(1, 4))
    _run(run_dag, people)
    _insert(db, [4])
    db.execute(
        "SELECT * FROM pg_logical_slot_get_binary_changes('crm_export_people', NULL, NULL, "
        "'proto_version', '1', 'publication_names', 'crm_export_people')"
    )  # consumed by someone else
    failed = run_dag(streams_file=people, retries=False)
    assert failed.state == "failed"
    assert "someone else consumed it or made it anew" in failed.log
    assert "capture drop --stream people" in failed.log

    assert cli("capture", "drop", "--stream", STREAM, streams=people).returncode == 0
    again = cli("capture", "setup", "--stream", STREAM, streams=people)
    assert again.returncode == 0, again.stderr[-2000:]
    _run(run_dag, people)  # starts over: a read of the whole table
    assert_salesforce_matches_source(db, emulator, STREAM)


def test_rows_deleted_and_inserted_again_under_new_keys_keep_their_salesforce_records(db, emulator, run_dag, people):
    """A reload (every row deleted and inserted again under a new key, each with its external id) and a key
    changed in place: each Salesforce record stays, with its Id, and takes the current values; nothing is
    deleted, and nothing is rejected as a duplicate."""
    _insert(db, range(1, 21))
    _run(run_dag, people)
    ids_before = {ext: record["Id"] for ext, record in salesforce_contacts(emulator).items()}

    db.execute(
        """WITH gone AS (DELETE FROM crm.people RETURNING *)
           INSERT INTO crm.people SELECT id + 100, ext, last_name, 'Reloaded' FROM gone"""
    )
    db.execute("UPDATE crm.people SET id = 500 WHERE id = 105")
    _run(run_dag, people)

    contacts = salesforce_contacts(emulator)
    assert {ext: record["Id"] for ext, record in contacts.items()} == ids_before
    assert {record["Title"] for record in contacts.values()} == {"Reloaded"}
    assert _history(db)[1:] == (0, 0)  # nothing deleted, nothing rejected
    assert open_errors(db, STREAM) == []
    assert_salesforce_matches_source(db, emulator, STREAM)


def test_a_truncate_stops_the_stream_until_it_starts_over(db, emulator, run_dag, people):
    _insert(db, range(1, 6))
    _run(run_dag, people)
    db.execute("TRUNCATE crm.people")
    _insert(db, [7, 8])

    failed = run_dag(streams_file=people, retries=False)
    assert failed.state == "failed"
    assert "was truncated" in failed.log
    assert "reposition --stream people --from-start" in failed.log

    done = cli("reposition", "--stream", STREAM, "--from-start", "--yes", streams=people)
    assert done.returncode == 0, done.stderr[-2000:]
    _run(run_dag, people)
    assert {"P-7", "P-8"} <= set(salesforce_contacts(emulator))  # the truncated rows' records: the person's call


def test_a_char_key_is_the_same_record_key_in_the_read_and_in_the_changes(db, emulator, run_dag, tmp_path):
    """pgoutput prints a char(n) with its padding; the record key is the key's text form everywhere."""
    db.execute(
        """CREATE TABLE crm.coded (code char(6) PRIMARY KEY, ext text NOT NULL, last_name text NOT NULL, title text);
           ALTER TABLE crm.coded REPLICA IDENTITY FULL"""
    )
    db.execute(
        "INSERT INTO crm.coded VALUES ('A1', 'A1', 'Ada', 'x'), ('B2', 'B2', 'Bea', 'y'), ('C3', 'C3', 'Cy', 'z')"
    )
    stream = people_stream(source="crm.coded", key="code")
    streams = write_streams(tmp_path / "c.yml", {"coded": stream})
    assert cli("capture", "setup", "--stream", "coded", streams=streams).returncode == 0
    try:
        _run(run_dag, streams)
        db.execute("UPDATE crm.coded SET title = 'changed' WHERE code = 'A1'")
        db.execute("DELETE FROM crm.coded WHERE code = 'B2'")
        _run(run_dag, streams)
        assert_salesforce_matches_source(db, emulator, "coded")
        assert salesforce_contacts(emulator)["A1"]["Title"] == "changed"
    finally:
        cli("capture", "drop", "--stream", "coded", streams=streams)


def test_a_transaction_is_seen_as_ending_until_it_lets_go_of_its_id(db, project_conninfo):
    """A change is read only once its transaction is visible to other sessions: a commit that waits for a
    synchronous standby is decoded before that, and holds its transaction id lock until it is visible, as an
    open transaction does."""
    with psycopg.connect(project_conninfo) as writer:
        xid = int(writer.execute("SELECT txid_current() % 4294967296").fetchone()[0])
        assert capture.still_ending(db, {xid, 3}) == {xid}
        writer.commit()
    assert capture.still_ending(db, {xid}) == set()


def test_a_worker_killed_mid_run_loses_nothing(db, emulator, run_dag, people):
    """Killed while its requests are in Salesforce and the table is half read; changes and deletes arrive
    meanwhile: the next run goes on from the watermark and Salesforce equals the source."""
    _insert(db, range(1, 3001))
    emulator.set_timing(latency_ms=40)
    worker = subprocess.Popen(
        [sys.executable, "-m", "include.crm_export", "export", "--stream", STREAM, "--pause-on-error", "true"],
        cwd=PROJECT_ROOT,
        env={**os.environ, "CRM_EXPORT_STREAMS_FILE": str(people)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    kill_when(worker, lambda: (watermark(db, STREAM)[0] or [""])[0] == "snapshot", never="no batch was committed")
    db.execute("UPDATE crm.people SET title = 'After the kill' WHERE id % 3 = 0")
    db.execute("DELETE FROM crm.people WHERE id % 7 = 0")
    emulator.set_timing(latency_ms=0)

    _run(run_dag, people)

    assert_salesforce_matches_source(db, emulator, STREAM)
    assert open_errors(db, STREAM) == []


def test_the_page_lists_each_slot_with_the_wal_it_keeps_and_one_no_stream_follows(db, people):
    db.execute("SELECT pg_create_logical_replication_slot('crm_export_gone', 'pgoutput')")
    try:
        listed = {slot["slot"]: slot for slot in capture.slots(db, [_stream()])}
    finally:
        db.execute("SELECT pg_drop_replication_slot('crm_export_gone')")
    assert listed["crm_export_people"]["stream"] == STREAM
    assert listed["crm_export_gone"]["stream"] is None  # abandoned: nothing moves it, its WAL only grows
    assert all(slot["retained_wal_bytes"] >= 0 for slot in listed.values())


def test_a_slot_no_stream_follows_is_announced_once_when_it_keeps_too_much_wal_and_once_when_dropped(
    db, emulator, run_dag, people, mailbox, tmp_path
):
    """The stream left the stream file but its slot stayed: nothing moves it, so the server keeps every WAL
    segment written since. Any stream's run announces it (once), and its drop (once)."""
    others = write_streams(tmp_path / "others.yml", {"contacts": contacts_stream()}, alert_retained_wal_mb=0.1)
    _insert(db, range(1, 5001))  # about 1 MB of WAL the abandoned slot keeps
    _run(run_dag, others)
    _run(run_dag, others)  # still too much: no second message
    ((_, kept),) = mailbox
    assert kept["Subject"].startswith("CRMExport: replication slot crm_export_people keeps ")
    text = kept.get_body(preferencelist=("html", "plain")).get_content()
    assert "the alert is at 0.1 MB" in text
    assert "No stream in the stream file follows it" in text
    assert "SELECT pg_drop_replication_slot(&#x27;crm_export_people&#x27;)" in text

    assert cli("capture", "drop", "--stream", STREAM, streams=people).returncode == 0
    _run(run_dag, others)
    _run(run_dag, others)
    assert [message["Subject"] for _, message in mailbox][1:] == [
        "CRMExport: replication slot crm_export_people was dropped"
    ]
    assert db.execute("SELECT count(*) FROM crm_export.slot_alerts").fetchone()[0] == 0
