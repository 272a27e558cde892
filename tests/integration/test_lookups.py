"""Lookups between streams: children point at their parents by external id, and parents go first.

Every test ends with Salesforce equal to the source, links included: each child's lookup holds the Id of the
parent whose external id its source row names (``assert_salesforce_matches_source`` resolves them).
"""

from __future__ import annotations

from typing import Any

import pytest

from include.crm_export.errors import PARENT_NOT_EXPORTED
from tests.support.helpers import (
    PROJECT_ROOT,
    assert_salesforce_matches_source,
    contacts_stream,
    insert_contacts,
    open_errors,
    salesforce_contacts,
    watermark,
    write_streams,
)

PATHS = ["sObject Collections", "Bulk API 2.0"]


def accounts_stream(**overrides: Any) -> dict[str, Any]:
    return {
        "source": "crm.accounts",
        "key": "id",
        "order_by": ["updated_at", "id"],
        "sobject": "Account",
        "external_id": {"field": "CRM_Account_Id__c", "column": "id"},
        "fields": {"Name": "name", "BillingCity": "city"},
        "settle_seconds": 0,
        **overrides,
    }


def children_stream(**overrides: Any) -> dict[str, Any]:
    """Contacts whose AccountId comes from the accounts stream (the file lists the child first)."""
    fields = {"LastName": "last_name", "Title": "title", "AccountId": {"parent": "accounts", "column": "account_id"}}
    return contacts_stream(fields=fields, settle_seconds=0, **overrides)


def _streams(tmp_path, **overrides: Any):
    """The child listed before its parent: the order comes from the lookups, not from the file."""
    return write_streams(
        tmp_path / "streams.yml",
        {"contacts": children_stream(**overrides), "accounts": accounts_stream(**overrides)},
    )


def insert_accounts(db, count: int, *, start: int = 1) -> None:
    db.execute(
        """INSERT INTO crm.accounts (id, name, city, updated_at)
           SELECT g, 'Account ' || g, 'Oslo', now() - interval '1 hour' + g * interval '1 millisecond'
           FROM generate_series(%s::int, %s::int) g""",
        (start, start + count - 1),
    )


def link_contacts(db, accounts: int) -> None:
    """Contact n belongs to account 1 + n % accounts (its row unchanged otherwise)."""
    db.execute("UPDATE crm.contacts SET account_id = 1 + id %% %s", (accounts,))


def account_rule(emulator, *ids: int) -> int:
    """A validation rule rejecting the accounts with these external ids."""
    return emulator.add_rule(
        cause="validation_rule",
        object="Account",
        name="Account_Needs_Review",
        when={"field": "CRM_Account_Id__c", "op": "in", "value": [str(i) for i in ids]},
        message="This account is under review",
        fields=["Name"],
    )["id"]


def _assert_linked(db, emulator) -> None:
    assert_salesforce_matches_source(db, emulator, "accounts")
    assert_salesforce_matches_source(db, emulator, "contacts")  # each AccountId: the Id of its account


@pytest.mark.parametrize("path", PATHS)
def test_parents_go_first_in_one_run_and_every_child_holds_its_parents_id(db, emulator, run_dag, tmp_path, path):
    """One CRMExport run through a real DagBag: accounts and contacts new in the same run, the child stream
    listed first in the file. The accounts task runs first, so every contact finds its account."""
    from airflow.dag_processing.dagbag import DagBag

    insert_accounts(db, 5)
    insert_contacts(db, 60)
    link_contacts(db, 5)
    db.execute("UPDATE crm.contacts SET account_id = NULL WHERE id = 7")  # no account: the lookup stays empty
    streams = _streams(tmp_path)

    run = run_dag(streams_file=streams, conf={"use_bulk_api": path == "Bulk API 2.0"})

    assert run.state == "success", run.log[-3000:]
    dag = DagBag(str(PROJECT_ROOT / "dags")).get_dag("CRMExport")
    assert dag.get_task("export_contacts").upstream_task_ids == {"export_accounts"}
    assert dag.get_task("export_contacts").trigger_rule == "all_done"
    _assert_linked(db, emulator)
    accounts = {r["CRM_Account_Id__c"]: r["Id"] for r in emulator.records("Account")}
    contacts = salesforce_contacts(emulator)
    assert contacts["12"]["AccountId"] == accounts["3"]  # 1 + 12 % 5
    assert contacts["7"]["AccountId"] is None
    assert open_errors(db) == []
    assert open_errors(db, "accounts") == []


