"""Source tables as users have them: key types whose text form differs from their value, and lookups by index."""

from __future__ import annotations

import pytest

from tests.support.helpers import salesforce_contacts, table_stream, write_streams

REEXPORT = "CRMExport_ExportError"

U = "6f1c3c6e-0000-4000-8000-00000000000"
KEYS = {
    # key type: (values, the text form PostgreSQL gives them)
    "character(8)": (["a", "b  ", "c"], ["a", "b", "c"]),
    "uuid": (
        [
            "6f1c3c6e-0000-4000-8000-00000000000A",
            "6f1c3c6e-0000-4000-8000-00000000000b",
            "{6f1c3c6e-0000-4000-8000-00000000000c}",
        ],
        [
            "6f1c3c6e-0000-4000-8000-00000000000a",
            "6f1c3c6e-0000-4000-8000-00000000000b",
            "6f1c3c6e-0000-4000-8000-00000000000c",
        ],
    ),
    "numeric(10,2)": (["1", "2.5", "3.10"], ["1.00", "2.50", "3.10"]),
    "text": (["Mixed Case", " lead", "trail "], ["Mixed Case", " lead", "trail "]),
}


def keyed_stream() -> dict:
    return table_stream("crm_test.keyed", key="k", change="updated_at")


@pytest.mark.parametrize("key_type", sorted(KEYS))
def test_rejected_record_with_any_key_type_is_found_again_and_resolved(
    key_type, db, emulator, run_dag, pause_variable, tmp_path
):
    values, texts = KEYS[key_type]
    db.execute("CREATE SCHEMA crm_test")
    db.execute(
        f"""CREATE TABLE crm_test.keyed (k {key_type} PRIMARY KEY, ext text NOT NULL, last_name text,
                                         updated_at timestamptz NOT NULL DEFAULT now() - interval '1 hour')"""
    )
    for n, value in enumerate(values, start=1):
        db.execute("INSERT INTO crm_test.keyed (k, ext, last_name) VALUES (%s, %s, %s)", (value, f"ext-{n}", f"L{n}"))
    streams = write_streams(tmp_path / "streams.yml", {"contacts": keyed_stream()})
    pause_variable("false")
    rule = emulator.add_rule(cause="no_access", when={"field": "CRM_Contact_Id__c", "op": "eq", "value": "ext-2"})

    assert run_dag(streams_file=streams).state == "success"
    (error,) = db.execute("""SELECT record_key FROM crm_export."ExportErrors" WHERE status = 'open'""").fetchall()
    assert error[0] == texts[1]

    emulator.remove_rule(rule["id"])
    assert run_dag(dag_id=REEXPORT, streams_file=streams).state == "success"
    statuses = db.execute("""SELECT record_key, status FROM crm_export."ExportErrors" """).fetchall()
    assert statuses == [(texts[1], "resolved")]
    assert set(salesforce_contacts(emulator)) == {"ext-1", "ext-2", "ext-3"}


def test_lookup_by_record_key_uses_the_key_index(db, project_conninfo):
    import psycopg

    from include.crm_export.config import parse_config
    from include.crm_export.db import source

    db.execute("CREATE SCHEMA crm_test")
    db.execute(
        """CREATE TABLE crm_test.keyed (k bigint PRIMARY KEY, ext text NOT NULL, last_name text,
                                        updated_at timestamptz NOT NULL DEFAULT now())"""
    )
    db.execute("INSERT INTO crm_test.keyed SELECT g, 'e' || g, 'L' FROM generate_series(1, 20000) g")
    db.execute("ANALYZE crm_test.keyed")
    stream = parse_config({"streams": {"contacts": keyed_stream()}})["contacts"]
    with psycopg.connect(project_conninfo, autocommit=True) as conn:
        types = source.column_types(conn, stream)
        conn.execute("SET enable_seqscan = off")  # a plan that can use the index must; one that cannot still scans
        rows = source.read_rows_by_key(conn, stream, ["5", "19999"], types)
        assert sorted(row["k"] for row in rows) == [5, 19999]
        conn.execute("SET enable_seqscan = on")
        with conn.cursor() as cursor:
            # The same query read_rows_by_key runs, explained.
            from psycopg import sql

            query = sql.SQL("EXPLAIN SELECT 1 FROM crm_test.keyed WHERE {}").format(source._key_in(stream, types))
            plan = "\n".join(row[0] for row in cursor.execute(query, (["5", "19999"],)).fetchall())
    assert "Index" in plan, plan


