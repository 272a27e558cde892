"""Notifications end to end: a real SMTP server (aiosmtpd) and an HTTP server shaped like a Slack Incoming
Webhook, both started by the test (the ``mailbox`` and ``slack`` fixtures), receive what the providers'
notifiers send."""

from __future__ import annotations

import threading
import time

from tests.support.helpers import contacts_stream, insert_contacts, write_streams


def body(message) -> str:
    return message.get_body(preferencelist=("html", "plain")).get_content()


def test_held_is_announced_once_and_recovery_once(db, emulator, run_dag, mailbox, tmp_path):
    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0)})
    insert_contacts(db, 10)
    rule = emulator.add_rule(
        cause="validation_rule",
        when={"field": "CRM_Contact_Id__c", "op": "eq", "value": "4"},
        message="Title must be set",
        fields=["Title"],
    )

    assert run_dag(streams_file=streams, retries=False).state == "failed"
    assert run_dag(streams_file=streams, retries=False).state == "failed"  # still held: no second message
    (held,) = mailbox
    recipients, message = held
    assert recipients == ["oncall@example.com", "data@example.com"]
    assert message["Subject"] == "CRMExport: stream 'contacts' is held at record 4"
    text = body(message)
    assert "FIELD_CUSTOM_VALIDATION_EXCEPTION: Title must be set (fields: Title)" in text
    assert "clear this task" in text

    emulator.remove_rule(rule["id"])
    assert run_dag(streams_file=streams).state == "success"
    assert run_dag(streams_file=streams).state == "success"
    assert [m["Subject"] for _, m in mailbox] == [
        "CRMExport: stream 'contacts' is held at record 4",
        "CRMExport: stream 'contacts' recovered",
    ]


def test_too_many_rejected_records_with_pause_on_error_off_are_announced(
    db, emulator, run_dag, pause_variable, mailbox, tmp_path
):
    pause_variable("false")
    insert_contacts(db, 20)
    emulator.add_rule(cause="no_access", when={"field": "CRM_Contact_Id__c", "op": "in", "value": ["1", "2", "3"]})
    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0)})

    assert run_dag(streams_file=streams).state == "success"

    ((_, message),) = mailbox
    assert message["Subject"] == "CRMExport: stream 'contacts' rejected 3 of 20 records"
    assert "INSUFFICIENT_ACCESS_OR_READONLY: 3" in body(message)


def test_without_the_connection_nothing_is_sent_and_nothing_fails(db, emulator, run_dag, tmp_path):
    insert_contacts(db, 5)
    emulator.add_rule(cause="validation_rule", when={"field": "CRM_Contact_Id__c", "op": "eq", "value": "2"})
    run = run_dag(streams_file=write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0)}))
    assert run.task_states["export_contacts"] == "failed"
    assert "is held at record 2" in run.log
    assert "Could not send the" not in run.log
    assert "Notified by" not in run.log


def test_slack_hears_held_and_recovered_once_each(db, emulator, run_dag, slack, tmp_path):
    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0)})
    insert_contacts(db, 10)
    rule = emulator.add_rule(
        cause="validation_rule",
        when={"field": "CRM_Contact_Id__c", "op": "eq", "value": "4"},
        message="Title must be <set> & valid",
        fields=["Title"],
    )
    assert run_dag(streams_file=streams, retries=False).state == "failed"
    assert run_dag(streams_file=streams, retries=False).state == "failed"
    emulator.remove_rule(rule["id"])
    assert run_dag(streams_file=streams).state == "success"
    assert run_dag(streams_file=streams).state == "success"

    assert [path for path, _ in slack] == ["/services/T0001/B0001/secret"] * 2
    held, recovered = (payload["text"] for _, payload in slack)
    assert held.startswith("*CRMExport: stream 'contacts' is held at record 4*\n```")
    assert "FIELD_CUSTOM_VALIDATION_EXCEPTION: Title must be &lt;set&gt; &amp; valid (fields: Title)" in held
    assert "clear this task" in held
    assert recovered.startswith("*CRMExport: stream 'contacts' recovered*")
    assert slack[0][1]["unfurl_links"] is False