def test_a_child_waits_for_its_held_parent_then_both_go_through_after_the_fix(db, emulator, run_dag, tmp_path):
    """Pause on: account 3 breaks a rule, so the accounts stream is held at it. The contacts stream still runs
    (its task is all_done downstream): contacts of other accounts go through, and it is held at the first
    contact of account 3, whose message names the parent stream, the parent record and the parent's own error.
    After the fix, the next run exports the account, then the contact."""
    insert_accounts(db, 5)
    insert_contacts(db, 20)
    link_contacts(db, 5)  # contact 2 is the first of account 3
    rule = account_rule(emulator, 3)
    streams = _streams(tmp_path)

    held = run_dag(streams_file=streams, retries=False)

    assert held.state == "failed"
    assert held.task_states == {
        "export_accounts": "failed",
        "export_contacts": "failed",
        "all_streams_succeeded": "failed",  # the run is red although contacts ran after its held parent
    }
    assert "Failed in this run: export_accounts, export_contacts." in held.log
    assert watermark(db, "accounts")[1] == "3"
    assert watermark(db, "contacts")[1] == "2"
    assert "1" in salesforce_contacts(emulator)
    assert "2" not in salesforce_contacts(emulator)
    (waiting,) = open_errors(db)
    assert waiting["error_code"] == PARENT_NOT_EXPORTED
    message = next(line for line in held.log.splitlines() if "Export of stream 'contacts' is held" in line)
    for says in (
        "held at record 2 (Contact.CRM_Contact_Id__c = 2). Waiting for its parent:",
        "AccountId points at Account.CRM_Account_Id__c = 3, row 3 of stream 'accounts'",
        "FIELD_CUSTOM_VALIDATION_EXCEPTION: This account is under review",
        "Fix the parent's cause",
    ):
        assert says in message, message

    # The page lists the parent first, and says what the held child waits for, linking the parent stream.
    from include.crm_export.ui.app import streams as page_streams

    shown = page_streams()
    assert [s["stream"] for s in shown] == ["accounts", "contacts"]
    assert shown[1]["parents"] == ["accounts"]
    assert shown[1]["held_waiting_for"] == "accounts"
    assert shown[0]["held_waiting_for"] is None  # held by its own error

    emulator.remove_rule(rule)
    fixed = run_dag(streams_file=streams, retries=False)

    assert fixed.state == "success", fixed.log[-3000:]
    assert watermark(db, "accounts")[1] is None
    assert watermark(db, "contacts")[1] is None
    assert open_errors(db) == []
    assert open_errors(db, "accounts") == []
    _assert_linked(db, emulator)


