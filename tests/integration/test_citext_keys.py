"""citext keys, on a PostgreSQL that has the extension (Debian's postgresql-15 with contrib).

The embedded server (pgserver) ships no contrib extensions, so this module
starts a server of its own from the system's PostgreSQL 15 binaries, points
crm_export_postgres at it, and stops it afterwards. A citext key compares
case-insensitively while its text form keeps the case it was written in: the
export, ExportErrors and the re-export's lookup by key must all agree on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from tests.support.helpers import salesforce_contacts, table_stream, write_streams

SYSTEM_BINDIR = Path("/usr/lib/postgresql/15/bin")
CITEXT = Path("/usr/share/postgresql/15/extension/citext.control")
REEXPORT = "CRMExport_ExportError"


@pytest.fixture(scope="module")
def contrib_server(tmp_path_factory):
    """A PostgreSQL 15 server with contrib (citext); yields the connection URL of its database."""
    if not (SYSTEM_BINDIR / "pg_ctl").exists() or not CITEXT.exists():
        pytest.skip(
            "needs the system's PostgreSQL 15 with contrib (Debian: apt-get install postgresql-15) for citext; "
            "pgserver has no contrib extensions"
        )
    from devstack.postgres import EmbeddedPostgres

    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg15"))
    server._bindir = SYSTEM_BINDIR
    address = server.start()
    try:
        server.create_database("crm")
        yield address
    finally:
        server.stop()


@pytest.fixture
def citext_db(contrib_server, airflow_db, monkeypatch):
    url = contrib_server.url("crm")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS crm_test, crm_export CASCADE")
        conn.execute("CREATE EXTENSION IF NOT EXISTS citext")
        conn.execute("CREATE SCHEMA crm_test")
        conn.execute(
            """CREATE TABLE crm_test.people (email citext PRIMARY KEY, ext text NOT NULL, last_name text,
                                             updated_at timestamptz NOT NULL DEFAULT now() - interval '1 hour')"""
        )
        connection = {
            "conn_type": "postgres",
            "host": contrib_server.host,
            "port": contrib_server.port,
            "login": contrib_server.user,
            "password": contrib_server.password,
            "schema": "crm",
        }
        monkeypatch.setenv("AIRFLOW_CONN_CRM_EXPORT_POSTGRES", json.dumps(connection))
        yield conn


def test_citext_keys_keep_their_case_and_are_found_again(citext_db, emulator, run_dag, pause_variable, tmp_path):
    db = citext_db
    people = [("Ann@Example.com", "p-1", "Ann"), ("bob@example.COM", "p-2", "Bob"), ("CARL@example.com", "p-3", "Carl")]
    db.cursor().executemany("INSERT INTO crm_test.people (email, ext, last_name) VALUES (%s, %s, %s)", people)
    streams = write_streams(
        tmp_path / "s.yml", {"contacts": table_stream("crm_test.people", key="email", change="updated_at")}
    )
    pause_variable("false")
    rule = emulator.add_rule(cause="no_access", when={"field": "CRM_Contact_Id__c", "op": "eq", "value": "p-2"})

    assert run_dag(streams_file=streams).state == "success"
    errors = db.execute("""SELECT record_key, status FROM crm_export."ExportErrors" """).fetchall()
    assert errors == [("bob@example.COM", "open")]  # the key as written, not folded
    (watermark,) = db.execute("SELECT position FROM crm_export.stream_watermarks").fetchone()
    assert watermark[-1] == "CARL@example.com"

    # The row changes, and its key is looked up by a differently cased equal value: still the same record.
    db.execute("UPDATE crm_test.people SET last_name = 'Bobby' WHERE email = 'BOB@EXAMPLE.COM'")
    emulator.remove_rule(rule["id"])
    assert run_dag(dag_id=REEXPORT, streams_file=streams).state == "success"
    assert db.execute("""SELECT record_key, status FROM crm_export."ExportErrors" """).fetchall() == [
        ("bob@example.COM", "resolved")  # found again, not closed as source_deleted
    ]
    contacts = salesforce_contacts(emulator)
    assert {ext: record["LastName"] for ext, record in contacts.items()} == {
        "p-1": "Ann",
        "p-2": "Bobby",
        "p-3": "Carl",
    }

    # Nothing after the watermark is skipped: a key that sorts before the last one in another case comes later.
    db.execute(
        "INSERT INTO crm_test.people (email, ext, last_name, updated_at) VALUES ('aaron@x.com', 'p-4', 'A', now())"
    )
    db.execute("UPDATE crm_test.people SET updated_at = now() - interval '1 second'")
    assert run_dag(streams_file=streams).state == "success"
    assert set(salesforce_contacts(emulator)) == {"p-1", "p-2", "p-3", "p-4"}
