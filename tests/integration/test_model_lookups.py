"""The invariant with lookups, as a model: random sequences of parents and children, checked after every step.

Hypothesis's stateful testing drives the real PostgreSQL and the emulator (through the real SalesforceHook and
simple-salesforce client) with an accounts stream and a contacts stream whose ``AccountId`` names its account
by external id: accounts and contacts inserted, re-pointed, deleted from the source, contacts pointing at
accounts that do not exist, a Salesforce rule rejecting some accounts, pause on error toggled, and the two
streams exported and re-exported in any order on either path (so a child often comes before its parent, as a
parent written just after its stream's read does). After every step, for both streams:

- every source row at or below the watermark is in Salesforce with its current values, or has an open
  ExportErrors row; for a contact, its ``AccountId`` is the Id of the account whose external id its row names
  (or empty when the row names none);
- a held stream's held record has an open ExportErrors row.

CI runs a bounded number of examples with a fixed seed, as ``test_model.py`` does (same variables).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import psycopg
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from include.crm_export.errors import RequestFailed, StreamConfigError
from tests.support.model import run_model

EXAMPLES = int(os.environ.get("CRM_EXPORT_MODEL_EXAMPLES", "6"))
SEED = int(os.environ.get("CRM_EXPORT_MODEL_SEED", "20261203"))
STEPS = int(os.environ.get("CRM_EXPORT_MODEL_STEPS", "12"))
NAMES = st.sampled_from(["Acme", "Nordlys", "Under review!", "Umlaut Ä", ""])
ACCOUNT_NUMBERS = st.integers(min_value=0, max_value=9)  # 0: no account; 9: one no row has


def _streams_file(path: Path) -> Path:
    common = {"key": "id", "order_by": ["updated_at", "id"], "settle_seconds": 0, "batch_size": 5}
    common |= {"in_flight": 2, "bulk_job_records": 7, "bulk_threshold": 0}
    streams = {
        "contacts": {
            **common,
            "source": "crm_test.people",
            "sobject": "Contact",
            "external_id": {"field": "CRM_Contact_Id__c", "column": "ext"},
            "fields": {"LastName": "last_name", "AccountId": {"parent": "accounts", "column": "account_ref"}},
        },
        "accounts": {
            **common,
            "source": "crm_test.companies",
            "sobject": "Account",
            "external_id": {"field": "CRM_Account_Id__c", "column": "ext"},
            "fields": {"Name": "name"},
        },
    }
    path.write_text(json.dumps({"streams": streams}))
    return path


class LookupModel(RuleBasedStateMachine):
    conninfo: str
    emulator: Any
    folder: Path

    def __init__(self) -> None:
        super().__init__()
        self.db = psycopg.connect(self.conninfo, autocommit=True)
        self.db.execute("DROP SCHEMA IF EXISTS crm_test CASCADE")
        self.db.execute("CREATE SCHEMA crm_test")
        self.db.execute(
            """CREATE TABLE crm_test.companies (id int PRIMARY KEY, ext text NOT NULL, name text NOT NULL,
                                                updated_at timestamptz NOT NULL DEFAULT now())"""
        )
        self.db.execute(
            """CREATE TABLE crm_test.people (id int PRIMARY KEY, ext text NOT NULL, last_name text NOT NULL,
                                             account_ref text, updated_at timestamptz NOT NULL DEFAULT now())"""
        )
        self.db.execute(
            'TRUNCATE crm_export.stream_watermarks, crm_export."ExportErrors", crm_export.bulk_jobs, '
            "crm_export.external_ids, crm_export.external_ids_filled, crm_export.api_requests, "
            "crm_export.export_runs, crm_export.stream_repositions, crm_export.fingerprints"
        )
        self.emulator.reset()
        self.accounts = itertools.count(1)
        self.people = itertools.count(1)
        self.pause = True
        self.rule: int | None = None
        self.streams = _streams_file(self.folder / "lookups.yml")
        os.environ["CRM_EXPORT_STREAMS_FILE"] = str(self.streams)
        # Every example starts with parents and children to export (one under review, one child pointing at
        # an account no row has, one at none), so each export step has work.
        self.insert_accounts(["Acme", "Nordlys", "Under review!", "Umlaut Ä"])
        for ref in ["A-1", "A-3", "A-2", None, "A-404", "A-3", "A-4", "A-1"]:
            n = next(self.people)
            self.db.execute(
                "INSERT INTO crm_test.people (id, ext, last_name, account_ref) VALUES (%s, %s, %s, %s)",
                (n, f"P-{n}", f"Person {n}", ref),
            )

    def teardown(self) -> None:
        self.db.close()

    def _stream(self, name: str):
        from include.crm_export.config import load_streams

        return load_streams(self.streams)[name]

    @staticmethod
    def _account_ref(number: int) -> str | None:
        """An account's external id: mostly one a row may have, now and then none, or one no row has."""
        return None if number == 0 else "A-404" if number == 9 else f"A-{number}"

    @rule(names=st.lists(NAMES, min_size=1, max_size=4))
    def insert_accounts(self, names):
        for name in names:
            n = next(self.accounts)
            self.db.execute(
                "INSERT INTO crm_test.companies (id, ext, name) VALUES (%s, %s, %s)", (n, f"A-{n}", name or f"Co {n}")
            )

    @rule(accounts=st.lists(ACCOUNT_NUMBERS, min_size=1, max_size=5))
    def insert_contacts(self, accounts):
        for number in accounts:
            n = next(self.people)
            self.db.execute(
                "INSERT INTO crm_test.people (id, ext, last_name, account_ref) VALUES (%s, %s, %s, %s)",
                (n, f"P-{n}", f"Person {n}", self._account_ref(number)),
            )

    @rule(key=st.integers(min_value=1, max_value=14), account=ACCOUNT_NUMBERS)
    def change_a_contacts_account(self, key, account):
        self.db.execute(
            "UPDATE crm_test.people SET account_ref = %s, updated_at = now() WHERE id = %s",
            (self._account_ref(account), key),
        )

    @rule(key=ACCOUNT_NUMBERS, name=NAMES)
    def rename_an_account(self, key, name):
        self.db.execute(
            "UPDATE crm_test.companies SET name = %s, updated_at = now() WHERE id = %s", (name or "Renamed", key)
        )

    @rule(key=ACCOUNT_NUMBERS)
    def delete_an_account_row(self, key):
        self.db.execute("DELETE FROM crm_test.companies WHERE id = %s", (key,))

    @rule(on=st.booleans())
    def account_rule(self, on):
        """Salesforce rejects accounts whose name has a '!' (a validation rule), or stops doing so."""
        if on and self.rule is None:
            self.rule = self.emulator.add_rule(
                cause="validation_rule",
                object="Account",
                when={"field": "Name", "op": "contains", "value": "!"},
                message="Under review",
                fields=["Name"],
            )["id"]
        elif not on and self.rule is not None:
            self.emulator.remove_rule(self.rule)
            self.rule = None

    @rule()
    def toggle_pause_on_error(self):
        self.pause = not self.pause

    @rule(
        order=st.lists(st.sampled_from(["accounts", "contacts"]), min_size=1, max_size=2),
        bulk=st.booleans(),
    )
    def export(self, order, bulk):
        """Stream exports in whatever order: a child often goes before its parent (as with a parent written
        just after its stream's read), or runs while its parent is held."""
        from include.crm_export.db.connection import Database
        from include.crm_export.export import RunContext, export_stream
        from include.crm_export.salesforce import bulk_jobs_for, writer_for

        for name in order:
            stream = self._stream(name)
            writer = writer_for(stream)
            export_stream(
                stream,
                database=Database(),
                writer=writer,
                pause_on_error=lambda: self.pause,
                context=RunContext("model", f"export-{name}-{time.monotonic_ns()}"),
                bulk=bulk_jobs_for(stream, writer),
                force_bulk=bulk,
            )

    @rule(name=st.sampled_from(["accounts", "contacts"]))
    def reexport(self, name):
        from include.crm_export.db.connection import Database
        from include.crm_export.export import RunContext
        from include.crm_export.reexport import ReexportOptions, reexport_stream
        from include.crm_export.salesforce import writer_for

        stream = self._stream(name)
        with contextlib.suppress(StreamConfigError, RequestFailed):
            reexport_stream(
                stream,
                database=Database(),
                writer=writer_for(stream),
                options=ReexportOptions(),
                context=RunContext("model-reexport", f"reexport-{name}-{time.monotonic_ns()}"),
            )

    def _settled(self, stream: str, table: str) -> tuple[list[dict[str, Any]], set[str]]:
        """The rows at or below the stream's watermark without an open ExportErrors row; checks the hold."""
        position, held = self.db.execute(
            "SELECT position, held_record_key FROM crm_export.stream_watermarks WHERE stream = %s", (stream,)
        ).fetchone() or (None, None)
        open_keys = {
            key
            for (key,) in self.db.execute(
                """SELECT record_key FROM crm_export."ExportErrors" WHERE stream = %s AND status = 'open'""",
                (stream,),
            ).fetchall()
        }
        if held is not None:
            assert held in open_keys, f"{stream} held at {held} without an open ExportErrors row"
        if not position:
            return [], open_keys
        with self.db.cursor(row_factory=psycopg.rows.dict_row) as cursor:
            rows = cursor.execute(
                f"SELECT * FROM crm_test.{table} WHERE (updated_at, id) <= (%s::timestamptz, %s::int) ORDER BY id",
                (position[0], position[1] if len(position) > 1 else 2**31 - 1),
            ).fetchall()
        return [row for row in rows if str(row["id"]) not in open_keys], open_keys

    @invariant()
    def every_settled_row_is_in_salesforce_and_every_child_points_at_its_parent(self):
        accounts = {r["CRM_Account_Id__c"].lower(): r for r in self.emulator.records("Account")}
        contacts = {r["CRM_Contact_Id__c"].lower(): r for r in self.emulator.records("Contact")}
        settled_accounts, _ = self._settled("accounts", "companies")
        for row in settled_accounts:
            found = accounts.get(row["ext"].lower())
            assert found is not None, f"account row {row['id']} is at or below the watermark and not in Salesforce"
            assert found["Name"] == row["name"], f"account row {row['id']}: {row['name']!r} vs {found['Name']!r}"
        settled_contacts, _ = self._settled("contacts", "people")
        for row in settled_contacts:
            found = contacts.get(row["ext"].lower())
            assert found is not None, f"contact row {row['id']} is at or below the watermark and not in Salesforce"
            parent = accounts.get(row["account_ref"].lower()) if row["account_ref"] else None
            assert row["account_ref"] is None or parent is not None, (
                f"contact row {row['id']} points at {row['account_ref']}, which is not in Salesforce, and has no "
                "open ExportErrors row"
            )
            expected = parent["Id"] if parent is not None else None
            assert found.get("AccountId") == expected, (
                f"contact row {row['id']}: AccountId {found.get('AccountId')!r}, its account {row['account_ref']} "
                f"is {expected!r}"
            )


def test_the_invariant_holds_with_lookups_through_random_sequences(
    db, emulator, project_conninfo, airflow_db, tmp_path
):
    LookupModel.conninfo = project_conninfo
    LookupModel.emulator = emulator
    LookupModel.folder = tmp_path
    run_model(LookupModel, name="model-based test with lookups", default_seed=SEED, examples=EXAMPLES, steps=STEPS)