@pytest.mark.parametrize("pause", ["true", "false"])
def test_a_child_whose_parent_is_not_exported_yet_waits_without_an_error(
    db, emulator, run_dag, tmp_path, pause_variable, pause
):
    """Nothing is wrong when the parent stream has not reached a parent yet (here its per-run limit stops it
    after two accounts; written together, the same happens to a parent committed after its stream's read):
    the child stream stops before the first contact whose account is not exported, with no ExportErrors row
    and no hold, under either pause. The next run, parents first, goes on from there."""
    pause_variable(pause)
    insert_accounts(db, 5)
    insert_contacts(db, 20)
    link_contacts(db, 5)  # contacts 1 and 5 belong to accounts 2 and 1; contact 2 is the first of account 3
    streams = write_streams(
        tmp_path / "streams.yml",
        {"contacts": children_stream(), "accounts": accounts_stream(max_records_per_run=2)},
    )

    first = run_dag(streams_file=streams, retries=False)

    assert first.state == "success", first.log[-3000:]
    assert watermark(db, "accounts")[0] is not None
    assert watermark(db, "accounts")[1] is None
    assert "1" in salesforce_contacts(emulator)
    assert "2" not in salesforce_contacts(emulator)  # it waits (others of its request landed, and count next run)
    assert watermark(db, "contacts")[0][-1] == "1"  # the watermark stops before it, so nothing is skipped
    assert watermark(db, "contacts")[1] is None  # not held
    assert open_errors(db) == []
    line = next(line for line in first.log.splitlines() if "Stream 'contacts' stops before record 2" in line)
    assert "not an error" in line, line
    assert "stream 'accounts' has not reached it yet" in line, line

    runs = 1
    while len(emulator.records("Account")) < 5 or len(salesforce_contacts(emulator)) < 20:
        assert run_dag(streams_file=streams, retries=False).state == "success"
        runs += 1
        assert runs <= 4, "two accounts a run: caught up by the third run"
    assert open_errors(db) == []
    _assert_linked(db, emulator)


def test_a_child_that_has_waited_longer_than_a_parent_takes_is_reported(db, emulator, run_dag, tmp_path):
    """The accounts stream exports one account a run, so contact 1, whose account 5 comes last, waits. Once it
    has waited longer than a parent takes to arrive, it is reported as waiting for its parent (pause on: held,
    naming the parent stream) instead of stopping the contacts stream in silence; it goes through once its
    account does."""
    insert_accounts(db, 5)
    insert_contacts(db, 4)
    link_contacts(db, 1)  # every contact at account 1 ...
    db.execute("UPDATE crm.contacts SET account_id = 5 WHERE id = 1")  # ... but the first, at the last account
    streams = write_streams(
        tmp_path / "streams.yml",
        {"contacts": children_stream(), "accounts": accounts_stream(max_records_per_run=1)},
    )

    first = run_dag(streams_file=streams, retries=False)
    assert first.state == "success", first.log[-3000:]
    assert "Stream 'contacts' stops before record 1" in first.log
    assert open_errors(db) == []
    # As if it had waited for more than an hour:
    db.execute(
        "UPDATE crm_export.stream_watermarks SET waiting_since = now() - interval '61 minutes' "
        "WHERE stream = 'contacts' AND waiting_record_key = '1'"
    )

    reported = run_dag(streams_file=streams, retries=False)

    assert reported.task_states["export_contacts"] == "failed"
    assert watermark(db, "contacts")[1] == "1"
    (waiting,) = open_errors(db)
    assert waiting["error_code"] == PARENT_NOT_EXPORTED
    for says in ("stream 'accounts' has not reached it yet", "It has waited since", "a change time in the future?"):
        assert says in waiting["error_message"]

    for _ in range(4):  # accounts 3, 4 and 5, one a run; contact 1 goes after its account
        run_dag(streams_file=streams, retries=False)
    assert open_errors(db) == []
    waiting_now = "SELECT waiting_record_key FROM crm_export.stream_watermarks WHERE stream = 'contacts'"
    assert db.execute(waiting_now).fetchone() == (None,)
    _assert_linked(db, emulator)