def test_a_nullable_order_column_is_refused_before_anything_is_sent(db, emulator, run_dag, tmp_path):
    db.execute("CREATE SCHEMA crm_test")
    db.execute(
        "CREATE TABLE crm_test.keyed (k bigint PRIMARY KEY, ext text NOT NULL, last_name text, updated_at timestamptz)"
    )
    db.execute("INSERT INTO crm_test.keyed VALUES (1, 'e1', 'L', now() - interval '1 hour'), (2, 'e2', 'L', NULL)")
    streams = write_streams(tmp_path / "s.yml", {"contacts": keyed_stream()})
    run = run_dag(streams_file=streams, retries=False)
    assert run.task_states["export_contacts"] == "failed"
    assert "column 'updated_at' of crm_test.keyed allows NULL" in run.log
    assert "ALTER TABLE crm_test.keyed ALTER COLUMN updated_at SET NOT NULL" in run.log
    assert salesforce_contacts(emulator) == {}


def test_a_view_row_with_null_in_its_order_is_named_and_nothing_is_skipped(db, emulator, run_dag, tmp_path):
    db.execute("CREATE SCHEMA crm_test")
    db.execute(
        "CREATE TABLE crm_test.base (k bigint PRIMARY KEY, ext text NOT NULL, last_name text, changed timestamptz)"
    )
    db.execute("INSERT INTO crm_test.base VALUES (1, 'e1', 'L', now() - interval '1 hour'), (2, 'e2', 'L', NULL)")
    db.execute("CREATE VIEW crm_test.keyed AS SELECT k, ext, last_name, changed AS updated_at FROM crm_test.base")
    streams = write_streams(tmp_path / "s.yml", {"contacts": keyed_stream()})
    run = run_dag(streams_file=streams, retries=False)
    assert run.task_states["export_contacts"] == "failed"
    assert "row 2 of crm_test.keyed has NULL in updated_at, k" in run.log
    assert salesforce_contacts(emulator) == {}

    db.execute(
        """CREATE OR REPLACE VIEW crm_test.keyed AS
           SELECT k, ext, last_name, COALESCE(changed, now() - interval '2 hours') AS updated_at FROM crm_test.base"""
    )
    assert run_dag(streams_file=streams).state == "success"
    assert set(salesforce_contacts(emulator)) == {"e1", "e2"}


def test_numerics_reach_salesforce_and_export_errors_exactly(db, emulator, run_dag, pause_variable, tmp_path):
    from decimal import Decimal

    from tests.support.helpers import contacts_stream, insert_contacts

    insert_contacts(db, 3)
    db.execute("UPDATE crm.contacts SET lifetime_value = 99999999999999.99 WHERE id = 1")  # float says …98
    db.execute("UPDATE crm.contacts SET lifetime_value = 12345678901234.57 WHERE id = 2")
    pause_variable("false")
    emulator.add_rule(cause="no_access", when={"field": "CRM_Contact_Id__c", "op": "eq", "value": "2"})
    streams = write_streams(tmp_path / "s.yml", {"contacts": contacts_stream(settle_seconds=0)})

    assert run_dag(streams_file=streams).state == "success"
    assert salesforce_contacts(emulator)["1"]["Lifetime_Value__c"] == Decimal("99999999999999.99")
    stored = db.execute(
        """SELECT payload->>'Lifetime_Value__c' FROM crm_export."ExportErrors" WHERE record_key = '2'"""
    ).fetchone()
    assert stored == ("12345678901234.57",)