def test_a_channel_that_fails_is_retried_without_repeating_the_others(db, emulator, run_dag, slack, mailbox, tmp_path):
    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0)})
    insert_contacts(db, 5)
    emulator.add_rule(cause="validation_rule", when={"field": "CRM_Contact_Id__c", "op": "eq", "value": "2"})
    slack.status = 500  # Slack is down for the first run

    first = run_dag(streams_file=streams, retries=False)
    assert first.task_states["export_contacts"] == "failed"
    assert "is held at record 2" in first.log  # the task's own outcome, whatever the notifications did
    assert "Could not send the slack notification for stream 'contacts' (connection crm_export_slack" in first.log
    assert [m["Subject"] for _, m in mailbox] == ["CRMExport: stream 'contacts' is held at record 2"]
    assert slack == []

    slack.status = 200
    assert run_dag(streams_file=streams, retries=False).state == "failed"
    assert [payload["text"].split("\n")[0] for _, payload in slack] == [
        "*CRMExport: stream 'contacts' is held at record 2*"
    ]
    assert len(mailbox) == 1  # email had already said it


def _fake_channel(monkeypatch, slow_first_seconds=0.0):
    from include.crm_export import notify

    sent = []

    def send(_connection, alert):
        sent.append((threading.current_thread().name, time.monotonic(), alert.subject))
        if slow_first_seconds and len(sent) == 1:
            time.sleep(slow_first_seconds)  # an SMTP server that is slow to answer

    channel = notify.Channel("email", "crm_export_email", send)
    monkeypatch.setattr(notify, "_configured", lambda: [(channel, None)])
    return sent


def _slot(db, name):  # a slot no stream follows
    db.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name,))


def _wal(db, n=2000):
    db.execute("CREATE TABLE IF NOT EXISTS crm.walfill (i int, t text)")
    db.execute("INSERT INTO crm.walfill SELECT g, repeat('x', 200) FROM generate_series(1, %s) g", (n,))


def _drop_slots(db):
    db.execute(
        r"""SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
            WHERE slot_name LIKE 'crm\_export\_%' AND NOT active"""
    )


def test_two_tasks_at_once_never_announce_a_slot_from_what_they_saw_before_it_was_dropped(db, monkeypatch, tmp_path):
    """Task 1 reads the slots, then is slow delivering the first message; meanwhile slot zz (announced as keeping
    too much) is dropped, and task 2 announces that. Task 1 must not then announce zz from what it read first.
    (The delivery is a stand-in: what is tested is the claim of each slot's state.)"""
    from include.crm_export.db.connection import Database
    from include.crm_export.notify import notify_slots

    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream()}, alert_retained_wal_mb=0.01)
    monkeypatch.setenv("CRM_EXPORT_STREAMS_FILE", str(streams))
    try:
        _slot(db, "crm_export_aa")
        _slot(db, "crm_export_zz")
        _wal(db)
        db.execute(
            """INSERT INTO crm_export.slot_alerts (slot, channel, state)
               VALUES ('crm_export_zz', 'email', 'retaining')"""
        )  # zz announced earlier
        sent = _fake_channel(monkeypatch, slow_first_seconds=3)
        t1 = threading.Thread(target=lambda: notify_slots(Database()), name="task1")
        t1.start()
        time.sleep(1.0)  # task 1 has read both slots and is delivering aa's message
        db.execute("SELECT pg_drop_replication_slot('crm_export_zz')")
        notify_slots(Database())  # task 2
        t1.join()
        zz = [(who, subject) for who, _, subject in sent if "crm_export_zz" in subject]
        assert zz == [("MainThread", "CRMExport: replication slot crm_export_zz was dropped")]
        assert db.execute("SELECT slot FROM crm_export.slot_alerts WHERE slot = 'crm_export_zz'").fetchall() == []
    finally:
        _drop_slots(db)


def test_a_task_leaves_a_slot_another_task_is_announcing_instead_of_waiting(db, monkeypatch, tmp_path):
    """While task 1 delivers the first message about a slot, task 2 leaves that slot to it instead of waiting."""
    from include.crm_export.db.connection import Database
    from include.crm_export.notify import notify_slots

    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream()}, alert_retained_wal_mb=0.01)
    monkeypatch.setenv("CRM_EXPORT_STREAMS_FILE", str(streams))
    try:
        _slot(db, "crm_export_aa")
        _wal(db)
        sent = _fake_channel(monkeypatch, slow_first_seconds=3)
        t1 = threading.Thread(target=lambda: notify_slots(Database()), name="task1")
        t1.start()
        time.sleep(1.0)
        started = time.monotonic()
        notify_slots(Database())  # task 2
        waited = time.monotonic() - started
        t1.join()
        assert waited < 2, f"task 2 waited {waited:.1f} s for task 1's message"
        assert [(who, subject.split(" keeps ")[0]) for who, _, subject in sent] == [
            ("task1", "CRMExport: replication slot crm_export_aa")
        ]
    finally:
        _drop_slots(db)