def test_a_held_child_whose_parent_then_waits_stays_held_until_it_goes_through(db, emulator, run_dag, tmp_path):
    """Contacts is held at contact 1, whose account 2 sits behind the accounts stream's hold at account 1. Once
    account 1 is fixed, the accounts stream (one record a run) has not reached account 2 yet: contact 1 now just
    waits, and the contacts stream stays held at it (its ExportErrors row still open) instead of a batch of
    nothing releasing the hold. The run after, account 2 goes first and contact 1 after it."""
    insert_accounts(db, 5)
    insert_contacts(db, 5)
    link_contacts(db, 5)  # contact n belongs to account 1 + n % 5: contact 1 to account 2
    rule = account_rule(emulator, 1)
    streams = write_streams(
        tmp_path / "streams.yml",
        {"contacts": children_stream(), "accounts": accounts_stream(max_records_per_run=1)},
    )

    held = run_dag(streams_file=streams, retries=False)
    assert held.task_states["export_contacts"] == "failed"
    assert watermark(db, "accounts")[1] == "1"
    assert watermark(db, "contacts")[1] == "1"
    assert "stream 'accounts' is held at its row 1, before it" in open_errors(db)[0]["error_message"]

    emulator.remove_rule(rule)
    waits = run_dag(streams_file=streams, retries=False)

    assert waits.state == "success", waits.log[-3000:]
    assert watermark(db, "accounts")[1] is None
    assert watermark(db, "contacts")[1] == "1"  # still held at it: nothing was committed past or for it
    assert [e["record_key"] for e in open_errors(db)] == ["1"]
    assert "Stream 'contacts' stops before record 1 for this run" in waits.log

    for _ in range(5):
        assert run_dag(streams_file=streams, retries=False).state == "success"
    assert watermark(db, "contacts")[1] is None
    assert open_errors(db) == []
    _assert_linked(db, emulator)


@pytest.mark.parametrize("path", PATHS)
def test_with_pause_off_the_re_export_sends_the_parent_then_the_child(
    db, emulator, run_dag, tmp_path, pause_variable, path
):
    """Pause off: the account and its contacts are logged and skipped, the contacts under their own code. The
    re-export runs the parents' errors first, so after the fix one CRMExport_ExportError run resolves both."""
    pause_variable("false")
    insert_accounts(db, 4)
    insert_contacts(db, 16)
    link_contacts(db, 4)
    rule = account_rule(emulator, 2)
    streams = _streams(tmp_path)

    logged = run_dag(streams_file=streams, conf={"use_bulk_api": path == "Bulk API 2.0"}, retries=False)

    assert logged.state == "success", logged.log[-3000:]
    assert [e["record_key"] for e in open_errors(db, "accounts")] == ["2"]
    children = open_errors(db)
    assert [e["record_key"] for e in children] == ["1", "5", "9", "13"]  # 1 + n % 4 == 2
    assert {e["error_code"] for e in children} == {PARENT_NOT_EXPORTED}
    assert "row 2 of stream 'accounts'" in children[0]["error_message"]
    assert "This account is under review" in children[0]["error_message"]

    emulator.remove_rule(rule)
    reexport = run_dag(dag_id="CRMExport_ExportError", streams_file=streams)

    assert reexport.state == "success", reexport.log[-3000:]
    assert open_errors(db) == []
    assert open_errors(db, "accounts") == []
    _assert_linked(db, emulator)


def test_a_child_whose_parent_row_is_not_in_the_source_is_an_ordinary_rejection(
    db, emulator, run_dag, tmp_path, pause_variable
):
    """No account 99 exists anywhere: the contact is not waiting for anything; Salesforce's own code and
    message, and which parent key is missing."""
    pause_variable("false")
    insert_accounts(db, 2)
    insert_contacts(db, 4)
    link_contacts(db, 2)
    db.execute("UPDATE crm.contacts SET account_id = 99 WHERE id = 3")
    streams = _streams(tmp_path)

    run = run_dag(streams_file=streams)

    assert run.state == "success", run.log[-3000:]
    (missing,) = open_errors(db)
    assert missing["record_key"] == "3"
    assert missing["error_code"] == "INVALID_FIELD"
    assert missing["error_message"].startswith(
        "Foreign key external ID: 99 not found for field CRM_Account_Id__c in entity Account."
    )
    assert "No row of crm.accounts (stream 'accounts') has id = 99" in missing["error_message"]
    assert "set account_id of this row to an existing parent" in missing["error_message"]
    db.execute("UPDATE crm.contacts SET account_id = 1 WHERE id = 3")  # fixed in the source
    assert run_dag(dag_id="CRMExport_ExportError", streams_file=streams).state == "success"
    assert open_errors(db) == []
    _assert_linked(db, emulator)


