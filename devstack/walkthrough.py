"""The walk-through: the product doing its job, driven through Airflow's REST API.

    make walkthrough        (with `make run` going in another terminal)

Every Airflow step goes through the REST API, exactly what the UI does on a
click. Two things happen outside Airflow, as they would in real life: new
records arrive in the CRM (rows inserted into the source tables), and a
Salesforce admin changes the org (rules set in the emulator).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import psycopg

from devstack.airflow_api import FINISHED, AirflowApi
from devstack.compare import compare
from devstack.demo import BLOCKED_DOMAIN, VALIDATION_RULE
from devstack.emulator.process import EmulatorAdmin, EmulatorInfo
from include.crm_export.config import load_streams
from include.crm_export.names import PAUSE_ON_ERROR_VARIABLE

EXPORT, REEXPORT = "CRMExport", "CRMExport_ExportError"

ACCOUNT_RULE = {
    "cause": "validation_rule",
    "object": "Account",
    "name": "Accounts_Under_Review",
    "when": {"field": "Name", "op": "endswith", "value": "(under review)"},
    "message": "Accounts under review cannot be saved (validation rule Accounts_Under_Review)",
    "fields": ["Name"],
}


class WalkthroughFailed(AssertionError):
    pass


class Walkthrough:
    def __init__(self, *, api: AirflowApi, emulator: EmulatorAdmin, conninfo: str, out=sys.stdout) -> None:
        self.api = api
        self.emulator = emulator
        self.conninfo = conninfo
        self.out = out
        self.step_number = 0

    def say(self, text: str) -> None:
        print(f"   {text}", file=self.out, flush=True)

    def step(self, text: str) -> None:
        self.step_number += 1
        print(f"\n{self.step_number}. {text}", file=self.out, flush=True)

    def check(self, condition: bool, problem: str) -> None:
        if not condition:
            raise WalkthroughFailed(problem)

    def new_contacts(self, count: int, *, blocked_every: int | None = None, marker: str) -> tuple[list[int], list[int]]:
        """New CRM records; stamped 31 s ago so the export's 30 s settle window does not slow the story."""
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            rows = conn.execute(
                """INSERT INTO crm.contacts (first_name, last_name, email, title, updated_at)
                   SELECT 'New', %(marker)s || ' ' || g,
                          CASE WHEN %(every)s::int IS NOT NULL AND g %% %(every)s::int = 0
                               THEN lower(%(marker)s) || g || %(blocked)s
                               ELSE lower(%(marker)s) || g || '@example.com' END,
                          'Customer', now() - interval '31 seconds'
                   FROM generate_series(1, %(n)s) g
                   RETURNING id, email""",
                {"n": count, "every": blocked_every, "marker": marker, "blocked": BLOCKED_DOMAIN},
            ).fetchall()
        return [row[0] for row in rows if row[1].endswith(BLOCKED_DOMAIN)], [row[0] for row in rows]

    def run_export(self, dag_id: str, conf: dict | None = None) -> tuple[str, str]:
        run_id = self.api.trigger(dag_id, conf)
        self.say(f"Triggered {dag_id} (run {run_id}); waiting for it…")
        return run_id, self.api.wait_for_run(dag_id, run_id)

    def _runs_since(self, dag_id: str, before: set[str]) -> list[str]:
        """The runs of ``dag_id`` not in ``before`` that ran: one queued behind ours (max_active_runs 1) has no
        task instance to read yet, and took nothing."""
        return [
            r["dag_run_id"]
            for r in self.api.runs(dag_id, limit=20)
            if r["dag_run_id"] not in before and r["state"] in FINISHED
        ]

    def log_of(self, dag_id: str, run_id: str, task_id: str) -> list[str]:
        ti = next(t for t in self.api.task_instances(dag_id, run_id) if t["task_id"] == task_id)
        return self.api.task_log(dag_id, run_id, task_id, max(ti["try_number"], 1))

    def run(self) -> None:
        api = self.api
        api.login()
        api.wait_for_dags([EXPORT, REEXPORT])

        self.step("Pause on export errors is on (the default), and Salesforce has a strict validation rule.")
        api.set_variable(PAUSE_ON_ERROR_VARIABLE, "true")
        self.emulator.clear_rules()  # start from a known org, also when walking through a second time
        self.emulator.add_rule(**VALIDATION_RULE)
        self.say(f"Admin > Variables: {PAUSE_ON_ERROR_VARIABLE} = true")
        self.say(f"Salesforce rule {VALIDATION_RULE['name']}: {VALIDATION_RULE['message']}")
        api.set_paused(EXPORT, False)
        self._wait_for_idle(EXPORT)
        blocked, batch1 = self.new_contacts(40, blocked_every=17, marker="Batch1")
        self.say(f"40 new contacts arrive in the CRM; records {blocked} have a {BLOCKED_DOMAIN} address.")

        self.step("CRMExport runs and is held at the first bad record.")
        run_id, state = self.run_export(EXPORT)
        self.check(state == "failed", f"expected the run to fail (held), it ended {state}")
        lines = self.log_of(EXPORT, run_id, "export_contacts")
        held = next((line for line in lines if "is held at record" in line and "Salesforce rejected it" in line), None)
        self.check(held is not None, "the failed task's log does not say where it is held")
        self.say("Grid view: the run is red. The failed task export_contacts says:")
        self.say(f"  {held[:600]}")
        self.check("FIELD_CUSTOM_VALIDATION_EXCEPTION" in held, "the message does not name the Salesforce error code")
        held_key = held.split("is held at record ", 1)[1].split(" ", 1)[0]
        with psycopg.connect(self.conninfo) as conn:
            email = conn.execute("SELECT email FROM crm.contacts WHERE id::text = %s", (held_key,)).fetchone()[0]
        self.check(email.endswith(BLOCKED_DOMAIN), f"held at record {held_key}, whose email {email} breaks no rule")

        self.step("The Salesforce admin fixes the cause: the validation rule is relaxed.")
        for rule in self.emulator.rules():
            if rule.get("name") == VALIDATION_RULE["name"]:
                self.emulator.remove_rule(rule["id"])
        self.say(f"Rule {VALIDATION_RULE['name']} removed in Salesforce.")

        self.step("Clear the failed task instance: the export resumes at the held record.")
        api.clear_failed(EXPORT, run_id, ["export_contacts"])
        state = api.wait_for_run(EXPORT, run_id)
        self.check(state == "success", f"after clearing, the run ended {state}")
        self.say(f"Run {run_id} is green now.")
        in_salesforce = {r["CRM_Contact_Id__c"] for r in self.emulator.records("Contact")}
        self.check(all(str(key) in in_salesforce for key in batch1), "not every new contact reached Salesforce")
        self.say(f"All 40 new contacts are in Salesforce, including {blocked}.")

        deleted_contact = self._mark_a_contact_deleted(batch1[0])
        self._contact_waits_for_its_account()

        self.step("Turn pause on export errors off (Admin > Variables).")
        api.set_variable(PAUSE_ON_ERROR_VARIABLE, "false")
        self.say(f"{PAUSE_ON_ERROR_VARIABLE} = false: rejected records will be logged and skipped.")

        self.step("Salesforce now refuses some records for a missing permission; the export logs and skips them.")
        access_rule = self.emulator.add_rule(
            cause="no_access",
            object="Contact",
            when={"field": "Title", "op": "eq", "value": "Restricted"},
            message="insufficient access rights on object id",
        )
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            restricted = [
                r[0]
                for r in conn.execute(
                    """INSERT INTO crm.contacts (first_name, last_name, email, title, updated_at)
                       SELECT 'New', 'Batch2 ' || g, 'batch2-' || g || '@example.com',
                              CASE WHEN g % 10 = 0 THEN 'Restricted' ELSE 'Customer' END,
                              now() - interval '31 seconds'
                       FROM generate_series(1, 30) g RETURNING id, title"""
                ).fetchall()
                if r[1] == "Restricted"
            ]
        self.say(f"30 new contacts; Salesforce will refuse {restricted} (INSUFFICIENT_ACCESS_OR_READONLY).")
        step_started = {r["dag_run_id"] for r in api.runs(EXPORT, limit=20)}
        run_id, state = self.run_export(EXPORT)
        self.check(state == "success", f"with pause off the run should be green, it ended {state}")
        # A scheduled run (every 15 minutes) may have picked the records up first: look at every new run.
        lines = [
            line
            for rid in self._runs_since(EXPORT, step_started)
            for line in self.log_of(EXPORT, rid, "export_contacts")
        ]
        warning = next((line for line in lines if "Salesforce is incomplete" in line), None)
        self.check(warning is not None, "no warning that Salesforce is incomplete")
        self.say("The run is green, and its log warns:")
        self.say(f"  {warning}")
        open_now = self._open_errors()
        self.check({str(r) for r in restricted} <= set(open_now), f"open errors {open_now}, expected {restricted}")
        self.say(
            f'ExportErrors has {len(open_now)} open rows: SELECT * FROM crm_export."ExportErrors" '
            "WHERE status = 'open';"
        )

        self.step("The permission is granted in Salesforce; CRMExport_ExportError re-exports the open errors.")
        self.emulator.remove_rule(access_rule["id"])
        before = {r["dag_run_id"] for r in api.runs(REEXPORT, limit=20)}
        api.set_paused(REEXPORT, False)
        self._wait_for_idle(REEXPORT)
        run_id, state = self.run_export(REEXPORT)
        self.check(state == "success", f"the re-export ended {state}")
        # Switching it on may start its daily run at once; show what every new run did.
        for rid in self._runs_since(REEXPORT, before):
            for line in self.log_of(REEXPORT, rid, "reexport_contacts"):
                if line.startswith("Re-export of stream 'contacts'"):
                    self.say(f"Run {rid}: {line}")
        self.check(self._open_errors() == [], f"errors still open: {self._open_errors()}")

        self._contact_is_deleted(*deleted_contact)

        self.step("Salesforce equals the source.")
        for stream in load_streams():
            self._check_salesforce_equals_source(stream)

        self.step("Back to the safe default: pause on export errors on.")
        api.set_variable(PAUSE_ON_ERROR_VARIABLE, "true")
        self.say("Done.")

    def _contact_waits_for_its_account(self) -> None:
        """Lookups: a contact points at its account by external id, and waits while the account is held."""
        self.step("An account breaks a Salesforce rule; a new contact at that account waits for it.")
        rule = self.emulator.add_rule(**ACCOUNT_RULE)
        self.say(f"Salesforce rule {ACCOUNT_RULE['name']}: {ACCOUNT_RULE['message']}")
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            account = conn.execute(
                """INSERT INTO crm.accounts (name, city, country, updated_at)
                   VALUES ('Nordlys AS (under review)', 'Oslo', 'Norway', now() - interval '31 seconds')
                   RETURNING id"""
            ).fetchone()[0]
            contact = conn.execute(
                """INSERT INTO crm.contacts (first_name, last_name, email, title, account_id, updated_at)
                   VALUES ('Ingrid', 'Nordlys', 'ingrid@nordlys.example', 'CFO', %s, now() - interval '31 seconds')
                   RETURNING id""",
                (account,),
            ).fetchone()[0]
        self.say(
            f"Account {account} and its contact {contact} arrive in the CRM (crm.contacts.account_id = {account})."
        )
        run_id, state = self.run_export(EXPORT)
        self.check(state == "failed", f"expected the run to fail (held), it ended {state}")
        parent = next(line for line in self.log_of(EXPORT, run_id, "export_accounts") if "is held at record" in line)
        child = next(
            (line for line in self.log_of(EXPORT, run_id, "export_contacts") if "Waiting for its parent" in line),
            None,
        )
        self.check(child is not None, "the contacts task does not say it waits for its account")
        self.check("stream 'accounts'" in child, "the waiting contact's message does not name the accounts stream")
        self.say("export_accounts is held at the account:")
        self.say(f"  {parent[:400]}")
        self.say("export_contacts ran all the same (its other records went through) and is held at the contact:")
        self.say(f"  {child[:600]}")

        self.emulator.remove_rule(rule["id"])
        self.say(f"The admin relaxes {ACCOUNT_RULE['name']}; clear both failed tasks (parents run first).")
        self.api.clear_failed(EXPORT, run_id, ["export_accounts", "export_contacts"])
        state = self.api.wait_for_run(EXPORT, run_id)
        self.check(state == "success", f"after clearing, the run ended {state}")
        accounts = {r["CRM_Account_Id__c"]: r["Id"] for r in self.emulator.records("Account")}
        linked = {r["CRM_Contact_Id__c"]: r.get("AccountId") for r in self.emulator.records("Contact")}
        self.check(
            linked.get(str(contact)) == accounts.get(str(account)) is not None,
            f"contact {contact} is not linked to account {account} in Salesforce",
        )
        self.say(f"Run {run_id} is green: contact {contact}'s AccountId is {accounts[str(account)]}, its account's Id.")

    def _mark_a_contact_deleted(self, contact: int) -> tuple[int, float, set[str]]:
        """Deletes, first half: a contact is marked deleted now; it is looked at once the settle window is over
        (any run from now on may delete it)."""
        before = {r["dag_run_id"] for r in self.api.runs(EXPORT, limit=20)}
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute("UPDATE crm.contacts SET deleted_at = now() WHERE id = %s", (contact,))
        return contact, time.monotonic(), before

    def _contact_is_deleted(self, contact: int, marked_at: float, before: set[str]) -> None:
        """Deletes: a contact marked deleted in the CRM is deleted in Salesforce by its external id."""
        self.step("A contact was deleted in the CRM (deleted_at is set); the export deletes it in Salesforce.")
        self.say(
            f"Earlier, while the steps above ran: UPDATE crm.contacts SET deleted_at = now() WHERE id = {contact}. "
            "The contacts stream has deletes: {column: deleted_at}; a changed row waits out the 30 s settle window."
        )
        time.sleep(max(0.0, 31 - (time.monotonic() - marked_at)))
        _, state = self.run_export(EXPORT)
        self.check(state == "success", f"the run ended {state}")
        in_salesforce = {r["CRM_Contact_Id__c"] for r in self.emulator.records("Contact")}
        self.check(str(contact) not in in_salesforce, f"contact {contact} is still in Salesforce")
        # A scheduled run may have taken it first: look at every new run.
        summary = next(
            (
                line
                for rid in self._runs_since(EXPORT, before)
                for line in self.log_of(EXPORT, rid, "export_contacts")
                if line.startswith("Stream 'contacts': exported") and "deleted: 0;" not in line
            ),
            None,
        )
        self.check(summary is not None, "no run says it deleted a contact")
        self.say(f"Contact {contact} is gone from Salesforce (in its Recycle Bin). The run says:")
        self.say(f"  {summary}")

    def _wait_for_idle(self, dag_id: str, timeout: float = 600) -> None:
        """Let a scheduled run that is already going finish first (max_active_runs=1)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(run["state"] in ("success", "failed") for run in self.api.runs(dag_id)):
                return
            time.sleep(1)
        raise WalkthroughFailed(f"{dag_id} stayed busy for {timeout:.0f}s")

    def _open_errors(self) -> list[str]:
        with psycopg.connect(self.conninfo) as conn:
            rows = conn.execute(
                """SELECT record_key FROM crm_export."ExportErrors" WHERE status = 'open' AND stream = 'contacts'
                   ORDER BY record_key::bigint"""
            ).fetchall()
        return [r[0] for r in rows]

    def _check_salesforce_equals_source(self, stream_name: str) -> None:
        stream = load_streams()[stream_name]
        with psycopg.connect(self.conninfo) as conn:
            parents = {lookup.object: self.emulator.records(lookup.object) for lookup in stream.lookups}
            comparison = compare(conn, stream, self.emulator.records(stream.sobject), parents)
        self.check(comparison.equal, comparison.describe())
        self.say(comparison.describe())


def walkthrough_for(root: Path, *, port: int, out=sys.stdout) -> Walkthrough:
    """A walk-through against the local run whose data lives in ``root``."""
    raw = json.loads((root / "emulator" / "emulator.json").read_text())
    info = EmulatorInfo(**{k: raw[k] for k in EmulatorInfo.__dataclass_fields__})
    pg = json.loads((root / "postgres.json").read_text())
    conninfo = f"host={pg['host']} port={pg['port']} dbname={pg['schema']} user={pg['login']} password={pg['password']}"
    return Walkthrough(
        api=AirflowApi(f"http://localhost:{port}"), emulator=EmulatorAdmin(info), conninfo=conninfo, out=out
    )


def main() -> int:
    from devstack.__main__ import LOCAL_ROOT

    parser = argparse.ArgumentParser(prog="python -m devstack.walkthrough")
    parser.add_argument("--root", default=str(LOCAL_ROOT))
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    try:
        walkthrough_for(Path(args.root), port=args.port).run()
    except WalkthroughFailed as exc:
        print(f"\nThe walk-through stopped: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
