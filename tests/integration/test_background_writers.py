"""A background worker that writes source rows holds the export back, as a client session does.

The writer here is PostgreSQL's logical replication apply worker: the source
table is a subscription's target, and a trigger enabled ALWAYS stamps
``updated_at`` with the apply worker's transaction start, as a stamping
trigger does on a replica-fed table. The module starts a PostgreSQL server of
its own (the embedded binaries, ``wal_level=logical``) and stops it afterwards.
"""

from __future__ import annotations

import json
import time

import psycopg
import pytest

from tests.support.helpers import assert_salesforce_matches_source, salesforce_contacts, table_stream, write_streams


@pytest.fixture(scope="module")
def replicating_server(tmp_path_factory):
    from devstack.postgres import EmbeddedPostgres

    server = EmbeddedPostgres(tmp_path_factory.mktemp("logical"))
    address = server.start()
    try:
        with psycopg.connect(address.url("postgres"), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET wal_level = logical")
        server.stop()
        address = server.start()
        server.create_database("upstream")
        server.create_database("crm")
        yield address
    finally:
        server.stop()


def wait_for(conn: psycopg.Connection, query: str, expected, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if conn.execute(query).fetchone()[0] == expected:
            return
        time.sleep(0.1)
    raise AssertionError(f"{query} never gave {expected}")


@pytest.fixture
def replicated_table(replicating_server, airflow_db, monkeypatch):
    address = replicating_server
    upstream = psycopg.connect(address.url("upstream"), autocommit=True)
    crm = psycopg.connect(address.url("crm"), autocommit=True)
    try:
        crm.execute("DROP SUBSCRIPTION IF EXISTS crm_sub")
        crm.execute("DROP SCHEMA IF EXISTS crm_test, crm_export CASCADE")
        crm.execute("DROP TABLE IF EXISTS public.people")
        upstream.execute("DROP PUBLICATION IF EXISTS people_pub")
        upstream.execute("DROP TABLE IF EXISTS people")
        upstream.execute("CREATE TABLE people (id int PRIMARY KEY, ext text NOT NULL, last_name text)")
        upstream.execute("CREATE PUBLICATION people_pub FOR TABLE people")
        upstream.execute("SELECT pg_create_logical_replication_slot('crm_sub', 'pgoutput')")
        crm.execute("CREATE SCHEMA crm_test")  # its stamping function
        crm.execute(  # the subscription's target: same schema and name as upstream
            """CREATE TABLE public.people (id int PRIMARY KEY, ext text NOT NULL, last_name text,
                                             updated_at timestamptz NOT NULL DEFAULT now())"""
        )
        crm.execute(
            """CREATE FUNCTION crm_test.stamp() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN
                    NEW.updated_at := now();  -- the transaction's start
                    IF NEW.last_name = 'Late' THEN PERFORM pg_sleep(15); END IF;  -- a slow writer
                    RETURN NEW;
                  END $$"""
        )
        crm.execute(
            "CREATE TRIGGER stamp BEFORE INSERT OR UPDATE ON public.people "
            "FOR EACH ROW EXECUTE FUNCTION crm_test.stamp()"
        )
        crm.execute("ALTER TABLE public.people ENABLE ALWAYS TRIGGER stamp")  # fires for replicated rows too
        crm.execute(
            f"""CREATE SUBSCRIPTION crm_sub
                CONNECTION 'host={address.host} port={address.port} dbname=upstream user={address.user}
                            password={address.password}'
                PUBLICATION people_pub WITH (create_slot = false, slot_name = 'crm_sub')"""
        )
        connection = {
            "conn_type": "postgres",
            "host": address.host,
            "port": address.port,
            "login": address.user,
            "password": address.password,
            "schema": "crm",
        }
        monkeypatch.setenv("AIRFLOW_CONN_CRM_EXPORT_POSTGRES", json.dumps(connection))
        yield upstream, crm
    finally:
        crm.execute("DROP SUBSCRIPTION IF EXISTS crm_sub")  # drops the slot upstream too
        crm.close()
        upstream.close()


def test_a_replication_apply_worker_holding_an_old_row_holds_the_export_back(
    replicated_table, emulator, run_dag, tmp_path, replicating_server
):
    upstream, crm = replicated_table
    streams = write_streams(
        tmp_path / "s.yml", {"contacts": table_stream("public.people", key="id", change="updated_at")}
    )
    upstream.execute("INSERT INTO people SELECT g, 'p-' || g, 'L' || g FROM generate_series(1, 5) g")
    wait_for(crm, "SELECT count(*) FROM public.people", 5)
    assert run_dag(streams_file=streams).state == "success"

    # The apply worker starts the transaction that changes row 3 (its trigger stamps that start) and takes
    # 15 s over it; meanwhile a client writes row 6 and commits: a later stamp, visible first.
    upstream.execute("UPDATE people SET last_name = 'Late' WHERE id = 3")
    wait_for(
        crm,
        """SELECT count(*) FROM pg_stat_activity
           WHERE backend_type = 'logical replication worker' AND wait_event = 'PgSleep'""",
        1,
    )
    crm.execute("INSERT INTO public.people (id, ext, last_name) VALUES (6, 'p-6', 'L6')")

    held_back = run_dag(streams_file=streams)
    assert held_back.state == "success"
    assert "logical replication worker" in held_back.log  # the warning names who holds it back
    assert "p-6" not in salesforce_contacts(emulator)  # row 6 waits: an older row may still commit

    wait_for(crm, "SELECT last_name FROM public.people WHERE id = 3", "Late", timeout=60)
    assert run_dag(streams_file=streams).state == "success"
    assert salesforce_contacts(emulator)["p-3"]["LastName"] == "Late"
    assert "p-6" in salesforce_contacts(emulator)
    assert_salesforce_matches_source(crm, emulator)