def test_a_parent_key_is_found_through_its_type_and_one_that_is_no_such_value_matches_nothing(db, tmp_path):
    """The parent's external-id column is compared in its own type (an index serves it), and a child value that
    is no such value (text where the parent's key is a number) matches no row, inside the caller's transaction."""
    from include.crm_export.config import load_streams
    from include.crm_export.db import source

    insert_accounts(db, 3)
    accounts = load_streams(_streams(tmp_path))["accounts"]
    types = source.column_types(db, accounts)
    with db.transaction():
        assert source.keys_by_external_id(db, accounts, "2", types) == ["2"]
        assert source.keys_by_external_id(db, accounts, "A-2", types) == []
        assert source.keys_by_external_id(db, accounts, "2.0", types) == []  # the parent sends "2", never "2.0"
        assert source.keys_by_external_id(db, accounts, "3", types) == ["3"]  # the transaction goes on


def test_a_child_column_whose_values_print_unlike_the_parents_external_id_is_refused(db, emulator, run_dag, tmp_path):
    """A numeric(12,2) child column would send "3.00" for the account whose stream sends "3": no contact would
    ever find its account. The contacts task fails before sending anything and says how to fix it."""
    insert_accounts(db, 3)
    insert_contacts(db, 3)
    link_contacts(db, 3)
    db.execute(
        "CREATE OR REPLACE VIEW crm.contacts_priced AS SELECT *, account_id::numeric(12,2) AS account_ref "
        "FROM crm.contacts"
    )
    try:
        fields = {"LastName": "last_name", "AccountId": {"parent": "accounts", "column": "account_ref"}}
        streams = write_streams(
            tmp_path / "streams.yml",
            {
                "contacts": contacts_stream(source="crm.contacts_priced", fields=fields, settle_seconds=0),
                "accounts": accounts_stream(),
            },
        )
        run = run_dag(streams_file=streams, retries=False)
    finally:
        db.execute("DROP VIEW crm.contacts_priced")

    assert run.task_states["export_contacts"] == "failed"
    assert run.task_states["export_accounts"] == "success"
    assert (
        "stream 'contacts', field 'fields.AccountId': its column crm.contacts_priced.account_ref is numeric(12,2), "
        "while stream 'accounts' sends its external id from crm.accounts.id, bigint" in run.log
    )
    assert "Export a view that casts account_ref to bigint" in run.log
    assert salesforce_contacts(emulator) == {}
    assert len(emulator.records("Account")) == 3


def test_a_parent_deleted_in_salesforce_later_is_named_with_the_way_to_send_it_again(
    db, emulator, run_dag, tmp_path, pause_variable
):
    """The account was exported, then someone deleted it in Salesforce, and its contacts with it (Salesforce
    Help, "Delete Accounts"). A contact changed since is refused: the message says the stream exported that
    account and how to send it again; after that, the re-export links the contact."""
    pause_variable("false")
    insert_accounts(db, 2)
    insert_contacts(db, 4)
    link_contacts(db, 2)
    streams = _streams(tmp_path)
    assert run_dag(streams_file=streams).state == "success"
    account = next(r for r in emulator.records("Account") if r["CRM_Account_Id__c"] == "2")
    assert emulator.delete_record("Account", account["Id"]) == {"lookups_cleared": 0, "children_deleted": 2}
    assert "1" not in salesforce_contacts(emulator)  # contacts 1 and 3 went with their account
    assert "3" not in salesforce_contacts(emulator)
    db.execute("UPDATE crm.contacts SET title = 'Changed' WHERE id = 1")

    run = run_dag(streams_file=streams)

    assert run.state == "success", run.log[-3000:]
    (refused,) = open_errors(db)
    assert refused["record_key"] == "1"
    assert refused["error_code"] == "INVALID_FIELD"
    assert "Stream 'accounts' exported its row 2" in refused["error_message"]
    assert "send --stream accounts --key 2" in refused["error_message"]
    db.execute("UPDATE crm.accounts SET name = 'Account 2 again' WHERE id = 2")  # exported again by the next run
    # Contact 3 went with its account; touched, its payload is unchanged, so only resend_all sends it again
    # (what fingerprints do not notice: README, "Only what changed is sent").
    db.execute("UPDATE crm.contacts SET title = title WHERE id = 3")
    assert run_dag(streams_file=streams, conf={"resend_all": True}).state == "success"
    assert run_dag(dag_id="CRMExport_ExportError", streams_file=streams).state == "success"
    assert open_errors(db) == []
    _assert_linked(db, emulator)


