"""Helpers the tests share (plain functions, imported as a module): source rows, stream files, what a user
sees (the watermark, open ExportErrors rows, Salesforce's records), the local run and the CLI export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from devstack.stack import PROJECT_ROOT


def insert_contacts(conn: psycopg.Connection, count: int, *, start: int = 1, age: str = "1 hour") -> None:
    """``count`` valid contacts with ids start.., changed ``age`` ago, one millisecond apart."""
    conn.execute(
        """INSERT INTO crm.contacts (id, first_name, last_name, email, title, birthdate, lifetime_value,
                                     opted_out_of_email, updated_at)
           SELECT g, 'First' || g, 'Last' || g, 'person' || g || '@example.com', 'Engineer', DATE '1990-01-01' + g,
                  g * 1.5, g %% 7 = 0, now() - CAST(%s AS interval) + g * interval '1 millisecond'
           FROM generate_series(%s::int, %s::int) g""",
        (age, start, start + count - 1),
    )


def watermark(conn: psycopg.Connection, stream: str = "contacts") -> tuple[Any, Any]:
    row = conn.execute(
        "SELECT position, held_record_key FROM crm_export.stream_watermarks WHERE stream = %s", (stream,)
    ).fetchone()
    return (row[0], row[1]) if row else (None, None)


def open_errors(conn: psycopg.Connection, stream: str = "contacts") -> list[dict[str, Any]]:
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(
            """SELECT * FROM crm_export."ExportErrors" WHERE stream = %s AND status = 'open'
               ORDER BY record_key::bigint""",
            (stream,),
        ).fetchall()


def salesforce_contacts(emulator) -> dict[str, dict[str, Any]]:
    return {r["CRM_Contact_Id__c"]: r for r in emulator.records("Contact")}


def write_streams(path: Path, streams: dict[str, Any], **defaults: Any) -> Path:
    path.write_text(json.dumps({"defaults": defaults, "streams": streams}))  # JSON is YAML
    return path


CONTACT_FIELDS = {
    "FirstName": "first_name",
    "LastName": "last_name",
    "Email": "email",
    "Title": "title",
    "Birthdate": "birthdate",
    "HasOptedOutOfEmail": "opted_out_of_email",
    "Lifetime_Value__c": "lifetime_value",
}


def table_stream(source: str, *, key: str, change: str, **overrides: Any) -> dict[str, Any]:
    """A Contact stream over a test table with columns (key, ext, last_name, change), exported as they come."""
    return {
        "source": source,
        "key": key,
        "order_by": [change, key],
        "sobject": "Contact",
        "external_id": {"field": "CRM_Contact_Id__c", "column": "ext"},
        "fields": {"LastName": "last_name"},
        "settle_seconds": 0,
        **overrides,
    }


def subscriptions_stream(**overrides: Any) -> dict[str, Any]:
    """A subscriptions stream (Subscription__c by CRM_Subscription_Id__c), with overrides."""
    return {
        "source": "crm.subscriptions",
        "key": "id",
        "order_by": ["updated_at", "id"],
        "sobject": "Subscription__c",
        "external_id": {"field": "CRM_Subscription_Id__c", "column": "id"},
        "fields": {"Name": "name", "Plan__c": "plan", "Seats__c": "seats", "Monthly_Amount__c": "monthly_amount"},
        "settle_seconds": 0,
        **overrides,
    }


def cli(
    *args: str, streams: Path, code: Path = PROJECT_ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``python -m include.crm_export ARGS`` of the code in ``code`` with the streams file ``streams``; its output."""
    return subprocess.run(
        [sys.executable, "-m", "include.crm_export", *args],
        cwd=code,
        env={**os.environ, "CRM_EXPORT_STREAMS_FILE": str(streams), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def contacts_stream(**overrides: Any) -> dict[str, Any]:
    """A contacts stream like the shipped one, with overrides."""
    return {
        "source": "crm.contacts",
        "key": "id",
        "order_by": ["updated_at", "id"],
        "sobject": "Contact",
        "external_id": {"field": "CRM_Contact_Id__c", "column": "id"},
        "fields": dict(CONTACT_FIELDS),
        **overrides,
    }


def blocked(emulator, *ids: int) -> int:
    """A validation rule rejecting the contacts with these ids (Title must be set); returns the rule's id."""
    return emulator.add_rule(
        cause="validation_rule",
        when={"field": "CRM_Contact_Id__c", "op": "in", "value": [str(i) for i in ids]},
        message="Title must be set",
        fields=["Title"],
    )["id"]


def assert_salesforce_matches_source(conn: psycopg.Connection, emulator, stream_name: str = "contacts") -> None:
    """Salesforce holds exactly the source rows, field by field, each once."""
    from devstack.compare import compare
    from include.crm_export.config import load_streams

    stream = load_streams()[stream_name]
    parents = {lookup.object: emulator.records(lookup.object) for lookup in stream.lookups}
    comparison = compare(conn, stream, emulator.records(stream.sobject), parents)
    assert comparison.equal, comparison.describe()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_local_run(root: Path, port: int, log_path: Path, *, env: dict[str, str] | None = None):
    """The README's run command, in the background, until it says it is ready."""
    import signal
    import time

    # A clean environment: the test session's own connections must not leak into the local run.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CRM_EXPORT"))}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "devstack", "run", "--root", str(root), "--port", str(port)],
            cwd=PROJECT_ROOT,
            env={**clean, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if "Press Ctrl-C to stop everything" in log_path.read_text(errors="replace"):
            return process
        if process.poll() is not None:
            raise AssertionError(f"the run command exited early:\n{log_path.read_text()[-4000:]}")
        time.sleep(1)
    process.send_signal(signal.SIGINT)
    raise AssertionError(f"the run command did not come up:\n{log_path.read_text()[-4000:]}")


def stop_local_run(process, root: Path) -> None:
    """Ctrl-C, then nothing the run started may be left running."""
    import signal

    process.send_signal(signal.SIGINT)
    assert process.wait(60) == 0
    leftovers = subprocess.run(["pgrep", "-f", str(root)], capture_output=True, text=True).stdout.split()
    assert leftovers == [], f"still running after Ctrl-C: {leftovers}"
    assert not (root / "postgres" / "data" / "postmaster.pid").exists()


def start_cli_export(streams_file: Path | None = None, *, pause_on_error: str = "true") -> subprocess.Popen:
    """The contacts stream's export from the CLI, in a process of its own (to be killed); output discarded."""
    env = os.environ.copy()
    if streams_file is not None:
        env["CRM_EXPORT_STREAMS_FILE"] = str(streams_file)
    command = ["export", "--stream", "contacts", "--pause-on-error", pause_on_error]
    return subprocess.Popen(
        [sys.executable, "-m", "include.crm_export", *command],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def kill_when(worker: subprocess.Popen, ready: Callable[[], Any], *, never: str, settle: float = 0.0) -> Any:
    """``kill -9`` the worker once ``ready()`` gives something true (then ``settle`` seconds later); returns that.

    Fails with ``never`` if it does not within 60 s. The worker is killed in any case.
    """
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            value = ready()
            if value:
                time.sleep(settle)
                worker.send_signal(signal.SIGKILL)
                worker.wait(10)
                return value
            time.sleep(0.02)
        raise AssertionError(never)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