@pytest.mark.parametrize("path", PATHS)
def test_a_lookup_to_an_object_exported_elsewhere(db, emulator, sf, run_dag, tmp_path, path):
    """``{object: Account, external_id: CRM_Account_Id__c}``: the accounts are loaded by someone else; the
    contacts link to them by external id, and a null source value clears a link set before (REST: the field
    null; Bulk API 2.0: ``#N/A`` in the lookup field's column)."""
    for number in (1, 2):
        sf.Account.upsert(f"CRM_Account_Id__c/{number}", {"Name": f"Elsewhere {number}"})
    insert_contacts(db, 6)
    link_contacts(db, 2)
    db.execute("UPDATE crm.contacts SET account_id = NULL WHERE id = 4")
    sf.Contact.upsert("CRM_Contact_Id__c/4", {"LastName": "Before", "AccountId": emulator.records("Account")[0]["Id"]})
    fields = {
        "LastName": "last_name",
        "Title": "title",
        "AccountId": {"object": "Account", "external_id": "CRM_Account_Id__c", "column": "account_id"},
    }
    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(fields=fields, settle_seconds=0)})

    run = run_dag(streams_file=streams, conf={"use_bulk_api": path == "Bulk API 2.0"})

    assert run.state == "success", run.log[-3000:]
    accounts = {r["CRM_Account_Id__c"]: r["Id"] for r in emulator.records("Account")}
    contacts = salesforce_contacts(emulator)
    assert {key: contacts[key]["AccountId"] for key in sorted(contacts)} == {
        "1": accounts["2"],
        "2": accounts["1"],
        "3": accounts["2"],
        "4": None,
        "5": accounts["2"],
        "6": accounts["1"],
    }
    assert open_errors(db) == []


@pytest.mark.parametrize(
    ("lookup", "says"),
    [
        (
            {"AccountId": {"object": "Lead", "external_id": "CRM_Lead_Id__c", "column": "account_id"}},
            "field 'fields.AccountId': Contact.AccountId points at Account, not at Lead.",
        ),
        (
            {"Title": {"object": "Account", "external_id": "CRM_Account_Id__c", "column": "account_id"}},
            "field 'fields.Title': Contact.Title is not a lookup field in Salesforce (its type is string)",
        ),
        (
            {"AccountId": {"object": "Account", "external_id": "Name", "column": "account_id"}},
            "field 'fields.AccountId': Account.Name is not an external id field in Salesforce",
        ),
    ],
)
def test_a_lookup_salesforce_does_not_have_fails_before_anything_is_sent(db, emulator, run_dag, tmp_path, lookup, says):
    insert_contacts(db, 3)
    fields = {"LastName": "last_name", **lookup}
    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(fields=fields, settle_seconds=0)})

    run = run_dag(streams_file=streams, retries=False)

    assert run.state == "failed"
    assert f"Stream config error in stream 'contacts', {says}" in run.log
    assert salesforce_contacts(emulator) == {}


def test_a_cycle_of_lookups_is_refused_when_the_dag_is_parsed(tmp_path, monkeypatch, airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    accounts = accounts_stream()
    accounts["fields"]["Primary_Contact__c"] = {"parent": "contacts", "column": "contact_id"}
    streams = write_streams(tmp_path / "s.yml", {"contacts": children_stream(), "accounts": accounts})
    monkeypatch.setenv("CRM_EXPORT_STREAMS_FILE", str(streams))

    bag = DagBag(str(PROJECT_ROOT / "dags"))

    errors = "\n".join(bag.import_errors.values())
    assert len(bag.import_errors) == 2  # both DAGs refuse it
    assert "its lookups go round in a circle (contacts -> accounts -> contacts)" in errors
